package teletracker

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"time"
)

// decide.go is the engine's state machine, without I/O: decide says when
// Teletracker is called, and nothing else does; settle says what an answer
// does to the record. rotation.go only loads, applies and stores.

const (
	// tickInterval is how often Vault calls PeriodicFunc.
	tickInterval = time.Minute
	// minCallInterval is the least time between two calls of a mount to
	// Teletracker, whatever clocks, lifetimes or callers say.
	minCallInterval = 10 * time.Second
	// minRetryInterval is the first backoff after a failed call.
	minRetryInterval = 30 * time.Second
	// maxBackoff caps the exponential backoff after failures.
	maxBackoff = 5 * time.Minute
	// maxClockSkew is how far apart the clocks of Vault's nodes may be. A
	// time further ahead of now than that means the clock was set back.
	maxClockSkew = time.Minute
)

// triggerKind is what asks for the record to be brought up to date.
type triggerKind int

const (
	triggerTick       triggerKind = iota // Vault's periodic tick: refresh ahead of need
	triggerRead                          // a token read that found the token due
	triggerRotate                        // an operator asking for a new token
	triggerCredential                    // a config write with a password, a refresh token or a new account: calls at once
	triggerTune                          // a config write of other fields: never calls
)

// trigger is one request to bring the record up to date.
type trigger struct {
	kind triggerKind
	// at is when it was asked; a rotate wants a token obtained no earlier.
	at time.Time
}

// actionKind is what decide asks for.
type actionKind int

const (
	actNothing actionKind = iota // nothing is due
	actWait                      // a call is wanted, but not before action.at
	actStop                      // a call is wanted, but only an operator can help
	actHeld                      // a call is wanted, but a record storage refused must be stored first
	actRefresh                   // send /auth/refresh with the record's refresh token
	actLogin                     // log in with the stored password
)

// action is decide's answer.
type action struct {
	kind actionKind
	// at is when the wait ends (actWait).
	at time.Time
}

// calls reports whether a asks for a call to Teletracker.
func (a action) calls() bool {
	return a.kind == actRefresh || a.kind == actLogin
}

// err is why a call that was wanted is not made; nil when none is wanted.
func (a action) err() error {
	switch a.kind {
	case actWait:
		return &rateLimitedError{until: a.at}
	case actStop:
		return errReauth
	case actHeld:
		return errHeld
	}
	return nil
}

// decide says what t asks of r at now. A call is made only when decide
// says so, and only once the waits allow it: HoldUntil for an operator,
// NotBefore (which includes the backoff) for the engine's own triggers. (A
// refresh in flight is marked with the waits that let its call end first.)
func decide(r *record, now time.Time, t trigger) action {
	if !r.wants(now, t) {
		return action{kind: actNothing}
	}
	switch {
	case r.unsaved:
		return action{kind: actHeld}
	case r.needsReauth():
		return action{kind: actStop}
	}
	kind := actRefresh
	if r.State == stateNeedLogin || (r.State == stateInFlight && r.Config.Password != "") {
		// A refresh token whose fate is unknown is not presented again
		// when a login can replace it: a re-presented refresh token is
		// what a token-theft detector looks for.
		kind = actLogin
	}
	at := r.NotBefore
	if t.kind == triggerRotate || t.kind == triggerCredential {
		at = r.HoldUntil // an operator's act waits for no backoff
	}
	if ahead(now, r.LastCallAt) {
		at = time.Time{} // the clock was set back since: the waits are over
	}
	if now.Before(at) {
		return action{kind: actWait, at: at}
	}
	return action{kind: kind}
}

// wants reports whether t wants a new token for r at now: an operator one
// newer than the request, a read one not due; a tick looks a tick (and its
// spread) ahead, so that reads do not find the token due and no session
// lapses for lack of them.
func (r *record) wants(now time.Time, t trigger) bool {
	switch {
	case t.kind == triggerTune:
		return false
	case r.Token == "" || ahead(now, r.ObtainedAt):
		return true // none, or of unknown age: the clock was set back
	case t.kind == triggerRotate || t.kind == triggerCredential:
		return r.State != stateReady || r.ObtainedAt.Before(t.at)
	case t.kind == triggerRead:
		return !now.Before(r.refreshAt())
	}
	ahead := now.Add(tickInterval + r.spread())
	return r.State != stateReady || !ahead.Before(r.refreshAt()) ||
		(!r.RefreshTokenExpiresAt.IsZero() && !ahead.Add(r.Config.RefreshMargin).Before(r.RefreshTokenExpiresAt))
}

// spread is how much earlier than due a tick replaces r's token: a share of
// the first half of the margin taken from its refresh token, so that mounts
// that fell due together (Vault ticks every mount at once) spread out.
func (r *record) spread() time.Duration {
	h := fnv.New64a()
	h.Write([]byte(r.RefreshToken))
	return time.Duration(h.Sum64() % uint64(r.margin()/2+1))
}

// ahead reports whether t is further ahead of now than the nodes' clocks
// can disagree: the clock was set back since t. The waits set then are over
// (one call may come early; a clock set back must not stop calls for as
// long as it jumped), and a token obtained then is of unknown age.
func ahead(now, t time.Time) bool {
	return t.Sub(now) > maxClockSkew
}

// later returns the latest of times.
func later(times ...time.Time) time.Time {
	var at time.Time
	for _, t := range times {
		if t.After(at) {
			at = t
		}
	}
	return at
}

// backoff is the wait after the n-th consecutive failure: exponential from
// minRetryInterval, capped at maxBackoff, with up to 25% jitter on top.
func backoff(n int) time.Duration {
	d := maxBackoff
	if n < 10 {
		d = min(minRetryInterval<<max(n-1, 0), maxBackoff)
	}
	return d + time.Duration(rand.Int64N(int64(d/4)+1))
}

// marked is r as stored before its refresh token is sent at sentAt: should
// Vault stop, the next active node waits until the call has surely ended
// (request_timeout, as it is now) and the floor after it.
func (r *record) marked(sentAt time.Time) *record {
	next := *r
	next.State, next.InFlightAt = stateInFlight, sentAt
	next.markWaits()
	return &next
}

// markWaits sets the waits of a refresh in flight since InFlightAt.
func (r *record) markWaits() {
	r.LastCallAt = r.InFlightAt
	r.HoldUntil = r.InFlightAt.Add(r.Config.RequestTimeout + minCallInterval)
	r.NotBefore = r.HoldUntil
}

// settle is r after the call kind, sent at sentAt and answered at now with
// g or err (g may come with err: a new refresh token in a faulty answer).
func settle(r *record, kind actionKind, g *grant, err error, sentAt, now time.Time) *record {
	next := *r
	if g != nil {
		// A new refresh token: the one sent is spent, this is the way on.
		next.State, next.InFlightAt, next.RefreshToken = stateReady, time.Time{}, g.refreshToken
		next.RefreshTokenExpiresAt = time.Time{}
		if g.refreshLifetime > 0 {
			next.RefreshTokenExpiresAt = sentAt.Add(g.refreshLifetime)
		}
		next.Generation++
		if kind == actRefresh {
			next.RefreshCount++
		}
	}
	if err == nil {
		next.Token, next.Lifetime, next.ObtainedAt = g.token, g.lifetime, sentAt
		next.Failures, next.FailingSince = 0, time.Time{}
		next.limit(sentAt, now, 0)
		return &next
	}
	var ue *upstreamError
	if !errors.As(err, &ue) {
		ue = &upstreamError{kind: failTransient}
	}
	next.LastError, next.LastErrorAt = err.Error(), sentAt
	if kind == actRefresh && (ue.kind == failRejected || ue.kind == failSpent) {
		// An answer, not a failure: the refresh token is gone. The next
		// call, after the floor, logs in if a password is stored.
		next.State, next.InFlightAt = stateNeedLogin, time.Time{}
		next.limit(sentAt, now, 0)
		next.LastError = "refresh token no longer usable: " + err.Error()
		if r.State == stateInFlight {
			next.LastError = fmt.Sprintf("a refresh started at %s was interrupted (its result was never stored), and Teletracker now refuses its refresh token: %s",
				r.InFlightAt.UTC().Format(time.RFC3339), err.Error())
		}
		if r.Config.Password == "" {
			next.State = stateNeedReauth
			next.LastError += "; write password or refresh_token to config"
		}
		return &next
	}
	next.Failures++
	if next.Failures == 1 {
		next.FailingSince = sentAt
	}
	next.limit(sentAt, now, ue.retryAfter)
	next.NotBefore = later(next.NotBefore, now.Add(backoff(next.Failures)))
	switch {
	case g != nil:
	case kind == actLogin && ue.kind == failRejected:
		next.State = stateNeedReauth
		next.LastError = "the stored password was rejected: " + err.Error() + "; write password or refresh_token to config"
	case kind == actRefresh && ue.kind == failUnknown && r.Config.Password != "":
		next.State, next.InFlightAt = stateNeedLogin, time.Time{}
	case kind == actRefresh && ue.kind == failUnknown:
		// Without a password the token may be the only way on: it is
		// tried once more, after the backoff.
		next.State, next.InFlightAt = stateInFlight, sentAt
	}
	return &next
}

// refused is prev (nil if none) after a config write whose call, sent at
// sentAt and answered at now with err, failed: only the waits change.
func refused(prev *record, sentAt, now time.Time, err error) *record {
	next := &record{}
	if prev != nil {
		*next = *prev
	}
	var ue *upstreamError
	var retryAfter time.Duration
	if errors.As(err, &ue) {
		retryAfter = ue.retryAfter
	}
	notBefore := next.NotBefore
	if ahead(sentAt, next.LastCallAt) {
		notBefore = time.Time{} // set on a clock since set back
	}
	next.limit(sentAt, now, retryAfter)
	next.NotBefore = later(notBefore, next.HoldUntil)
	return next
}

// limit sets the waits after a call sent at sentAt and answered at now: the
// floor, and Retry-After (when retryAfter is not 0).
func (r *record) limit(sentAt, now time.Time, retryAfter time.Duration) {
	r.LastCallAt, r.HoldUntil = sentAt, sentAt.Add(minCallInterval)
	if retryAfter > 0 {
		r.HoldUntil = later(r.HoldUntil, now.Add(retryAfter))
	}
	r.NotBefore = r.HoldUntil
}

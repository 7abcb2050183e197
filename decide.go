package teletracker

import (
	"errors"
	"fmt"
	"hash/fnv"
	"time"
)

// decide.go is the engine's state machine, without I/O: decide says whether
// and when Teletracker is called, reading the token's timeline
// (timeline.go) and the record's waits, and nothing else does; settle says
// what an answer does to the record. rotation.go only loads, applies and
// stores; process.go only hands out the turns decide allows for.

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
	// maxClockSkew is the most a time stored by any node may be ahead of
	// now before it counts as set on a clock since set back.
	maxClockSkew = time.Minute
	// sendWindow is how long after its marker's time a refresh may still be
	// sent. A marker's Put acknowledged later is not followed by its call:
	// another node may be resolving the marker by the time it would end.
	sendWindow = 5 * time.Second
	// maxPaceWait is the longest a call waits for its turn in the process's
	// pacer; one that would wait longer is deferred (a tick tries again on
	// the next tick).
	maxPaceWait = 45 * time.Second
	// readRetry is how soon reads of a served token whose call was not
	// made (its turn had not come, or this node cannot write) try again.
	readRetry = time.Second
)

// never is the time of what only an operator can change.
var never = time.Unix(1<<62, 0)

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
	// minTTL is a read's min_ttl: it wants a token with that much left.
	minTTL time.Duration
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
	// why names the wait (actWait).
	why string
	// paceWait is how long a call may wait for its turn in the pacer.
	paceWait time.Duration
}

// calls reports whether a asks for a call to Teletracker.
func (a action) calls() bool {
	return a.kind == actRefresh || a.kind == actLogin
}

// err is why a call that was wanted is not made; nil when none is wanted.
func (a action) err() error {
	switch a.kind {
	case actWait:
		return &rateLimitedError{until: a.at, why: a.why}
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
	tl := r.timeline()
	if !r.wants(&tl, now, t) {
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
	operator := t.kind == triggerRotate || t.kind == triggerCredential
	at := r.NotBefore
	if operator {
		at = r.HoldUntil // an operator's act waits for no backoff
	}
	if ahead(now, r.LastCallAt) {
		at = time.Time{} // the clock was set back since: the waits are over
	}
	if now.Before(at) {
		return action{kind: actWait, at: at, why: r.waitReason(at)}
	}
	act := action{kind: kind, paceWait: maxPaceWait}
	if t.kind == triggerRead && tl.lasts(now, t.minTTL) {
		act.paceWait = 0 // a read of a token still served does not wait for its turn
	}
	return act
}

// wants reports whether t wants a new token for r at now: an operator one
// obtained since asking, a read one once the token is due (or has less
// left than its min_ttl), a tick one from replaceFrom, from renewFrom, or
// while anything failed, is unresolved or is held unsaved (the tick stores
// it first).
func (r *record) wants(tl *timeline, now time.Time, t trigger) bool {
	switch {
	case t.kind == triggerTune:
		return false
	case !tl.held || tl.unknownAge(now):
		return true // none, or of unknown age: the clock was set back
	case t.kind == triggerRotate || t.kind == triggerCredential:
		return r.State != stateReady || r.ObtainedAt.Before(t.at)
	case t.kind == triggerRead:
		return !now.Before(tl.due) || !tl.lasts(now, t.minTTL)
	}
	return r.State != stateReady || r.Failures > 0 || r.unsaved || !now.Before(tl.replaceFrom) ||
		(!tl.renewFrom.IsZero() && !now.Before(tl.renewFrom))
}

// waitReason names the wait that ends at at, for an error or a warning.
func (r *record) waitReason(at time.Time) string {
	switch {
	case !r.InFlightAt.IsZero() && at.Equal(r.markerEnd()):
		return fmt.Sprintf("a call to Teletracker sent at %s may still be under way; its outcome is resolved once it has surely ended",
			r.InFlightAt.UTC().Format(time.RFC3339))
	case at.After(r.HoldUntil):
		return fmt.Sprintf("backing off after %d failed calls", r.Failures)
	case at.After(r.LastCallAt.Add(minCallInterval)):
		return "Teletracker asked to wait (Retry-After)"
	}
	return fmt.Sprintf("at most one call every %s, and the last ended at %s", minCallInterval, r.LastCallAt.UTC().Format(time.RFC3339))
}

// retryAt is when reads of r, answered at now with act, next bring it up
// to date: before it they are answered from memory alone.
func retryAt(tl *timeline, now time.Time, act action) time.Time {
	switch act.kind {
	case actNothing:
		return tl.due
	case actWait:
		return act.at
	case actHeld:
		return now.Add(minCallInterval) // a read may store it, now and then
	case actStop:
		return never
	}
	// A call not made: its turn had not come, or this node cannot write.
	// Not tried on every read meanwhile, while the token is served.
	if next := now.Add(readRetry); tl.served(next) {
		return next
	}
	return now
}

// attemptAt is when a tick next makes the call decide answered act for at
// now, given that the last tick was at lastTick (zero if unknown): the
// first tick at or after the wait. Zero when no call is wanted.
func attemptAt(act action, now, lastTick time.Time) time.Time {
	at := now
	switch act.kind {
	case actWait:
		at = later(act.at, now)
	case actRefresh, actLogin, actHeld: // a held record: the tick stores it, then calls
	default:
		return time.Time{}
	}
	if lastTick.IsZero() || lastTick.After(now) {
		return at
	}
	ticks := (at.Sub(lastTick) + tickInterval - 1) / tickInterval
	return lastTick.Add(max(ticks, 1) * tickInterval)
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

// backoff is the wait after the n-th consecutive failure of the session
// that key names: exponential from minRetryInterval, capped at maxBackoff,
// with up to 25% jitter on top. The jitter is a hash of key and n, as the
// tick's spread is of the refresh token, not a random draw: sessions that
// failed together still spread out, and a simulation replays from its seed.
func backoff(n int, key string) time.Duration {
	d := maxBackoff
	if n < 10 {
		d = min(minRetryInterval<<max(n-1, 0), maxBackoff)
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%d\x00%s", n, key)
	return d + time.Duration(h.Sum64()%uint64(d/4+1))
}

// marked is r as stored before its call of kind (a refresh, or a login
// the engine makes of itself) is sent at sentAt: should Vault stop, the
// next active node waits until the call has surely ended (sent within
// sendWindow, then request_timeout, as it is now) and the floor after it.
// A refresh's marker says its refresh token may be spent (in_flight); a
// login's keeps the state it was sent from, for a login spends no refresh
// token: what follows the wait is what would have followed without it
// (another login, or reauth_required once the password is gone).
func (r *record) marked(kind actionKind, sentAt time.Time) *record {
	next := *r
	if kind == actRefresh {
		next.State = stateInFlight
	}
	next.InFlightAt = sentAt
	next.markWaits()
	return &next
}

// markWaits sets the waits of a call in flight since InFlightAt.
func (r *record) markWaits() {
	r.LastCallAt = r.InFlightAt
	r.HoldUntil = r.markerEnd()
	r.NotBefore = r.HoldUntil
}

// markerEnd is when a refresh marked at InFlightAt has surely ended, and
// the floor after it: no node acts on the marker before.
func (r *record) markerEnd() time.Time {
	return r.InFlightAt.Add(sendWindow + r.Config.RequestTimeout + minCallInterval)
}

// settle is r after the call kind, sent at sentAt and answered at now with
// g or err (g may come with err: a new refresh token in a faulty answer).
func settle(r *record, kind actionKind, g *grant, err error, sentAt, now time.Time) *record {
	next := *r
	if kind == actLogin && next.State != stateInFlight {
		next.InFlightAt = time.Time{} // its answer resolves a login's marker
	}
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
	next.NotBefore = later(next.NotBefore, now.Add(backoff(next.Failures, r.sessionKey())))
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
// floor, and Retry-After (when retryAfter is not 0). The floor runs from
// the answer: the call reached Teletracker after sentAt (its marker's Put
// and the process's spacing of sends came between), and no later than its
// answer, so that every node (another, or this one's mount reloaded) keeps
// the calls Teletracker sees 10 s apart.
func (r *record) limit(sentAt, now time.Time, retryAfter time.Duration) {
	r.LastCallAt = later(sentAt, now)
	r.HoldUntil = r.LastCallAt.Add(minCallInterval)
	if retryAfter > 0 {
		r.HoldUntil = later(r.HoldUntil, now.Add(retryAfter))
	}
	r.NotBefore = r.HoldUntil
}

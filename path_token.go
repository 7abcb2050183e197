package teletracker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// snapshot is what token reads, status and metrics are answered from: one
// record, prepared once under the refresh lock, so that a read takes no lock,
// touches no storage, and allocates little beyond its response.
type snapshot struct {
	// rec is the record; never changed once published.
	rec *record
	// tl is rec's timeline.
	tl timeline
	// actAt: before it a read is answered from here alone, not after.
	actAt time.Time
	// problem is a read's warning while the token is served, its error after.
	problem string

	// The response values, boxed once.
	token, expiresAtText, lastRotation, nextRotation, rotationPeriod any
}

// bearer is the token_type value, boxed once.
var bearer any = "Bearer"

// publish makes r what reads are answered from, and schedules the tick's
// next look at it; epoch is a.epoch before r was loaded: if Invalidate ran
// since, the copy is dropped. Under refreshMu.
func (a *account) publish(epoch uint64, r *record) {
	now := a.m.now()
	a.setNeed(r)
	switch {
	case r.configured(), a.name != "":
		a.m.sched.set(a, tickAt(r, now))
	default:
		a.m.sched.remove(a)
	}
	if !r.configured() {
		a.snap.Store(nil)
		return
	}
	a.snap.Store(newSnapshot(r, now, a.m.lastTick()))
	if a.epoch.Load() != epoch {
		a.snap.Store(nil)
	}
}

// newSnapshot prepares the answers to reads of r, as of now; lastTick is
// when the mount's last tick came (zero if unknown), for the warning that
// says when the next attempt is made.
func newSnapshot(r *record, now, lastTick time.Time) *snapshot {
	st := &snapshot{rec: r, tl: r.timeline(), token: r.Token}
	st.expiresAtText = st.tl.expires.UTC().Format(time.RFC3339)
	st.lastRotation = st.tl.obtained.UTC().Format(time.RFC3339)
	st.nextRotation = st.tl.due.UTC().Format(time.RFC3339)
	st.rotationPeriod = int64(st.tl.rotationPeriod() / time.Second)
	act := decide(r, now, trigger{kind: triggerRead})
	st.actAt = retryAt(&st.tl, now, act)
	switch {
	case r.unsaved:
		st.problem = errHeld.Error()
	case r.needsReauth():
		st.problem = "the session needs re-authentication: " + r.LastError
	case r.Failures > 0:
		next := attemptAt(decide(r, now, trigger{kind: triggerTick}), now, lastTick)
		st.problem = fmt.Sprintf("refreshing has failed %d times since %s (last error: %s); next attempt at %s",
			r.Failures, r.FailingSince.UTC().Format(time.RFC3339), r.LastError, next.UTC().Format(time.RFC3339))
	case act.kind == actWait:
		st.problem = "the token is due for replacement, but " + act.err().Error()
	}
	return st
}

// answer is the token read's answer at now for a reader that needs minTTL
// left: the token, with a warning when the session has a problem, or an
// error once it is no longer served. cause is why the last attempt to
// bring it up to date failed, if it did.
func (st *snapshot) answer(now time.Time, minTTL time.Duration, cause error) (*logical.Response, error) {
	if st.tl.lasts(now, minTTL) {
		resp := st.response(now)
		if cause != nil && st.problem == "" {
			resp.AddWarning("the token could not be brought up to date: " + cause.Error())
		}
		return resp, nil
	}
	why := st.problem
	switch {
	case why != "":
	case cause != nil:
		why = cause.Error()
	default:
		why = "it is due for replacement and no new one could be obtained yet"
	}
	switch {
	case st.token == "":
		return nil, logical.CodedError(http.StatusBadGateway, "no Teletracker token is held: "+why)
	case st.tl.served(now):
		return nil, logical.CodedError(http.StatusBadGateway, fmt.Sprintf("the Teletracker token expires at %s, sooner than min_ttl (%s) asks, and could not be replaced: %s",
			st.expiresAtText, minTTL, why))
	}
	return nil, logical.CodedError(http.StatusBadGateway, fmt.Sprintf("the Teletracker token expires at %s and could not be replaced: %s",
		st.expiresAtText, why))
}

// ttl is the number of seconds until the engine will have replaced the
// token: at least 1, and never past the time it stops being served.
func (st *snapshot) ttl(now time.Time) int64 {
	end := st.tl.due
	if !now.Before(end) {
		end = st.actAt
	}
	end = earlier(end, st.tl.servedUntil)
	return max(int64(end.Sub(now)/time.Second), 1)
}

// response is the token read's answer at now.
func (st *snapshot) response(now time.Time) *logical.Response {
	resp := &logical.Response{Data: map[string]interface{}{
		"token":               st.token,
		"token_type":          bearer,
		"expires_at":          st.expiresAtText,
		"ttl":                 st.ttl(now),
		"rotation_period":     st.rotationPeriod,
		"last_vault_rotation": st.lastRotation,
		"next_vault_rotation": st.nextRotation,
	}}
	if st.problem != "" {
		resp.AddWarning(st.problem)
	}
	return resp
}

// pathToken is token for the default account and token/<name> for the
// named ones: one handler for both (and backend.HandleRequest answers reads
// of either before the framework does).
func pathToken(b *backend) []*framework.Path {
	return []*framework.Path{
		b.tokenPath("token", "token", tokenFields),
		b.tokenPath("token/"+framework.MatchAllRegex("name"), "account-token", withName(tokenFields)),
	}
}

func (b *backend) tokenPath(pattern, suffix string, fields map[string]*framework.FieldSchema) *framework.Path {
	return &framework.Path{
		Pattern: pattern,
		Fields:  fields,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathTokenRead,
				Summary:  "Read the current Teletracker bearer token.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "read",
					OperationSuffix: suffix,
				},
				Responses: map[int][]framework.Response{
					http.StatusOK: {{
						Description: "OK",
						Fields:      tokenResponseFields,
					}},
				},
			},
		},
		HelpSynopsis:    pathTokenHelpSyn,
		HelpDescription: pathTokenHelpDesc,
	}
}

// tokenResponseFields are the fields a token read returns.
var tokenResponseFields = map[string]*framework.FieldSchema{
	"token":               {Type: framework.TypeString, Required: true, Description: "The bearer token."},
	"token_type":          {Type: framework.TypeString, Required: true, Description: "Always Bearer."},
	"expires_at":          {Type: framework.TypeString, Required: true, Description: "When the token expires (RFC 3339, Vault's clock)."},
	"ttl":                 {Type: framework.TypeInt64, Required: true, Description: "Seconds until the engine will have replaced this token (at least 1)."},
	"rotation_period":     {Type: framework.TypeInt64, Required: true, Description: "Seconds between two replacements of the token."},
	"last_vault_rotation": {Type: framework.TypeString, Required: true, Description: "When this token was obtained (RFC 3339)."},
	"next_vault_rotation": {Type: framework.TypeString, Required: true, Description: "When this token will be replaced at the latest (RFC 3339)."},
}

// tokenFields are the token read's fields.
var tokenFields = map[string]*framework.FieldSchema{
	"min_ttl": {
		Type:        framework.TypeDurationSecond,
		Description: "The reader needs a token with at least this long left before it expires: one with less is replaced first. At most the token's lifetime less the margin.",
	},
}

// minTTLOf is the min_ttl a token read asks for, 0 when none.
func minTTLOf(req *logical.Request) (time.Duration, error) {
	if len(req.Data) == 0 {
		return 0, nil
	}
	d := &framework.FieldData{Raw: req.Data, Schema: tokenFields}
	v, ok, err := d.GetOkErr("min_ttl")
	switch {
	case err != nil:
		return 0, invalid("min_ttl must be a duration such as 2m or 120: %v", err)
	case !ok:
		return 0, nil
	case v.(int) < 0:
		return 0, invalid("min_ttl must not be negative")
	}
	return time.Duration(v.(int)) * time.Second, nil
}

// tooLong is the caller's mistake of asking for more than a new token of r
// has before it is due: its lifetime less its margin. (More could not be
// met at all, or only by a refresh for nearly every read.)
func tooLong(r *record, minTTL time.Duration) error {
	if most := r.Lifetime - margin(r.Lifetime, r.Config.RefreshMargin); r.Token != "" && minTTL > most {
		return invalid("min_ttl (%s) is longer than a new token has before it is due (its lifetime %s less the margin): at most %s", minTTL, r.Lifetime, most)
	}
	return nil
}

// pathTokenRead answers a read of token (the default account) or
// token/<name>.
func (b *backend) pathTokenRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	b.metrics.reads.Inc()
	name, err := nameIn(req.Path, "token")
	if err != nil {
		return respond(triggerRead, err, b.now())
	}
	minTTL, err := minTTLOf(req)
	if err != nil {
		return respond(triggerRead, err, b.now())
	}
	a, err := b.existing(ctx, req.Storage, name)
	switch {
	case err != nil:
		return nil, err
	case a == nil:
		return nil, errNoAccount(name)
	}
	return a.read(ctx, req.Storage, minTTL)
}

// read answers from the snapshot when it can, else brings the record up to
// date first under the refresh lock. It never waits for another holder of
// the lock while a token that meets the read's min_ttl is known (in memory
// or in storage), and such a token is served, with a warning, when
// bringing it up to date fails.
func (a *account) read(ctx context.Context, storage logical.Storage, minTTL time.Duration) (*logical.Response, error) {
	st := a.snap.Load()
	now := a.m.now()
	if st == nil && minTTL > 0 {
		// No copy in memory: refuse what no token can meet before any call.
		if r, err := a.peekRecord(ctx, storage); err == nil && r.configured() && tooLong(r, minTTL) != nil {
			return respond(triggerRead, tooLong(r, minTTL), now)
		}
	}
	switch {
	case st != nil && now.Before(st.actAt) && (minTTL == 0 || st.tl.lasts(now, minTTL)):
		return st.answer(now, 0, nil)
	case st != nil && tooLong(st.rec, minTTL) != nil:
		return respond(triggerRead, tooLong(st.rec, minTTL), now)
	case st != nil && st.tl.lasts(now, minTTL):
		if !a.refreshMu.TryLock() {
			return st.answer(now, minTTL, nil)
		}
	default: // no snapshot (after a restart or Invalidate): a stored token that lasts beats waiting
		if !a.refreshMu.TryLock() {
			if r, err := a.peekRecord(ctx, storage); err == nil && r.configured() && tooLong(r, minTTL) == nil {
				if snap := newSnapshot(r, now, a.m.lastTick()); snap.tl.lasts(now, minTTL) {
					return snap.answer(now, minTTL, nil)
				}
			}
			a.refreshMu.Lock()
		}
	}
	r, err := a.applyLocked(ctx, storage, trigger{kind: triggerRead, minTTL: minTTL}, nil)
	a.refreshMu.Unlock()
	now = a.m.now()
	cur := a.snap.Load()
	if cur == nil && r.configured() {
		cur = newSnapshot(r, now, a.m.lastTick()) // Invalidate dropped what was just published
	}
	if cur == nil {
		cur = st
	}
	switch {
	case errors.Is(err, errNotConfigured) && a.name != "":
		return nil, errNoAccount(a.name) // deleted meanwhile
	case cur == nil || errors.Is(err, logical.ErrReadOnly) || errors.Is(err, errNotConfigured):
		return respond(triggerRead, err, now)
	case tooLong(cur.rec, minTTL) != nil:
		return respond(triggerRead, tooLong(cur.rec, minTTL), now)
	}
	return cur.answer(now, minTTL, err)
}

const pathTokenHelpSyn = `Read the current Teletracker bearer token.`

const pathTokenHelpDesc = `
Returns the session's bearer token with its expiry. The engine replaces the
token before it expires (on Vault's periodic tick, or on this read if the tick
has not), so a read normally never waits on Teletracker.

ttl is the number of seconds until the engine will have replaced the token;
with rotation_period it makes Vault Agent re-render right after each rotation.

min_ttl (optional) says the reader needs a token with at least that long
left before expires_at: a token with less is replaced first (one call, under
the usual limits, and one for many readers at once), and if none can be had
the read fails and says why. min_ttl longer than a new token has before it
is due (its lifetime less the margin) is refused (400).

A read never returns an expired token: a token is served until 5 seconds
before it expires (Vault's nodes are assumed to agree on the time within
that), then the read fails and says why. While refreshes fail and the token
is still served, the read succeeds with a warning.
`

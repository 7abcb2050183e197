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
	// actAt: before it a read is answered from here alone, not after.
	actAt time.Time
	// problem is a read's warning while the token is valid, its error after.
	problem string

	// The response values, boxed once.
	token, expiresAtText, lastRotation, nextRotation, rotationPeriod any
}

// bearer is the token_type value, boxed once.
var bearer any = "Bearer"

// readRetry is how soon reads of a valid token whose call was not made try
// to make it again.
const readRetry = time.Second

// never is the actAt of a record only an operator can change.
var never = time.Unix(1<<62, 0)

// publish makes r what reads are answered from; epoch is b.epoch before r
// was loaded: if Invalidate ran since, the copy is dropped. Under refreshMu.
func (b *backend) publish(epoch uint64, r *record) {
	if !r.configured() {
		b.snap.Store(nil)
		return
	}
	b.snap.Store(newSnapshot(r, b.now()))
	if b.epoch.Load() != epoch {
		b.snap.Store(nil)
	}
}

// newSnapshot prepares the answers to reads of r, as of now.
func newSnapshot(r *record, now time.Time) *snapshot {
	st := &snapshot{
		rec:            r,
		token:          r.Token,
		expiresAtText:  r.expiresAt().UTC().Format(time.RFC3339),
		lastRotation:   r.ObtainedAt.UTC().Format(time.RFC3339),
		rotationPeriod: int64((r.Lifetime - r.margin()) / time.Second),
	}
	st.nextRotation = r.refreshAt().UTC().Format(time.RFC3339)
	act := decide(r, now, trigger{kind: triggerRead})
	switch act.kind {
	case actNothing:
		st.actAt = r.refreshAt()
	case actWait:
		st.actAt = act.at
	case actHeld:
		st.actAt = now.Add(minCallInterval) // a read may store it, now and then
	case actStop:
		st.actAt = never
	default: // a call not made: its turn had not come, or this node cannot write
		if r.valid(now.Add(readRetry)) {
			st.actAt = now.Add(readRetry) // not on every read meanwhile, while it is served
		}
	}
	switch {
	case r.unsaved:
		st.problem = errHeld.Error()
	case r.needsReauth():
		st.problem = "the session needs re-authentication: " + r.LastError
	case r.Failures > 0:
		st.problem = fmt.Sprintf("refreshing has failed %d times since %s (last error: %s); next attempt at %s",
			r.Failures, r.FailingSince.UTC().Format(time.RFC3339), r.LastError, later(r.NotBefore, now).UTC().Format(time.RFC3339))
	case act.kind == actWait:
		st.problem = "the token is due for replacement, but " + act.err().Error()
	}
	return st
}

// answer is the token read's answer at now: the token, with a warning when
// the session has a problem, or an error once it has expired. cause is why
// the last attempt to bring it up to date failed, if it did.
func (st *snapshot) answer(now time.Time, cause error) (*logical.Response, error) {
	if st.rec.valid(now) {
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
	if st.token == "" {
		return nil, logical.CodedError(http.StatusBadGateway, "no Teletracker token is held: "+why)
	}
	return nil, logical.CodedError(http.StatusBadGateway, fmt.Sprintf("the Teletracker token expires at %s and could not be replaced: %s",
		st.expiresAtText, why))
}

// ttl is the number of seconds until the engine will have replaced the
// token: at least 1, and never past its expiry.
func (st *snapshot) ttl(now time.Time) int64 {
	end := st.rec.refreshAt()
	if !now.Before(end) {
		end = st.actAt
	}
	if exp := st.rec.expiresAt(); exp.Before(end) {
		end = exp
	}
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

func pathToken(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "token",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathTokenRead,
				Summary:  "Read the current Teletracker bearer token.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "read",
					OperationSuffix: "token",
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

// pathTokenRead answers from the snapshot when it can, else brings the record
// up to date first under the refresh lock. It never waits for another holder
// of the lock while a valid token is known (in memory or in storage), and a
// valid token is served, with a warning, when bringing it up to date fails.
func (b *backend) pathTokenRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	b.metrics.reads.Inc()
	st := b.snap.Load()
	now := b.now()
	switch {
	case st != nil && now.Before(st.actAt):
		return st.answer(now, nil)
	case st != nil && st.rec.valid(now):
		if !b.refreshMu.TryLock() {
			return st.answer(now, nil)
		}
	default: // no snapshot (after a restart or Invalidate): a valid stored token beats waiting
		if !b.refreshMu.TryLock() {
			if r, err := b.peekRecord(ctx, req.Storage); err == nil && r.configured() && r.valid(now) {
				return newSnapshot(r, now).answer(now, nil)
			}
			b.refreshMu.Lock()
		}
	}
	r, err := b.applyLocked(ctx, req.Storage, trigger{kind: triggerRead}, nil)
	b.refreshMu.Unlock()
	now = b.now()
	cur := b.snap.Load()
	if cur == nil && r.configured() {
		cur = newSnapshot(r, now) // Invalidate dropped what was just published
	}
	if cur == nil {
		cur = st
	}
	if cur == nil || errors.Is(err, logical.ErrReadOnly) || errors.Is(err, errNotConfigured) {
		return respond(triggerRead, err, now)
	}
	return cur.answer(now, err)
}

const pathTokenHelpSyn = `Read the current Teletracker bearer token.`

const pathTokenHelpDesc = `
Returns the session's bearer token with its expiry. The engine replaces the
token before it expires (on Vault's periodic tick, or on this read if the tick
has not), so a read normally never waits on Teletracker.

ttl is the number of seconds until the engine will have replaced the token;
with rotation_period it makes Vault Agent re-render right after each rotation.

A read never returns an expired token: it fails and says why. While refreshes
fail and the token is still valid, the read succeeds with a warning.
`

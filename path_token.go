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

// servedToken is what token reads are answered from: one session as of its
// last change, prepared once under the refresh lock so that a read takes no
// lock, touches no storage, and allocates little beyond its response.
type servedToken struct {
	// expiresAt is when the bearer token expires.
	expiresAt time.Time
	// refreshAt is when the token is due for replacement (next_vault_rotation).
	refreshAt time.Time
	// holdUntil: past refreshAt, reads are answered from here, without
	// trying a refresh, until then (backoff, rate limit, nothing to try).
	holdUntil time.Time
	// problem says what is wrong with the session, empty when healthy; it
	// is a read's warning while the token is valid and its error after.
	problem string

	// The response values, boxed once.
	token, expiresAtText, lastRotation, nextRotation, rotationPeriod any
}

// bearer is the token_type value, boxed once.
var bearer any = "Bearer"

// publish makes s the session token reads are answered from and returns it.
// epoch is b.epoch as it was before s was loaded: if Invalidate ran since,
// the copy is dropped again at once. The caller holds refreshMu.
func (b *backend) publish(epoch uint64, s *session, cfg *teletrackerConfig) *servedToken {
	now := b.now()
	st := newServedToken(s, cfg)
	switch {
	case s.ReauthRequired:
		st.holdUntil = now.Add(minRefreshInterval)
		st.problem = "the session needs re-authentication: " + s.LastError
	case b.unsaved.Load() != nil:
		st.holdUntil = now.Add(minRefreshInterval)
		st.problem = errHeld.Error()
	default:
		st.holdUntil = b.earliestCall(now, s, triggerRead, s.RefreshRejected)
		switch {
		case s.ConsecutiveFailures > 0:
			st.problem = fmt.Sprintf("refreshing has failed %d times since %s (last error: %s); next attempt at %s",
				s.ConsecutiveFailures, s.FailingSince.UTC().Format(time.RFC3339), s.LastError,
				later(st.holdUntil, now).UTC().Format(time.RFC3339))
		case st.holdUntil.After(st.refreshAt) && !now.Before(st.refreshAt):
			st.problem = "the token is due for replacement, but Teletracker may not be called again before " +
				st.holdUntil.UTC().Format(time.RFC3339) + " (rate limit)"
		}
	}
	b.served.Store(st)
	if b.epoch.Load() != epoch {
		b.served.Store(nil)
	}
	return st
}

// newServedToken is what reads of s under cfg answer, without holdUntil
// and problem, which publish adds.
func newServedToken(s *session, cfg *teletrackerConfig) *servedToken {
	st := &servedToken{
		expiresAt:      s.expiresAt(),
		refreshAt:      s.refreshAt(cfg.RefreshMargin),
		token:          s.Token,
		expiresAtText:  s.expiresAt().UTC().Format(time.RFC3339),
		lastRotation:   s.ObtainedAt.UTC().Format(time.RFC3339),
		rotationPeriod: int64(s.rotationPeriod(cfg.RefreshMargin) / time.Second),
	}
	st.nextRotation = st.refreshAt.UTC().Format(time.RFC3339)
	return st
}

// peek answers a read from storage without the refresh lock, for when
// another caller holds it and no copy is in memory yet (after a restart or
// an Invalidate): a token that is still valid is served rather than waiting
// on Teletracker. It returns nil when it cannot answer.
func (b *backend) peek(ctx context.Context, storage logical.Storage, now time.Time) *logical.Response {
	cfg, err := getConfig(ctx, storage)
	if err != nil || cfg == nil {
		return nil
	}
	s := b.unsaved.Load()
	if s == nil {
		if s, err = getSession(ctx, storage); err != nil || s == nil {
			return nil
		}
	}
	if s = s.under(cfg); s.Token == "" || !now.Before(s.expiresAt()) {
		return nil
	}
	return newServedToken(s, cfg).response(now)
}

// settled reports whether a read at now is answered from st alone: the
// token is not due, or nothing may be tried before holdUntil anyway.
func (st *servedToken) settled(now time.Time) bool {
	return now.Before(st.refreshAt) || now.Before(st.holdUntil)
}

// answer is the token read's answer at now: the token, with a warning when
// the session has a problem, or an error once it has expired.
func (st *servedToken) answer(now time.Time) (*logical.Response, error) {
	if now.Before(st.expiresAt) {
		return st.response(now), nil
	}
	why := st.problem
	if why == "" {
		why = "it is due for replacement and no new one could be obtained yet"
	}
	if st.token == "" {
		return nil, logical.CodedError(http.StatusBadGateway, "no Teletracker token is held: "+why)
	}
	return nil, logical.CodedError(http.StatusBadGateway, fmt.Sprintf("the Teletracker token expired at %s and could not be replaced: %s",
		st.expiresAtText, why))
}

// ttl is the number of seconds until the engine will have replaced the
// token: at least 1, and never past its expiry.
func (st *servedToken) ttl(now time.Time) int64 {
	end := st.refreshAt
	if !now.Before(end) {
		end = st.holdUntil
	}
	if st.expiresAt.Before(end) {
		end = st.expiresAt
	}
	return max(int64(end.Sub(now)/time.Second), 1)
}

// response is the token read's answer at now.
func (st *servedToken) response(now time.Time) *logical.Response {
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

// pathTokenRead answers from memory when it can. Otherwise it takes the
// refresh lock and refreshes first if the token is due, except that a read
// never waits for another caller holding the lock while a valid token is
// known, in memory or in storage: it is answered with that token.
func (b *backend) pathTokenRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	st := b.served.Load()
	now := b.now()
	switch {
	case st != nil && st.settled(now):
		return st.answer(now)
	case st != nil && now.Before(st.expiresAt):
		if !b.refreshMu.TryLock() {
			return st.answer(now)
		}
	default:
		if !b.refreshMu.TryLock() {
			if resp := b.peek(ctx, req.Storage, now); resp != nil {
				return resp, nil
			}
			b.refreshMu.Lock()
		}
	}
	st, err := b.ensureLocked(ctx, req.Storage, triggerRead)
	b.refreshMu.Unlock()
	if st == nil {
		if errors.Is(err, errNotConfigured) || errors.Is(err, errNoSession) {
			return logical.ErrorResponse(err.Error()), logical.ErrInvalidRequest
		}
		return nil, err
	}
	return st.answer(b.now())
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

package teletracker

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// record.go holds what the engine stores for an account: one record,
// written with one Put, so that config, session and the record of attempts
// can never disagree. It also reads the v0.1.0 layout of the default
// account (config and session apart) once.

// The states of a record's session.
const (
	stateReady      = "ready"       // the refresh token is believed live
	stateInFlight   = "in_flight"   // a refresh was sent and its outcome never learned: the refresh token may be spent
	stateNeedLogin  = "need_login"  // the refresh token is no longer usable: log in with the stored password
	stateNeedReauth = "need_reauth" // nothing the engine can try helps; only a config write can
)

// record is an account's configuration, session and record of attempts,
// stored at its key (recordKey for the default account).
type record struct {
	// Config is the mount's configuration.
	Config config `json:"config"`

	// State is one of the state constants above.
	State string `json:"state"`
	// InFlightAt is when the call in flight was sent: a refresh (state
	// in_flight) or the engine's own login (its state stays need_login).
	InFlightAt time.Time `json:"in_flight_at,omitzero"`

	// Token is the bearer token; empty when none is held.
	Token string `json:"token,omitempty"`
	// RefreshToken continues the session, once; never returned.
	RefreshToken string `json:"refresh_token,omitempty"`
	// Lifetime is the bearer token's lifetime as Teletracker reported it.
	Lifetime time.Duration `json:"lifetime,omitempty"`
	// ObtainedAt is when the call that returned Token was sent (Vault's clock).
	ObtainedAt time.Time `json:"obtained_at,omitzero"`
	// RefreshTokenExpiresAt is when RefreshToken expires; zero if unknown.
	RefreshTokenExpiresAt time.Time `json:"refresh_token_expires_at,omitzero"`
	// Generation increases with every refresh token the session gets.
	Generation uint64 `json:"generation"`
	// RefreshCount counts the refreshes Teletracker performed for the mount.
	RefreshCount int64 `json:"refresh_count"`

	// LastCallAt is when the last call was answered (or, in flight, sent);
	// the waits below date from it.
	LastCallAt time.Time `json:"last_call_at,omitzero"`
	// NotBefore binds the engine's own calls: floor, backoff, Retry-After.
	NotBefore time.Time `json:"not_before,omitzero"`
	// HoldUntil binds every call, an operator's too: floor, Retry-After.
	HoldUntil time.Time `json:"hold_until,omitzero"`
	// Failures counts failed attempts since the last success.
	Failures int `json:"consecutive_failures,omitempty"`
	// FailingSince is when the first of them was sent.
	FailingSince time.Time `json:"failing_since,omitzero"`
	// LastError is the last failure, free of secrets; kept after a success.
	LastError string `json:"last_error,omitempty"`
	// LastErrorAt is when it happened.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// LastErrorVetted says this version wrote the record: one written before
	// v0.3.0 may hold Teletracker's own text in LastError, which is not shown.
	LastErrorVetted bool `json:"last_error_vetted,omitempty"`

	// unsaved is set on a record storage refused (see backend.held).
	unsaved bool
}

// configured reports whether r holds a config (else at most waitsOnly).
func (r *record) configured() bool {
	return r != nil && r.State != ""
}

// sessionKey names r's session for backoff's jitter: the account it logs
// in to and the refresh token it holds, so that accounts failing together
// (one user's many accounts among them) retry apart.
func (r *record) sessionKey() string {
	return fmt.Sprintf("%s\x00%s\x00%d\x00%s", r.Config.BaseURL, r.Config.Username, r.Config.AccountID, r.RefreshToken)
}

// waitsOnly is what stays of r once its config is deleted: the waits set by
// past calls, so that deleting and writing again cannot make a storm.
func (r *record) waitsOnly() *record {
	if r == nil {
		return &record{}
	}
	return &record{LastCallAt: r.LastCallAt, NotBefore: r.NotBefore, HoldUntil: r.HoldUntil}
}

// withoutToken is r without its bearer token.
func (r *record) withoutToken() *record {
	next := *r
	next.Token, next.Lifetime, next.ObtainedAt = "", 0, time.Time{}
	return &next
}

// needsReauth reports whether only an operator can help.
func (r *record) needsReauth() bool {
	return r.State == stateNeedReauth || (r.State == stateNeedLogin && r.Config.Password == "")
}

// served reports whether r's token may be served at now (timeline.go).
func (r *record) served(now time.Time) bool {
	tl := r.timeline()
	return tl.served(now)
}

// health is the record's state at now as status reports it: degraded too
// when no token is served (calls deferred for too long, say). Degraded
// means a call is wanted and will be tried (status next_attempt_at).
func (r *record) health(now time.Time) string {
	switch {
	case r.needsReauth():
		return stateReauthRequired
	case r.Failures > 0 || r.State != stateReady || r.unsaved || !r.served(now):
		return stateDegraded
	}
	return stateHealthy
}

// earlierErrorText stands for the last error of a record an earlier version
// wrote: that text may hold Teletracker's own words, echoing a secret.
const earlierErrorText = "a failure recorded by an earlier version of the engine (its text is not shown: it may quote Teletracker)"

// getRecord returns the record stored at key, nil when there is none. The
// default account still in the v0.1.0 layout is read from it; legacy says so.
func getRecord(ctx context.Context, s logical.Storage, key string) (r *record, legacy bool, err error) {
	if r, err = getEntry[record](ctx, s, key); err != nil || r != nil || key != recordKey {
		return r.vetted(), false, err
	}
	cfg, err := getEntry[config](ctx, s, legacyConfigKey)
	if err != nil || cfg == nil {
		return nil, false, err
	}
	old, err := getEntry[legacySession](ctx, s, legacySessionKey)
	if err != nil {
		return nil, false, err
	}
	return fromV010(cfg, old), true, nil
}

// vetted is r (nil for nil) with a last error an earlier version wrote
// replaced by earlierErrorText.
func (r *record) vetted() *record {
	if r != nil && !r.LastErrorVetted && r.LastError != "" {
		r.LastError = earlierErrorText
	}
	return r
}

// putRecord stores r at key.
func putRecord(ctx context.Context, s logical.Storage, key string, r *record) error {
	vetted := *r
	vetted.LastErrorVetted = true
	entry, err := logical.StorageEntryJSON(key, &vetted)
	if err != nil {
		return fmt.Errorf("encoding the record: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing the record: %w", err)
	}
	return nil
}

// deleteLegacy removes the v0.1.0 entries.
func deleteLegacy(ctx context.Context, s logical.Storage) error {
	for _, key := range []string{legacySessionKey, legacyConfigKey} {
		if err := s.Delete(ctx, key); err != nil {
			return fmt.Errorf("deleting %s: %w", key, err)
		}
	}
	return nil
}

// getEntry decodes the JSON stored at key, or returns nil, nil when there is
// nothing there.
func getEntry[T any](ctx context.Context, s logical.Storage, key string) (*T, error) {
	entry, err := s.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if entry == nil {
		return nil, nil
	}
	v := new(T)
	if err := entry.DecodeJSON(v); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", key, err)
	}
	return v, nil
}

// legacySession is the v0.1.0 session entry; what it shares with the record
// has the same names and is decoded into it.
type legacySession struct {
	record
	Identity      string    `json:"identity"`
	LastRefreshAt time.Time `json:"last_refresh_at"`
	NextAttemptAt time.Time `json:"next_attempt_at"`
	Pending       *struct {
		StartedAt time.Time `json:"started_at"`
	} `json:"pending"`
	RetryAfterUntil time.Time `json:"retry_after_until"`
	RefreshRejected bool      `json:"refresh_rejected"`
	ReauthRequired  bool      `json:"reauth_required"`
}

// fromV010 is the record for a v0.1.0 config and session (nil when none was
// stored). Its three flags become one state, and its waits two times. A
// session that belonged to another config (a write failed half-way) is
// dropped: its refresh token is never sent where it did not come from.
func fromV010(cfg *config, s *legacySession) *record {
	if s == nil {
		return &record{Config: *cfg, State: stateNeedLogin, LastError: "no session was stored"}
	}
	r := *s.record.vetted()
	r.Config = *cfg
	r.LastCallAt = later(s.LastRefreshAt, s.LastErrorAt)
	r.HoldUntil = later(r.LastCallAt.Add(minCallInterval), s.RetryAfterUntil)
	r.NotBefore = later(r.HoldUntil, s.NextAttemptAt)
	switch {
	case s.Identity != cfg.identity():
		r.Token, r.RefreshToken, r.State = "", "", stateNeedLogin
		r.LastError = "the stored session belonged to another base_url, username or account_id than the config"
	case s.ReauthRequired:
		r.State = stateNeedReauth
	case s.RefreshRejected:
		r.State = stateNeedLogin
	case s.Pending != nil:
		r.State, r.InFlightAt = stateInFlight, s.Pending.StartedAt
		r.markWaits()
	default:
		r.State = stateReady
	}
	return &r
}

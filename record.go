package teletracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// record.go holds what the engine stores for a mount: one record, written
// with one Put, so that config, session and the record of attempts can never
// disagree. It also reads the v0.1.0 layout (config and session apart) once.

// The states of a record's session.
const (
	// stateReady: the refresh token is believed live.
	stateReady = "ready"
	// stateInFlight: /auth/refresh was sent with the refresh token and its
	// outcome was never learned (Vault stopped, or the call timed out): the
	// token may be spent.
	stateInFlight = "in_flight"
	// stateNeedLogin: the refresh token is no longer usable; the next call
	// logs in with the stored password.
	stateNeedLogin = "need_login"
	// stateNeedReauth: nothing the engine can try will help; only a config
	// write with a password or refresh_token can.
	stateNeedReauth = "need_reauth"
)

// record is a mount's configuration, session and record of attempts, stored
// seal-wrapped under recordKey.
type record struct {
	// Config is the mount's configuration.
	Config config `json:"config"`

	// State is one of the state constants above.
	State string `json:"state"`
	// InFlightAt is when the refresh in flight was sent (state in_flight).
	InFlightAt time.Time `json:"in_flight_at,omitzero"`

	// Token is the bearer token; empty when none is held.
	Token string `json:"token,omitempty"`
	// RefreshToken continues the session, once; never returned.
	RefreshToken string `json:"refresh_token,omitempty"`
	// Lifetime is the bearer token's lifetime as Teletracker reported it.
	Lifetime time.Duration `json:"lifetime,omitempty"`
	// ObtainedAt is when the call that returned Token was sent (Vault's
	// clock); the token expires Lifetime after it.
	ObtainedAt time.Time `json:"obtained_at,omitzero"`
	// RefreshTokenExpiresAt is when RefreshToken expires on Vault's clock;
	// zero when Teletracker did not say.
	RefreshTokenExpiresAt time.Time `json:"refresh_token_expires_at,omitzero"`
	// Generation increases with every refresh token the session gets.
	Generation uint64 `json:"generation"`
	// RefreshCount counts the refreshes Teletracker performed for the mount.
	RefreshCount int64 `json:"refresh_count"`

	// LastCallAt is when the last call to Teletracker was sent. A clock
	// that is now behind it went back, and the waits below are read
	// relative to it (see wait).
	LastCallAt time.Time `json:"last_call_at,omitzero"`
	// NotBefore binds the engine's own calls (tick, read): the floor after
	// a call, the backoff after a failure, a Retry-After.
	NotBefore time.Time `json:"not_before,omitzero"`
	// HoldUntil binds every call, an operator's too (rotate, a config
	// write): the floor after a call and a Retry-After.
	HoldUntil time.Time `json:"hold_until,omitzero"`
	// Failures counts failed attempts since the last success.
	Failures int `json:"failures,omitempty"`
	// FailingSince is when the first of them was sent.
	FailingSince time.Time `json:"failing_since,omitzero"`
	// LastError is the last failure, free of secrets; kept after a success.
	LastError string `json:"last_error,omitempty"`
	// LastErrorAt is when it happened.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`

	// unsaved is set on a record storage refused: it is held in memory,
	// served, and stored before anything else is done.
	unsaved bool
}

// configured reports whether r holds a config; a record without one keeps
// only the waits of past calls (see waitsOnly).
func (r *record) configured() bool {
	return r != nil && r.State != ""
}

// waitsOnly is what stays of r once its config is deleted: the waits set by
// past calls, so that deleting and writing again cannot make a storm.
func (r *record) waitsOnly() *record {
	return &record{LastCallAt: r.LastCallAt, NotBefore: r.NotBefore, HoldUntil: r.HoldUntil}
}

// expiresAt is when the bearer token expires, on Vault's clock.
func (r *record) expiresAt() time.Time {
	return r.ObtainedAt.Add(r.Lifetime)
}

// margin is the refresh margin in effect: the configured one, or half the
// lifetime when that is under twice the margin.
func (r *record) margin() time.Duration {
	if r.Lifetime < 2*r.Config.RefreshMargin {
		return r.Lifetime / 2
	}
	return r.Config.RefreshMargin
}

// refreshAt is when the token enters its margin and is due for replacement.
func (r *record) refreshAt() time.Time {
	return r.expiresAt().Add(-r.margin())
}

// valid reports whether a bearer token is held that has not expired at now.
func (r *record) valid(now time.Time) bool {
	return r.Token != "" && now.Before(r.expiresAt())
}

// needsReauth reports whether only an operator can help.
func (r *record) needsReauth() bool {
	return r.State == stateNeedReauth || (r.State == stateNeedLogin && r.Config.Password == "")
}

// health is the record's state as status reports it.
func (r *record) health() string {
	switch {
	case r.needsReauth():
		return stateReauthRequired
	case r.Failures > 0 || r.State == stateNeedLogin:
		return stateDegraded
	}
	return stateHealthy
}

// getRecord returns the stored record, or nil, nil when the mount is not
// configured. A mount still in the v0.1.0 layout is read from it (see
// fromV010); the caller that may write stores it in the new one.
func getRecord(ctx context.Context, s logical.Storage) (r *record, legacy bool, err error) {
	if r, err = getEntry[record](ctx, s, recordKey); err != nil || r != nil {
		return r, false, err
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

// putRecord stores r.
func putRecord(ctx context.Context, s logical.Storage, r *record) error {
	entry, err := logical.StorageEntryJSON(recordKey, r)
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

// peekRecord is the record as this node knows it, without the refresh
// lock: the one held in memory, else the one token reads are served from,
// else the stored one.
func (b *backend) peekRecord(ctx context.Context, storage logical.Storage) (*record, error) {
	if r := b.held.Load(); r != nil {
		return r, nil
	}
	if snap := b.snap.Load(); snap != nil {
		return snap.rec, nil
	}
	r, _, err := getRecord(ctx, storage)
	return r, err
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

// legacySession is the v0.1.0 session entry, as far as it carries over.
type legacySession struct {
	Identity              string         `json:"identity"`
	Token                 string         `json:"token"`
	RefreshToken          string         `json:"refresh_token"`
	Lifetime              time.Duration  `json:"lifetime"`
	ObtainedAt            time.Time      `json:"obtained_at"`
	RefreshTokenExpiresAt time.Time      `json:"refresh_token_expires_at"`
	Generation            uint64         `json:"generation"`
	RefreshCount          int64          `json:"refresh_count"`
	LastRefreshAt         time.Time      `json:"last_refresh_at"`
	Pending               *legacyPending `json:"pending"`
	ConsecutiveFailures   int            `json:"consecutive_failures"`
	FailingSince          time.Time      `json:"failing_since"`
	LastError             string         `json:"last_error"`
	LastErrorAt           time.Time      `json:"last_error_at"`
	NextAttemptAt         time.Time      `json:"next_attempt_at"`
	RetryAfterUntil       time.Time      `json:"retry_after_until"`
	RefreshRejected       bool           `json:"refresh_rejected"`
	ReauthRequired        bool           `json:"reauth_required"`
}

// legacyPending is the v0.1.0 marker of a refresh in flight.
type legacyPending struct {
	StartedAt time.Time `json:"started_at"`
}

// errLegacyForeign is the last error of a v0.1.0 session that belonged to
// another config than the one stored beside it (a write failed half-way).
var errLegacyForeign = errors.New("the stored session belonged to another base_url, username or account_id than the config")

// fromV010 is the record for a v0.1.0 config and session (nil when none was
// stored). Its three flags become one state, and its waits two times.
func fromV010(cfg *config, s *legacySession) *record {
	r := &record{Config: *cfg, State: stateNeedLogin, LastError: "no session was stored"}
	if s == nil {
		return r
	}
	r.Generation, r.RefreshCount = s.Generation, s.RefreshCount
	r.Failures, r.FailingSince, r.LastError, r.LastErrorAt = s.ConsecutiveFailures, s.FailingSince, s.LastError, s.LastErrorAt
	if s.Identity != cfg.identity() {
		r.LastError = errLegacyForeign.Error()
		return r
	}
	r.Token, r.RefreshToken, r.Lifetime, r.ObtainedAt = s.Token, s.RefreshToken, s.Lifetime, s.ObtainedAt
	r.RefreshTokenExpiresAt = s.RefreshTokenExpiresAt
	r.LastCallAt = later(s.LastRefreshAt, s.LastErrorAt)
	r.HoldUntil = later(r.LastCallAt.Add(minCallInterval), s.RetryAfterUntil)
	r.NotBefore = later(r.HoldUntil, s.NextAttemptAt)
	switch {
	case s.ReauthRequired:
		r.State = stateNeedReauth
	case s.RefreshRejected:
		r.State = stateNeedLogin
	case s.Pending != nil:
		r.State, r.InFlightAt = stateInFlight, s.Pending.StartedAt
	default:
		r.State = stateReady
	}
	return r
}

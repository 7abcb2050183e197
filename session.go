package teletracker

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// session is the mount's Teletracker session as stored (seal-wrapped) under
// sessionKey: its tokens, their expiry on Vault's clock, and the record of
// recent refresh attempts that the rate limits are computed from.
type session struct {
	// Generation increases with every refresh token the session gets.
	Generation uint64 `json:"generation"`
	// GUID is Teletracker's id of the session; never returned.
	GUID string `json:"guid,omitempty"`
	// Token is the bearer token.
	Token string `json:"token"`
	// RefreshToken continues the session, once; never returned.
	RefreshToken string `json:"refresh_token"`
	// Lifetime is the bearer token's lifetime as Teletracker reported it.
	Lifetime time.Duration `json:"lifetime"`
	// ObtainedAt is when the call that returned Token was sent (Vault's clock).
	ObtainedAt time.Time `json:"obtained_at"`
	// ExpiresAt is ObtainedAt + Lifetime.
	ExpiresAt time.Time `json:"expires_at"`
	// RefreshTokenExpiresAt is when RefreshToken expires on Vault's clock;
	// zero when Teletracker did not say.
	RefreshTokenExpiresAt time.Time `json:"refresh_token_expires_at,omitzero"`
	// RefreshCount counts successful refreshes since the mount was configured.
	RefreshCount int64 `json:"refresh_count"`

	// LastRefreshAt is when /auth/refresh was last sent for this mount.
	LastRefreshAt time.Time `json:"last_refresh_at,omitzero"`
	// Pending marks a refresh that was sent and whose outcome was never
	// learned (Vault stopped, or the call timed out): RefreshToken may be spent.
	Pending *pendingRefresh `json:"pending,omitempty"`

	// ConsecutiveFailures counts failed calls since the last success.
	ConsecutiveFailures int `json:"consecutive_failures,omitempty"`
	// FailingSince is when the first of those failures happened.
	FailingSince time.Time `json:"failing_since,omitzero"`
	// LastError is the last failure, free of secrets.
	LastError string `json:"last_error,omitempty"`
	// LastErrorAt is when the call that failed last was sent.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// NextAttemptAt is the end of the backoff after a failure.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// RefreshRejected is set once Teletracker refused RefreshToken: the
	// next attempt logs in with the stored password.
	RefreshRejected bool `json:"refresh_rejected,omitempty"`
	// ReauthRequired is set when neither the refresh token nor a stored
	// password works: only an operator writing config can help.
	ReauthRequired bool `json:"reauth_required,omitempty"`
}

// pendingRefresh is the marker stored before /auth/refresh is called.
type pendingRefresh struct {
	// Generation is the generation whose refresh token was sent.
	Generation uint64 `json:"generation"`
	// StartedAt is when it was sent.
	StartedAt time.Time `json:"started_at"`
}

// getSession returns the stored session, or nil, nil when there is none.
func getSession(ctx context.Context, s logical.Storage) (*session, error) {
	entry, err := s.Get(ctx, sessionKey)
	if err != nil {
		return nil, fmt.Errorf("reading session: %w", err)
	}
	if entry == nil {
		return nil, nil
	}
	sess := new(session)
	if err := entry.DecodeJSON(sess); err != nil {
		return nil, fmt.Errorf("decoding session: %w", err)
	}
	return sess, nil
}

// putSession stores sess.
func putSession(ctx context.Context, s logical.Storage, sess *session) error {
	entry, err := logical.StorageEntryJSON(sessionKey, sess)
	if err != nil {
		return fmt.Errorf("encoding session: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing session: %w", err)
	}
	return nil
}

// margin is the refresh margin in effect for a token of lifetime: the
// configured one, or half the lifetime when that is under twice the margin.
func margin(lifetime, configured time.Duration) time.Duration {
	if lifetime < 2*configured {
		return lifetime / 2
	}
	return configured
}

// refreshAt is when the token enters its margin and is due for replacement.
func (s *session) refreshAt(configured time.Duration) time.Time {
	return s.ExpiresAt.Add(-margin(s.Lifetime, configured))
}

// rotationPeriod is the time between two replacements of the token.
func (s *session) rotationPeriod(configured time.Duration) time.Duration {
	return s.Lifetime - margin(s.Lifetime, configured)
}

// state is the session's health as status reports it.
func (s *session) state() string {
	switch {
	case s.ReauthRequired:
		return stateReauthRequired
	case s.ConsecutiveFailures > 0 || s.RefreshRejected:
		return stateDegraded
	}
	return stateHealthy
}

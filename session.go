package teletracker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// saveAttempts is how often a new session's storage write is tried
	// before giving up on it for now.
	saveAttempts = 4
	// saveRetryDelay is the first pause between those tries; it doubles.
	saveRetryDelay = 50 * time.Millisecond
)

// errNotStored: a new session was obtained but storage refused it; it is held
// in memory, served, and stored on a later tick.
var errNotStored = errors.New("the new session could not be stored; it is held in memory, served, and stored on a later tick")

// session is the mount's Teletracker session as stored (seal-wrapped) under
// sessionKey: its tokens, their expiry on Vault's clock, and the record of
// recent refresh attempts that the rate limits are computed from.
type session struct {
	// Generation increases with every refresh token the session gets.
	Generation uint64 `json:"generation"`
	// Identity is the base_url, username and account_id of the config the
	// session was started under; a refresh token is never sent elsewhere.
	Identity string `json:"identity"`
	// Token is the bearer token.
	Token string `json:"token"`
	// RefreshToken continues the session, once; never returned.
	RefreshToken string `json:"refresh_token"`
	// Lifetime is the bearer token's lifetime as Teletracker reported it.
	Lifetime time.Duration `json:"lifetime"`
	// ObtainedAt is when the call that returned Token was sent (Vault's
	// clock); the token expires Lifetime after it.
	ObtainedAt time.Time `json:"obtained_at"`
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
	// LastError is the last failure, free of secrets; kept after a success.
	LastError string `json:"last_error,omitempty"`
	// LastErrorAt is when the call that failed last was sent.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// NextAttemptAt is the end of the backoff after a failure.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// RetryAfterUntil is the end of a wait Teletracker asked for (429).
	RetryAfterUntil time.Time `json:"retry_after_until,omitzero"`
	// RefreshRejected is set once Teletracker refused RefreshToken: the
	// next attempt logs in with the stored password.
	RefreshRejected bool `json:"refresh_rejected,omitempty"`
	// ReauthRequired is set when neither the refresh token nor a stored
	// password works: only an operator writing config can help.
	ReauthRequired bool `json:"reauth_required,omitempty"`
}

// pendingRefresh is the marker stored before /auth/refresh is called.
type pendingRefresh struct {
	// Generation is the generation whose refresh token was sent; logged
	// when the marker is found, so an operator can match it to the logs.
	Generation uint64 `json:"generation"`
	// StartedAt is when it was sent.
	StartedAt time.Time `json:"started_at"`
}

// getSession returns the stored session, or nil, nil when there is none.
func getSession(ctx context.Context, s logical.Storage) (*session, error) {
	return getEntry[session](ctx, s, sessionKey)
}

// putSession stores sess.
func putSession(ctx context.Context, s logical.Storage, sess *session) error {
	return putEntry(ctx, s, sessionKey, sess)
}

// currentSession is the session to act on: the one held in memory because
// its storage write failed (stored now, if this node may write), else the
// stored one. The caller holds refreshMu.
func (b *backend) currentSession(ctx context.Context, storage logical.Storage) (*session, error) {
	s := b.unsaved.Load()
	if s == nil {
		return getSession(ctx, storage)
	}
	if !b.WriteSafeReplicationState() {
		return s, nil
	}
	if err := putSession(ctx, storage, s); err != nil {
		b.Logger().Error("session held in memory still not stored; no refresh until it is", "error", err)
		return s, nil
	}
	b.unsaved.Store(nil)
	b.Logger().Info("session held in memory is now stored", "generation", s.Generation)
	return s, nil
}

// saveSession stores s (see storeSession). If that fails, s is held in
// memory: served, stored on a later tick, and no refresh is sent until it is.
// The caller holds refreshMu.
func (b *backend) saveSession(ctx context.Context, storage logical.Storage, s *session) error {
	err := b.storeSession(ctx, storage, s)
	if err == nil {
		b.unsaved.Store(nil)
		return nil
	}
	b.unsaved.Store(s)
	b.Logger().Error("new session not stored; holding it in memory and retrying on every tick", "error", err, "generation", s.Generation)
	return fmt.Errorf("%w: %v", errNotStored, err)
}

// storeSession stores s, retrying with a doubling pause while ctx allows.
func (b *backend) storeSession(ctx context.Context, storage logical.Storage, s *session) error {
	delay := saveRetryDelay
	for i := 1; ; i++ {
		err := putSession(ctx, storage, s)
		if err == nil {
			return nil
		}
		if dl, ok := ctx.Deadline(); i == saveAttempts || (ok && time.Until(dl) < delay) {
			return err
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return err
		}
		delay *= 2
	}
}

// withGrant is the session that a successful call sent at sentAt starts or
// continues, under the config identity id. s may be nil (no session before).
// The failure streak ends; the last error and the waits it imposes remain.
func (s *session) withGrant(g *grant, sentAt time.Time, id string) *session {
	next := &session{
		Identity:     id,
		Token:        g.token,
		RefreshToken: g.refreshToken,
		Lifetime:     g.lifetime,
		ObtainedAt:   sentAt,
	}
	if g.refreshLifetime > 0 {
		next.RefreshTokenExpiresAt = sentAt.Add(g.refreshLifetime)
	}
	if s != nil {
		next.Generation = s.Generation
		next.RefreshCount = s.RefreshCount
		next.LastRefreshAt = s.LastRefreshAt
		next.LastError = s.LastError
		next.LastErrorAt = s.LastErrorAt
		next.RetryAfterUntil = s.RetryAfterUntil
	}
	next.Generation++
	return next
}

// failed is s with a failed call, sent at sentAt and answered at now,
// recorded: its error, and the waits before the next attempt.
func (s *session) failed(err error, sentAt, now time.Time) *session {
	next := *s
	next.ConsecutiveFailures++
	if next.ConsecutiveFailures == 1 {
		next.FailingSince = sentAt
	}
	next.LastError = err.Error()
	next.LastErrorAt = sentAt
	next.NextAttemptAt = later(sentAt, now).Add(backoff(next.ConsecutiveFailures))
	var ue *upstreamError
	if errors.As(err, &ue) && ue.retryAfter > 0 {
		next.RetryAfterUntil = later(sentAt, now).Add(ue.retryAfter)
		next.NextAttemptAt = later(next.NextAttemptAt, next.RetryAfterUntil)
	}
	return &next
}

// salvage keeps the new refresh token of a refresh whose answer was
// otherwise unusable: the one sent is spent. The bearer token stays.
func (s *session) salvage(g *grant, sentAt time.Time) {
	s.Generation++
	s.RefreshToken = g.refreshToken
	s.RefreshTokenExpiresAt = time.Time{}
	if g.refreshLifetime > 0 {
		s.RefreshTokenExpiresAt = sentAt.Add(g.refreshLifetime)
	}
	s.RefreshCount++
	s.Pending = nil
}

// belongsTo reports whether s was started under cfg's base_url, username
// and account_id.
func (s *session) belongsTo(cfg *teletrackerConfig) bool {
	return s.Identity == cfg.identity()
}

// under is s as cfg sees it. A session that belongs to another config (a
// config write failed half-way) has nothing for cfg: its refresh token must
// never go to cfg's server and its bearer token is not cfg's, so the next
// attempt logs in, or, without a password, only an operator can help.
func (s *session) under(cfg *teletrackerConfig) *session {
	if s.belongsTo(cfg) {
		return s
	}
	next := *s
	next.Token = ""
	next.Lifetime = 0
	next.RefreshRejected = true
	next.LastError = "the stored session belongs to another base_url, username or account_id than the config"
	if cfg.Password == "" {
		next.ReauthRequired = true
		next.LastError += "; write password or refresh_token to config"
	}
	return &next
}

// margin is the refresh margin in effect for a token of lifetime: the
// configured one, or half the lifetime when that is under twice the margin.
func margin(lifetime, configured time.Duration) time.Duration {
	if lifetime < 2*configured {
		return lifetime / 2
	}
	return configured
}

// expiresAt is when the bearer token expires, on Vault's clock.
func (s *session) expiresAt() time.Time {
	return s.ObtainedAt.Add(s.Lifetime)
}

// refreshAt is when the token enters its margin and is due for replacement.
func (s *session) refreshAt(configured time.Duration) time.Time {
	return s.expiresAt().Add(-margin(s.Lifetime, configured))
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

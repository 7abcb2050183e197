package teletracker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// rotation.go decides when the session is refreshed and does it, under the
// one refresh lock: take the lock, re-read config and session from storage,
// decide again, store a marker, call Teletracker, store the result before
// anything else happens. Every path that calls Teletracker comes through here
// (ensure for ticks, reads and rotate; establish for config writes), holding
// refreshMu.

const (
	// tickInterval is how often Vault calls PeriodicFunc.
	tickInterval = time.Minute
	// minRefreshInterval is the least time between two /auth/refresh calls
	// of a mount, whatever clocks, lifetimes or callers say.
	minRefreshInterval = 10 * time.Second
	// minRetryInterval is the least time between a failed call and the next
	// refresh or automatic login.
	minRetryInterval = 30 * time.Second
	// maxBackoff caps the exponential backoff after failures.
	maxBackoff = 5 * time.Minute
	// resumeTimeout bounds the start-up handling of an interrupted refresh.
	resumeTimeout = time.Minute
)

// trigger is what asks for a refresh.
type trigger int

const (
	// triggerTick is Vault's periodic tick: refresh ahead of need.
	triggerTick trigger = iota
	// triggerRead is a token read that found the token due.
	triggerRead
	// triggerRotate is an operator forcing a refresh.
	triggerRotate
)

var (
	// errNotConfigured: the mount has no config.
	errNotConfigured = errors.New("teletracker is not configured: write username and password, or refresh_token, to config")
	// errNoSession: a config without a session (a write failed half-way).
	errNoSession = errors.New("no Teletracker session is stored: write password or refresh_token to config")
	// errReauth: only a new credential can help; nothing is tried.
	errReauth = errors.New("the session needs re-authentication: write password or refresh_token to config")
	// errHeld: a session is held in memory because storage refused it, and
	// its predecessor must never be sent, so no refresh until it is stored.
	errHeld = errors.New("a new session is held in memory because storage refused it; no refresh until it is stored")
)

// rateLimitedError says a call to Teletracker is not allowed before until.
type rateLimitedError struct {
	// until is the earliest time of the next call.
	until time.Time
	// why names the limit.
	why string
}

func (e *rateLimitedError) Error() string {
	return fmt.Sprintf("%s: Teletracker will not be called before %s", e.why, e.until.UTC().Format(time.RFC3339))
}

// wants reports whether, for trigger t, s should get a new token now.
// A tick looks one tick ahead, so that token reads do not find the token due
// and wait on Teletracker in the normal case.
func (s *session) wants(now time.Time, configured time.Duration, t trigger) bool {
	if s.ReauthRequired {
		return false
	}
	switch t {
	case triggerRotate:
		return true
	case triggerRead:
		return !now.Before(s.refreshAt(configured))
	}
	if s.Pending != nil || s.RefreshRejected {
		return true
	}
	ahead := now.Add(tickInterval)
	if !ahead.Before(s.refreshAt(configured)) {
		return true
	}
	return !s.RefreshTokenExpiresAt.IsZero() && !ahead.Add(configured).Before(s.RefreshTokenExpiresAt)
}

// earliestCall is the first moment Teletracker may be called for s: at least
// minRefreshInterval after the last refresh (when this call is a refresh),
// minRetryInterval after the last failure, after any Retry-After, and, for
// the automatic triggers, after the backoff. Times come both from storage
// (survives restarts) and from this process's memory (monotonic with a real
// clock), so neither a restart nor a clock jump can cause a burst of calls.
func (b *backend) earliestCall(now time.Time, s *session, t trigger, login bool) time.Time {
	var at time.Time
	if !login {
		at = sinceLast(now, minRefreshInterval, s.LastRefreshAt, b.lastRefresh)
	}
	at = later(at, sinceLast(now, minRetryInterval, s.LastErrorAt, b.lastFailure))
	at = later(at, ahead(now, s.RetryAfterUntil, maxRetryAfter))
	at = later(at, ahead(now, b.retryAfterUntil, maxRetryAfter))
	if t != triggerRotate && s.ConsecutiveFailures > 0 {
		at = later(at, ahead(now, s.NextAttemptAt, maxRetryAfter+maxBackoff))
	}
	return at
}

// sinceLast is d after the latest of times. A time that would put the answer
// more than d ahead of now means the clock went back; it is ignored, so that
// a clock jump cannot stop refreshes for as long as it jumped.
func sinceLast(now time.Time, d time.Duration, times ...time.Time) time.Time {
	var at time.Time
	for _, t := range times {
		at = later(at, ahead(now, t.Add(d), d))
	}
	return at
}

// ahead is t, unless t is more than limit after now (the clock went back):
// then the zero time.
func ahead(now, t time.Time, limit time.Duration) time.Time {
	if t.Sub(now) > limit {
		return time.Time{}
	}
	return t
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// backoff is the wait after the n-th consecutive failure: exponential from
// minRetryInterval, capped at maxBackoff, with up to 25% jitter on top.
func backoff(n int) time.Duration {
	d := maxBackoff
	if n < 10 {
		d = min(minRetryInterval<<(n-1), maxBackoff)
	}
	return d + time.Duration(rand.Int64N(int64(d/4)+1))
}

// ensure brings the session up to date for trigger t and returns what token
// reads are to be answered from. When an attempt was due but failed or was
// not allowed, it returns both the token to serve and the error saying why.
// On a node whose storage is read-only it returns logical.ErrReadOnly before
// calling Teletracker, so that Vault forwards the request to the active node.
func (b *backend) ensure(ctx context.Context, storage logical.Storage, t trigger) (*servedToken, error) {
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	return b.ensureLocked(ctx, storage, t)
}

// ensureLocked is ensure for a caller that holds refreshMu.
func (b *backend) ensureLocked(ctx context.Context, storage logical.Storage, t trigger) (*servedToken, error) {
	// Readers that queued behind a refresh find its result here, without
	// another storage round trip; only a caller that may act re-reads.
	if st := b.served.Load(); t == triggerRead && st != nil && st.settled(b.now()) {
		return st, nil
	}
	epoch := b.epoch.Load()
	cfg, err := getConfig(ctx, storage)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, errNotConfigured
	}
	s, err := b.currentSession(ctx, storage)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, errNoSession
	}
	s = s.under(cfg)
	now := b.now()
	if s.ReauthRequired {
		if t == triggerRotate {
			return b.publish(epoch, s, cfg), errReauth
		}
		return b.publish(epoch, s, cfg), nil
	}
	if !s.wants(now, cfg.RefreshMargin, t) {
		return b.publish(epoch, s, cfg), nil
	}
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly
	}
	if b.unsaved.Load() != nil {
		return b.publish(epoch, s, cfg), errHeld
	}
	login := s.RefreshRejected
	if at := b.earliestCall(now, s, t, login); now.Before(at) {
		why := "refresh rate limit"
		if s.ConsecutiveFailures > 0 {
			why = "backing off after failures"
		}
		return b.publish(epoch, s, cfg), &rateLimitedError{until: at, why: why}
	}
	s, err = b.renew(ctx, storage, cfg, s, login)
	return b.publish(epoch, s, cfg), err
}

// renew makes one attempt to replace s's token: a refresh, or a login when
// the refresh token is known to be dead. It returns the session to serve from
// now on (the new one, or s with the failure recorded) and the attempt's
// error. The caller holds refreshMu.
func (b *backend) renew(ctx context.Context, storage logical.Storage, cfg *teletrackerConfig, s *session, login bool) (*session, error) {
	ctx, cancel := detach(ctx)
	defer cancel()
	c, err := b.clientFor(cfg)
	if err != nil {
		return s, err
	}

	var callErr error
	if !login {
		next, err := b.refresh(ctx, storage, cfg, c, s)
		if next == nil {
			return s, err
		}
		s, callErr = next, err
		// A refresh token rejected, or spent without a successor: log in
		// at once when a password is stored.
		login = s.RefreshRejected && !s.ReauthRequired
	}
	if login {
		s, callErr = b.login(ctx, cfg, c, s)
	}
	if err := b.saveSession(ctx, storage, s); err != nil && callErr == nil {
		callErr = err
	}
	return s, callErr
}

// refresh stores the marker, spends s's refresh token and returns the session
// that results, not yet stored. It returns a nil session when the marker
// could not be stored: then Teletracker was not called.
func (b *backend) refresh(ctx context.Context, storage logical.Storage, cfg *teletrackerConfig, c *client, s *session) (*session, error) {
	interrupted := s.Pending
	sentAt := b.now()
	marked := *s
	marked.Pending = &pendingRefresh{Generation: s.Generation, StartedAt: sentAt}
	marked.LastRefreshAt = sentAt
	if err := putSession(ctx, storage, &marked); err != nil {
		b.Logger().Error("refresh not attempted: storing the refresh marker failed", "error", err)
		return nil, fmt.Errorf("refresh not attempted: %w", err)
	}
	b.lastRefresh = sentAt

	b.Logger().Debug("calling teletracker", "op", "/auth/refresh", "generation", s.Generation)
	callCtx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
	g, err := c.refresh(callCtx, s.RefreshToken)
	cancel()
	if err == nil {
		next := marked.withGrant(g, sentAt, cfg.identity())
		next.RefreshCount++
		b.Logger().Info("token refreshed", "generation", next.Generation, "expires_at", next.expiresAt().Format(time.RFC3339))
		return next, nil
	}

	b.lastFailure = sentAt
	next := marked.failed(err, sentAt, b.now())
	var ue *upstreamError
	switch {
	case g != nil:
		// The answer was faulty but carried a new refresh token: ours is
		// spent, this one is the session's only way on. Keep it, keep
		// serving the old bearer token, and count the failure.
		next.salvage(g, sentAt)
		b.Logger().Warn("refresh answer incomplete; kept its new refresh token", "error", err, "generation", next.Generation)
	case errors.As(err, &ue) && (ue.class == failRejected || (ue.spent && (cfg.Password != "" || !ue.unknownOutcome)) ||
		(ue.unknownOutcome && interrupted != nil && cfg.Password != "")):
		// Rejected, accepted without a usable successor, or a second
		// unknown outcome for the same token: it is gone, or may be. Never
		// send it again; log in, or ask for a new credential. (Without a
		// password to fall back on, a merely possible loss is tried again
		// below instead: it may be the session's only way on.)
		next.Pending = nil
		next.RefreshRejected = true
		next.LastError = "refresh token no longer usable: " + err.Error()
		if interrupted != nil {
			outcome := "Teletracker now rejects the refresh token it sent"
			if ue.class != failRejected {
				outcome = "trying its refresh token again failed too"
			}
			next.LastError = fmt.Sprintf("a refresh started at %s was interrupted (its result was never stored), and %s: %s",
				interrupted.StartedAt.UTC().Format(time.RFC3339), outcome, err.Error())
		}
		if cfg.Password == "" {
			next.ReauthRequired = true
			next.LastError += "; write password or refresh_token to config"
		}
		b.Logger().Warn("refresh token no longer usable", "error", err, "login_next", cfg.Password != "", "interrupted_refresh", interrupted != nil)
	default:
		// Transient. When the outcome is unknown (timeout, unreadable
		// answer) the marker stays: the token is tried once more, and a
		// rejection then is reported as an interrupted refresh.
		if !errors.As(err, &ue) || !ue.unknownOutcome {
			next.Pending = nil
		}
		b.Logger().Warn("refresh failed", "error", err, "consecutive_failures", next.ConsecutiveFailures,
			"next_attempt_at", next.NextAttemptAt.Format(time.RFC3339))
	}
	return next, err
}

// login starts a new session with the stored password because s's refresh
// token no longer works. It returns the new session, or s with the failure.
func (b *backend) login(ctx context.Context, cfg *teletrackerConfig, c *client, s *session) (*session, error) {
	sentAt := b.now()
	b.Logger().Debug("calling teletracker", "op", "/auth/login", "generation", s.Generation)
	callCtx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
	g, err := c.login(callCtx, cfg.Username, cfg.Password, cfg.AccountID)
	cancel()
	if err == nil {
		next := s.withGrant(g, sentAt, cfg.identity())
		b.Logger().Info("logged in again after the refresh token was rejected", "generation", next.Generation)
		return next, nil
	}
	b.lastFailure = sentAt
	next := s.failed(err, sentAt, b.now())
	next.RefreshRejected = true
	var ue *upstreamError
	if errors.As(err, &ue) && ue.class == failRejected {
		next.ReauthRequired = true
		next.LastError = "refresh token and stored password both rejected: " + err.Error() + "; write password or refresh_token to config"
	} else {
		next.LastError = "refresh token rejected; logging in again failed: " + err.Error()
	}
	b.Logger().Warn("login after rejected refresh token failed", "error", err, "reauth_required", next.ReauthRequired)
	return next, err
}

// establish starts the session a config write asks for: a login, or one
// refresh of the refresh token the operator gave. The session is stored
// before it returns; nothing is stored when Teletracker refuses or storage
// fails. warning is set when the session started degraded.
func (b *backend) establish(ctx context.Context, storage logical.Storage, w *configWrite, cur *session) (next *session, warning string, err error) {
	ctx, cancel := detach(ctx)
	defer cancel()
	c, err := b.clientFor(w.cfg)
	if err != nil {
		return nil, "", err
	}
	seed := w.refreshToken != ""
	now := b.now()
	if seed {
		last := cur
		if last == nil {
			last = &session{}
		}
		if at := b.earliestCall(now, last, triggerRotate, false); now.Before(at) {
			return nil, "", &rateLimitedError{until: at, why: "refresh rate limit"}
		}
	}

	callCtx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer cancel()
	var g *grant
	b.Logger().Debug("calling teletracker", "op", "config write", "seed", seed)
	if seed {
		b.lastRefresh = now
		g, err = c.refresh(callCtx, w.refreshToken)
	} else {
		g, err = c.login(callCtx, w.cfg.Username, w.cfg.Password, w.cfg.AccountID)
	}
	switch {
	case err == nil:
		next = cur.withGrant(g, now, w.cfg.identity())
	case seed && g != nil:
		// The seed is spent for an answer without a usable bearer token
		// but with a new refresh token: keep that, or the handed-over
		// session is lost. The token comes with the next refresh.
		b.lastFailure = now
		next = cur.withGrant(&grant{refreshToken: g.refreshToken, refreshLifetime: g.refreshLifetime}, now, w.cfg.identity())
		next = next.failed(err, now, b.now())
		warning = "Teletracker's answer was incomplete (" + err.Error() + "); the session continues with its new refresh token, and a token is fetched on the next attempt"
	default:
		// Nothing changes but the rate limits, which count this failure.
		b.lastFailure = now
		var ue *upstreamError
		if errors.As(err, &ue) && ue.retryAfter > 0 {
			b.retryAfterUntil = later(now, b.now()).Add(ue.retryAfter)
		}
		b.Logger().Warn("config write: Teletracker call failed", "error", err, "seed", seed)
		return nil, "", err
	}
	if seed {
		next.LastRefreshAt = now
		next.RefreshCount++
	}
	if err := b.storeSession(ctx, storage, next); err != nil {
		b.Logger().Error("config write: new session not stored; nothing changed", "error", err)
		return nil, "", fmt.Errorf("storing the new session failed, nothing changed: %w", err)
	}
	b.unsaved.Store(nil) // a session held in memory is superseded
	b.Logger().Info("session established", "generation", next.Generation, "seed", seed)
	return next, warning, nil
}

// resumeInterrupted handles a refresh marker found at start-up: the refresh
// token it names may be spent, so it is tried at once rather than when due.
func (b *backend) resumeInterrupted(ctx context.Context, storage logical.Storage) {
	if _, err := b.ensure(ctx, storage, triggerTick); err != nil {
		b.Logger().Warn("resuming an interrupted refresh failed", "error", err)
	}
}

// detach returns a context that keeps ctx's values and deadline but not its
// cancellation: once a credential is sent, a caller going away must not stop
// the result from being stored.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	d := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		return context.WithDeadline(d, dl)
	}
	return context.WithCancel(d)
}

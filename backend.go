// Package teletracker is a Vault secrets engine that keeps one Teletracker
// API session per mount alive and serves its short-lived bearer token.
package teletracker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// configKey and sessionKey are the storage keys, both seal-wrapped.
	configKey  = "config"
	sessionKey = "session"

	// operationPrefix names this engine's operations in OpenAPI.
	operationPrefix = "teletracker"

	defaultBaseURL        = "https://api.teletracker.net"
	defaultRefreshMargin  = 10 * time.Minute
	defaultRequestTimeout = 10 * time.Second
	maxRefreshMargin      = 24 * time.Hour
	// maxRequestTimeout keeps a call, and a login after a rejected refresh,
	// well under Vault's 90 s request limit.
	maxRequestTimeout = 30 * time.Second

	stateUnconfigured   = "unconfigured"
	stateHealthy        = "healthy"
	stateDegraded       = "degraded"
	stateReauthRequired = "reauth_required"
)

// Version is the plugin's version, reported to Vault as RunningVersion.
// `make build` sets it with -ldflags "-X <module path>.Version=vX.Y.Z"; it is
// written only by the linker.
var Version = "v0.0.0-dev"

// backend is one mount of the engine. One plugin process serves every mount
// (plugin.ServeMultiplex), so all state lives here.
type backend struct {
	*framework.Backend

	// now is Vault's clock; tests replace it.
	now func() time.Time

	// refreshMu is the one refresh lock. It guards every call to Teletracker,
	// every write of config or session, and the fields below up to stopResume.
	refreshMu sync.Mutex
	// client is the HTTP client for clientKey's config.
	client *client
	// clientKey is the config the client was built from.
	clientKey string
	// lastRefresh is when this process last sent /auth/refresh (monotonic).
	lastRefresh time.Time
	// lastFailure is when this process last sent a call that failed.
	lastFailure time.Time
	// retryAfterUntil is the end of a Retry-After a config write's call got
	// (other calls' are stored in the session).
	retryAfterUntil time.Time

	// stopResume cancels the background resolution of an interrupted
	// refresh that initialize starts; nil when none was started.
	stopResume context.CancelFunc

	// unsaved holds a session whose storage write failed, until it is stored.
	// Written under refreshMu; read without it by status and token reads.
	unsaved atomic.Pointer[session]
	// served is what token reads answer from; nil until loaded, and after
	// Invalidate.
	served atomic.Pointer[servedToken]
	// epoch counts invalidations, so a copy loaded before one is never
	// published after it.
	epoch atomic.Uint64
}

// Factory returns a configured backend for one mount.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

func newBackend() *backend {
	b := &backend{now: time.Now}
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{configKey, sessionKey},
		},
		Paths: []*framework.Path{
			pathConfig(b),
			pathToken(b),
			pathRotate(b),
			pathStatus(b),
		},
		InitializeFunc: b.initialize,
		PeriodicFunc:   b.periodicFunc,
		Invalidate:     b.invalidate,
		Clean:          b.clean,
		RunningVersion: Version,
	}
	return b
}

// HandleRequest answers token reads itself and passes every other request
// to the framework. A token read needs none of the framework's generic work
// (routing by pattern, field validation, and a call back to Vault for the
// replication state on every request), which costs about a fifth of the
// plugin's CPU per read: see BENCHMARKS.md.
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	if req.Operation == logical.ReadOperation && req.Path == "token" {
		return b.pathTokenRead(ctx, req, nil)
	}
	return b.Backend.HandleRequest(ctx, req)
}

// initialize looks for a refresh that Vault stopped in the middle of and,
// on a node that may write, resolves it in the background so that unseal is
// not held up by Teletracker.
func (b *backend) initialize(ctx context.Context, req *logical.InitializationRequest) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	s, err := getSession(ctx, req.Storage)
	if err != nil || s == nil || s.Pending == nil {
		return err
	}
	b.Logger().Warn("found a refresh whose result was never stored; trying its refresh token now",
		"started_at", s.Pending.StartedAt.Format(time.RFC3339), "generation", s.Pending.Generation)
	// It outlives this call, whose context Vault cancels when it returns.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), resumeTimeout)
	b.stopResume = cancel
	go func() {
		defer cancel()
		b.resumeInterrupted(bg, req.Storage)
	}()
	return nil
}

// periodicFunc runs on Vault's tick and refreshes ahead of need. It does
// nothing where storage is not writable (standbys, performance secondaries).
func (b *backend) periodicFunc(ctx context.Context, req *logical.Request) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	defer releaseIdleMemory()
	_, err := b.ensure(ctx, req.Storage, triggerTick)
	if err == nil || isExpectedTickError(err) {
		return nil
	}
	return err
}

// invalidate drops the in-memory copy when config or session change in
// storage under this node (replication, or another node's write).
func (b *backend) invalidate(_ context.Context, key string) {
	switch key {
	case configKey, sessionKey:
		b.epoch.Add(1)
		b.served.Store(nil)
	}
}

// clean releases the HTTP client when the mount goes away. A start-up
// resume that has not begun is cancelled; one under way holds refreshMu, so
// clean waits for it to store its result.
func (b *backend) clean(context.Context) {
	if b.stopResume != nil {
		b.stopResume()
	}
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	if b.client != nil {
		b.client.close()
		b.client = nil
	}
}

// clientFor returns the HTTP client for cfg, building a new one when the
// parts of the config it depends on changed. The caller holds refreshMu.
func (b *backend) clientFor(cfg *teletrackerConfig) (*client, error) {
	key := cfg.BaseURL + "\x00" + cfg.RequestTimeout.String() + "\x00" + cfg.CACert
	if b.client != nil && b.clientKey == key {
		return b.client, nil
	}
	c, err := newClient(cfg, b.now)
	if err != nil {
		return nil, err
	}
	if b.client != nil {
		b.client.close()
	}
	b.client, b.clientKey = c, key
	return c, nil
}

const backendHelp = `
The Teletracker secrets engine keeps one Teletracker API session alive per
mount and serves its short-lived bearer token.

Configure it once with a username and password (or an existing refresh token)
at "config". Apps then read "token". The engine refreshes the session on
Vault's periodic tick, before the token expires, under one lock, so a
single-use refresh token is never sent twice. "rotate" forces a refresh and
"status" reports the session's health.
`

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

// putEntry stores v as JSON at key.
func putEntry(ctx context.Context, s logical.Storage, key string, v any) error {
	entry, err := logical.StorageEntryJSON(key, v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

// isExpectedTickError reports whether err from a tick is already handled:
// nothing to do yet, a rate limit, or a failure that was logged and recorded
// where status shows it.
func isExpectedTickError(err error) bool {
	var rl *rateLimitedError
	var ue *upstreamError
	return errors.Is(err, errNotConfigured) || errors.Is(err, errNoSession) || errors.Is(err, errHeld) ||
		errors.Is(err, errNotStored) || errors.As(err, &rl) || errors.As(err, &ue)
}

// Package teletracker is a Vault secrets engine that keeps one Teletracker
// API session per mount alive and serves its short-lived bearer token.
package teletracker

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// recordKey is the storage key of the mount's one record. It is listed
	// in SealWrapStorage, which only Vault Enterprise acts on (seal
	// wrapping is an Enterprise feature); on Vault Community the record is
	// protected by the barrier's encryption, like every entry.
	recordKey = "record"
	// legacyConfigKey and legacySessionKey are v0.1.0's entries, read once
	// and moved into the record.
	legacyConfigKey  = "config"
	legacySessionKey = "session"

	// operationPrefix names this engine's operations in OpenAPI.
	operationPrefix = "teletracker"

	defaultBaseURL        = "https://api.teletracker.net"
	defaultRefreshMargin  = 10 * time.Minute
	defaultRequestTimeout = 10 * time.Second
	maxRefreshMargin      = 24 * time.Hour
	// maxRequestTimeout keeps two calls well under Vault's 90 s request limit.
	maxRequestTimeout = 30 * time.Second
	// cleanTimeout bounds the last attempt to store a held record.
	cleanTimeout = 5 * time.Second

	// The states status reports.
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
	// mono is a clock that never goes back (time.Now's monotonic reading),
	// for the least time between two calls of this mount; tests replace it.
	mono func() time.Time
	// lastCall is when this process last called Teletracker for the mount,
	// on mono; guarded by refreshMu.
	lastCall time.Time
	// life ends when Clean begins (end ends it): no call waits past it.
	life context.Context
	end  context.CancelFunc
	// proc is what the mounts of the plugin process share (process.go).
	proc *process
	// storage is the mount's storage, for Clean, which gets none.
	storage logical.Storage

	// refreshMu is the one refresh lock: every call, every write, client.
	refreshMu sync.Mutex
	// client is the HTTP client for the config it was built from.
	client *client

	// held is a record storage refused, until stored; written under refreshMu.
	held atomic.Pointer[record]
	// snap is what reads are answered from; nil until loaded and after Invalidate.
	snap atomic.Pointer[snapshot]
	// epoch counts invalidations: a copy loaded before one is not published.
	epoch atomic.Uint64
	// metrics are the mount's Prometheus counters (metrics.go).
	metrics *metrics
}

// newBackend is one mount of the engine in process p.
func newBackend(p *process) *backend {
	b := &backend{now: time.Now, mono: time.Now, proc: p, metrics: newMetrics()}
	b.life, b.end = context.WithCancel(context.Background())
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			// Seal-wrapped on Vault Enterprise; Vault Community ignores it.
			SealWrapStorage: []string{recordKey, legacyConfigKey, legacySessionKey},
		},
		Paths: []*framework.Path{
			pathConfig(b),
			pathToken(b),
			pathRotate(b),
			pathStatus(b),
			pathMetrics(b),
		},
		InitializeFunc: b.initialize,
		PeriodicFunc:   b.periodicFunc,
		Invalidate:     b.invalidate,
		Clean:          b.clean,
		RunningVersion: Version,
	}
	return b
}

// HandleRequest answers token reads itself, without the framework's generic
// work (routing, field validation, a call back to Vault for the replication
// state), about a fifth of the plugin's CPU per read: see BENCHMARKS.md. The
// root help, which Vault merges into its OpenAPI document, is the
// framework's with its schemas in place (openapi.go).
func (b *backend) HandleRequest(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	switch {
	case req.Operation == logical.ReadOperation && req.Path == "token":
		return b.pathTokenRead(ctx, req, nil)
	case req.Operation == logical.HelpOperation && req.Path == "":
		return b.rootHelp(ctx, req)
	}
	return b.Backend.HandleRequest(ctx, req)
}

// initialize loads (and moves from v0.1.0) the record on a node that may
// write, and publishes it. It calls no one, so unseal never waits on
// Teletracker: a refresh left in flight is resolved by a later tick.
func (b *backend) initialize(ctx context.Context, req *logical.InitializationRequest) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	r, err := b.apply(ctx, req.Storage, trigger{kind: triggerTune}, nil)
	if r.configured() && r.State == stateInFlight {
		b.Logger().Warn("found a refresh whose result was never stored; it is resolved once its call has surely ended",
			"sent_at", r.InFlightAt.UTC().Format(time.RFC3339), "generation", r.Generation)
	}
	if errors.Is(err, errNotConfigured) {
		return nil
	}
	return err
}

// periodicFunc runs on Vault's tick and refreshes ahead of need. Nothing is
// called or written where storage is not writable (standbys, performance
// secondaries): spend checks the replication state before any call, not
// every tick (it is a round trip to Vault per mount). What a tick could not
// do is logged and shown by status; only a storage failure is returned.
func (b *backend) periodicFunc(ctx context.Context, req *logical.Request) error {
	defer b.proc.releaseMemory(b.mono())
	_, err := b.apply(ctx, req.Storage, trigger{kind: triggerTick}, nil)
	if succeeded(err) || errors.Is(err, logical.ErrReadOnly) || statusCode(triggerTick, err) != http.StatusInternalServerError {
		return nil
	}
	return err
}

// invalidate drops the snapshot when the record changes in storage under
// this node (replication, or another node's write).
func (b *backend) invalidate(_ context.Context, key string) {
	switch key {
	case recordKey, legacyConfigKey, legacySessionKey:
		b.epoch.Add(1)
		b.snap.Store(nil)
	}
}

// clean runs when the mount goes away (unmount, plugin reload, step-down,
// shutdown). It waits for a call under way to store its result, makes a
// last attempt to store a held record, and drops the HTTP client.
func (b *backend) clean(ctx context.Context) {
	b.end() // a call still waiting for its turn is not sent
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	if h := b.held.Load(); h != nil && b.storage != nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanTimeout)
		defer cancel()
		if _, err := b.store(ctx, b.storage, h); err != nil {
			b.Logger().Error("a held record was lost with the mount: it could not be stored", "error", err, "generation", h.Generation)
		}
	}
	if b.client != nil {
		b.proc.release(b.client.caPEM)
		b.client = nil
	}
}

// clientFor returns the HTTP client for cfg, building a new one when the
// parts of the config it depends on changed. The caller holds refreshMu.
func (b *backend) clientFor(cfg *config) (*client, error) {
	if b.client != nil && b.client.serves(cfg) {
		return b.client, nil
	}
	t, err := b.proc.transport(cfg.CACert)
	if err != nil {
		return nil, err
	}
	if b.client != nil {
		b.proc.release(b.client.caPEM)
	}
	b.client = newClient(cfg, t, b.now)
	return b.client, nil
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

// Package teletracker is a Vault secrets engine that keeps Teletracker API
// sessions alive, one per account of a mount, and serves their short-lived
// bearer tokens.
package teletracker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// recordKey is the storage key of the default account's record. The
	// records are listed in SealWrapStorage, which only Vault Enterprise
	// acts on (seal wrapping is an Enterprise feature); on Vault Community
	// they are protected by the barrier's encryption, like every entry.
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
	// defaultTickWorkers is how many accounts a tick brings up to date (or
	// Clean stores) at once: enough that a slow call or store does not hold
	// up the others.
	defaultTickWorkers = 64

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

// backend is one mount of the engine: the wiring Vault calls (paths,
// Initialize, the tick, Invalidate, Clean) over its accounts (account.go).
// One plugin process serves every mount (plugin.ServeMultiplex), so all
// state lives here and in the process (process.go).
type backend struct {
	*framework.Backend

	// now is Vault's clock; tests replace it.
	now func() time.Time
	// mono is a clock that never goes back (time.Now's monotonic reading),
	// for the least time between two calls of an account; tests replace it.
	mono func() time.Time
	// sleep waits on mono's time; tests and the simulation replace it.
	sleep sleeper
	// life ends when Clean begins (end ends it): no call waits past it.
	life context.Context
	end  context.CancelFunc
	// proc is what the mounts of the plugin process share (process.go).
	proc *process
	// id is the mount's number in its process, for the pacer's fair share.
	id uint64
	// storage is the mount's storage, for Clean, which gets none.
	storage logical.Storage

	// defAccount is the default account: config, token, rotate, status.
	defAccount *account
	// accountsMu guards accounts.
	accountsMu sync.RWMutex
	// accounts are the named accounts this node knows, by name.
	accounts map[string]*account
	// sched is when a tick next has work for each account (schedule.go).
	sched schedule
	// tickWorkers is how many accounts forEach works on at once.
	tickWorkers int
	// loaded says every account's record has been loaded once (loadAll).
	loaded atomic.Bool

	// metrics are the mount's Prometheus counters (metrics.go).
	metrics *metrics
	// tickedAt is when the mount's last tick came (Vault's clock, Unix
	// nanoseconds; 0 before the first), to say when the next one comes.
	tickedAt atomic.Int64
}

// newBackend is one mount of the engine in process p.
func newBackend(p *process) *backend {
	b := &backend{now: time.Now, mono: time.Now, sleep: sleep, proc: p, id: p.mounts.Add(1),
		accounts: map[string]*account{}, tickWorkers: defaultTickWorkers, metrics: newMetrics()}
	b.defAccount = newAccount(b, "")
	b.life, b.end = context.WithCancel(context.Background())
	var paths []*framework.Path
	paths = append(paths, pathAccounts(b)) // before accounts/<name>, which "accounts/" matches too
	paths = append(paths, pathConfig(b)...)
	paths = append(paths, pathToken(b)...)
	paths = append(paths, pathRotate(b)...)
	paths = append(paths, pathStatus(b)...)
	paths = append(paths, pathMetrics(b))
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			// Seal-wrapped on Vault Enterprise; Vault Community ignores it.
			SealWrapStorage: []string{recordKey, legacyConfigKey, legacySessionKey, accountsPrefix},
		},
		Paths:          paths,
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
	case req.Operation == logical.ReadOperation && (req.Path == "token" || strings.HasPrefix(req.Path, "token/")):
		return b.pathTokenRead(ctx, req, nil)
	case req.Operation == logical.HelpOperation && req.Path == "":
		return b.rootHelp(ctx, req)
	case (req.Path == "accounts" || req.Path == "accounts/") && req.Operation != logical.ListOperation && req.Operation != logical.HelpOperation:
		// An account's path without its name: the name is what is wrong,
		// not the operation (the LIST path has no other).
		return respond(triggerRead, checkAccountName(""), b.now())
	}
	return b.Backend.HandleRequest(ctx, req)
}

// initialize loads (and moves from v0.1.0) every account's record on a node
// that may write, and publishes it: the one full pass, after which ticks
// look only at what is due. It calls no one, so unseal never waits on
// Teletracker: a refresh left in flight is resolved by a later tick.
func (b *backend) initialize(ctx context.Context, req *logical.InitializationRequest) error {
	if !b.WriteSafeReplicationState() {
		return nil
	}
	return b.loadAll(ctx, req.Storage)
}

// loadAll loads and publishes every account's record: the full pass, made
// by Initialize, or by the first tick on a node that could not write then.
// It is made once: an account whose record cannot be read is left to the
// ticks (scheduled now, each tick tries it again), and one whose lock is
// held (a call under way) is its holder's to publish, so that neither
// holds up the pass for the others, nor makes every tick a full pass.
func (b *backend) loadAll(ctx context.Context, storage logical.Storage) error {
	names, err := storage.List(ctx, accountsPrefix)
	if err != nil {
		return fmt.Errorf("listing the accounts: %w", err)
	}
	var errs []error
	for _, a := range append([]*account{b.def()}, b.named(names)...) {
		if a.snap.Load() != nil || a.held.Load() != nil || !a.refreshMu.TryLock() {
			b.sched.set(a, b.now()) // loaded already, or in use: the tick looks at it, under its lock
			continue
		}
		r, err := a.applyLocked(ctx, storage, trigger{kind: triggerTune}, nil)
		a.refreshMu.Unlock()
		if r.configured() && (r.State == stateInFlight || (!r.InFlightAt.IsZero() && !r.needsReauth())) {
			a.log().Warn("found a call whose result was never stored; it is resolved once its call has surely ended",
				"sent_at", r.InFlightAt.UTC().Format(time.RFC3339), "generation", r.Generation)
		}
		if r == nil && err != nil && !errors.Is(err, errNotConfigured) {
			b.sched.set(a, b.now()) // its record could not be read: each tick tries again
		}
		if !errors.Is(err, errNotConfigured) {
			errs = append(errs, err)
		}
	}
	b.loaded.Store(true)
	return errors.Join(errs...)
}

// named is the accounts of the names stored under accountsPrefix.
func (b *backend) named(names []string) []*account {
	var accounts []*account
	for _, name := range names {
		if checkAccountName(name) == nil {
			accounts = append(accounts, b.account(name))
		}
	}
	return accounts
}

// lastTick is when the mount's last tick came; zero before the first.
func (b *backend) lastTick() time.Time {
	if n := b.tickedAt.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// invalidate drops an account's snapshot when its record changes in
// storage under this node (replication, or another node's write): that
// account's alone. The next tick looks at it again.
func (b *backend) invalidate(_ context.Context, key string) {
	var a *account
	switch {
	case key == recordKey, key == legacyConfigKey, key == legacySessionKey:
		a = b.def()
	case strings.HasPrefix(key, accountsPrefix) && checkAccountName(strings.TrimPrefix(key, accountsPrefix)) == nil:
		a = b.account(strings.TrimPrefix(key, accountsPrefix))
	default:
		return
	}
	a.epoch.Add(1)
	a.snap.Store(nil)
	b.sched.set(a, b.now())
}

// clean runs when the mount goes away (unmount, plugin reload, step-down,
// shutdown). It waits for the calls under way to store their results and
// makes a last attempt to store each held record.
func (b *backend) clean(ctx context.Context) {
	b.end() // a call still waiting for its turn is not sent
	b.accountsMu.RLock()
	accounts := append([]*account{b.def()}, slices.Collect(maps.Values(b.accounts))...)
	b.accountsMu.RUnlock()
	b.forEach(accounts, func(_ int, a *account) { a.clean(ctx) })
}

// forEach runs f on each of accounts, tickWorkers at a time, and returns
// once all are done: one account's slow storage or call holds up no other
// beyond its worker.
func (b *backend) forEach(accounts []*account, f func(i int, a *account)) {
	var wg sync.WaitGroup
	work := make(chan int)
	for range min(b.tickWorkers, len(accounts)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				f(i, accounts[i])
			}
		}()
	}
	for i := range accounts {
		work <- i
	}
	close(work)
	wg.Wait()
}

// clean waits for a's call under way, if any, and makes a last attempt to
// store its held record.
func (a *account) clean(ctx context.Context) {
	a.refreshMu.Lock()
	defer a.refreshMu.Unlock()
	a.m.proc.addNeed(a.m, -a.need)
	a.need = 0
	if h := a.held.Load(); h != nil && a.m.storage != nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanTimeout)
		defer cancel()
		if _, err := a.store(ctx, a.m.storage, h); err != nil {
			a.log().Error("a held record was lost with the mount: it could not be stored", "error", err, "generation", h.Generation)
		}
	}
}

// log is the mount's logger, naming the account.
func (a *account) log() hclog.Logger {
	if a.name == "" {
		return a.m.Logger()
	}
	return a.m.Logger().With("account", a.name)
}

const backendHelp = `
The Teletracker secrets engine keeps Teletracker API sessions alive and
serves their short-lived bearer tokens: the mount's default account, and any
number of named ones.

Configure the default account once with a username and password (or an
existing refresh token) at "config". Apps then read "token". The engine
refreshes the session on Vault's periodic tick, before the token expires,
under the account's lock, so a single-use refresh token is never sent twice.
"rotate" forces a refresh and "status" reports the session's health. Named
accounts have the same at "accounts/<name>", "token/<name>",
"rotate/<name>" and "status/<name>"; LIST "accounts/" shows them all.
`

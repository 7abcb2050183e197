package teletracker

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/testhelpers/schema"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// testStart is the injected clock's starting time.
var testStart = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testClock is a clock the test moves by hand. The fake Teletracker and the
// backend share it, so tokens expire on the fake when the backend expects.
// Its monotonic twin, like Go's, only moves forward.
type testClock struct {
	mu      sync.Mutex
	t, mono time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Mono is the clock's monotonic twin.
func (c *testClock) Mono() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	c.mono = c.mono.Add(max(d, 0))
}

// faultyStorage fails Put when told to and, like Vault's storage across the
// plugin's gRPC boundary, fails every call whose context is done.
type faultyStorage struct {
	logical.Storage
	// skipPuts is the number of Puts to let through before failing any.
	skipPuts atomic.Int64
	// failPuts is the number of Puts still to fail; negative fails them all.
	failPuts atomic.Int64
	// failGets and failDeletes fail every Get, every Delete, while set.
	failGets, failDeletes atomic.Bool
	// puts and gets count calls.
	puts, gets atomic.Int64
	// beforePut, when set, runs before each Put is applied: a slow
	// acknowledgement, or another node acting meanwhile. When it returns
	// true it has applied the Put itself.
	beforePut func(e *logical.StorageEntry) (applied bool)
	// beforeGet, when set, runs before each Get.
	beforeGet func(key string)
}

var errStorageDown = errors.New("storage is down")

func (s *faultyStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.gets.Add(1)
	if s.beforeGet != nil {
		s.beforeGet(key)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.failGets.Load() {
		return nil, errStorageDown
	}
	return s.Storage.Get(ctx, key)
}

func (s *faultyStorage) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.failDeletes.Load() {
		return errStorageDown
	}
	return s.Storage.Delete(ctx, key)
}

func (s *faultyStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.puts.Add(1)
	if s.beforePut != nil && s.beforePut(e) {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.failPuts.Load() != 0 && s.skipPuts.Load() > 0 {
		s.skipPuts.Add(-1)
		return s.Storage.Put(ctx, e)
	}
	if n := s.failPuts.Load(); n != 0 {
		if n > 0 {
			s.failPuts.Add(-1)
		}
		return errStorageDown
	}
	return s.Storage.Put(ctx, e)
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// testEnv is a backend wired to a fake Teletracker, an injected clock,
// in-memory storage that can fail, and a captured log. Its requests go to
// the account named by TELETRACKER_TEST_ACCOUNT (the default one when it
// is empty): make unit runs every test for both, so that each promise
// held for the default account is held for a named one.
type testEnv struct {
	t       testing.TB
	b       *backend
	storage *faultyStorage
	clock   *testClock
	fake    *fakett.Server
	url     string
	logs    *syncBuffer
	sys     *logical.StaticSystemView
	// name is the account the requests go to; "" for the default.
	name string
}

// testAccount is the account tests run against (see testEnv).
var testAccount = os.Getenv("TELETRACKER_TEST_ACCOUNT")

// a is the account the test runs against.
func (e *testEnv) a() *account {
	return e.b.account(e.name)
}

// path is the path of the test's account for the default account's path p.
func (e *testEnv) path(p string) string {
	if e.name == "" {
		return p
	}
	switch p {
	case "config":
		return accountsPrefix + e.name
	case "token", "rotate", "status":
		return p + "/" + e.name
	}
	return p
}

// defaultOnly skips a test of what only the default account has.
func (e *testEnv) defaultOnly() {
	if e.name != "" {
		e.t.Skip("the default account's alone")
	}
}

// ownAccounts skips, in the run for a named account, a test that addresses
// the default account and named ones each by its own path: what it shows
// does not depend on TELETRACKER_TEST_ACCOUNT, and that run's account would
// be one more among those it counts.
func (e *testEnv) ownAccounts() {
	if e.name != "" {
		e.t.Skip("the test names its accounts itself")
	}
}

// envOption changes a testEnv before its backend is set up.
// wantUnconfigured fails the test unless resp and err answer a request to
// an account with no config: a 400 that says so for the default account,
// a 404 that says there is no such account for a named one.
func (e *testEnv) wantUnconfigured(resp *logical.Response, err error) {
	e.t.Helper()
	if e.name != "" {
		if statusOf(resp, err) != http.StatusNotFound || !strings.Contains(err.Error(), "no account named") {
			e.t.Fatalf("a request to an unknown account: %v %v, want 404", resp, err)
		}
		return
	}
	if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "not configured") {
		e.t.Fatalf("a request to an unconfigured mount: %v %v, want 400", resp, err)
	}
}

// wantGone fails the test unless the account has no config: the default
// account answers that it is not configured, a named one that it does not
// exist (404), on token and status alike.
func (e *testEnv) wantGone() {
	e.t.Helper()
	if e.name != "" {
		for _, p := range []string{"token", "status"} {
			if resp, err := e.request(logical.ReadOperation, p, nil); statusOf(resp, err) != http.StatusNotFound || !strings.Contains(err.Error(), "no account named") {
				e.t.Fatalf("%s of a deleted account: %v %v, want 404", p, resp, err)
			}
		}
		return
	}
	resp, err := e.request(logical.ReadOperation, "token", nil)
	if !errors.Is(err, logical.ErrInvalidRequest) || !strings.Contains(resp.Error().Error(), "not configured") {
		e.t.Fatalf("token after delete: %v %v", resp, err)
	}
	if got := e.status()["state"]; got != stateUnconfigured {
		e.t.Fatalf("state %v", got)
	}
}

type envOption func(*fakett.Options, *logical.StaticSystemView)

// withReplicationState sets the node's replication state.
func withReplicationState(s consts.ReplicationState) envOption {
	return func(_ *fakett.Options, sys *logical.StaticSystemView) { sys.ReplicationStateVal = s }
}

// withFake changes the fake Teletracker's options.
func withFake(f func(*fakett.Options)) envOption {
	return func(o *fakett.Options, _ *logical.StaticSystemView) { f(o) }
}

func newTestEnv(t testing.TB, opts ...envOption) *testEnv {
	t.Helper()
	clock := &testClock{t: testStart, mono: testStart}
	fo := fakett.Options{Now: clock.Now}
	conf := logical.TestBackendConfig()
	sys := conf.System.(*logical.StaticSystemView)
	for _, o := range opts {
		o(&fo, sys)
	}
	fake := fakett.New(fo)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)

	logs := &syncBuffer{}
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	storage := &faultyStorage{Storage: &logical.InmemStorage{}}
	conf.StorageView = storage

	b := newBackend(newProcess(DefaultCallsPerSecond))
	b.now, b.mono = clock.Now, clock.Mono
	b.storage = storage
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Cleanup(context.Background()) })
	e := &testEnv{t: t, b: b, storage: storage, clock: clock, fake: fake, url: srv.URL, logs: logs, sys: sys, name: testAccount}
	t.Cleanup(e.checkNoSecretsLogged)
	return e
}

// request sends one request through HandleRequest and, for successful
// answers, validates them against the path's declared response schema.
func (e *testEnv) request(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	e.t.Helper()
	path = e.path(path)
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op,
		Path:      path,
		Data:      data,
		Storage:   e.storage,
	})
	if tt, ok := e.t.(*testing.T); ok && err == nil && resp != nil && !resp.IsError() {
		schema.ValidateResponse(tt, e.responseSchema(tt, path, op), resp, true)
	}
	return resp, err
}

// responseSchema finds the declared 200 (or 204) response of path and op.
func (e *testEnv) responseSchema(t *testing.T, path string, op logical.Operation) *framework.Response {
	for _, p := range e.b.Paths {
		if regexp.MustCompile("^" + p.Pattern + "$").MatchString(path) {
			return schema.GetResponseSchema(t, p, op)
		}
	}
	t.Fatalf("no path %q", path)
	return nil
}

// mustRequest is request that fails the test on any error.
func (e *testEnv) mustRequest(op logical.Operation, path string, data map[string]interface{}) *logical.Response {
	e.t.Helper()
	resp, err := e.request(op, path, data)
	if err != nil || resp.IsError() {
		e.t.Fatalf("%s %s: err=%v resp=%v", op, path, err, resp)
	}
	return resp
}

// configure writes a working config that logs in to the fake.
func (e *testEnv) configure(extra map[string]interface{}) {
	e.t.Helper()
	data := map[string]interface{}{
		"base_url": e.url,
		"username": "demo",
		"password": "demo-password",
	}
	for k, v := range extra {
		data[k] = v
	}
	e.mustRequest(logical.UpdateOperation, "config", data)
}

// readToken reads the token, failing the test on an error.
func (e *testEnv) readToken() *logical.Response {
	e.t.Helper()
	return e.mustRequest(logical.ReadOperation, "token", nil)
}

// tick runs Vault's periodic function once.
func (e *testEnv) tick() error {
	return e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
}

// status reads the status data.
func (e *testEnv) status() map[string]interface{} {
	e.t.Helper()
	return e.mustRequest(logical.ReadOperation, "status", nil).Data
}

// stored is the record as stored.
func (e *testEnv) stored() *record {
	e.t.Helper()
	r, err := getEntry[record](context.Background(), e.storage.Storage, accountKey(e.name))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// store replaces the stored record with r.
func (e *testEnv) store(r *record) {
	e.t.Helper()
	if err := putRecord(context.Background(), e.storage.Storage, accountKey(e.name), r); err != nil {
		e.t.Fatal(err)
	}
}

// markInterrupted stores the marker a refresh leaves when Vault stops before
// its result is stored.
func (e *testEnv) markInterrupted() {
	e.t.Helper()
	e.store(e.stored().marked(actRefresh, e.clock.Now()))
}

// wantState fails the test unless status reports state with a last_error
// that contains errText.
func (e *testEnv) wantState(state, errText string) {
	e.t.Helper()
	s := e.status()
	if s["state"] != state || !strings.Contains(s["last_error"].(string), errText) {
		e.t.Fatalf("status %v, want state %s and last_error with %q", s, state, errText)
	}
}

// waitUntil polls cond on the real clock, for background work, and fails
// the test if it is not true within 10 s.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// wantNoReuse fails the test if the fake saw a refresh token used twice.
func (e *testEnv) wantNoReuse() {
	e.t.Helper()
	if n := e.fake.Stats().ReusedRefreshTokens; n != 0 {
		e.t.Fatalf("fake saw %d re-used refresh tokens", n)
	}
}

// checkNoSecretsLogged fails the test if a secret the fake ever issued, or a
// password, appears in the log.
func (e *testEnv) checkNoSecretsLogged() {
	logs := e.logs.String()
	for _, secret := range append(e.fake.IssuedSecrets(), "demo-password", "wrong-password") {
		if secret != "" && strings.Contains(logs, secret) {
			e.t.Errorf("a secret reached the log: %q", secret)
		}
	}
}

func TestFactory(t *testing.T) {
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	b, err := NewFactory(DefaultCallsPerSecond)(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	if b.Type() != logical.TypeLogical {
		t.Fatalf("type %v", b.Type())
	}
	want := []string{recordKey, legacyConfigKey, legacySessionKey, accountsPrefix}
	if got := b.SpecialPaths().SealWrapStorage; !reflect.DeepEqual(got, want) {
		t.Fatalf("seal-wrapped storage %v, want %v", got, want)
	}
	if got := b.(*backend).RunningVersion; got != Version {
		t.Fatalf("RunningVersion %q, want %q", got, Version)
	}
}

func TestHelpOnEveryPath(t *testing.T) {
	e := newTestEnv(t)
	for _, p := range e.b.Paths {
		if strings.TrimSpace(p.HelpSynopsis) == "" || strings.TrimSpace(p.HelpDescription) == "" {
			t.Errorf("path %s lacks help text", p.Pattern)
		}
		resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
			Operation: logical.HelpOperation, Path: strings.Trim(p.Pattern, "^$"), Storage: e.storage,
		})
		if err != nil || resp.Data["help"] == "" {
			t.Errorf("help on %s: %v %v", p.Pattern, err, resp)
		}
		for op, h := range p.Operations {
			if h.Properties().Summary == "" {
				t.Errorf("%s %s has no summary", op, p.Pattern)
			}
		}
	}
}

// TestPublishAfterInvalidateDropsCopy: a copy loaded before an Invalidate is
// never left in place after it.
func TestPublishAfterInvalidateDropsCopy(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	r := e.stored()
	epoch := e.a().epoch.Load()
	e.b.invalidate(context.Background(), accountKey(e.name))
	e.a().publish(epoch, r)
	if e.a().snap.Load() != nil {
		t.Fatal("a copy loaded before Invalidate was published after it")
	}
	e.a().publish(e.a().epoch.Load(), r)
	if e.a().snap.Load() == nil {
		t.Fatal("a current copy was dropped")
	}
}

func TestInvalidateDropsServedCopy(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.readToken()
	if e.a().snap.Load() == nil {
		t.Fatal("a read should leave a snapshot")
	}
	e.b.invalidate(context.Background(), "unrelated")
	if e.a().snap.Load() == nil {
		t.Fatal("an unrelated key dropped the snapshot")
	}
	keys := []string{recordKey, legacyConfigKey, legacySessionKey}
	if e.name != "" {
		keys = []string{accountKey(e.name)}
	}
	for _, key := range keys {
		e.readToken()
		e.b.invalidate(context.Background(), key)
		if e.a().snap.Load() != nil {
			t.Fatalf("invalidating %s kept the snapshot", key)
		}
	}
}

// TestInvalidateServesOtherNodesSession plays a performance standby: another
// node rotates the session in storage, Vault calls Invalidate, and the next
// read must serve the new token from storage, not the old one from memory.
func TestInvalidateServesOtherNodesSession(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	first := e.readToken().Data["token"]

	r := e.stored()
	r.Token = "token-from-another-node"
	r.Generation++
	e.store(r)
	if got := e.readToken().Data["token"]; got != first {
		t.Fatalf("without Invalidate the snapshot should still be served, got %v", got)
	}
	e.b.invalidate(context.Background(), accountKey(e.name))
	if got := e.readToken().Data["token"]; got != "token-from-another-node" {
		t.Fatalf("after Invalidate read %v, want the stored token", got)
	}
}

// TestInitializeCallsNoOne: a marker found at start-up is not resolved by
// Initialize (unseal must not wait on Teletracker) but by the next tick,
// and only once the call it marks has surely ended; with a password the
// engine logs in rather than present the refresh token again.
func TestInitializeCallsNoOne(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.markInterrupted()
	e.b = restart(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	err := e.b.Initialize(ctx, &logical.InitializationRequest{Storage: e.storage})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if st := e.fake.Stats(); st.RefreshCalls+st.LoginCalls != 1 || !strings.Contains(e.logs.String(), "found a call whose result was never stored") {
		t.Fatalf("Initialize called Teletracker or did not log the marker: %+v", st)
	}
	e.clock.Add(time.Minute)
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if st := e.fake.Stats(); st.RefreshCalls != 0 || st.LoginCalls != 2 || e.stored().State != stateReady {
		t.Fatalf("the marker was not resolved by a login: %+v, %+v", st, e.stored())
	}
	e.readLive()
}

// TestMarkerOfAnotherNodeWaitsForItsCall: a newly active node finds the
// marker of a refresh the old active node sent; its call may run for
// request_timeout, so the refresh token is not sent again before that (and
// the floor) has passed.
func TestMarkerOfAnotherNodeWaitsForItsCall(t *testing.T) {
	e := newTestEnv(t)
	seed, _ := e.fake.NewSession("demo")
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed, "request_timeout": "30s"})
	e.clock.Add(time.Minute)
	e.markInterrupted() // sent just now, by the node that stopped
	e.b = restart(t, e)
	e.clock.Add(35 * time.Second)
	_ = e.tick()
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatalf("the marker was resolved %d calls in, before its call could have ended", got-1)
	}
	// The marker's end (its start + 5 s to send + request_timeout + 10 s)
	// comes at 1m45s; the tick after it at 2m35s.
	if s := e.status(); s["next_attempt_at"] != testStart.Add(2*time.Minute+35*time.Second).Format(time.RFC3339) {
		t.Fatalf("status %v, want the next attempt at the first tick after the marker's start + 5 s + request_timeout + 10 s", s)
	}
	e.clock.Add(time.Minute)
	_ = e.tick()
	if st := e.fake.Stats(); st.RefreshCalls != 2 || st.Refreshes != 2 || e.stored().State != stateReady {
		t.Fatalf("the marker was not resolved once its call had ended: %+v", st)
	}
	e.wantNoReuse()
}

// TestCleanWaitsForCallUnderWay: a mount going away (unmount, reload,
// step-down) waits for a call under way and stores its result.
func TestCleanWaitsForCallUnderWay(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	gen := e.stored().Generation
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: 300 * time.Millisecond})
	e.clock.Add(time.Minute)
	done := make(chan struct{})
	go func() { defer close(done); _, _ = e.request(logical.UpdateOperation, "rotate", nil) }()
	waitUntil(t, "the rotate called Teletracker", func() bool { return e.fake.Stats().RefreshCalls > 0 })
	e.b.Cleanup(context.Background())
	if r := e.stored(); r.State != stateReady || r.Generation != gen+1 {
		t.Fatalf("Clean returned before the call's result was stored: %+v", r)
	}
	<-done
}

// TestCleanStoresHeldRecord: a record held in memory because storage
// refused it gets a last attempt to be stored when the mount goes away;
// without it the next start would find the marker and send a spent token.
func TestCleanStoresHeldRecord(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	e.storage.skipPuts.Store(1) // the marker is stored, the result is not
	e.storage.failPuts.Store(-1)
	_ = e.tick()
	held := e.a().held.Load()
	if held == nil || e.stored().State != stateInFlight {
		t.Fatal("setup: no record held over a stored marker")
	}
	e.storage.failPuts.Store(0)
	e.b.Cleanup(context.Background())
	if r := e.stored(); r.State != stateReady || r.RefreshToken != held.RefreshToken {
		t.Fatalf("Clean dropped the held record: stored %+v", r)
	}
	e.b = restart(t, e)
	e.clock.Add(2 * time.Minute)
	_ = e.tick()
	e.readLive()
	e.wantNoReuse()
}

// TestCleanStoppedCallIsNoFailure: a refresh that Clean (a reload or a
// step-down) stopped after its marker was stored, but before it was sent,
// failed nothing: the next node starts healthy, with no failure, no
// last_error and no backoff, and refreshes on its first tick.
func TestCleanStoppedCallIsNoFailure(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(55 * time.Minute)
	e.storage.beforePut = func(*logical.StorageEntry) bool {
		e.storage.beforePut = nil
		e.b.end() // Clean begins while the marker is being stored
		return false
	}
	_ = e.tick()
	e.b.clean(context.Background())
	if st := e.fake.Stats(); st.RefreshCalls != 0 {
		t.Fatalf("a refresh was sent after Clean began: %+v", st)
	}
	e.b = restart(t, e)
	if s := e.status(); s["state"] != stateHealthy || s["consecutive_failures"] != 0 || s["last_error"] != "" {
		t.Fatalf("the next node starts with %v", s)
	}
	_ = e.tick()
	if st := e.fake.Stats(); st.Refreshes != 1 || st.LoginCalls != 1 {
		t.Fatalf("the next node's first tick did not refresh: %+v", st)
	}
}

// Clean (unmount, reload, seal) does not wait for a tick waiting its turn,
// and the call not yet sent when Clean began is never sent.
func TestCleanDoesNotWaitForCallNotYetSent(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	reserveOthers(e, 100) // the tick's turn: 10 s away
	go func() { _ = e.tick() }()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	e.b.Cleanup(context.Background())
	took := time.Since(start)
	if calls := e.fake.Stats().RefreshCalls; took > 2*time.Second || calls != 0 {
		t.Fatalf("Clean took %v, and %d refresh sent after Clean began", took, calls)
	}
}

// A request that reaches the mount after Clean began (a read queued on
// refreshMu before Clean, or any request once Clean returned) never calls
// Teletracker, and takes no transport from the process.
func TestNoCallAfterClean(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	before := e.fake.Stats()
	e.clock.Add(49 * time.Minute) // due at this tick
	e.b.clean(context.Background())
	if n := transportsInUse(e.b.proc); n != 0 {
		t.Fatalf("setup: %d transports in use after Clean", n)
	}
	_ = e.tick()
	st := e.fake.Stats()
	if n := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls; n != 0 {
		t.Errorf("%d call(s) to Teletracker after Clean", n)
	}
	if n := transportsInUse(e.b.proc); n != 0 {
		t.Errorf("%d transport(s) taken after Clean, never released", n)
	}
}

// Vault replaces a mount's backend (plugin reload, remount) and Cleans the
// old one while a request still reaches it: the old one calls no one, so
// the new one's refresh never re-sends a refresh token the old one spent.
func TestCleanedBackendRacesItsSuccessor(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	old := e.b
	old.clean(context.Background())
	b2 := restart(t, e)
	t.Cleanup(func() { b2.Cleanup(context.Background()) })
	b2.proc.pacer = newPacer(1 / (500 * time.Millisecond).Seconds())
	holdTurns(b2.proc.pacer, b2.mono(), 1) // another mount of the new process took the turn
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b2.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
	}()
	time.Sleep(100 * time.Millisecond) // b2 has loaded the record and waits for its turn
	_ = old.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
	<-done
	if n := e.fake.Stats().ReusedRefreshTokens; n != 0 {
		t.Errorf("fake saw %d re-used refresh token(s); stored state %q, last_error %q", n, e.stored().State, e.stored().LastError)
	}
}

// A turn taken just before Clean begins is not followed by a send after
// Clean began (while the marker is stored and the send waits for sendGap).
func TestNoSendAfterCleanBegan(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	var cleanAt atomic.Int64
	slow := &slowPuts{Storage: e.storage, delay: 300 * time.Millisecond}
	done := make(chan struct{})
	before := e.fake.Stats()
	go func() {
		defer close(done)
		_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: slow})
	}()
	time.Sleep(100 * time.Millisecond) // the tick has its turn and stores its marker
	cleanAt.Store(time.Now().UnixNano())
	e.b.clean(context.Background())
	<-done
	st := e.fake.Stats()
	if n := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls; n != 0 {
		t.Errorf("%d call(s) sent after Clean began (Clean at %v)", n, time.Unix(0, cleanAt.Load()).Format(time.StampMilli))
	}
}

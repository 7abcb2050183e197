package teletracker

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"reflect"
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
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// faultyStorage fails Put when told to and, like Vault's storage across the
// plugin's gRPC boundary, fails every call whose context is done.
type faultyStorage struct {
	logical.Storage
	// skipPuts is the number of Puts to let through before failing any.
	skipPuts atomic.Int64
	// failPuts is the number of Puts still to fail; negative fails them all.
	failPuts atomic.Int64
	// puts and gets count calls.
	puts, gets atomic.Int64
}

var errStorageDown = errors.New("storage is down")

func (s *faultyStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.gets.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Storage.Get(ctx, key)
}

func (s *faultyStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.puts.Add(1)
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
// in-memory storage that can fail, and a captured log.
type testEnv struct {
	t       testing.TB
	b       *backend
	storage *faultyStorage
	clock   *testClock
	fake    *fakett.Server
	url     string
	logs    *syncBuffer
	sys     *logical.StaticSystemView
}

// envOption changes a testEnv before its backend is set up.
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
	clock := &testClock{t: testStart}
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

	b := newBackend()
	b.now = clock.Now
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Cleanup(context.Background()) })
	e := &testEnv{t: t, b: b, storage: storage, clock: clock, fake: fake, url: srv.URL, logs: logs, sys: sys}
	t.Cleanup(e.checkNoSecretsLogged)
	return e
}

// request sends one request through HandleRequest and, for successful
// answers, validates them against the path's declared response schema.
func (e *testEnv) request(op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	e.t.Helper()
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
		if strings.Trim(p.Pattern, "^$") == path {
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

// stored is the session as stored.
func (e *testEnv) stored() *session {
	e.t.Helper()
	s, err := getSession(context.Background(), e.storage.Storage)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// markInterrupted stores the marker a refresh leaves when Vault stops before
// its result is stored.
func (e *testEnv) markInterrupted() {
	e.t.Helper()
	s := e.stored()
	s.Pending = &pendingRefresh{Generation: s.Generation, StartedAt: e.clock.Now()}
	if err := putSession(context.Background(), e.storage, s); err != nil {
		e.t.Fatal(err)
	}
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
	b, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	if b.Type() != logical.TypeLogical {
		t.Fatalf("type %v", b.Type())
	}
	paths := b.SpecialPaths().SealWrapStorage
	if len(paths) != 2 || paths[0] != configKey || paths[1] != sessionKey {
		t.Fatalf("seal-wrapped storage %v, want exact keys config and session", paths)
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
	cfg, _ := getConfig(context.Background(), e.storage)
	s := e.stored()
	epoch := e.b.epoch.Load()
	e.b.invalidate(context.Background(), sessionKey)
	e.b.publish(epoch, s, cfg)
	if e.b.served.Load() != nil {
		t.Fatal("a copy loaded before Invalidate was published after it")
	}
	e.b.publish(e.b.epoch.Load(), s, cfg)
	if e.b.served.Load() == nil {
		t.Fatal("a current copy was dropped")
	}
}

func TestInvalidateDropsServedCopy(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.readToken()
	if e.b.served.Load() == nil {
		t.Fatal("a read should leave a served copy")
	}
	e.b.invalidate(context.Background(), "unrelated")
	if e.b.served.Load() == nil {
		t.Fatal("an unrelated key dropped the served copy")
	}
	for _, key := range []string{configKey, sessionKey} {
		e.readToken()
		e.b.invalidate(context.Background(), key)
		if e.b.served.Load() != nil {
			t.Fatalf("invalidating %s kept the served copy", key)
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

	s := e.stored()
	s.Token = "token-from-another-node"
	s.Generation++
	if err := putSession(context.Background(), e.storage, s); err != nil {
		t.Fatal(err)
	}
	if got := e.readToken().Data["token"]; got != first {
		t.Fatalf("without Invalidate the cached token should still be served, got %v", got)
	}
	e.b.invalidate(context.Background(), sessionKey)
	if got := e.readToken().Data["token"]; got != "token-from-another-node" {
		t.Fatalf("after Invalidate read %v, want the stored token", got)
	}
}

// TestInitializeResumesInterruptedRefresh: a marker found at start-up is
// resolved in the background, even though Vault cancels Initialize's context
// as soon as it returns.
func TestInitializeResumesInterruptedRefresh(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.markInterrupted()
	e.clock.Add(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	err := e.b.Initialize(ctx, &logical.InitializationRequest{Storage: e.storage})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	// Initialize resolves the marker in the background.
	waitUntil(t, "the interrupted refresh resumed", func() bool { return e.stored().Pending == nil })
	if got := e.fake.Stats().Refreshes; got != 1 {
		t.Fatalf("refreshes %d, want 1", got)
	}
	e.wantNoReuse()
}

// TestCleanWaitsForResume: unmounting stops the start-up resume and waits
// for it, so it never writes to a mount that is gone.
func TestCleanWaitsForResume(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.markInterrupted()
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: 500 * time.Millisecond})
	if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the resume called Teletracker", func() bool { return e.fake.Stats().RefreshCalls > 0 })
	e.b.Cleanup(context.Background())
	after := e.stored()
	time.Sleep(time.Second) // anything still running would write by now
	if got := e.stored(); !reflect.DeepEqual(got, after) || got.Pending != nil {
		t.Fatalf("the session changed after Clean returned, or the refresh result was lost: %+v", got)
	}
}

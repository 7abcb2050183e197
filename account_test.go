package teletracker

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// configureAccount writes a working config for the named account, logging
// in to the fake (or to base_url in extra).
func (e *testEnv) configureAccount(name string, extra map[string]interface{}) {
	e.t.Helper()
	data := map[string]interface{}{"base_url": e.url, "username": "demo", "password": "demo-password"}
	for k, v := range extra {
		data[k] = v
	}
	e.mustRequest(logical.UpdateOperation, accountsPrefix+name, data)
}

// storedAccount is the named account's record as stored, nil if none.
func (e *testEnv) storedAccount(name string) *record {
	e.t.Helper()
	r, err := getEntry[record](context.Background(), e.storage.Storage, accountKey(name))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// handle sends one request to the mount through HandleRequest with storage s.
func (e *testEnv) handle(s logical.Storage, op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	return e.b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Data: data, Storage: s})
}

// gate is a Teletracker in front of the fake whose calls wait, once shut,
// until it is opened: a slow upstream for the accounts whose base_url is
// its url, and for them alone.
type gate struct {
	url string
	// arrived gets one value for each call that reached the gate while shut.
	arrived chan struct{}
	mu      sync.Mutex
	// shut is closed when the gate opens; nil while open.
	shut chan struct{}
	// calls counts the calls that reached it.
	calls int
}

// newGate is an open gate in front of e's fake.
func newGate(t *testing.T, e *testEnv) *gate {
	g := &gate{arrived: make(chan struct{}, 100)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.calls++
		shut := g.shut
		g.mu.Unlock()
		if shut != nil {
			g.arrived <- struct{}{}
			<-shut
		}
		e.fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(g.open)
	g.url = srv.URL
	return g
}

// close makes the calls from now on wait until open.
func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shut == nil {
		g.shut = make(chan struct{})
	}
}

// open lets the waiting calls, and all later ones, through.
func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shut != nil {
		close(g.shut)
		g.shut = nil
	}
}

// callCount is how many calls reached the gate.
func (g *gate) callCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls
}

// keyFaults is storage that fails every Get, Put and Delete of the keys
// fail names, and passes the others through.
type keyFaults struct {
	logical.Storage
	fail func(key string) bool
	// lists, when set, counts the Lists.
	lists *atomic.Int64
}

func (s keyFaults) List(ctx context.Context, prefix string) ([]string, error) {
	if s.lists != nil {
		s.lists.Add(1)
	}
	return s.Storage.List(ctx, prefix)
}

func (s keyFaults) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if s.fail(key) {
		return nil, errStorageDown
	}
	return s.Storage.Get(ctx, key)
}

func (s keyFaults) Put(ctx context.Context, e *logical.StorageEntry) error {
	if s.fail(e.Key) {
		return errStorageDown
	}
	return s.Storage.Put(ctx, e)
}

func (s keyFaults) Delete(ctx context.Context, key string) error {
	if s.fail(key) {
		return errStorageDown
	}
	return s.Storage.Delete(ctx, key)
}

// finishes runs f in a goroutine and fails the test unless it returns
// while blocked holds (before release is called by the test's failsafe):
// f must not wait for what blocked waits on.
func finishes(t *testing.T, what string, release func(), f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	failsafe := time.AfterFunc(10*time.Second, release)
	<-done
	if !failsafe.Stop() {
		t.Fatalf("%s waited for what it must not wait for", what)
	}
}

// fastBudget gives e's mount a process of 1000 calls a second, so that
// setting up many accounts does not wait for the pacer on the real clock.
func (e *testEnv) fastBudget() {
	e.b.proc = newProcess(1000)
}

// generation is the named account's stored generation, 0 if none.
func (e *testEnv) generation(name string) int64 {
	r, err := getEntry[record](context.Background(), e.storage.Storage, accountKey(name))
	if err != nil || r == nil {
		return 0
	}
	return int64(r.Generation)
}

// TestSlowCallOfOneAccountDelaysNoOther: while account slow's call hangs
// upstream under its lock, account quick's token read that needs a new
// token, its rotate and its refresh on a tick all go ahead. The tick is
// the mount's first (the env calls no Initialize), so it makes the full
// pass too, as on a node whose Initialize failed or could not write.
func TestSlowCallOfOneAccountDelaysNoOther(t *testing.T) {
	e := newTestEnv(t)
	g := newGate(t, e)
	e.configureAccount("slow", map[string]interface{}{"base_url": g.url, "request_timeout": "30s"})
	e.configureAccount("quick", nil)
	e.clock.Add(15 * time.Minute)
	g.close()
	rotated := make(chan error, 1)
	go func() {
		_, err := e.request(logical.UpdateOperation, "rotate/slow", nil)
		rotated <- err
	}()
	<-g.arrived // slow's refresh is upstream, its lock held

	var readErr, rotateErr, tickErr error
	gen := e.generation("quick")
	finishes(t, "a read of quick that needs a new token", g.open, func() {
		_, readErr = e.request(logical.ReadOperation, "token/quick", map[string]interface{}{"min_ttl": "50m"})
	})
	if readErr != nil || e.generation("quick") != gen+1 {
		t.Fatalf("quick's read: %v, generation %d, want %d", readErr, e.generation("quick"), gen+1)
	}
	e.clock.Add(minCallInterval)
	finishes(t, "a rotate of quick", g.open, func() {
		_, rotateErr = e.request(logical.UpdateOperation, "rotate/quick", nil)
	})
	if rotateErr != nil || e.generation("quick") != gen+2 {
		t.Fatalf("quick's rotate: %v, generation %d, want %d", rotateErr, e.generation("quick"), gen+2)
	}
	e.clock.Add(51 * time.Minute) // both are due; slow's lock is still held
	ticked := make(chan struct{})
	go func() { defer close(ticked); tickErr = e.tick() }()
	finishes(t, "quick's refresh on a tick", g.open, func() {
		for e.generation("quick") != gen+3 {
			time.Sleep(time.Millisecond)
		}
	})
	g.open()
	if err := <-rotated; err != nil {
		t.Fatalf("slow's rotate: %v", err)
	}
	<-ticked
	if tickErr != nil {
		t.Fatalf("tick: %v", tickErr)
	}
	for _, name := range []string{"slow", "quick"} {
		if s := e.mustRequest(logical.ReadOperation, "status/"+name, nil).Data; s["state"] != stateHealthy {
			t.Errorf("%s: %v", name, s)
		}
	}
	e.wantNoReuse()
}

// TestStorageFailureOfOneAccountFailsNoOther: storage that fails every
// read and write of account broken's entry fails none of account fine's
// reads or ticks, on a running node and on one just started; the tick's
// error names broken alone, and status says broken is degraded.
func TestStorageFailureOfOneAccountFailsNoOther(t *testing.T) {
	e := newTestEnv(t)
	e.configureAccount("broken", nil)
	e.configureAccount("fine", nil)
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == accountsPrefix+"broken" }, lists: &atomic.Int64{}}
	for _, name := range []string{"broken", "fine"} {
		e.b.invalidate(context.Background(), accountsPrefix+name) // reads must go to storage
	}
	if resp, err := e.handle(s, logical.ReadOperation, "token/fine", nil); err != nil || resp.IsError() {
		t.Fatalf("fine's read: resp=%v err=%v", resp, err)
	}
	if _, err := e.handle(s, logical.ReadOperation, "token/broken", nil); err == nil {
		t.Fatal("setup: broken's read did not fail")
	}
	gen := e.generation("fine")
	e.clock.Add(51 * time.Minute)
	err := e.b.periodicFunc(context.Background(), &logical.Request{Storage: s})
	if err == nil || !errors.Is(err, errStorageDown) {
		t.Fatalf("tick: %v, want broken's storage failure", err)
	}
	if e.generation("fine") != gen+1 {
		t.Fatal("fine was not refreshed on a tick that failed for broken")
	}
	if st := e.mustRequest(logical.ReadOperation, "status/fine", nil).Data; st["state"] != stateHealthy {
		t.Fatalf("fine: %v", st)
	}
	resp, err := e.request(logical.ReadOperation, "status/broken", nil) // as this node knows it
	if err != nil || resp.Data["state"] != stateDegraded || !strings.Contains(resp.Data["last_error"].(string), "storage") {
		t.Fatalf("broken: resp=%v err=%v, want degraded by storage", resp, err)
	}

	// A node that starts while broken's entry cannot be read.
	e.b = restart(t, e)
	if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: s}); err == nil {
		t.Fatal("setup: Initialize read broken's entry")
	}
	if resp, err := e.handle(s, logical.ReadOperation, "token/fine", nil); err != nil || resp.IsError() {
		t.Fatalf("fine's read after a start: resp=%v err=%v", resp, err)
	}
	e.clock.Add(51 * time.Minute)
	s.lists.Store(0)
	for range 3 {
		_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: s})
		e.clock.Add(time.Minute)
	}
	if e.generation("fine") != gen+2 {
		t.Fatal("fine was not refreshed by the new node's tick")
	}
	if n := s.lists.Load(); n != 0 {
		t.Fatalf("%d ticks listed every account again, after Initialize's full pass failed for broken alone", n)
	}
	e.wantNoReuse()
}

// TestBadAnswerForOneAccountLeavesOthersHealthy: an upstream that answers
// account bad's calls with garbage degrades bad alone.
func TestBadAnswerForOneAccountLeavesOthersHealthy(t *testing.T) {
	e := newTestEnv(t)
	var garbage atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if garbage.Load() {
			_, _ = w.Write([]byte(`{"success":true,"tokenLifetime":-1}`))
			return
		}
		e.fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.configureAccount("bad", map[string]interface{}{"base_url": srv.URL})
	e.configureAccount("good", nil)
	garbage.Store(true)
	gen := e.generation("good")
	e.clock.Add(51 * time.Minute)
	if err := e.tick(); err != nil {
		t.Fatalf("tick: %v", err)
	}
	if st := e.mustRequest(logical.ReadOperation, "status/bad", nil).Data; st["state"] != stateDegraded {
		t.Fatalf("bad: %v", st)
	}
	if st := e.mustRequest(logical.ReadOperation, "status/good", nil).Data; st["state"] != stateHealthy || st["consecutive_failures"] != 0 || e.generation("good") != gen+1 {
		t.Fatalf("good: %v, generation %d", st, e.generation("good"))
	}
	e.mustRequest(logical.ReadOperation, "token/good", nil)
}

// TestDeleteDuringRefreshLosesNothing: account doomed is deleted while its
// refresh hangs upstream. The delete waits for it, account keeper is not
// touched, no tick calls for doomed after the delete, doomed is forgotten
// once its waits are over, and the name can be configured again, with new
// credentials.
func TestDeleteDuringRefreshLosesNothing(t *testing.T) {
	e := newTestEnv(t)
	g := newGate(t, e)
	e.configureAccount("doomed", map[string]interface{}{"base_url": g.url, "request_timeout": "30s"})
	e.configureAccount("keeper", nil)
	keeper := e.storedAccount("keeper")
	e.clock.Add(time.Minute)
	g.close()
	rotated, deleted := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := e.request(logical.UpdateOperation, "rotate/doomed", nil)
		rotated <- err
	}()
	<-g.arrived
	go func() {
		_, err := e.request(logical.DeleteOperation, "accounts/doomed", nil)
		deleted <- err
	}()
	var readErr error
	finishes(t, "keeper's read", g.open, func() { _, readErr = e.request(logical.ReadOperation, "token/keeper", nil) })
	if readErr != nil {
		t.Fatal(readErr)
	}
	g.open()
	if err := <-rotated; err != nil {
		t.Fatalf("the rotate under way: %v", err)
	}
	if err := <-deleted; err != nil {
		t.Fatalf("the delete: %v", err)
	}
	if r := e.storedAccount("doomed"); r != nil {
		t.Fatalf("doomed is still stored: %+v", r)
	}
	if r := e.storedAccount("keeper"); r.RefreshToken != keeper.RefreshToken || r.Token != keeper.Token || !e.fake.Live(r.Token) {
		t.Fatal("keeper's session changed with doomed's delete")
	}
	calls := g.callCount()
	for range 3 {
		e.clock.Add(time.Minute)
		if err := e.tick(); err != nil {
			t.Fatal(err)
		}
	}
	if n := g.callCount() - calls; n != 0 {
		t.Fatalf("%d calls for doomed after its delete", n)
	}
	e.b.accountsMu.RLock()
	_, kept := e.b.accounts["doomed"]
	e.b.accountsMu.RUnlock()
	if kept || e.b.sched.heap.Len() != 1 { // keeper's
		t.Fatalf("doomed is not forgotten once its waits are over (in memory %v, %d scheduled)", kept, e.b.sched.heap.Len())
	}
	e.wantNoReuse()

	// The name again: a new account, which needs credentials.
	resp, err := e.request(logical.UpdateOperation, "accounts/doomed", map[string]interface{}{"base_url": e.url, "username": "demo"})
	if statusOf(resp, err) != http.StatusBadRequest {
		t.Fatalf("recreating without credentials: resp=%v err=%v, want 400", resp, err)
	}
	logins := e.fake.Stats().LoginCalls
	e.configureAccount("doomed", nil)
	if e.fake.Stats().LoginCalls != logins+1 {
		t.Fatal("recreating doomed did not log in")
	}
	e.mustRequest(logical.ReadOperation, "token/doomed", nil)
	if s := e.mustRequest(logical.ReadOperation, "status/doomed", nil).Data; s["state"] != stateHealthy || s["refresh_count"] != int64(0) {
		t.Fatalf("the recreated account: %v", s)
	}
}

// TestDeleteByAnotherNodeDuringRefreshStands: another node deletes account
// doomed (Vault replicates the delete and calls Invalidate) while this
// node's refresh of it is under way: the refresh's result does not bring
// the deleted account back.
func TestDeleteByAnotherNodeDuringRefreshStands(t *testing.T) {
	e := newTestEnv(t)
	g := newGate(t, e)
	e.configureAccount("doomed", map[string]interface{}{"base_url": g.url, "request_timeout": "30s"})
	e.clock.Add(time.Minute)
	g.close()
	rotated := make(chan struct{})
	go func() { defer close(rotated); _, _ = e.request(logical.UpdateOperation, "rotate/doomed", nil) }()
	<-g.arrived
	if err := e.storage.Storage.Delete(context.Background(), accountsPrefix+"doomed"); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(context.Background(), accountsPrefix+"doomed")
	g.open()
	<-rotated
	if r := e.storedAccount("doomed"); r != nil {
		t.Fatalf("the refresh under way brought the deleted account back: %+v", r)
	}
	if resp, err := e.request(logical.ReadOperation, "token/doomed", nil); statusOf(resp, err) != http.StatusNotFound {
		t.Fatalf("token/doomed after its delete: resp=%v err=%v, want 404", resp, err)
	}
	calls := g.callCount()
	for range 3 {
		e.clock.Add(time.Minute)
		_ = e.tick()
	}
	if n := g.callCount() - calls; n != 0 || e.storedAccount("doomed") != nil {
		t.Fatalf("%d calls for doomed after its delete", n)
	}
	e.b.accountsMu.RLock()
	_, kept := e.b.accounts["doomed"]
	e.b.accountsMu.RUnlock()
	if kept {
		t.Fatal("doomed is not forgotten once its waits are over")
	}
}

// TestInvalidateOfOneAccountDropsItsSnapshotAlone: a change to account
// a's entry drops a's snapshot; b's and the default account's stand.
func TestInvalidateOfOneAccountDropsItsSnapshotAlone(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configure(nil)
	e.configureAccount("a", nil)
	e.configureAccount("b", nil)
	for _, p := range []string{"token", "token/a", "token/b"} {
		e.mustRequest(logical.ReadOperation, p, nil)
	}
	e.b.invalidate(context.Background(), accountsPrefix+"a")
	if e.b.account("a").snap.Load() != nil {
		t.Fatal("a's snapshot stands after its entry changed")
	}
	if e.b.account("b").snap.Load() == nil || e.b.def().snap.Load() == nil {
		t.Fatal("invalidating a dropped another account's snapshot")
	}
	for _, key := range []string{accountsPrefix, accountsPrefix + "A", accountsPrefix + "a/b", "accounts"} {
		e.b.invalidate(context.Background(), key)
	}
	if e.b.account("b").snap.Load() == nil || e.b.def().snap.Load() == nil {
		t.Fatal("a key of no account dropped a snapshot")
	}
}

// TestForgottenAccountHandsOnItsWork: a token read of x whose existence
// check is slow, while x is deleted, forgotten by a tick and written
// again, goes on with the forgotten account object; it hands the read to
// x's account now, so that one name never has two locks, and x's refresh
// token is sent once.
func TestForgottenAccountHandsOnItsWork(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.fastBudget()
	e.configureAccount("x", nil)
	e.mustRequest(logical.DeleteOperation, "accounts/x", nil)

	var mu sync.Mutex
	var blockOnce chan struct{} // the next Get of accounts/x waits on it
	arrived := make(chan struct{}, 1)
	var barrier struct {
		armed   bool
		n       int
		release chan struct{}
	}
	e.storage.beforeGet = func(key string) {
		if key != accountsPrefix+"x" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if ch := blockOnce; ch != nil {
			blockOnce = nil
			mu.Unlock()
			arrived <- struct{}{}
			<-ch
			mu.Lock()
		}
	}
	// The barrier holds each Get of accounts/x once it has read, until two
	// have: both ticks' loads read the same record.
	afterGet := func(key string) {
		if key != accountsPrefix+"x" {
			return
		}
		mu.Lock()
		if barrier.armed {
			barrier.n++
			rel := barrier.release
			if barrier.n == 2 {
				barrier.armed = false
				close(rel)
			}
			mu.Unlock()
			select {
			case <-rel:
			case <-time.After(2 * time.Second):
			}
			return
		}
		mu.Unlock()
	}

	release := make(chan struct{})
	mu.Lock()
	blockOnce = release
	mu.Unlock()
	read := make(chan error, 1)
	go func() {
		resp, err := e.request(logical.ReadOperation, "token/x", nil)
		if err == nil && resp.IsError() {
			err = resp.Error()
		}
		read <- err
	}()
	<-arrived // the read's existence check is in storage, holding old x

	e.clock.Add(time.Minute) // x's waits are over
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	e.b.accountsMu.RLock()
	_, kept := e.b.accounts["x"]
	e.b.accountsMu.RUnlock()
	if kept {
		t.Fatal("setup: x not forgotten")
	}
	e.configureAccount("x", nil) // a new object for x
	close(release)
	if err := <-read; err != nil {
		t.Fatalf("the read: %v", err)
	}

	e.clock.Add(51 * time.Minute)
	mu.Lock()
	barrier.armed, barrier.release = true, make(chan struct{})
	mu.Unlock()
	_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: afterGetStorage{e.storage, afterGet}})
	if n := e.b.sched.heap.Len(); n > 1 {
		t.Errorf("%d accounts scheduled for the one account x", n)
	}
	if n := e.fake.Stats().ReusedRefreshTokens; n != 0 {
		t.Fatalf("x's refresh token was sent twice (%d re-used): two account objects for one name, each with its own lock", n)
	}
}

// afterGetStorage runs after on each Get's key once the Get has read.
type afterGetStorage struct {
	logical.Storage
	after func(key string)
}

func (s afterGetStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	e, err := s.Storage.Get(ctx, key)
	s.after(key)
	return e, err
}

// hangingPuts is storage whose Puts of key hang until their context ends.
type hangingPuts struct {
	logical.Storage
	key string
}

func (s hangingPuts) Put(ctx context.Context, e *logical.StorageEntry) error {
	if e.Key == s.key {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Storage.Put(ctx, e)
}

// TestCleanStoresHeldRecordsApart: Clean's last attempts to store the
// accounts' held records run side by side: the default account's hanging
// Put does not make named account x's newest refresh token wait for it.
func TestCleanStoresHeldRecordsApart(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configure(nil)
	e.configureAccount("x", nil)
	e.clock.Add(time.Minute)
	for _, p := range []string{"rotate", "rotate/x"} {
		e.storage.skipPuts.Store(1) // the marker goes in, the result does not
		e.storage.failPuts.Store(-1)
		_, _ = e.handle(e.storage, logical.UpdateOperation, p, nil)
		e.storage.failPuts.Store(0)
		e.clock.Add(time.Minute)
	}
	if e.b.def().held.Load() == nil || e.b.account("x").held.Load() == nil {
		t.Fatal("setup: both accounts should hold their record")
	}
	e.b.storage = hangingPuts{Storage: e.storage.Storage, key: recordKey}
	done := make(chan struct{})
	go func() { defer close(done); e.b.clean(context.Background()) }()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) && e.b.account("x").held.Load() != nil {
		time.Sleep(5 * time.Millisecond)
	}
	stored := e.b.account("x").held.Load() == nil
	<-done
	if e.b.account("x").held.Load() != nil {
		t.Fatal("setup: x's held record was never stored")
	}
	if !stored {
		t.Fatal("x's held record was not stored within 1 s of Clean: its last attempt waited for the default account's hanging Put")
	}
}

// TestRecreateRacingForgetKeepsOneAccount: account x was deleted and its
// waits are over, so a tick forgets it, while a config write that
// recreates x got x's old account object and waits on its lock. The write
// hands itself to x's account now: the mount holds one account for x, with
// one lock, and x's refresh token is sent once when it falls due.
func TestRecreateRacingForgetKeepsOneAccount(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("x", nil)
	e.mustRequest(logical.DeleteOperation, "accounts/x", nil)
	e.clock.Add(time.Minute) // x's waits are over: the next tick forgets it

	var once sync.Once
	written := make(chan error, 1)
	// The tick reads x's entry under x's lock; meanwhile the recreating
	// write arrives and waits for that lock.
	e.storage.beforeGet = func(key string) {
		if key != accountsPrefix+"x" {
			return
		}
		once.Do(func() {
			go func() {
				_, err := e.handle(e.storage, logical.UpdateOperation, "accounts/x",
					map[string]interface{}{"base_url": e.url, "username": "demo", "password": "demo-password"})
				written <- err
			}()
			time.Sleep(200 * time.Millisecond) // the write is waiting on x's lock
		})
	}
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatalf("recreating x: %v", err)
	}
	e.storage.beforeGet = nil
	if e.storedAccount("x") == nil {
		t.Fatal("setup: x was not recreated")
	}
	e.b.accountsMu.RLock()
	inMap := e.b.accounts["x"]
	e.b.accountsMu.RUnlock()
	if inMap == nil || inMap.forgotten.Load() {
		t.Errorf("x recreated, but the mount holds no live account for it (%p)", inMap)
	}

	// Another request for x: the mount uses the same account.
	e.mustRequest(logical.ReadOperation, "token/x", nil)
	if a2 := e.b.account("x"); a2 != inMap {
		t.Errorf("two accounts in memory for x (%p, %p), each with its own lock", inMap, a2)
	}

	// Both fall due together; each reads x's entry before either marks it.
	both := &barrierGets{Storage: e.storage, key: accountsPrefix + "x", n: 2}
	e.clock.Add(51 * time.Minute)
	_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: both})
	if n := e.fake.Stats().ReusedRefreshTokens; n != 0 {
		t.Errorf("fake saw %d re-used refresh token(s): x's one refresh token was sent by both accounts", n)
	}
}

// barrierGets is storage whose Gets of key, once read, wait (up to 2 s)
// until n of them have been read: n callers that load the same entry.
type barrierGets struct {
	logical.Storage
	key  string
	n    int64
	read atomic.Int64
}

func (s *barrierGets) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	e, err := s.Storage.Get(ctx, key)
	if key == s.key && s.read.Add(1) <= s.n {
		deadline := time.Now().Add(2 * time.Second)
		for s.read.Load() < s.n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	return e, err
}

// TestDeleteByAnotherNodeDuringLoginStands: as
// TestDeleteByAnotherNodeDuringRefreshStands, for a login under way (the
// session was lost, a password is stored): its marker is looked at before
// its result is stored, and the deleted account stays deleted.
func TestDeleteByAnotherNodeDuringLoginStands(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	g := newGate(t, e)
	e.configureAccount("doomed", map[string]interface{}{"base_url": g.url, "request_timeout": "30s"})
	r := e.storedAccount("doomed")
	r.State, r.Token, r.RefreshToken = stateNeedLogin, "", ""
	if err := putRecord(context.Background(), e.storage.Storage, accountsPrefix+"doomed", r); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(context.Background(), accountsPrefix+"doomed")
	e.clock.Add(time.Minute)
	g.close()
	ticked := make(chan struct{})
	go func() { defer close(ticked); _ = e.tick() }()
	<-g.arrived // the tick's login is upstream
	if err := e.storage.Storage.Delete(context.Background(), accountsPrefix+"doomed"); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(context.Background(), accountsPrefix+"doomed")
	g.open()
	<-ticked
	if r := e.storedAccount("doomed"); r != nil {
		t.Fatalf("the login under way brought the deleted account back: state %s", r.State)
	}
}

// TestRefusedWriteLeavesNoAccountInMemory: a config write to a new name
// that is refused for its input (400) leaves no account in memory once the
// ticks have looked at it, so bad configs under new names do not grow the
// mount's memory.
func TestRefusedWriteLeavesNoAccountInMemory(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	for i := range 50 {
		resp, err := e.request(logical.UpdateOperation, accountsPrefix+"n"+string(rune('a'+i%26))+string(rune('a'+i/26)),
			map[string]interface{}{"base_url": e.url, "request_timeout": "600"})
		if statusOf(resp, err) != 400 {
			t.Fatalf("setup: resp=%v err=%v", resp, err)
		}
	}
	for range 3 {
		e.clock.Add(time.Minute)
		_ = e.tick()
	}
	e.b.accountsMu.RLock()
	n := len(e.b.accounts)
	e.b.accountsMu.RUnlock()
	if n != 0 {
		t.Fatalf("%d accounts kept in memory for names whose every write was refused", n)
	}
}

// TestStandbyWritesNothingForNamedAccounts (a check that held, kept
// as evidence): a performance standby that learns of named accounts by
// Invalidate, lists, reads and ticks them, through expiry, never writes.
func TestStandbyWritesNothingForNamedAccounts(t *testing.T) {
	active := newTestEnv(t)
	active.ownAccounts()
	active.configureAccount("a", nil)
	active.configureAccount("b", nil)
	standby := newTestEnv(t, withReplicationState(consts.ReplicationPerformanceStandby))
	standby.storage.Storage = active.storage.Storage
	standby.b.now, standby.b.mono = active.clock.Now, active.clock.Mono
	for _, n := range []string{"a", "b", "gone"} {
		standby.b.invalidate(context.Background(), accountsPrefix+n)
	}
	puts := active.storage.puts.Load()
	for range 70 {
		_ = standby.tick()
		_, _ = standby.request(logical.ListOperation, "accounts/", nil)
		_, _ = standby.request(logical.ReadOperation, "token/a", nil)
		_, _ = standby.request(logical.ReadOperation, "status/b", nil)
		_, _ = standby.request(logical.ReadOperation, "metrics", nil)
		active.clock.Add(time.Minute)
	}
	if n := standby.storage.puts.Load(); n != 0 {
		t.Errorf("the standby wrote %d times", n)
	}
	if active.storage.puts.Load() != puts || active.fake.Stats().RefreshCalls != 0 {
		t.Errorf("the standby called or wrote: %+v", active.fake.Stats())
	}
}

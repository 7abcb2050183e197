package teletracker

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// TestReviewForgottenAccountResurrectedRefreshesTwice: a token read of x
// whose existence check (peekRecord's storage Get, outside any lock) is
// slow, while x is deleted, forgotten by a tick and written again, goes on
// with the forgotten account object: it publishes onto it and schedules
// it, so the mount then holds two accounts for x, each with its own lock.
// A tick brings both up to date at once: x's refresh token is sent twice.
func TestReviewForgottenAccountResurrectedRefreshesTwice(t *testing.T) {
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

// TestReviewListSurvivesOneAccountsStorageFailure: the fleet's LIST fails
// as a whole (500, no names) when one account's entry cannot be read,
// although every other account's health is known: one account's storage
// failure fails the fleet's read.
func TestReviewListSurvivesOneAccountsStorageFailure(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("broken", nil)
	e.configureAccount("fine", nil)
	e.b.invalidate(context.Background(), accountsPrefix+"broken") // its health must be read from storage
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == accountsPrefix+"broken" }}
	resp, err := e.handle(s, logical.ListOperation, "accounts/", nil)
	if err != nil || resp.IsError() {
		t.Fatalf("LIST with broken's entry unreadable: resp=%v err=%v; fine's health is lost with it", resp, err)
	}
	if keys, _ := resp.Data["keys"].([]string); !slices.Contains(keys, "fine") {
		t.Fatalf("fine not listed: %v", resp.Data)
	}
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

// TestReviewCleanStoresEachHeldRecordWithoutWaitingForAnother: Clean makes
// its last attempt to store each account's held record one account after
// another, each with its own cleanTimeout: the default account's hanging
// Put delays named account x's last attempt by 5 s (with N accounts held,
// N times that), so x's newest refresh token, held in memory alone, waits
// on another account's storage to be saved before the process goes.
func TestReviewCleanStoresEachHeldRecordWithoutWaitingForAnother(t *testing.T) {
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

// TestReviewTickDoesNotWaitForADueAccountsLockHolder: a tick that finds
// account slow due while a read's refresh of slow hangs upstream under
// slow's lock blocks on that lock (apply, not a try): the mount's tick
// lasts as long as slow's call (up to request_timeout and two storage
// timeouts), and Vault starts no other tick of the mount meanwhile.
func TestReviewTickDoesNotWaitForADueAccountsLockHolder(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	g := newGate(t, e)
	e.configureAccount("slow", map[string]interface{}{"base_url": g.url, "request_timeout": "30s"})
	e.configureAccount("quick", nil)
	e.clock.Add(51 * time.Minute) // both due
	g.close()
	read := make(chan struct{})
	go func() { defer close(read); _, _ = e.request(logical.ReadOperation, "token/slow", nil) }()
	<-g.arrived // slow's refresh is upstream, its lock held
	gen := e.generation("quick")
	finishes(t, "a tick while slow's call hangs", g.open, func() { _ = e.tick() })
	if e.generation("quick") != gen+1 {
		t.Fatal("quick not refreshed by the tick")
	}
	g.open()
	<-read
	e.wantNoReuse()
}

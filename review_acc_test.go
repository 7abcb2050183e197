package teletracker

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// TestReviewRecreateRacingForgetMakesTwoAccounts: account x was deleted and
// its waits are over, so a tick forgets it. A config write that recreates
// x and got x's in-memory account before the tick's forget (it waits on
// x's lock while the tick reads x's entry) goes on with the forgotten
// account: it logs in and stores x under a lock no one else takes. The
// next request makes a second account for x, with a lock of its own, and
// both are scheduled: on the tick they fall due together and both send the
// one refresh token.
func TestReviewRecreateRacingForgetMakesTwoAccounts(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("x", nil)
	e.mustRequest(logical.DeleteOperation, "accounts/x", nil)
	e.clock.Add(time.Minute) // x's waits are over: the next tick forgets it
	a1 := e.b.account("x")

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
	if inMap != a1 {
		t.Errorf("x was recreated by an account the mount no longer knows (in memory: %p, writer: %p)", inMap, a1)
	}

	// Another request for x: the mount makes a second account for it.
	e.mustRequest(logical.ReadOperation, "token/x", nil)
	a2 := e.b.account("x")
	if a2 != a1 {
		t.Errorf("two accounts in memory for x: the recreated one (%p) and a new one (%p), each with its own lock", a1, a2)
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

// TestReviewListSurvivesOneAccountsStorageFailure: storage that fails
// every read of account broken's entry fails the LIST of the whole fleet,
// where status/broken says degraded and fine is healthy: one account's
// storage failure must not fail another's reads.
func TestReviewListSurvivesOneAccountsStorageFailure(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("broken", nil)
	e.configureAccount("fine", nil)
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == accountsPrefix+"broken" }}
	e.b.invalidate(context.Background(), accountsPrefix+"broken") // another node wrote it
	resp, err := e.handle(s, logical.ListOperation, "accounts/", nil)
	if err != nil || resp.IsError() {
		t.Fatalf("LIST accounts/ with one account's entry unreadable: resp=%v err=%v, want fine listed (and broken shown degraded)", resp, err)
	}
	if keys, _ := resp.Data["keys"].([]string); len(keys) == 0 {
		t.Fatalf("LIST accounts/: %v", resp.Data)
	}
}

// TestReviewMetricsCountAccountWhoseEntryCannotBeRead: an account whose
// entry storage cannot give back is degraded by status (nothing can be
// refreshed), but the metrics leave it out: not counted by state, no
// series of its own, so the alert that names accounts needing attention
// never fires for it.
func TestReviewMetricsCountAccountWhoseEntryCannotBeRead(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("broken", nil)
	e.configureAccount("fine", nil)
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == accountsPrefix+"broken" }}
	e.b.invalidate(context.Background(), accountsPrefix+"broken")
	e.clock.Add(51 * time.Minute)
	_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: s})
	st := e.mustRequest(logical.ReadOperation, "status/broken", nil).Data
	if st["state"] != stateDegraded {
		t.Fatalf("setup: status/broken %v", st)
	}
	f := e.scrape()
	total := 0.0
	for _, state := range accountStates {
		total += value(t, f, "teletracker_accounts", "state="+state)
	}
	if total != 2 {
		t.Errorf("teletracker_accounts counts %v accounts of 2", total)
	}
	found := false
	for _, m := range f["teletracker_account_state"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "account" && l.GetValue() == "broken" {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no teletracker_account_state series for broken, which status says is %v (%v)", st["state"], st["last_error"])
	}
}

// TestReviewDeleteByAnotherNodeDuringLoginStands: as
// TestDeleteByAnotherNodeDuringRefreshStands, but the call under way is a
// login (the session was lost, a password is stored): a login stores no
// marker, so nothing looks at storage before its result is stored, and
// the deleted account comes back with a new session.
func TestReviewDeleteByAnotherNodeDuringLoginStands(t *testing.T) {
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

// TestReviewTickDoesNotWaitForAnotherAccountsLock: account slow's rotate
// hangs upstream under slow's lock. The mount's tick refreshes quick, but
// then waits on slow's lock, and does not return until slow's call ends.
// Vault runs one periodic function per mount at a time (RollbackManager.
// startOrLookupRollback returns the one in flight), so every tick of every
// other account of the mount is skipped for as long as slow's lock is
// held: up to maxPaceWait + request_timeout + 2 storage timeouts.
func TestReviewTickDoesNotWaitForAnotherAccountsLock(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	g := newGate(t, e)
	e.configureAccount("slow", map[string]interface{}{"base_url": g.url, "request_timeout": "30s"})
	e.configureAccount("quick", nil)
	e.clock.Add(51 * time.Minute) // both due
	g.close()
	rotated := make(chan struct{})
	go func() { defer close(rotated); _, _ = e.request(logical.UpdateOperation, "rotate/slow", nil) }()
	<-g.arrived
	finishes(t, "the mount's tick while slow's lock is held", g.open, func() { _ = e.tick() })
	g.open()
	<-rotated
}

// TestReviewRefusedWriteLeavesNoAccountInMemory: a config write to a new
// name that is refused for its input (400) makes the account in memory
// and never forgets it (it is never scheduled, so no tick looks at it):
// a script writing bad configs under new names grows the mount's memory
// without bound.
func TestReviewRefusedWriteLeavesNoAccountInMemory(t *testing.T) {
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

// TestReviewMetricsSurviveDefaultAccountsStorageFailure: on a mount that
// uses named accounts alone, the default account has no snapshot, so each
// scrape reads its entry from storage; when that read fails, the whole
// scrape fails, and with it every named account's series and the fleet's
// counts: one account's storage failure fails the others' reads.
func TestReviewMetricsSurviveDefaultAccountsStorageFailure(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("fine", nil)
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == recordKey }}
	resp, err := e.handle(s, logical.ReadOperation, "metrics", nil)
	if err != nil || resp.IsError() {
		t.Fatalf("metrics with the (unused) default account's entry unreadable: resp=%v err=%v", resp, err)
	}
}

// TestReviewCleanedMountAddsNoNeed: Clean takes each account's need out of
// the process's (shared with every other mount), but a request that
// reaches the mount after Clean publishes its record again and adds its
// need back, for good: the process's calls_per_second_needed stays
// inflated by a mount that is gone, toward a false "over budget".
func TestReviewCleanedMountAddsNoNeed(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute)
	e.b.clean(context.Background())
	if needed, _ := e.b.proc.capacity(); needed != 0 {
		t.Fatalf("setup: %v needed after Clean", needed)
	}
	_, _ = e.request(logical.UpdateOperation, "rotate", nil) // a request still routed to the old mount
	if needed, _ := e.b.proc.capacity(); needed != 0 {
		t.Errorf("the process needs %v calls a second for a mount that was cleaned", needed)
	}
}

// TestReviewStandbyWritesNothingForNamedAccounts (a check that held, kept
// as evidence): a performance standby that learns of named accounts by
// Invalidate, lists, reads and ticks them, through expiry, never writes.
func TestReviewStandbyWritesNothingForNamedAccounts(t *testing.T) {
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

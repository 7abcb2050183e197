package teletracker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// fleet configures n named accounts prefix-0, prefix-1, ... with extra.
func (e *testEnv) fleet(prefix string, n int, extra map[string]interface{}) {
	e.t.Helper()
	for i := range n {
		e.configureAccount(fmt.Sprintf("%s-%d", prefix, i), extra)
	}
}

// TestIdleTickReadsNoStorage: once loaded, a tick reads no storage for
// accounts whose snapshot stands and that are not due.
func TestIdleTickReadsNoStorage(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.fastBudget()
	e.configure(nil)
	e.fleet("idle", 20, nil)
	if err := e.tick(); err != nil { // the full pass
		t.Fatal(err)
	}
	e.storage.gets.Store(0)
	for range 30 {
		e.clock.Add(time.Minute)
		if err := e.tick(); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.storage.gets.Load(); n != 0 {
		t.Fatalf("30 idle ticks over 21 accounts read storage %d times", n)
	}
	e.b.scheduleAll(e.clock.Now()) // every account looked at, as after the clock was set back
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if n := e.storage.gets.Load(); n != 0 {
		t.Fatalf("a tick over 21 accounts whose snapshots stand read storage %d times", n)
	}
	if st := e.fake.Stats(); st.RefreshCalls != 0 {
		t.Fatalf("setup: %d refreshes in the first 30 minutes", st.RefreshCalls)
	}
}

// TestTickWorkGrowsWithDueAccounts: a tick over 2 due accounts among 50
// idle ones does what it does among 5: the same storage reads and writes,
// the same calls, and it does not so much as take an idle account's lock
// (the test holds them all).
func TestTickWorkGrowsWithDueAccounts(t *testing.T) {
	work := func(idle int) (gets, puts, calls int64) {
		e := newTestEnv(t)
		e.fastBudget()
		e.fleet("idle", idle, nil)                                         // due at 50 minutes
		e.fleet("due", 2, map[string]interface{}{"refresh_margin": "29m"}) // due at 31 minutes
		_ = e.tick()                                                       // the full pass
		e.clock.Add(32 * time.Minute)
		e.storage.gets.Store(0)
		e.storage.puts.Store(0)
		before := e.fake.Stats().RefreshCalls
		var locked []*account
		for i := range idle {
			a := e.b.account(fmt.Sprintf("idle-%d", i))
			a.refreshMu.Lock()
			locked = append(locked, a)
		}
		var once sync.Once
		unlock := func() {
			once.Do(func() {
				for _, a := range locked {
					a.refreshMu.Unlock()
				}
			})
		}
		var err error
		finishes(t, "a tick over the due accounts", unlock, func() { err = e.tick() })
		unlock()
		if err != nil {
			t.Fatal(err)
		}
		return e.storage.gets.Load(), e.storage.puts.Load(), e.fake.Stats().RefreshCalls - before
	}
	g5, p5, c5 := work(5)
	g50, p50, c50 := work(50)
	if c5 != 2 || c50 != 2 {
		t.Fatalf("setup: %d and %d refreshes, want the 2 due", c5, c50)
	}
	if g50 != g5 || p50 != p5 {
		t.Fatalf("a tick among 50 idle accounts read %d and wrote %d; among 5, %d and %d", g50, p50, g5, p5)
	}
}

// TestScheduleDueInOrder: the schedule gives the accounts due, the
// earliest first, and keeps the others; set moves an account, never
// takes it out of the schedule.
func TestScheduleDueInOrder(t *testing.T) {
	var s schedule
	b := &backend{}
	accounts := make([]*account, 5)
	for i := range accounts {
		accounts[i] = newAccount(b, fmt.Sprintf("a%d", i))
		s.set(accounts[i], testStart.Add(time.Duration(5-i)*time.Minute))
	}
	s.set(accounts[0], testStart.Add(30*time.Second)) // moved: 5 minutes to half a minute
	s.remove(accounts[1])
	due := s.due(testStart.Add(150 * time.Second))
	var names []string
	for _, a := range due {
		names = append(names, a.name)
	}
	if got := fmt.Sprint(names); got != "[a0 a4 a3]" {
		t.Fatalf("due at 2m30s: %s, want [a0 a4 a3]", got)
	}
	if s.heap.Len() != 1 || s.heap[0] != accounts[2] || accounts[1].index != -1 {
		t.Fatalf("left in the schedule: %d accounts", s.heap.Len())
	}
	if due := s.due(testStart.Add(150 * time.Second)); len(due) != 0 {
		t.Fatalf("popped twice: %d", len(due))
	}
}

// A tick that makes the full pass (Initialize could not) refreshes what it
// finds due at once, though Vault's clock moves while it loads: each
// account is scheduled at a time read during the load, and the tick looks
// for what is due after it.
func TestFirstTickLoadRefreshesDueAccounts(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b = restart(t, e) // a new node; its Initialize did not load
	var reads atomic.Int64
	e.b.now = func() time.Time { return e.clock.Now().Add(time.Duration(reads.Add(1)) * time.Microsecond) }
	e.clock.Add(55 * time.Minute) // hour tokens, 10 m margin: due
	before := e.fake.Stats()
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if after := e.fake.Stats(); after.RefreshCalls+after.LoginCalls == before.RefreshCalls+before.LoginCalls {
		t.Fatal("the first tick loaded a due account but did not refresh it")
	}
}

// TestTickDoesNotWaitForALockHolder: a tick that finds account slow due
// while a read's refresh of slow hangs upstream under slow's lock does not
// wait for it: it brings the others up to date and leaves slow to the next.
func TestTickDoesNotWaitForALockHolder(t *testing.T) {
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

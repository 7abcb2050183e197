// Regression tests from the fourth review (the pacer, the shared transports
// and the idle tick): each failed before the fix that followed it.

package teletracker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/time/rate"
)

// R4-1: pace is documented "not past Clean", but when the pacer has a turn
// free it returns at once without looking at b.life: a request that reaches
// the mount after Clean began (a read queued on refreshMu before Clean, or
// any request once Clean returned) still calls Teletracker, and takes a
// transport from the process that nothing releases.
func TestReview4NoCallAfterClean(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	before := e.fake.Stats()
	e.clock.Add(49 * time.Minute) // due at this tick
	e.b.clean(context.Background())
	if n := len(e.b.proc.transports); n != 0 {
		t.Fatalf("setup: %d transports after Clean", n)
	}
	_ = e.tick()
	st := e.fake.Stats()
	if n := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls; n != 0 {
		t.Errorf("%d call(s) to Teletracker after Clean", n)
	}
	if n := len(e.b.proc.transports); n != 0 {
		t.Errorf("%d transport(s) taken after Clean, never released", n)
	}
}

// R4-2: the pacer spaces turns, not sends. A refresh stores its marker
// between its turn and its send; a call whose marker Put is slow is sent
// late, on top of the calls whose turns came later: more than 10 calls a
// second reach Teletracker from one process.
func TestReview4PacedSendsOverTenPerSecond(t *testing.T) {
	p := newProcess()
	var mu sync.Mutex
	var arrivals []time.Time
	const slowMounts, fastMounts = 5, 9
	envs := make([]*testEnv, slowMounts+fastMounts)
	for i := range envs {
		e := newTestEnv(t)
		rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/auth/refresh" || r.URL.Path == "/auth/login" {
				mu.Lock()
				arrivals = append(arrivals, time.Now())
				mu.Unlock()
			}
			e.fake.ServeHTTP(w, r)
		}))
		t.Cleanup(rec.Close)
		e.configure(map[string]interface{}{"base_url": rec.URL})
		e.b.proc, e.b.client = p, nil
		e.clock.Add(49 * time.Minute)
		envs[i] = e
	}
	mu.Lock()
	arrivals = nil
	mu.Unlock()
	var wg sync.WaitGroup
	for i, e := range envs {
		if i == slowMounts {
			time.Sleep(50 * time.Millisecond) // the slow ones take the first turns
		}
		var s logical.Storage = e.storage
		if i < slowMounts {
			s = &slowPuts{Storage: e.storage, delay: 500 * time.Millisecond} // a slow Raft commit
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: s})
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	sort.Slice(arrivals, func(i, j int) bool { return arrivals[i].Before(arrivals[j]) })
	peak := 0
	for i := range arrivals {
		n := 0
		for j := i; j < len(arrivals) && arrivals[j].Sub(arrivals[i]) < time.Second; j++ {
			n++
		}
		peak = max(peak, n)
	}
	if len(arrivals) != len(envs) {
		t.Fatalf("setup: %d calls, want %d", len(arrivals), len(envs))
	}
	if peak > 10 {
		t.Fatalf("%d calls reached Teletracker within one second, over the 10 promised", peak)
	}
}

// R4-3: a read of a due but valid token that the pacer defers publishes a
// snapshot whose actAt is zero: every later read takes refreshMu, reads
// storage and reserves (and cancels) a turn of the shared pacer, for as long
// as the pacer is busy (a herd: exactly when reads are many).
func TestReview4DeferredDueReadStaysOffStorage(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b.proc.pacer = rate.NewLimiter(rate.Every(time.Hour), 1)
	e.b.proc.pacer.Allow()        // other mounts hold the next turns
	e.clock.Add(55 * time.Minute) // due for reads (refreshAt 50 min), valid until 59 min
	e.readToken()
	gets := e.storage.gets.Load()
	for i := 0; i < 100; i++ {
		e.readToken()
	}
	if n := e.storage.gets.Load() - gets; n > 1 {
		t.Fatalf("100 reads of a valid token made %d storage reads", n)
	}
}

// R4-1, its harm: Vault replaces a mount's backend (plugin reload, remount)
// and the old one is Cleaned while a request still reaches it. The new
// backend's tick loaded the record and waits for its turn (up to 45 s, with
// the record loaded before the wait); the old one, past Clean, finds its
// pacer free and spends the refresh token at once. The new one then stores
// its marker over the successor and sends the spent token again.
func TestReview4CleanedBackendRacesItsSuccessor(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	old := e.b
	old.clean(context.Background())
	b2 := restart(t, e)
	t.Cleanup(func() { b2.Cleanup(context.Background()) })
	b2.proc.pacer = rate.NewLimiter(rate.Every(500*time.Millisecond), 1)
	b2.proc.pacer.Allow() // another mount of the new process took the turn
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

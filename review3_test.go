package teletracker

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// Regression tests from the review of the scale changes: the process's pacer
// must not eat the time a result needs to be stored, nor hold up reads of a
// valid token or Clean, nor hide an expired token; transports go with their
// mounts.

// slowPuts is storage whose Puts take delay, and fail when their context
// ends first (as across the plugin's gRPC boundary).
type slowPuts struct {
	logical.Storage
	delay time.Duration
}

func (s *slowPuts) Put(ctx context.Context, e *logical.StorageEntry) error {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Storage.Put(ctx, e)
}

// reserveOthers takes n turns of the process's pacer at the mount's
// monotonic now, as n other mounts of the process falling due together do.
func reserveOthers(e *testEnv, n int) {
	for i := 0; i < n; i++ {
		e.b.proc.pacer.ReserveN(e.clock.Mono(), 1)
	}
}

// TestPacedRefreshResultIsStored: the pacer's wait (up to maxPaceWait) does
// not come out of the time the marker, the call (up to request_timeout) and
// the storing of its result need: a refresh Teletracker answers within
// request_timeout is stored, though storage is slow.
func TestPacedRefreshResultIsStored(t *testing.T) {
	t.Parallel() // it waits 15 s for its turn, then 27 s for its answer, on timers
	pacedRefresh(t, 148)
}

func pacedRefresh(t *testing.T, others int) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed, "request_timeout": "30s"})
	e.clock.Add(49 * time.Minute)
	reserveOthers(e, others)                                                       // 148: this mount's turn comes in 14.8 s
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: 27200 * time.Millisecond}) // answered within request_timeout
	slow := &slowPuts{Storage: e.storage, delay: 2 * time.Second}
	start := time.Now()
	_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: slow})
	t.Logf("tick took %v; Teletracker performed %d refreshes", time.Since(start), e.fake.Stats().Refreshes)
	if st := e.fake.Stats(); st.Refreshes != 2 {
		t.Fatalf("setup: %+v", st)
	}
	if r := e.stored(); r.State != stateReady || e.b.held.Load() != nil {
		// Vault crashes before the next tick: the next node finds the marker.
		b2 := restart(t, e)
		e.clock.Add(time.Minute)
		_ = b2.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
		t.Fatalf("a refresh Teletracker answered within request_timeout was not stored (stored state %q, held=%v); after a crash the next node ends in %q",
			r.State, e.b.held.Load() != nil, e.stored().State)
	}
}

// R3-3: a mount whose calls are deferred by the pacer tick after tick lets
// its token expire with no failure recorded: status says healthy while token
// reads fail.
func TestStatusNotHealthyWhenDeferralsExpireToken(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(48 * time.Minute)
	for i := 0; i < 13; i++ { // ticks at 49 .. 61 min
		e.clock.Add(time.Minute)
		reserveOthers(e, 460) // 460 other mounts in the queue: > 45 s
		if err := e.tick(); err != nil {
			t.Fatal(err)
		}
	}
	reserveOthers(e, 460)
	resp, err := e.request(logical.ReadOperation, "token", nil)
	s := e.status()
	t.Logf("read: %d %v; status %v", statusOf(resp, err), err, s)
	if statusOf(resp, err) == http.StatusOK {
		t.Fatal("setup: the token was still served")
	}
	if s["state"] == stateHealthy {
		t.Fatalf("status healthy (failures %v, next_attempt_at %q) while the token expired at %v and reads fail",
			s["consecutive_failures"], s["next_attempt_at"], s["expires_at"])
	}
}

// R3-2: a read that finds its still-valid token due (ticks deferred or
// failing) waits for the process pacer, up to 45 s, instead of serving the
// valid token at once.
func TestReadOfValidTokenDoesNotWaitForPacer(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(51 * time.Minute) // due (refresh at 50 min), valid until 59 min
	reserveOthers(e, 100)         // other mounts' calls: the next turn is 10 s away
	start := time.Now()
	resp := e.readToken()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("a read of a valid token (expires in 9 min) took %v waiting for the process pacer (warnings %v)", took, resp.Warnings)
	}
}

// R3-6: Clean (unmount, reload, seal) waits while a tick waits its turn, and
// the call not yet sent when Clean began is then sent anyway.
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

// R3-4: the process keeps a transport (and its copy of the system roots)
// for every ca_cert any mount ever used, after the mounts changed or went.
func TestTransportsReleasedWithTheirMounts(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	for i := 0; i < 3; i++ {
		e.clock.Add(time.Minute)
		e.configure(map[string]interface{}{"ca_cert": selfSignedPEM(t)})
	}
	e.b.Cleanup(context.Background())
	e.b.proc.mu.Lock()
	n := len(e.b.proc.transports)
	e.b.proc.mu.Unlock()
	if n > 1 {
		t.Fatalf("%d transports kept for one mount that now uses one ca_cert (and was unmounted)", n)
	}
}

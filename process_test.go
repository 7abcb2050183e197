package teletracker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// TestMountsShareOnePacer: mounts of one process that fall due together
// call Teletracker no faster than the pacer's turns between them, and each once.
func TestMountsShareOnePacer(t *testing.T) {
	const mounts = 25
	p := newProcess(DefaultCallsPerSecond)
	envs := make([]*testEnv, mounts)
	for i := range envs {
		envs[i] = newTestEnv(t)
		envs[i].configure(nil)
		envs[i].b.proc = p // as NewFactory does for every mount it makes
		envs[i].clock.Add(49 * time.Minute)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, e := range envs {
		wg.Add(1)
		go func() { defer wg.Done(); _ = e.tick() }()
	}
	wg.Wait()
	// Paced at the pacer's turns with a burst of one, n calls take (n-1)/rate at
	// least, however fast or loaded the machine is.
	if took, least := time.Since(start), time.Duration(mounts-1)*newPacer(DefaultCallsPerSecond*turnShare).interval; took < least {
		t.Fatalf("%d calls in %v, under the %v the pace allows", mounts, took, least)
	}
	for i, e := range envs {
		if st := e.fake.Stats(); st.Refreshes != 1 || st.RefreshCalls != 1 {
			t.Fatalf("mount %d: %+v, want exactly one refresh", i, st)
		}
	}
	if len(p.transports) != 1 {
		t.Fatalf("%d HTTP transports for mounts without a ca_cert, want one", len(p.transports))
	}
}

// TestPacedCallDeferred: a call that would wait longer than maxPaceWait for
// its turn is deferred: no marker, no failure, nothing stored, and the
// answer says when.
func TestPacedCallDeferred(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b.proc.pacer = newPacer(1 / (time.Hour).Seconds())
	holdTurns(e.b.proc.pacer, e.clock.Mono(), 1) // the config write's turn, taken
	before := e.stored()
	e.clock.Add(time.Minute)
	resp, err := e.request(logical.UpdateOperation, "rotate", nil)
	if statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	if r := e.stored(); r.State != stateReady || r.Failures != 0 || r.LastCallAt != before.LastCallAt || e.fake.Stats().RefreshCalls != 0 {
		t.Fatalf("a deferred call changed the record or called: %+v", r)
	}
	if err := e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatalf("a deferred tick is no error for Vault to log: %v", err)
	}
}

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
		holdTurns(e.b.proc.pacer, e.clock.Mono(), 1)
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
	if r := e.stored(); r.State != stateReady || e.a().held.Load() != nil {
		// Vault crashes before the next tick: the next node finds the marker.
		b2 := restart(t, e)
		e.clock.Add(time.Minute)
		_ = b2.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
		t.Fatalf("a refresh Teletracker answered within request_timeout was not stored (stored state %q, held=%v); after a crash the next node ends in %q",
			r.State, e.a().held.Load() != nil, e.stored().State)
	}
}

// A read that finds its still-served token due (ticks deferred or
// failing) does not wait for the process's pacer: it serves the token.
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

// The process drops a transport (and its copy of the system roots) once no
// mount uses its ca_cert any more.
func TestIdleTransportsDropped(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	for i := 0; i < 3; i++ {
		e.clock.Add(time.Minute)
		e.configure(map[string]interface{}{"ca_cert": selfSignedPEM(t), "password": "demo-password"})
	}
	e.b.proc.dropIdleTransports(e.clock.Mono().Add(transportIdle))
	e.b.proc.mu.Lock()
	n := len(e.b.proc.transports)
	e.b.proc.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d transports kept though no call used them for %v", n, transportIdle)
	}
}

// transportsInUse is how many of p's transports a call uses now.
func transportsInUse(p *process) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.transports {
		if s.users > 0 {
			n++
		}
	}
	return n
}

// The pacer's turns and the spacing of sends keep the calls reaching
// Teletracker from one process under ten a second, even when a marker's
// slow Put delays a call past the turns that came after it.
func TestSendsSpacedUnderTenPerSecond(t *testing.T) {
	p := newProcess(DefaultCallsPerSecond)
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
		e.b.proc = p
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

// holdTurns takes n turns of p at now, as other mounts falling due
// together do.
func holdTurns(p *pacer, now time.Time, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next = later(p.next, now).Add(time.Duration(n) * p.interval)
}

// TestLoopbackOnly: the plain-http dialer's check passes loopback
// addresses, in every form, and nothing else.
func TestLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8200": true, "127.1.2.3:80": true, "[::1]:8200": true, "[::ffff:127.0.0.1]:80": true,
		"10.0.0.1:80": false, "192.0.2.2:8200": false, "[2001:db8::1]:80": false, "[fe80::1%lo]:80": false,
		"0.0.0.0:80": false, "[::]:80": false, "localhost:80": false, "127.0.0.1": false,
	} {
		if err := loopbackOnly("tcp", addr, nil); (err == nil) != ok {
			t.Errorf("%s: %v, want allowed %v", addr, err, ok)
		}
	}
}

// TestPlainHTTPDialsLoopbackOnly: credentials sent in cleartext reach a
// loopback address only. The plain-http transport refuses, before
// connecting, an address that is not loopback (the check sees the address
// a name such as "localhost" resolved to, so this is what DNS deciding
// would give), and uses no proxy; 127.0.0.1 and localhost work, and https
// transports are not held to it.
func TestPlainHTTPDialsLoopbackOnly(t *testing.T) {
	p := newProcess(DefaultCallsPerSecond)
	plain, err := p.transport(transportKey{plain: true})
	if err != nil {
		t.Fatal(err)
	}
	secure, err := p.transport(transportKey{})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Proxy != nil {
		t.Error("the plain-http transport would send credentials through a proxy")
	}
	ctx := context.Background()
	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	_, port, _ := net.SplitHostPort(local.Addr().String())
	for _, addr := range []string{local.Addr().String(), net.JoinHostPort("localhost", port)} {
		c, err := plain.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		c.Close()
	}

	ip := nonLoopbackIP(t)
	remote, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	defer remote.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := remote.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	if c, err := plain.DialContext(ctx, "tcp", remote.Addr().String()); err == nil || !strings.Contains(err.Error(), "loopback addresses only") {
		if c != nil {
			c.Close()
		}
		t.Errorf("plain http dialled %s: %v", remote.Addr(), err)
	}
	_, err = newClient(&config{BaseURL: "http://" + remote.Addr().String(), RequestTimeout: 2 * time.Second}, plain, time.Now).refresh(ctx, "rt")
	var ue *upstreamError
	if !errors.As(err, &ue) || ue.kind != failTransient || !strings.Contains(err.Error(), "cannot connect: plain http is sent to loopback addresses only") {
		t.Errorf("a refused address is not a call that was never sent: %v", err)
	}
	c, err := secure.DialContext(ctx, "tcp", remote.Addr().String())
	if err != nil {
		t.Fatalf("the https transport is held to loopback too: %v", err)
	}
	c.Close()
	waitUntil(t, "the https transport's connection", func() bool { return accepted.Load() == 1 })
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections reached %s, want only the https transport's", n, ip)
	}
}

// nonLoopbackIP is an IPv4 address of this machine that is not loopback;
// the test is skipped when there is none.
func nonLoopbackIP(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skip(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP
		}
	}
	t.Skip("no non-loopback address to listen on")
	return nil
}

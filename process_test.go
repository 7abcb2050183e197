package teletracker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/time/rate"
)

// TestMountsShareOnePacer: mounts of one process that fall due together
// call Teletracker no faster than maxCallRate between them, and each once.
func TestMountsShareOnePacer(t *testing.T) {
	const mounts = 25
	p := newProcess()
	envs := make([]*testEnv, mounts)
	for i := range envs {
		envs[i] = newTestEnv(t)
		envs[i].configure(nil)
		envs[i].b.proc, envs[i].b.client = p, nil // as NewFactory does for every mount it makes
		envs[i].clock.Add(49 * time.Minute)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, e := range envs {
		wg.Add(1)
		go func() { defer wg.Done(); _ = e.tick() }()
	}
	wg.Wait()
	// Paced at maxCallRate with a burst of one, n calls take (n-1)/rate at
	// least, however fast or loaded the machine is.
	if took, least := time.Since(start), time.Duration(mounts-1)*time.Second/maxCallRate; took < least {
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
	e.b.proc.pacer = rate.NewLimiter(rate.Every(time.Hour), 1)
	e.b.proc.pacer.Allow() // the config write's turn, taken
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
	p := newProcess()
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

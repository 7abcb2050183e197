package teletracker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/idna"

	"github.com/hashicorp/vault/sdk/logical"
)

// process.go holds what the plugin process shares among its mounts and
// their accounts (one process serves every mount of the engine): the call
// budget (the pacer, pacer.go, and the spacing of sends) and the HTTP
// transports, one per ca_cert, so that connections and TLS state do not
// grow with the mounts. NewFactory makes it once; there is no package
// state.

const (
	// DefaultCallsPerSecond is the process's budget: at most this many
	// calls a second reach Teletracker, all mounts and accounts together (a
	// burst of a thousand from one address is what a rate limiter answers
	// with 429). The plugin's -calls-per-second argument raises it.
	DefaultCallsPerSecond = 10
	// turnShare is the share of the budget the pacer's turns give: the
	// rest is room for the time between a call's turn and its sending.
	turnShare = 0.9
	// MinCallsPerSecond and MaxCallsPerSecond bound the budget a process
	// may be given.
	MinCallsPerSecond = 1
	MaxCallsPerSecond = 1000
	// transportIdle is how long a transport no call uses is kept.
	transportIdle = 10 * time.Minute
)

// process is what one plugin process's mounts share.
type process struct {
	// budget is the calls a second the process may make.
	budget float64
	// pacer hands out the calls' turns: 0.9 of budget a second, with room
	// for the time between a call's turn and its sending.
	pacer *pacer
	// sendGap is the least time between two sends of the process: a turn
	// is taken before a refresh's marker is stored, so a slow Put would
	// otherwise send it on top of the calls whose turns came later. A
	// little over 1/budget, so that what delays a call on its way cannot
	// bring more than budget within a second.
	sendGap time.Duration
	// mu guards transports and needed.
	mu sync.Mutex
	// transports are the HTTP transports by what they trust and carry.
	transports map[transportKey]*sharedTransport
	// needed is the calls a second all accounts of all mounts need to keep
	// their sessions, each a call per rotation (capacity.go).
	needed float64
	// released is when memory was last released (memory.go), on mono.
	released atomic.Pointer[time.Time]
	// sendMu orders the sends; lastSend is when the last one went.
	sendMu   sync.Mutex
	lastSend time.Time
	// roundTripper, when set, carries the calls of every mount instead of
	// the transports (the simulation's Teletracker, in process).
	roundTripper http.RoundTripper
	// mounts numbers the mounts, for the pacer's fair share.
	mounts atomic.Uint64
}

// newProcess is a process whose calls reach Teletracker at most budget
// times a second.
func newProcess(budget float64) *process {
	return &process{
		budget:     budget,
		pacer:      newPacer(budget * turnShare),
		sendGap:    time.Duration(1.05 * float64(time.Second) / budget),
		transports: map[transportKey]*sharedTransport{},
	}
}

// transportKey names one of the process's transports: the ca_cert it
// trusts ("" for none) and the one host it trusts it for, and whether it
// carries plain http.
type transportKey struct {
	caPEM, caHost string
	plain         bool
}

// transportFor is the key of the transport cfg's calls use. Anything but
// https is plain http, to a loopback host (parseBaseURL).
func transportFor(cfg *config) transportKey {
	key := transportKey{caPEM: cfg.CACert, plain: !strings.HasPrefix(cfg.BaseURL, "https://")}
	if u, err := url.Parse(cfg.BaseURL); err == nil && key.caPEM != "" {
		// As Go's transport dials it: a non-ASCII name in its ASCII form.
		key.caHost = u.Hostname()
		if ascii, err := idna.Lookup.ToASCII(key.caHost); err == nil {
			key.caHost = ascii
		}
	}
	return key
}

// sharedTransport is one transport, how many calls use it now, and when
// the last one ended (on mono).
type sharedTransport struct {
	t        *http.Transport
	users    int
	lastUsed time.Time
}

// CheckCallsPerSecond says what is wrong with v as a process's budget.
func CheckCallsPerSecond(v float64) error {
	if !(v >= MinCallsPerSecond && v <= MaxCallsPerSecond) { // NaN too
		return fmt.Errorf("calls per second must be between %d and %d, not %v", MinCallsPerSecond, MaxCallsPerSecond, v)
	}
	return nil
}

// NewFactory returns the factory of one plugin process whose calls reach
// Teletracker at most callsPerSecond times a second: every mount it makes
// shares one process. A budget CheckCallsPerSecond refuses makes no mount.
func NewFactory(callsPerSecond float64) logical.Factory {
	if err := CheckCallsPerSecond(callsPerSecond); err != nil {
		return func(context.Context, *logical.BackendConfig) (logical.Backend, error) { return nil, err }
	}
	p := newProcess(callsPerSecond)
	return func(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
		b := newBackend(p)
		b.storage = conf.StorageView
		if err := b.Setup(ctx, conf); err != nil {
			return nil, err
		}
		return b, nil
	}
}

// pace waits for the turn of a call the record of a allows: never within
// minCallInterval of the account's last call in this process (a.lastCall,
// set by call), on a clock that cannot go back whatever the wall clock and
// the stored times say, and in turn with the process's other calls (the
// earliest deadline first within the mount, and the mount its fair share),
// waiting at most maxWait, and not past Clean. The caller holds refreshMu.
func (a *account) pace(ctx context.Context, deadline time.Time, maxWait time.Duration) error {
	b := a.m
	if since := b.mono().Sub(a.lastCall); !a.lastCall.IsZero() && since < minCallInterval {
		return &rateLimitedError{until: b.now().Add(minCallInterval - since), why: fmt.Sprintf("at most one call every %s", minCallInterval)}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(b.life, cancel)() // Clean stops the wait
	if dl, ok := ctx.Deadline(); ok {
		maxWait = min(maxWait, time.Until(dl)) // the request's own deadline
	}
	eta, ok := b.proc.pacer.turn(ctx, b.mono, b.sleep, b.id, deadline, maxWait)
	switch {
	case b.life.Err() != nil:
		return errCleaned // a request that came after Clean, or a turn that came with it
	case !ok:
		return &rateLimitedError{until: b.now().Add(eta), why: "the plugin's calls to Teletracker, all mounts and accounts together, are paced"}
	}
	return nil
}

// send waits, with sleep, until sendGap has passed since the process's
// last send on the monotonic clock mono, or ctx ends, and then counts the
// caller's call as sent.
func (p *process) send(ctx context.Context, mono func() time.Time, sleep sleeper) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if wait := p.sendGap - mono().Sub(p.lastSend); !p.lastSend.IsZero() && wait > 0 {
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
	p.lastSend = mono()
	return nil
}

// sleeper waits d, or until ctx ends (then it returns ctx's error).
type sleeper func(ctx context.Context, d time.Duration) error

// sleep is the real sleeper.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// client is an HTTP client for one call under cfg, over the process's
// transport for it (or its roundTripper); done gives the transport back
// once the call has ended. now is Vault's clock, mono the monotonic one.
func (p *process) client(cfg *config, now, mono func() time.Time) (c *client, done func(), err error) {
	if p.roundTripper != nil {
		return newClient(cfg, p.roundTripper, now), func() {}, nil
	}
	key := transportFor(cfg)
	t, err := p.transport(key)
	if err != nil {
		return nil, nil, err
	}
	return newClient(cfg, t, now), func() { p.release(key, mono()) }, nil
}

// transport is the process's HTTP transport for key, for one call; release
// gives it back when the call ends.
//
// The plain-http transport sends credentials in cleartext, so it connects
// to loopback addresses only (loopbackOnly: the address dialled, whatever
// /etc/hosts or DNS made of "localhost"), and never through a proxy, which
// would receive them in cleartext: it dials base_url's host itself.
// (Go's ProxyFromEnvironment skips loopback hosts already, but not
// "LOCALHOST".) The https transports use the environment's proxy.
//
// A ca_cert vouches for base_url's host alone: an https proxy on the way is
// dialled trusting the system's roots only (caOnlyFor), as without one.
//
// Every transport speaks HTTP/1.1 alone. Go's HTTP/1 client re-sends a
// POST only when not a byte of it was written; its HTTP/2 client re-sends
// one, body and all, when the server resets its stream or goes away, within
// the one Do: a refresh token would go out twice.
func (p *process) transport(key transportKey) (*http.Transport, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.transports[key]; s != nil {
		s.users++
		return s.t, nil
	}
	pool, err := certPool(key.caPEM)
	if err != nil {
		return nil, err
	}
	// Each call is bounded by its account's request_timeout (the client's
	// timeout and its context); these bound the steps for every call.
	dialer := &net.Dialer{Timeout: maxRequestTimeout, KeepAlive: 30 * time.Second}
	proxy := http.ProxyFromEnvironment
	if key.plain {
		dialer.Control, proxy = loopbackOnly, nil
	}
	t := &http.Transport{
		Proxy:                 proxy,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   maxRequestTimeout,
		ResponseHeaderTimeout: maxRequestTimeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		Protocols:             http1Only,
	}
	if key.caPEM != "" {
		t.DialTLSContext = caOnlyFor(key.caHost, pool, dialer)
	}
	p.transports[key] = &sharedTransport{t: t, users: 1}
	return t, nil
}

// caOnlyFor is the TLS dialer of a transport whose ca_cert, in pool, is
// trusted for host alone. Go's transport dials with it what it reaches
// first over TLS, base_url's host or an https proxy; base_url's host behind
// a proxy gets the transport's TLSClientConfig, which holds pool.
func caOnlyFor(host string, pool *x509.CertPool, dialer *net.Dialer) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if h, _, err := net.SplitHostPort(addr); err == nil && strings.EqualFold(h, host) {
			cfg.RootCAs = pool
		}
		d := &tls.Dialer{NetDialer: dialer, Config: cfg}
		return d.DialContext(ctx, network, addr)
	}
}

// http1Only is the one protocol every transport speaks (see transport).
var http1Only = func() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}()

// loopbackOnly is the plain-http dialer's Control: it refuses any address
// but a loopback one, before connecting. address is the IP and port being
// dialled, after the name was resolved.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("plain http is sent to loopback addresses only, and %s is not one", address)
	}
	return nil
}

// release gives back a call's use of the transport for key, ended at now.
func (p *process) release(key transportKey, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.transports[key]; s != nil {
		s.users--
		s.lastUsed = now
	}
}

// dropIdleTransports closes and drops the transports no call has used for
// transportIdle, as of now on mono.
func (p *process) dropIdleTransports(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, s := range p.transports {
		if s.users <= 0 && now.Sub(s.lastUsed) >= transportIdle {
			s.t.CloseIdleConnections()
			delete(p.transports, key)
		}
	}
}

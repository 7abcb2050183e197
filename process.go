package teletracker

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/time/rate"
)

// process.go holds what the plugin process shares among its mounts (one
// process serves every mount of the engine): the pacer that keeps the calls
// of all mounts together under maxCallRate, and the HTTP transports, one per
// ca_cert (and one for plain http), so that connections and TLS state do not
// grow with the mounts.
// NewFactory makes it once; there is no package state.

const (
	// maxCallRate is how many calls a second the process's turns allow, all
	// mounts together: at most 10 a second reach Teletracker (a burst of a
	// thousand from one address is what a rate limiter answers with 429),
	// with room for the time between a call's turn and its sending.
	maxCallRate = 9
	// maxPaceWait is the longest a call waits for its turn; one that would
	// wait longer is deferred (a tick tries again on the next tick).
	maxPaceWait = 45 * time.Second
	// sendGap is the least time between two sends of the process: a turn
	// is taken before a refresh's marker is stored, so a slow Put would
	// otherwise send it on top of the calls whose turns came later. A
	// little over a tenth of a second, so that what delays a call on its
	// way cannot bring eleven within a second.
	sendGap = 105 * time.Millisecond
)

// process is what one plugin process's mounts share.
type process struct {
	// pacer spaces the process's calls to Teletracker.
	pacer *rate.Limiter
	// mu guards transports.
	mu sync.Mutex
	// transports are the HTTP transports by what they serve, with the
	// number of mounts using each.
	transports map[transportKey]*sharedTransport
	// released is when memory was last released (memory.go), on mono.
	released atomic.Pointer[time.Time]
	// sendMu orders the sends; lastSend is when the last one went.
	sendMu   sync.Mutex
	lastSend time.Time
}

func newProcess() *process {
	return &process{pacer: rate.NewLimiter(maxCallRate, 1), transports: map[transportKey]*sharedTransport{}}
}

// transportKey names one of the process's transports: the ca_cert it
// trusts ("" for none), and whether it carries plain http.
type transportKey struct {
	caPEM string
	plain bool
}

// transportFor is the key of the transport cfg's client uses. Anything but
// an https base_url is plain, and so held to loopback addresses.
func transportFor(cfg *config) transportKey {
	return transportKey{caPEM: cfg.CACert, plain: !strings.HasPrefix(cfg.BaseURL, "https://")}
}

// sharedTransport is one transport and how many mounts use it.
type sharedTransport struct {
	t     *http.Transport
	users int
}

// NewFactory returns the factory of one plugin process: every mount it
// makes shares one process.
func NewFactory() logical.Factory {
	p := newProcess()
	return func(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
		b := newBackend(p)
		b.storage = conf.StorageView
		if err := b.Setup(ctx, conf); err != nil {
			return nil, err
		}
		return b, nil
	}
}

// pace waits for the next call's turn, now on the caller's monotonic clock,
// or returns a rateLimitedError saying when it would come when that is more
// than maxWait away, past ctx's deadline, or ctx ends first.
func (p *process) pace(ctx context.Context, now time.Time, maxWait time.Duration) error {
	res := p.pacer.ReserveN(now, 1)
	delay := res.DelayFrom(now)
	if delay == 0 {
		return nil
	}
	limited := &rateLimitedError{until: time.Now().Add(delay), why: "the plugin's calls to Teletracker, all mounts together, are paced"}
	if dl, ok := ctx.Deadline(); delay > maxWait || ok && time.Now().Add(delay).After(dl) {
		res.Cancel()
		return limited
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		res.Cancel()
		return limited
	}
}

// pace waits for the turn of a call the record allows: never within
// minCallInterval of this mount's last call in this process (b.lastCall, set
// by call), on a clock that cannot go back whatever the wall clock and the
// stored times say, and in turn with the process's other mounts, waiting at
// most maxWait, and not past Clean. The caller holds refreshMu.
func (b *backend) pace(ctx context.Context, maxWait time.Duration) error {
	if since := b.mono().Sub(b.lastCall); !b.lastCall.IsZero() && since < minCallInterval {
		return &rateLimitedError{until: b.now().Add(minCallInterval - since)}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(b.life, cancel)() // Clean stops the wait
	err := b.proc.pace(ctx, b.mono(), maxWait)
	if b.life.Err() != nil {
		return errCleaned // a request that came after Clean, or a turn that came with it
	}
	return err
}

// send waits until sendGap has passed since the process's last send, or
// ctx ends, and then counts the caller's call as sent.
func (p *process) send(ctx context.Context) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if wait := sendGap - time.Since(p.lastSend); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.lastSend = time.Now()
	return nil
}

// transport is the process's HTTP transport for key, for one more mount;
// release gives it back.
//
// The plain-http transport sends credentials in cleartext, so it connects
// to loopback addresses only (loopbackOnly: the address dialled, whatever
// /etc/hosts or DNS made of "localhost"), and never through a proxy, which
// would receive them in cleartext: it dials base_url's host itself.
// (Go's ProxyFromEnvironment skips loopback hosts already, but not
// "LOCALHOST".) The https transports use the environment's proxy.
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
	// Each call is bounded by its mount's request_timeout (the client's
	// timeout and its context); these bound the steps for every mount.
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
		ForceAttemptHTTP2:     true,
	}
	p.transports[key] = &sharedTransport{t: t, users: 1}
	return t, nil
}

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

// release gives back a mount's use of the transport for key; the last one
// closes its connections and drops it.
func (p *process) release(key transportKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.transports[key]; s != nil {
		if s.users--; s.users <= 0 {
			s.t.CloseIdleConnections()
			delete(p.transports, key)
		}
	}
}

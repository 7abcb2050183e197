package teletracker

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/time/rate"
)

// process.go holds what the plugin process shares among its mounts (one
// process serves every mount of the engine): the pacer that keeps the calls
// of all mounts together under maxCallRate, and the HTTP transports, one per
// ca_cert, so that connections and TLS state do not grow with the mounts.
// NewFactory makes it once; there is no package state.

const (
	// maxCallRate is how many calls a second the process's turns allow, all
	// mounts together: at most 10 a second reach Teletracker (a burst of a
	// thousand from one address is what a rate limiter answers with 429),
	// with room for the time between a call's turn and its sending.
	maxCallRate = 9
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
	// transports are the HTTP transports by ca_cert ("" for none), with
	// the number of mounts using each.
	transports map[string]*sharedTransport
	// released is when memory was last released (memory.go), on mono.
	released atomic.Pointer[time.Time]
	// sendMu orders the sends; lastSend is when the last one went.
	sendMu   sync.Mutex
	lastSend time.Time
	// roundTripper, when set, carries the calls of every mount instead of
	// the transports (the simulation's Teletracker, in process).
	roundTripper http.RoundTripper
}

func newProcess() *process {
	return &process{pacer: rate.NewLimiter(maxCallRate, 1), transports: map[string]*sharedTransport{}}
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
// with sleep, or returns a rateLimitedError saying when (on the wall clock
// wall) it would come when that is more than maxWait away, past ctx's
// deadline, or ctx ends first.
func (p *process) pace(ctx context.Context, now, wall time.Time, sleep sleeper, maxWait time.Duration) error {
	res := p.pacer.ReserveN(now, 1)
	delay := res.DelayFrom(now)
	if delay == 0 {
		return nil
	}
	limited := &rateLimitedError{until: wall.Add(delay), why: "the plugin's calls to Teletracker, all mounts together, are paced"}
	if dl, ok := ctx.Deadline(); delay > maxWait || ok && time.Now().Add(delay).After(dl) {
		res.Cancel()
		return limited
	}
	if err := sleep(ctx, delay); err != nil {
		res.Cancel()
		return limited
	}
	return nil
}

// pace waits for the turn of a call the record allows: never within
// minCallInterval of this mount's last call in this process (b.lastCall, set
// by call), on a clock that cannot go back whatever the wall clock and the
// stored times say, and in turn with the process's other mounts, waiting at
// most maxWait, and not past Clean. The caller holds refreshMu.
func (b *backend) pace(ctx context.Context, maxWait time.Duration) error {
	if since := b.mono().Sub(b.lastCall); !b.lastCall.IsZero() && since < minCallInterval {
		return &rateLimitedError{until: b.now().Add(minCallInterval - since), why: fmt.Sprintf("at most one call every %s", minCallInterval)}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(b.life, cancel)() // Clean stops the wait
	err := b.proc.pace(ctx, b.mono(), b.now(), b.sleep, maxWait)
	if b.life.Err() != nil {
		return errCleaned // a request that came after Clean, or a turn that came with it
	}
	return err
}

// send waits, with sleep, until sendGap has passed since the process's
// last send on the monotonic clock mono, or ctx ends, and then counts the
// caller's call as sent.
func (p *process) send(ctx context.Context, mono func() time.Time, sleep sleeper) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if wait := sendGap - mono().Sub(p.lastSend); !p.lastSend.IsZero() && wait > 0 {
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

// transport is the process's HTTP transport for ca_cert caPEM, for one more
// mount; release gives it back.
func (p *process) transport(caPEM string) (*http.Transport, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.transports[caPEM]; s != nil {
		s.users++
		return s.t, nil
	}
	pool, err := certPool(caPEM)
	if err != nil {
		return nil, err
	}
	// Each call is bounded by its mount's request_timeout (the client's
	// timeout and its context); these bound the steps for every mount.
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: maxRequestTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   maxRequestTimeout,
		ResponseHeaderTimeout: maxRequestTimeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	p.transports[caPEM] = &sharedTransport{t: t, users: 1}
	return t, nil
}

// release gives back a mount's use of the transport for caPEM; the last
// one closes its connections and drops it.
func (p *process) release(caPEM string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.transports[caPEM]; s != nil {
		if s.users--; s.users <= 0 {
			s.t.CloseIdleConnections()
			delete(p.transports, caPEM)
		}
	}
}

package teletracker

// Review of the engine core (record.go's vetted last error, client.go's
// unsent rule, the hashed backoff jitter, schedule.go's load errors): each
// test here proves a finding; it fails on the tree it was written against.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// reviewTLSListener is a loopback listener and a client for it over the
// engine's own transport (ca_cert trusting the listener's certificate).
func reviewTLSListener(t *testing.T) (net.Listener, tls.Certificate, *client) {
	t.Helper()
	caPEM, cert := testCA(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cfg := &config{BaseURL: "https://" + l.Addr().String(), RequestTimeout: 3 * time.Second, CACert: caPEM}
	tr, err := newProcess(DefaultCallsPerSecond).transport(transportFor(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return l, cert, newClient(cfg, tr, time.Now)
}

// receipts counts the refresh tokens a test server received.
type receipts struct {
	mu   sync.Mutex
	seen []string
}

func (r *receipts) add(body []byte) int {
	v, _ := url.ParseQuery(string(body))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, v.Get("refresh_token"))
	return len(r.seen)
}

func (r *receipts) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// A TLS server (or anything on the path) that received the whole refresh
// request and then sends bytes that are not a well-formed TLS record (a
// wrong record version, an oversized length) makes Go's tls.Conn return a
// tls.RecordHeaderError from the read of the answer. transportError sorts
// every RecordHeaderError as "the server did not answer with TLS", a
// failure before anything was sent (failTransient), so the refresh token
// Teletracker just spent is believed unspent and sent again after the
// backoff.
func TestReviewRecordErrorAfterRequestIsNotUnsent(t *testing.T) {
	l, cert, c := reviewTLSListener(t)
	var got receipts
	go func() {
		for {
			raw, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer raw.Close()
				tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
				req, err := http.ReadRequest(bufio.NewReader(tc))
				if err != nil {
					return
				}
				body, _ := io.ReadAll(req.Body)
				got.add(body) // Teletracker has the refresh token: it is spent
				// A record header of a version no TLS connection uses.
				_, _ = raw.Write([]byte{0x17, 0x03, 0x09, 0x00, 0x10})
				_, _ = raw.Write(make([]byte, 16))
				time.Sleep(time.Second)
			}()
		}
	}()
	_, err := c.refresh(context.Background(), "rt-review-1")
	var ue *upstreamError
	if !errors.As(err, &ue) {
		t.Fatalf("want an upstreamError, got %v", err)
	}
	if n := got.count(); n != 1 {
		t.Fatalf("the server received the refresh token %d times, want 1", n)
	}
	if ue.kind == failTransient {
		t.Fatalf("the request reached the server, yet it is classified as not sent (failTransient): %v", err)
	}
}

// reviewH2Server serves HTTP/2 over TLS on l by hand, so that it can do
// what Go's server never does: onStream is called with each request's
// stream and body, and answers it on fr.
func reviewH2Server(l net.Listener, cert tls.Certificate, onStream func(fr *http2.Framer, l net.Listener, id uint32, body []byte)) {
	for {
		raw, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer raw.Close()
			tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
			if err := tc.Handshake(); err != nil {
				return
			}
			preface := make([]byte, len(http2.ClientPreface))
			if _, err := io.ReadFull(tc, preface); err != nil {
				return
			}
			fr := http2.NewFramer(tc, tc)
			if err := fr.WriteSettings(); err != nil {
				return
			}
			bodies := map[uint32]*bytes.Buffer{}
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						_ = fr.WriteSettingsAck()
					}
				case *http2.HeadersFrame:
					bodies[f.StreamID] = &bytes.Buffer{}
					if f.StreamEnded() {
						onStream(fr, l, f.StreamID, nil)
					}
				case *http2.DataFrame:
					b := bodies[f.StreamID]
					if b == nil {
						continue
					}
					b.Write(f.Data())
					if f.StreamEnded() {
						onStream(fr, l, f.StreamID, b.Bytes())
					}
				}
			}
		}()
	}
}

// reviewH2Answer answers stream id with 200 and a complete session.
func reviewH2Answer(fr *http2.Framer, id uint32) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/json"})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
	_ = fr.WriteData(id, true, okBody(""))
}

// The transport has ForceAttemptHTTP2, and Go's HTTP/2 client retries by
// itself, within the one Do, a request whose stream the server reset with
// PROTOCOL_ERROR (h2_bundle.go http2canRetryError, golang/go#47635), the
// body rewound by GetBody (strings.Reader). A reset says nothing of whether
// the request was processed: the refresh token goes out twice, although
// client.go promises it "never retries".
func TestReviewH2ResetResendsRefreshToken(t *testing.T) {
	l, cert, c := reviewTLSListener(t)
	var got receipts
	go reviewH2Server(l, cert, func(fr *http2.Framer, _ net.Listener, id uint32, body []byte) {
		if got.add(body) == 1 {
			// Received, and so spent; then the stream is reset.
			_ = fr.WriteRSTStream(id, http2.ErrCodeProtocol)
			return
		}
		reviewH2Answer(fr, id)
	})
	_, _ = c.refresh(context.Background(), "rt-review-2")
	got.mu.Lock()
	defer got.mu.Unlock()
	if len(got.seen) != 1 {
		t.Fatalf("one refresh call sent the refresh token %d times: %q", len(got.seen), got.seen)
	}
}

// The same retry, when the connection is gone by then (the server said
// GOAWAY and went away): net/http dials again, the dial fails, and the
// error that comes back is a dial error, which transportError sorts as
// "cannot connect" (failTransient) before looking at anything else, though
// the refresh token reached the server on the first connection.
func TestReviewH2RetryDialErrorHidesSentRequest(t *testing.T) {
	l, cert, c := reviewTLSListener(t)
	var got receipts
	go reviewH2Server(l, cert, func(fr *http2.Framer, l net.Listener, id uint32, body []byte) {
		got.add(body)
		l.Close() // going away: the next dial is refused
		_ = fr.WriteGoAway(id, http2.ErrCodeNo, nil)
		_ = fr.WriteRSTStream(id, http2.ErrCodeProtocol)
	})
	_, err := c.refresh(context.Background(), "rt-review-3")
	var ue *upstreamError
	if !errors.As(err, &ue) {
		t.Fatalf("want an upstreamError, got %v", err)
	}
	if n := got.count(); n != 1 {
		t.Fatalf("the server received the refresh token %d times, want 1", n)
	}
	if ue.kind == failTransient {
		t.Fatalf("the refresh token reached the server, yet the call is classified as not sent (failTransient): %v", err)
	}
}

// backoff's jitter is a hash of base_url, username and the refresh token
// (decide.go:326), so sessions without a refresh token that share
// base_url and username (account_id is not in the key) get the same wait
// to the nanosecond: mounts moved from v0.1.0 without a session
// (record.go:209) or with another identity's (record.go:218) that fail
// their logins together (an outage) retry together, in every process, for
// as long as the outage lasts. A random draw spread them.
func TestReviewBackoffSpreadsSessionsWithoutRefreshToken(t *testing.T) {
	seen := map[time.Time]bool{}
	for id := int64(1); id <= 20; id++ {
		cfg := &config{BaseURL: "https://api.teletracker.net", Username: "svc", Password: "pw", AccountID: id,
			RefreshMargin: 10 * time.Minute, RequestTimeout: 10 * time.Second}
		r := fromV010(cfg, nil)
		failed := &upstreamError{kind: failTransient, op: loginPath, status: http.StatusServiceUnavailable, detail: "server error"}
		for n := 0; n < 3; n++ {
			r = settle(r, actLogin, nil, failed, testStart, testStart)
		}
		seen[r.NotBefore] = true
	}
	if len(seen) < 10 {
		t.Fatalf("20 accounts of one user failing together retry at %d distinct times: %v", len(seen), seen)
	}
}

// A tick that makes the full pass (Initialize could not: the node could not
// write then, or listing the accounts failed) publishes each account with
// tickAt at the time loadAll reads, a little after the tick's own now, so
// b.sched.due(now) (schedule.go:111) pops none of them: an account the pass
// found due waits for the next tick (a minute on Vault's clock) although
// this one was for it. With a clock that stands still it is not seen.
func TestReviewFirstTickLoadLeavesDueAccountsForNextTick(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b = restart(t, e) // a new node; its Initialize did not load
	var reads atomic.Int64
	e.b.now = func() time.Time { // Vault's clock moves while a tick runs
		return e.clock.Now().Add(time.Duration(reads.Add(1)) * time.Microsecond)
	}
	e.clock.Add(55 * time.Minute) // hour tokens, 10 m margin: due
	before := e.fake.Stats()
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if after := e.fake.Stats(); after.RefreshCalls+after.LoginCalls == before.RefreshCalls+before.LoginCalls {
		t.Fatalf("the first tick loaded a due account but did not refresh it (calls %+v -> %+v)", before, after)
	}
}

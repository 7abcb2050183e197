package fakett

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Fault replaces or disturbs the answer to one call.
//
// Unless Spend is set, a fault is applied before the call is processed, and a
// fault that replaces the answer (Status, Body or Reset) leaves the server's
// state untouched: no token is spent and no session is created. The call is
// still counted. Lifetime, Omit, PadBytes and Success disturb the normal answer, so the
// call is processed.
type Fault struct {
	// Status answers with this HTTP status, with Body, or a success:false JSON
	// error body when Body is empty.
	Status int
	// RetryAfter is the Retry-After header value sent with Status or Body.
	RetryAfter string
	// Body is a raw body to send instead of the normal one (malformed JSON,
	// {"success":false}, ...); the status is 200 when Status is 0.
	Body string
	// Delay waits this long before answering; when the request's context is
	// cancelled first, the request is abandoned without an answer.
	Delay time.Duration
	// Reset hijacks the connection and closes it without answering, so the
	// client sees a connection reset.
	Reset bool
	// Spend processes the call normally first (a refresh spends the token, a
	// login creates the session), then applies the rest of the fault: with
	// Delay, Status, Body or Reset the client loses the response; with nothing
	// else set the normal response is sent.
	Spend bool
	// Lifetime, in an otherwise normal success response, is reported as
	// tokenLifetime (0, negative, huge); the real expiry is unchanged.
	Lifetime *int
	// Omit leaves these JSON fields out of an otherwise normal success
	// response (e.g. "token", "refreshToken", "tokenExpiration").
	Omit []string
	// PadBytes adds to an otherwise normal success response an extra JSON
	// string field, "padding", of this many bytes.
	PadBytes int
	// Success, when not nil, is reported as the success field of an
	// otherwise normal success response ("true" as a string, 1, false).
	Success any
}

// queuedFault is a Fault waiting in an endpoint's queue.
type queuedFault struct {
	fault Fault // what to apply
	left  int   // calls it still applies to; negative means until ClearFaults
}

// Fail gives f to the next n calls to endpoint ("/auth/login",
// "/auth/refresh" or "/api/whoami"); n < 0 means every call until ClearFaults.
// Faults queued for one endpoint apply in order; they take precedence over
// SetFaultRate.
func (s *Server) Fail(endpoint string, n int, f Fault) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queues[endpoint] = append(s.queues[endpoint], &queuedFault{fault: f.clone(), left: n})
}

// SetFaultRate gives each call to /auth/login or /auth/refresh, independently
// with probability p, one of faults chosen uniformly; with no faults given the
// fault is a 503. p = 0 turns it off.
func (s *Server) SetFaultRate(p float64, faults ...Fault) {
	if len(faults) == 0 {
		faults = []Fault{{Status: http.StatusServiceUnavailable}}
	}
	rateFaults := make([]Fault, len(faults))
	for i, f := range faults {
		rateFaults[i] = f.clone()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faultRate = p
	s.rateFaults = rateFaults
}

// ClearFaults drops every queued fault and turns the fault rate off.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.queues)
	s.faultRate = 0
	s.rateFaults = nil
}

// nextFault takes the fault due for a call to endpoint, if any. s.mu must be
// held.
func (s *Server) nextFault(endpoint string) (Fault, bool) {
	if queue := s.queues[endpoint]; len(queue) > 0 {
		head := queue[0]
		if head.left > 0 {
			head.left--
			if head.left == 0 {
				s.queues[endpoint] = queue[1:]
			}
		}
		return head.fault, true
	}
	if (endpoint == loginPath || endpoint == refreshPath) && s.faultRate > 0 && rand.Float64() < s.faultRate {
		return s.rateFaults[rand.IntN(len(s.rateFaults))], true
	}
	return Fault{}, false
}

// clone returns a copy of f that shares no memory with it, so that the caller
// may reuse what it passed in.
func (f Fault) clone() Fault {
	f.Omit = slices.Clone(f.Omit)
	if f.Lifetime != nil {
		lifetime := *f.Lifetime
		f.Lifetime = &lifetime
	}
	return f
}

// delay sleeps for f.Delay. When the request's context ends first (the client
// gave up, or the server is shutting down) it abandons the request without
// answering.
func (f Fault) delay(r *http.Request) {
	if f.Delay <= 0 {
		return
	}
	// The server watches the connection, and so ends the context when the
	// client goes away, only once the body has been read to its end.
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	timer := time.NewTimer(f.Delay)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-r.Context().Done():
		panic(http.ErrAbortHandler)
	}
}

// replaces reports whether f answers in place of the normal response.
func (f Fault) replaces() bool {
	return f.Reset || f.Status != 0 || f.Body != ""
}

// answer sends f's replacement for the normal response.
func (f Fault) answer(w http.ResponseWriter) {
	if f.Reset {
		reset(w)
		return
	}
	status := f.Status
	if status == 0 {
		status = http.StatusOK
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	if f.Body == "" {
		send(w, failure(status, "injected fault"))
		return
	}
	writeRaw(w, status, []byte(f.Body))
}

// disturb applies f's Lifetime, Omit and PadBytes to body when it is a
// success response.
func (f Fault) disturb(body map[string]any) {
	if body["success"] != true {
		return
	}
	if _, reported := body["tokenLifetime"]; reported && f.Lifetime != nil {
		body["tokenLifetime"] = *f.Lifetime
	}
	for _, field := range f.Omit {
		delete(body, field)
	}
	if f.PadBytes > 0 {
		body["padding"] = strings.Repeat("x", f.PadBytes)
	}
	if f.Success != nil {
		body["success"] = f.Success
	}
}

// reset closes the client's connection without answering. Over HTTP/1 the
// connection is hijacked and closed with a TCP reset; where hijacking is not
// possible (HTTP/2) the stream is aborted.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		// Linger 0 makes Close send RST instead of FIN.
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

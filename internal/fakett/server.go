// Package fakett is a fake of the Teletracker auth API for tests, demos and
// benchmarks. It enforces single-use refresh tokens, counts every call, and can
// be told to misbehave (see Fault) so that a client's error handling can be
// exercised. It never logs.
package fakett

import (
	"crypto/rand"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The API's paths.
const (
	loginPath   = "/auth/login"
	refreshPath = "/auth/refresh"
	whoamiPath  = "/api/whoami"
)

// Options configures a Server. Zero values take the defaults shown.
type Options struct {
	// Users maps username to password; default {"demo": "demo-password"}.
	Users map[string]string
	// TokenLifetime is the bearer token lifetime; default 1h. It is reported as
	// whole seconds in tokenLifetime.
	TokenLifetime time.Duration
	// RefreshLifetime is the refresh token lifetime; default 30*24h.
	RefreshLifetime time.Duration
	// Skew is added to the server clock only for the tokenExpiration and
	// refreshTokenExpiration strings it reports, imitating a server whose clock
	// is wrong. Expiry decisions ignore it.
	Skew time.Duration
	// Now is the server's clock for expiry decisions; default time.Now. It is
	// called with the Server's lock held, so it must not call the Server.
	Now func() time.Time
	// Rand is where tokens and guids come from; default crypto/rand. A
	// seeded source makes a run's tokens, and so what hashes them, repeat.
	// It is read with the Server's lock held.
	Rand io.Reader
}

// Server is a fake Teletracker auth API. It implements http.Handler and is safe
// for concurrent use.
type Server struct {
	mu sync.Mutex // guards every field below

	users           map[string]string         // username -> password
	tokenLifetime   time.Duration             // lifetime of bearer tokens issued from now on
	refreshLifetime time.Duration             // lifetime of refresh tokens
	skew            time.Duration             // added to the clock in reported expiration strings
	now             func() time.Time          // the server clock
	random          io.Reader                 // where tokens come from
	sessions        []*session                // every session ever started, for RevokeAll
	bearers         map[string]*bearerToken   // bearer token -> its record
	refreshes       map[string]*refreshToken  // refresh token (spent ones too) -> its record
	queues          map[string][]*queuedFault // endpoint -> faults waiting, applied in order
	faultRate       float64                   // probability that a login or refresh call gets a rate fault
	rateFaults      []Fault                   // the faults SetFaultRate chooses from
	stats           Stats                     // counters; its slices are copied on the way out
}

// New returns a Server configured by opts.
func New(opts Options) *Server {
	s := &Server{
		users:           maps.Clone(opts.Users),
		tokenLifetime:   opts.TokenLifetime,
		refreshLifetime: opts.RefreshLifetime,
		skew:            opts.Skew,
		now:             opts.Now,
		random:          opts.Rand,
		bearers:         make(map[string]*bearerToken),
		refreshes:       make(map[string]*refreshToken),
		queues:          make(map[string][]*queuedFault),
	}
	if len(s.users) == 0 {
		s.users = map[string]string{"demo": "demo-password"}
	}
	if s.tokenLifetime == 0 {
		s.tokenLifetime = time.Hour
	}
	if s.refreshLifetime == 0 {
		s.refreshLifetime = 30 * 24 * time.Hour
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.random == nil {
		s.random = rand.Reader
	}
	return s
}

// ServeHTTP routes a request to the API or to the /_fake/ control endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch path := r.URL.Path; {
	case path == loginPath:
		s.serveAPI(w, r, path, s.login)
	case path == refreshPath:
		s.serveAPI(w, r, path, s.refresh)
	case path == whoamiPath:
		s.serveAPI(w, r, path, s.whoami)
	case strings.HasPrefix(path, adminPrefix):
		s.serveAdmin(w, r)
	default:
		send(w, failure(http.StatusNotFound, "not found"))
	}
}

// SetTokenLifetime sets the lifetime of bearer tokens issued from now on.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenLifetime = d
}

// SetSkew sets the error of the clock used in reported expiration strings.
func (s *Server) SetSkew(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skew = d
}

// serveAPI answers one API call: it counts the call, applies any fault due, and
// otherwise lets handle compute the answer.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, path string, handle func(http.ResponseWriter, *http.Request) reply) {
	s.mu.Lock()
	s.countCall(path)
	f, faulted := s.nextFault(path)
	s.mu.Unlock()

	if !faulted {
		send(w, handle(w, r))
		return
	}
	var rep reply
	if f.Spend {
		rep = handle(w, r)
	}
	f.delay(r)
	if f.replaces() {
		f.answer(w)
		return
	}
	if !f.Spend {
		rep = handle(w, r)
	}
	f.disturb(rep.body)
	send(w, rep)
}

// reply is an answer computed but not yet sent, so that a fault can still
// replace or disturb it.
type reply struct {
	status int
	header http.Header // extra headers, or nil
	body   map[string]any
}

// failure is a reply with success:false and the message in error.
func failure(status int, message string) reply {
	return reply{status: status, body: map[string]any{"success": false, "error": message}}
}

// methodNotAllowed is the 405 reply for an endpoint that accepts only method.
func methodNotAllowed(method string) reply {
	rep := failure(http.StatusMethodNotAllowed, "method not allowed")
	rep.header = http.Header{"Allow": {method}}
	return rep
}

// send writes rep.
func send(w http.ResponseWriter, rep reply) {
	for k, v := range rep.header {
		w.Header()[k] = v
	}
	writeJSON(w, rep.status, rep.body)
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	// Every v here is a map of strings, numbers and booleans or a struct of
	// them, which always marshals.
	body, _ := json.Marshal(v)
	writeRaw(w, status, body)
}

// writeRaw writes body, whatever it holds, as a JSON response with the given
// status.
func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// A failed write means the client went away; there is no one to tell.
	_, _ = w.Write(body)
}

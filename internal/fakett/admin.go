package fakett

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// adminPrefix starts the paths of the control endpoints, which drive the
// Server methods over HTTP for tests and scripts that run the binary.
const adminPrefix = "/_fake/"

// faultJSON is a Fault as the control endpoints read it: snake_case fields and
// Delay as a Go duration string such as "2s".
type faultJSON struct {
	Status     int      `json:"status"`      // Fault.Status
	RetryAfter string   `json:"retry_after"` // Fault.RetryAfter
	Body       string   `json:"body"`        // Fault.Body
	Delay      string   `json:"delay"`       // Fault.Delay, e.g. "2s"
	Reset      bool     `json:"reset"`       // Fault.Reset
	Spend      bool     `json:"spend"`       // Fault.Spend
	Lifetime   *int     `json:"lifetime"`    // Fault.Lifetime
	Omit       []string `json:"omit"`        // Fault.Omit
	PadBytes   int      `json:"pad_bytes"`   // Fault.PadBytes
	Success    any      `json:"success"`     // Fault.Success
}

// fault checks fj and converts it to a Fault.
func (fj faultJSON) fault() (Fault, error) {
	f := Fault{
		Status:     fj.Status,
		RetryAfter: fj.RetryAfter,
		Body:       fj.Body,
		Reset:      fj.Reset,
		Spend:      fj.Spend,
		Lifetime:   fj.Lifetime,
		Omit:       fj.Omit,
		PadBytes:   fj.PadBytes,
		Success:    fj.Success,
	}
	if fj.Status != 0 && (fj.Status < 200 || fj.Status > 599) {
		return Fault{}, errors.New("status must be 0 or 200-599")
	}
	if fj.PadBytes < 0 {
		return Fault{}, errors.New("pad_bytes must not be negative")
	}
	if fj.Delay != "" {
		d, err := time.ParseDuration(fj.Delay)
		if err != nil || d < 0 {
			return Fault{}, fmt.Errorf("invalid delay %q", fj.Delay)
		}
		f.Delay = d
	}
	return f, nil
}

// failRequest is the body of POST /_fake/fail.
type failRequest struct {
	Endpoint string    `json:"endpoint"` // "/auth/login", "/auth/refresh" or "/api/whoami"
	Count    int       `json:"count"`    // how many calls; negative means until cleared
	Fault    faultJSON `json:"fault"`    // what to do to them
}

// faultRateRequest is the body of POST /_fake/fault-rate.
type faultRateRequest struct {
	Rate   float64     `json:"rate"`   // probability, 0 to 1
	Faults []faultJSON `json:"faults"` // chosen from uniformly; empty means a 503
}

// settingsRequest is the body of POST /_fake/settings; absent fields are left
// unchanged.
type settingsRequest struct {
	TokenLifetime *string `json:"token_lifetime"` // Go duration, e.g. "30s"
	Skew          *string `json:"skew"`           // Go duration, e.g. "-2h"
}

// sessionRequest is the body of POST /_fake/session.
type sessionRequest struct {
	Username string `json:"username"` // whose session to start
}

// serveAdmin answers a control endpoint. Control calls are not counted in
// Stats.
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case adminPrefix + "stats":
		if allow(w, r, http.MethodGet) {
			writeJSON(w, http.StatusOK, s.Stats())
		}
	case adminPrefix + "live":
		if allow(w, r, http.MethodGet) {
			s.adminLive(w, r)
		}
	case adminPrefix + "fail":
		if allow(w, r, http.MethodPost) {
			s.adminFail(w, r)
		}
	case adminPrefix + "fault-rate":
		if allow(w, r, http.MethodPost) {
			s.adminFaultRate(w, r)
		}
	case adminPrefix + "clear-faults":
		if allow(w, r, http.MethodPost) {
			s.ClearFaults()
			sendOK(w)
		}
	case adminPrefix + "settings":
		if allow(w, r, http.MethodPost) {
			s.adminSettings(w, r)
		}
	case adminPrefix + "revoke":
		if allow(w, r, http.MethodPost) {
			s.RevokeAll()
			sendOK(w)
		}
	case adminPrefix + "session":
		if allow(w, r, http.MethodPost) {
			s.adminSession(w, r)
		}
	default:
		send(w, failure(http.StatusNotFound, "not found"))
	}
}

// adminLive answers GET /_fake/live?token=...
func (s *Server) adminLive(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	if token == "" {
		send(w, failure(http.StatusBadRequest, "missing parameter: token"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"live": s.Live(token)})
}

// adminFail answers POST /_fake/fail.
func (s *Server) adminFail(w http.ResponseWriter, r *http.Request) {
	var req failRequest
	if !decode(w, r, &req) {
		return
	}
	switch req.Endpoint {
	case loginPath, refreshPath, whoamiPath:
	default:
		send(w, failure(http.StatusBadRequest, fmt.Sprintf("unknown endpoint %q", req.Endpoint)))
		return
	}
	if req.Count == 0 {
		send(w, failure(http.StatusBadRequest, "count must not be 0"))
		return
	}
	f, err := req.Fault.fault()
	if err != nil {
		send(w, failure(http.StatusBadRequest, err.Error()))
		return
	}
	s.Fail(req.Endpoint, req.Count, f)
	sendOK(w)
}

// adminFaultRate answers POST /_fake/fault-rate.
func (s *Server) adminFaultRate(w http.ResponseWriter, r *http.Request) {
	var req faultRateRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Rate < 0 || req.Rate > 1 {
		send(w, failure(http.StatusBadRequest, "rate must be between 0 and 1"))
		return
	}
	faults := make([]Fault, len(req.Faults))
	for i, fj := range req.Faults {
		f, err := fj.fault()
		if err != nil {
			send(w, failure(http.StatusBadRequest, err.Error()))
			return
		}
		faults[i] = f
	}
	s.SetFaultRate(req.Rate, faults...)
	sendOK(w)
}

// adminSettings answers POST /_fake/settings.
func (s *Server) adminSettings(w http.ResponseWriter, r *http.Request) {
	var req settingsRequest
	if !decode(w, r, &req) {
		return
	}
	var lifetime, skew time.Duration
	var err error
	if req.TokenLifetime != nil {
		if lifetime, err = time.ParseDuration(*req.TokenLifetime); err != nil || lifetime <= 0 {
			send(w, failure(http.StatusBadRequest, fmt.Sprintf("invalid token_lifetime %q", *req.TokenLifetime)))
			return
		}
	}
	if req.Skew != nil {
		if skew, err = time.ParseDuration(*req.Skew); err != nil {
			send(w, failure(http.StatusBadRequest, fmt.Sprintf("invalid skew %q", *req.Skew)))
			return
		}
	}
	if req.TokenLifetime != nil {
		s.SetTokenLifetime(lifetime)
	}
	if req.Skew != nil {
		s.SetSkew(skew)
	}
	sendOK(w)
}

// adminSession answers POST /_fake/session.
func (s *Server) adminSession(w http.ResponseWriter, r *http.Request) {
	var req sessionRequest
	if !decode(w, r, &req) {
		return
	}
	refreshToken, err := s.NewSession(req.Username)
	if err != nil {
		send(w, failure(http.StatusBadRequest, err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"refresh_token": refreshToken})
}

// allow reports whether r uses method, answering 405 when it does not.
func allow(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	send(w, methodNotAllowed(method))
	return false
}

// decode reads r's JSON body into v, rejecting unknown fields; on failure it
// answers 400 and returns false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		send(w, failure(http.StatusBadRequest, "malformed body: "+err.Error()))
		return false
	}
	return true
}

// sendOK answers a control call that has nothing to report.
func sendOK(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]bool{"success": true})
}

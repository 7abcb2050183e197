package fakett

import "time"

// Stats counts the calls the server has received. Control calls (Server
// methods and /_fake/ endpoints) are not counted.
type Stats struct {
	// LoginCalls counts every call to /auth/login, faulted or not.
	LoginCalls int64 `json:"login_calls"`
	// RefreshCalls counts every call to /auth/refresh, faulted or not.
	RefreshCalls int64 `json:"refresh_calls"`
	// Logins counts successful logins (auth_only checks and Spend faults
	// included).
	Logins int64 `json:"logins"`
	// Refreshes counts successful refreshes (Spend faults included).
	Refreshes int64 `json:"refreshes"`
	// ReusedRefreshTokens counts refresh calls presenting an already spent
	// refresh token.
	ReusedRefreshTokens int64 `json:"reused_refresh_tokens"`
	// RejectedRefreshes counts refresh calls answered 400 or 401 for any
	// reason other than a fault.
	RejectedRefreshes int64 `json:"rejected_refreshes"`
	// ProtectedOK counts /api/whoami calls with a live bearer token.
	ProtectedOK int64 `json:"protected_ok"`
	// ProtectedDenied counts /api/whoami calls refused with 401.
	ProtectedDenied int64 `json:"protected_denied"`
	// LateRefreshes counts successful refreshes of a session whose newest
	// bearer token had already expired: the client let its token lapse.
	LateRefreshes int64 `json:"late_refreshes"`
	// RefreshCallTimes holds the server clock time of every /auth/refresh
	// call, in order.
	RefreshCallTimes []time.Time `json:"refresh_call_times"`
	// AuthCallsPerSecond counts the /auth/login and /auth/refresh calls in
	// each second of the server clock that had any, in order, so that a
	// benchmark can see the peak rate a client sends.
	AuthCallsPerSecond []SecondCount `json:"auth_calls_per_second"`
}

// SecondCount is the number of calls received in one second.
type SecondCount struct {
	// Second is the second's start on the server clock.
	Second time.Time `json:"second"`
	// Calls is how many calls arrived in it.
	Calls int64 `json:"calls"`
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.RefreshCallTimes = append([]time.Time{}, s.stats.RefreshCallTimes...)
	st.AuthCallsPerSecond = append([]SecondCount{}, s.stats.AuthCallsPerSecond...)
	return st
}

// countCall counts a call to endpoint as received. s.mu must be held.
func (s *Server) countCall(endpoint string) {
	now := s.now()
	switch endpoint {
	case loginPath:
		s.stats.LoginCalls++
	case refreshPath:
		s.stats.RefreshCalls++
		s.stats.RefreshCallTimes = append(s.stats.RefreshCallTimes, now)
	default:
		return
	}
	sec := now.Truncate(time.Second)
	perSec := s.stats.AuthCallsPerSecond
	if n := len(perSec); n > 0 && perSec[n-1].Second.Equal(sec) {
		perSec[n-1].Calls++
		return
	}
	s.stats.AuthCallsPerSecond = append(perSec, SecondCount{Second: sec, Calls: 1})
}

package fakett

import (
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestStats(t *testing.T) {
	clock := newClock()
	s, ts := start(t, Options{Now: clock.Now})
	if got := s.Stats(); !reflect.DeepEqual(got, Stats{RefreshCallTimes: []time.Time{}, AuthCallsPerSecond: []SecondCount{}}) {
		t.Errorf("new server: Stats() = %+v, want zeros", got)
	}

	res := login(t, ts)
	clock.Advance(time.Minute)
	next := refresh(t, ts, res.str("refreshToken"))
	clock.Advance(time.Minute)
	refresh(t, ts, res.str("refreshToken"))
	s.Fail(refreshPath, 1, Fault{Status: http.StatusBadGateway})
	clock.Advance(time.Minute)
	refresh(t, ts, next.str("refreshToken"))
	whoami(t, ts, "Bearer "+next.str("token"))
	whoami(t, ts, "Bearer nope")

	want := Stats{
		LoginCalls:          1,
		RefreshCalls:        3,
		Logins:              1,
		Refreshes:           1,
		ReusedRefreshTokens: 1,
		RejectedRefreshes:   1,
		ProtectedOK:         1,
		ProtectedDenied:     1,
		RefreshCallTimes:    []time.Time{t0.Add(time.Minute), t0.Add(2 * time.Minute), t0.Add(3 * time.Minute)},
		AuthCallsPerSecond: []SecondCount{
			{Second: t0, Calls: 1},
			{Second: t0.Add(time.Minute), Calls: 1},
			{Second: t0.Add(2 * time.Minute), Calls: 1},
			{Second: t0.Add(3 * time.Minute), Calls: 1},
		},
	}
	got := s.Stats()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Stats() = %+v\nwant %+v", got, want)
	}

	got.RefreshCallTimes[0] = time.Time{}
	got.AuthCallsPerSecond[0].Calls = 99
	if st := s.Stats(); st.RefreshCallTimes[0] != t0.Add(time.Minute) || st.AuthCallsPerSecond[0].Calls != 1 {
		t.Error("Stats() shares its slices with the server")
	}
}

// TestAuthCallsPerSecond: logins and refreshes are counted in the second of
// the server clock they arrive in; whoami calls and quiet seconds are not.
func TestAuthCallsPerSecond(t *testing.T) {
	clock := newClock()
	s, ts := start(t, Options{Now: clock.Now})
	clock.Advance(300 * time.Millisecond)
	res := login(t, ts)
	clock.Advance(600 * time.Millisecond)
	next := refresh(t, ts, res.str("refreshToken"))
	whoami(t, ts, "Bearer "+next.str("token"))
	clock.Advance(2 * time.Second)
	login(t, ts)
	refresh(t, ts, next.str("refreshToken"))
	login(t, ts)

	want := []SecondCount{{Second: t0, Calls: 2}, {Second: t0.Add(2 * time.Second), Calls: 3}}
	if got := s.Stats().AuthCallsPerSecond; !reflect.DeepEqual(got, want) {
		t.Errorf("AuthCallsPerSecond = %+v, want %+v", got, want)
	}
}

// TestLateRefreshes: a refresh counts as late when the session's newest
// bearer token has expired by the time it arrives, however long the refresh
// token itself still lives.
func TestLateRefreshes(t *testing.T) {
	clock := newClock()
	s, ts := start(t, Options{Now: clock.Now, TokenLifetime: time.Minute})
	res := login(t, ts)
	clock.Advance(59 * time.Second)
	next := refresh(t, ts, res.str("refreshToken"))
	if got := s.Stats().LateRefreshes; got != 0 {
		t.Fatalf("refresh a second before expiry: LateRefreshes = %d, want 0", got)
	}
	clock.Advance(time.Minute)
	refresh(t, ts, next.str("refreshToken"))
	if st := s.Stats(); st.LateRefreshes != 1 || st.Refreshes != 2 {
		t.Errorf("refresh at expiry: LateRefreshes = %d, Refreshes = %d, want 1 and 2", st.LateRefreshes, st.Refreshes)
	}
}

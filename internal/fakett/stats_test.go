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
	if got := s.Stats(); !reflect.DeepEqual(got, Stats{RefreshCallTimes: []time.Time{}}) {
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
	}
	got := s.Stats()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Stats() = %+v\nwant %+v", got, want)
	}

	got.RefreshCallTimes[0] = time.Time{}
	if s.Stats().RefreshCallTimes[0] != t0.Add(time.Minute) {
		t.Error("Stats() shares RefreshCallTimes with the server")
	}
}

package fakett

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// demoLogin is the demo user's login form.
var demoLogin = url.Values{"username": {"demo"}, "password": {"demo-password"}}

// intPtr returns a pointer to n.
func intPtr(n int) *int { return &n }

// wantUnspent checks that refreshToken still works, i.e. nothing spent it.
func wantUnspent(t *testing.T, ts *httptest.Server, refreshToken string) {
	t.Helper()
	if res := refresh(t, ts, refreshToken); res.status != http.StatusOK {
		t.Errorf("refresh token was spent by a fault: %d %s", res.status, res.raw)
	}
}

// wantSpent checks that refreshToken was spent.
func wantSpent(t *testing.T, ts *httptest.Server, refreshToken string) {
	t.Helper()
	wantFailure(t, refresh(t, ts, refreshToken), http.StatusUnauthorized, "refresh token already used")
}

func TestFaultStatus(t *testing.T) {
	s, ts := start(t, Options{})
	refreshToken := login(t, ts).str("refreshToken")
	s.Fail(refreshPath, 1, Fault{Status: http.StatusTooManyRequests, RetryAfter: "7"})

	res := refresh(t, ts, refreshToken)
	wantFailure(t, res, http.StatusTooManyRequests, "injected fault")
	if got := res.header.Get("Retry-After"); got != "7" {
		t.Errorf("Retry-After = %q, want 7", got)
	}
	wantUnspent(t, ts, refreshToken)
	if st := s.Stats(); st.RefreshCalls != 2 || st.Refreshes != 1 || st.RejectedRefreshes != 0 {
		t.Errorf("stats = %+v, want 2 calls, 1 refresh, none rejected", st)
	}
}

func TestFaultBody(t *testing.T) {
	tests := []struct {
		name   string
		fault  Fault
		status int
	}{
		{"malformed json", Fault{Body: `{"success":tru`}, http.StatusOK},
		{"success false", Fault{Body: `{"success":false}`}, http.StatusOK},
		{"with status", Fault{Body: "<html>bad gateway</html>", Status: http.StatusBadGateway, RetryAfter: "1"}, http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ts := start(t, Options{})
			s.Fail(loginPath, 1, tt.fault)
			req := newRequest(t, http.MethodPost, ts.URL+loginPath, "application/x-www-form-urlencoded", strings.NewReader(demoLogin.Encode()))
			res := do(t, ts.Client(), req)
			if res.status != tt.status || string(res.raw) != tt.fault.Body {
				t.Errorf("got %d %q, want %d %q", res.status, res.raw, tt.status, tt.fault.Body)
			}
			if got := res.header.Get("Retry-After"); got != tt.fault.RetryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.fault.RetryAfter)
			}
			if ct := res.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			if st := s.Stats(); st.LoginCalls != 1 || st.Logins != 0 {
				t.Errorf("LoginCalls, Logins = %d, %d; want 1, 0 (no session created)", st.LoginCalls, st.Logins)
			}
		})
	}
}

func TestFaultDelay(t *testing.T) {
	s, ts := start(t, Options{})
	s.Fail(loginPath, 1, Fault{Delay: 200 * time.Millisecond})
	began := time.Now()
	checkSession(t, login(t, ts))
	if waited := time.Since(began); waited < 200*time.Millisecond {
		t.Errorf("answered after %v, want at least 200ms", waited)
	}
}

func TestFaultDelayClientGivesUp(t *testing.T) {
	for _, spend := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "spend"}[spend], func(t *testing.T) {
			s, ts := start(t, Options{})
			refreshToken := login(t, ts).str("refreshToken")
			s.Fail(refreshPath, 1, Fault{Delay: time.Minute, Spend: spend})

			client := ts.Client()
			client.Timeout = 100 * time.Millisecond
			req := newRequest(t, http.MethodPost, ts.URL+refreshPath, "application/x-www-form-urlencoded",
				strings.NewReader(url.Values{"refresh_token": {refreshToken}}.Encode()))
			if res, err := exchange(client, req); err == nil {
				t.Fatalf("got %d %s, want the client to time out", res.status, res.raw)
			}
			// Close waits for running handlers: it returns quickly only if the
			// delay stopped when the client went away.
			began := time.Now()
			ts.Close()
			if waited := time.Since(began); waited > 10*time.Second {
				t.Errorf("handler kept waiting %v after the client left", waited)
			}

			ts2 := httptest.NewServer(s)
			defer ts2.Close()
			if spend {
				wantSpent(t, ts2, refreshToken)
			} else {
				wantUnspent(t, ts2, refreshToken)
			}
		})
	}
}

// noKeepAlive is a client that opens a connection per request, so that a reset
// connection is never retried.
func noKeepAlive() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
}

func TestFaultReset(t *testing.T) {
	s, ts := start(t, Options{})
	refreshToken := login(t, ts).str("refreshToken")
	s.Fail(refreshPath, 1, Fault{Reset: true, Status: http.StatusOK})

	req := newRequest(t, http.MethodPost, ts.URL+refreshPath, "application/x-www-form-urlencoded",
		strings.NewReader(url.Values{"refresh_token": {refreshToken}}.Encode()))
	res, err := exchange(noKeepAlive(), req)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("got %d %s and error %v, want a connection reset", res.status, res.raw, err)
	}
	wantUnspent(t, ts, refreshToken)
	if st := s.Stats(); st.RefreshCalls != 2 {
		t.Errorf("RefreshCalls = %d, want 2", st.RefreshCalls)
	}
}

func TestFaultResetHTTP2(t *testing.T) {
	s := New(Options{})
	ts := httptest.NewUnstartedServer(s)
	ts.EnableHTTP2 = true
	ts.StartTLS()
	defer ts.Close()
	s.Fail(loginPath, 1, Fault{Reset: true})

	req := newRequest(t, http.MethodPost, ts.URL+loginPath, "application/x-www-form-urlencoded", strings.NewReader(demoLogin.Encode()))
	if res, err := exchange(ts.Client(), req); err == nil {
		t.Fatalf("got %d %s, want the stream aborted", res.status, res.raw)
	}
	req = newRequest(t, http.MethodPost, ts.URL+loginPath, "application/x-www-form-urlencoded", strings.NewReader(demoLogin.Encode()))
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Errorf("second login: %d over %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}
	if st := s.Stats(); st.LoginCalls != 2 || st.Logins != 1 {
		t.Errorf("LoginCalls, Logins = %d, %d; want 2, 1", st.LoginCalls, st.Logins)
	}
}

func TestFaultSpend(t *testing.T) {
	s, ts := start(t, Options{})
	refreshToken := login(t, ts).str("refreshToken")

	s.Fail(refreshPath, 1, Fault{Spend: true, Status: http.StatusBadGateway})
	wantFailure(t, refresh(t, ts, refreshToken), http.StatusBadGateway, "injected fault")
	wantSpent(t, ts, refreshToken)

	s.Fail(loginPath, 1, Fault{Spend: true, Reset: true})
	req := newRequest(t, http.MethodPost, ts.URL+loginPath, "application/x-www-form-urlencoded", strings.NewReader(demoLogin.Encode()))
	if res, err := exchange(noKeepAlive(), req); err == nil {
		t.Fatalf("got %d %s, want a connection reset", res.status, res.raw)
	}

	s.Fail(loginPath, 1, Fault{Spend: true})
	checkSession(t, login(t, ts))

	if st := s.Stats(); st.Refreshes != 1 || st.Logins != 3 || st.ReusedRefreshTokens != 1 {
		t.Errorf("stats = %+v, want 1 refresh, 3 logins, 1 re-use", st)
	}
}

func TestFaultLifetime(t *testing.T) {
	for _, lifetime := range []int{0, -5, 1 << 40} {
		clock := newClock()
		s, ts := start(t, Options{Now: clock.Now})
		s.Fail(loginPath, 1, Fault{Lifetime: intPtr(lifetime)})
		res := login(t, ts)
		if res.body["tokenLifetime"] != float64(lifetime) {
			t.Errorf("tokenLifetime = %v, want %d", res.body["tokenLifetime"], lifetime)
		}
		clock.Advance(time.Hour - time.Nanosecond)
		if !s.Live(res.str("token")) {
			t.Errorf("Lifetime %d changed the real expiry: dead before 1h", lifetime)
		}
		clock.Advance(time.Nanosecond)
		if s.Live(res.str("token")) {
			t.Errorf("Lifetime %d changed the real expiry: live at 1h", lifetime)
		}
	}
}

func TestFaultOmit(t *testing.T) {
	s, ts := start(t, Options{})
	first := login(t, ts)
	s.Fail(refreshPath, 1, Fault{Omit: []string{"token", "refreshToken", "tokenExpiration"}})
	res := refresh(t, ts, first.str("refreshToken"))
	for _, name := range []string{"token", "refreshToken", "tokenExpiration"} {
		if _, present := res.body[name]; present {
			t.Errorf("%s present in %s", name, res.raw)
		}
	}
	if res.status != http.StatusOK || res.str("guid") != first.str("guid") || res.body["tokenLifetime"] != float64(3600) {
		t.Errorf("other fields disturbed: %d %s", res.status, res.raw)
	}
	wantSpent(t, ts, first.str("refreshToken"))

	// A failure is not disturbed.
	s.Fail(loginPath, 1, Fault{Omit: []string{"error"}, PadBytes: 10, Lifetime: intPtr(1)})
	wantFailure(t, postForm(t, ts, loginPath, url.Values{"username": {"demo"}, "password": {"x"}}), http.StatusUnauthorized, "invalid credentials")
}

func TestFaultPadBytes(t *testing.T) {
	s, ts := start(t, Options{})
	const pad = 2<<20 + 1
	s.Fail(loginPath, 1, Fault{PadBytes: pad})
	res := login(t, ts)
	if len(res.raw) <= 2<<20 {
		t.Errorf("body is %d bytes, want more than 2 MiB", len(res.raw))
	}
	if len(res.str("padding")) != pad || res.str("token") == "" {
		t.Errorf("padding is %d bytes and token %q; want %d and a token", len(res.str("padding")), res.str("token"), pad)
	}
}

func TestFaultWhoami(t *testing.T) {
	s, ts := start(t, Options{})
	token := login(t, ts).str("token")
	s.Fail(whoamiPath, 1, Fault{Status: http.StatusForbidden})
	wantFailure(t, whoami(t, ts, "Bearer "+token), http.StatusForbidden, "injected fault")
	s.Fail(whoamiPath, 1, Fault{PadBytes: 3})
	if res := whoami(t, ts, "Bearer "+token); res.status != http.StatusOK || res.str("padding") != "xxx" || res.str("username") != "demo" {
		t.Errorf("padded whoami = %d %s", res.status, res.raw)
	}
	if st := s.Stats(); st.ProtectedOK != 1 || st.ProtectedDenied != 0 {
		t.Errorf("ProtectedOK, ProtectedDenied = %d, %d; want 1, 0 (a faulted call is neither)", st.ProtectedOK, st.ProtectedDenied)
	}
}

// statusesOf logs in n times and returns the statuses in order.
func statusesOf(t *testing.T, ts *httptest.Server, n int) []int {
	t.Helper()
	statuses := make([]int, n)
	for i := range statuses {
		statuses[i] = postForm(t, ts, loginPath, demoLogin).status
	}
	return statuses
}

func TestFailQueue(t *testing.T) {
	s, ts := start(t, Options{})
	s.Fail(loginPath, 1, Fault{Status: http.StatusServiceUnavailable})
	s.Fail(loginPath, 0, Fault{Status: http.StatusTeapot})
	s.Fail(loginPath, 2, Fault{Status: http.StatusTooManyRequests})
	s.Fail(refreshPath, 1, Fault{Status: http.StatusInternalServerError})
	want := []int{503, 429, 429, 200}
	if got := statusesOf(t, ts, len(want)); !slices.Equal(got, want) {
		t.Errorf("statuses = %v, want %v", got, want)
	}

	s.Fail(loginPath, -1, Fault{Status: http.StatusInternalServerError})
	s.Fail(loginPath, 1, Fault{Status: http.StatusTeapot})
	want = []int{500, 500, 500, 500, 500}
	if got := statusesOf(t, ts, len(want)); !slices.Equal(got, want) {
		t.Errorf("with n < 0: statuses = %v, want %v", got, want)
	}
	s.ClearFaults()
	if got := statusesOf(t, ts, 1); got[0] != http.StatusOK {
		t.Errorf("after ClearFaults: status %d, want 200", got[0])
	}
	if st := s.Stats(); st.LoginCalls != 10 || st.Logins != 2 {
		t.Errorf("LoginCalls, Logins = %d, %d; want 10, 2", st.LoginCalls, st.Logins)
	}
}

func TestFailCopiesFault(t *testing.T) {
	s, ts := start(t, Options{})
	omit := []string{"token"}
	lifetime := 5
	s.Fail(loginPath, 1, Fault{Omit: omit, Lifetime: &lifetime})
	omit[0], lifetime = "guid", 6
	res := login(t, ts)
	if _, present := res.body["token"]; present || res.str("guid") == "" || res.body["tokenLifetime"] != float64(5) {
		t.Errorf("the caller's later changes reached the fault: %s", res.raw)
	}
}

func TestSetFaultRate(t *testing.T) {
	const calls = 400
	s, ts := start(t, Options{})

	s.SetFaultRate(0.25, Fault{Status: http.StatusServiceUnavailable})
	faulted := 0
	for _, status := range statusesOf(t, ts, calls) {
		if status == http.StatusServiceUnavailable {
			faulted++
		}
	}
	// Expect 100, standard deviation about 8.7: the bounds are 5.8 of them.
	if faulted < 50 || faulted > 150 {
		t.Errorf("%d of %d calls faulted at rate 0.25, want about 100", faulted, calls)
	}

	s.SetFaultRate(1, Fault{Status: http.StatusServiceUnavailable}, Fault{Status: http.StatusTooManyRequests})
	counts := make(map[int]int)
	for _, status := range statusesOf(t, ts, calls) {
		counts[status]++
	}
	// Expect 200 each, standard deviation 10.
	if counts[503] < 140 || counts[429] < 140 || counts[503]+counts[429] != calls {
		t.Errorf("statuses at rate 1 = %v, want about half 503 and half 429", counts)
	}

	// A queued fault comes first; /api/whoami is exempt from the rate.
	s.SetFaultRate(1)
	s.Fail(refreshPath, 1, Fault{Status: http.StatusTeapot})
	wantFailure(t, refresh(t, ts, "x"), http.StatusTeapot, "injected fault")
	wantFailure(t, refresh(t, ts, "x"), http.StatusServiceUnavailable, "injected fault")
	wantFailure(t, whoami(t, ts, ""), http.StatusUnauthorized, "missing bearer token")

	s.SetFaultRate(0)
	if got := statusesOf(t, ts, 50); slices.ContainsFunc(got, func(status int) bool { return status != http.StatusOK }) {
		t.Errorf("rate 0 still faults: %v", got)
	}
	st := s.Stats()
	if st.LoginCalls != 2*calls+50 || st.RefreshCalls != 2 {
		t.Errorf("LoginCalls, RefreshCalls = %d, %d; want %d, 2", st.LoginCalls, st.RefreshCalls, 2*calls+50)
	}
}

func TestClearFaultsStopsRate(t *testing.T) {
	s, ts := start(t, Options{})
	s.SetFaultRate(1)
	s.ClearFaults()
	if got := statusesOf(t, ts, 20); slices.ContainsFunc(got, func(status int) bool { return status != http.StatusOK }) {
		t.Errorf("faults after ClearFaults: %v", got)
	}
}

package fakett

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// admin calls a control endpoint with an optional JSON body.
func admin(t *testing.T, ts *httptest.Server, method, path, body string) result {
	t.Helper()
	var req *http.Request
	if body == "" {
		req = newRequest(t, method, ts.URL+adminPrefix+path, "", nil)
	} else {
		req = newRequest(t, method, ts.URL+adminPrefix+path, "application/json", strings.NewReader(body))
	}
	res := do(t, ts.Client(), req)
	if ct := res.header.Get("Content-Type"); ct != "application/json" || res.body == nil {
		t.Errorf("%s: got Content-Type %q and body %s, want a JSON object", path, ct, res.raw)
	}
	return res
}

// wantOK checks that res is the answer of a control call with nothing to
// report.
func wantOK(t *testing.T, res result) {
	t.Helper()
	if res.status != http.StatusOK || string(res.raw) != `{"success":true}` {
		t.Errorf("got %d %s, want 200 {\"success\":true}", res.status, res.raw)
	}
}

func TestAdminStats(t *testing.T) {
	clock := newClock()
	s, ts := start(t, Options{Now: clock.Now})
	refresh(t, ts, login(t, ts).str("refreshToken"))
	res := admin(t, ts, http.MethodGet, "stats", "")
	var got Stats
	if err := json.Unmarshal(res.raw, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s.Stats()) {
		t.Errorf("/_fake/stats = %+v, want %+v", got, s.Stats())
	}
	for _, key := range []string{"login_calls", "refresh_calls", "logins", "refreshes", "reused_refresh_tokens",
		"rejected_refreshes", "protected_ok", "protected_denied", "refresh_call_times"} {
		if _, present := res.body[key]; !present {
			t.Errorf("/_fake/stats lacks %s: %s", key, res.raw)
		}
	}
	if res.body["refresh_calls"] != float64(1) {
		t.Errorf("refresh_calls = %v, want 1", res.body["refresh_calls"])
	}
}

func TestAdminFail(t *testing.T) {
	s, ts := start(t, Options{})
	wantOK(t, admin(t, ts, http.MethodPost, "fail",
		`{"endpoint":"/auth/login","count":2,"fault":{"status":429,"retry_after":"3"}}`))
	for range 2 {
		res := postForm(t, ts, loginPath, demoLogin)
		wantFailure(t, res, http.StatusTooManyRequests, "injected fault")
		if res.header.Get("Retry-After") != "3" {
			t.Errorf("Retry-After = %q, want 3", res.header.Get("Retry-After"))
		}
	}
	login(t, ts)

	wantOK(t, admin(t, ts, http.MethodPost, "fail", `{"endpoint":"/api/whoami","count":-1,"fault":{"body":"nope"}}`))
	for range 3 {
		if res := do(t, ts.Client(), newRequest(t, http.MethodGet, ts.URL+whoamiPath, "", nil)); string(res.raw) != "nope" {
			t.Errorf("whoami body = %q, want nope", res.raw)
		}
	}
	wantOK(t, admin(t, ts, http.MethodPost, "clear-faults", ""))
	wantFailure(t, whoami(t, ts, ""), http.StatusUnauthorized, "missing bearer token")
	if st := s.Stats(); st.LoginCalls != 3 {
		t.Errorf("LoginCalls = %d, want 3 (control calls are not counted)", st.LoginCalls)
	}
}

func TestAdminFaultFields(t *testing.T) {
	var fj faultJSON
	body := `{"status":503,"retry_after":"9","body":"x","delay":"1.5s","reset":true,"spend":true,
		"lifetime":-1,"omit":["token","guid"],"pad_bytes":64}`
	if err := json.Unmarshal([]byte(body), &fj); err != nil {
		t.Fatal(err)
	}
	got, err := fj.fault()
	if err != nil {
		t.Fatal(err)
	}
	want := Fault{Status: 503, RetryAfter: "9", Body: "x", Delay: 1500 * time.Millisecond, Reset: true, Spend: true,
		Lifetime: intPtr(-1), Omit: []string{"token", "guid"}, PadBytes: 64}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fault() = %+v, want %+v", got, want)
	}
}

func TestAdminFaultRate(t *testing.T) {
	_, ts := start(t, Options{})
	wantOK(t, admin(t, ts, http.MethodPost, "fault-rate", `{"rate":1,"faults":[{"status":418},{"status":418,"body":"{}"}]}`))
	for range 5 {
		if res := do(t, ts.Client(), newRequest(t, http.MethodPost, ts.URL+refreshPath, "text/plain", nil)); res.status != http.StatusTeapot {
			t.Errorf("status = %d, want 418", res.status)
		}
	}
	wantOK(t, admin(t, ts, http.MethodPost, "fault-rate", `{"rate":1}`))
	wantFailure(t, postForm(t, ts, loginPath, demoLogin), http.StatusServiceUnavailable, "injected fault")
	wantOK(t, admin(t, ts, http.MethodPost, "fault-rate", `{"rate":0}`))
	login(t, ts)
}

func TestAdminSettings(t *testing.T) {
	clock := newClock()
	_, ts := start(t, Options{Now: clock.Now})
	wantOK(t, admin(t, ts, http.MethodPost, "settings", `{"token_lifetime":"30s","skew":"-2h"}`))
	res := login(t, ts)
	if res.body["tokenLifetime"] != float64(30) || res.str("tokenExpiration") != "2018-04-02T18:39:42+00:00" {
		t.Errorf("after settings: tokenLifetime %v, tokenExpiration %q; want 30 and 2018-04-02T18:39:42+00:00",
			res.body["tokenLifetime"], res.str("tokenExpiration"))
	}
	wantOK(t, admin(t, ts, http.MethodPost, "settings", `{"skew":"0s"}`))
	res = login(t, ts)
	if res.body["tokenLifetime"] != float64(30) || res.str("tokenExpiration") != "2018-04-02T20:39:42+00:00" {
		t.Errorf("after skew only: tokenLifetime %v, tokenExpiration %q; want 30 and 2018-04-02T20:39:42+00:00",
			res.body["tokenLifetime"], res.str("tokenExpiration"))
	}
	wantOK(t, admin(t, ts, http.MethodPost, "settings", `{"token_lifetime":"2m"}`))
	if got := login(t, ts).body["tokenLifetime"]; got != float64(120) {
		t.Errorf("tokenLifetime = %v, want 120", got)
	}
}

func TestAdminRevokeAndLive(t *testing.T) {
	_, ts := start(t, Options{})
	token := login(t, ts).str("token")
	live := func() any {
		return admin(t, ts, http.MethodGet, "live?"+url.Values{"token": {token}}.Encode(), "").body["live"]
	}
	if got := live(); got != true {
		t.Errorf("live = %v before revoke, want true", got)
	}
	wantOK(t, admin(t, ts, http.MethodPost, "revoke", ""))
	if got := live(); got != false {
		t.Errorf("live = %v after revoke, want false", got)
	}
}

func TestAdminSession(t *testing.T) {
	s, ts := start(t, Options{})
	res := admin(t, ts, http.MethodPost, "session", `{"username":"demo"}`)
	if res.status != http.StatusOK || len(res.body) != 1 {
		t.Fatalf("got %d %s, want 200 {\"refresh_token\":...}", res.status, res.raw)
	}
	checkSession(t, refresh(t, ts, res.str("refresh_token")))
	wantFailure(t, admin(t, ts, http.MethodPost, "session", `{"username":"eve"}`), http.StatusBadRequest, `unknown user "eve"`)
	if st := s.Stats(); st.Logins != 0 || st.LoginCalls != 0 {
		t.Errorf("stats = %+v, want no logins", st)
	}
}

func TestAdminRejects(t *testing.T) {
	s, ts := start(t, Options{})
	tests := []struct {
		method, path, body string
		status             int
		message            string
	}{
		{http.MethodPost, "stats", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodPost, "live?token=x", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodGet, "fail", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodGet, "fault-rate", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodGet, "clear-faults", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodGet, "settings", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodGet, "revoke", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodGet, "session", "", http.StatusMethodNotAllowed, "method not allowed"},
		{http.MethodGet, "live", "", http.StatusBadRequest, "missing parameter: token"},
		{http.MethodGet, "nothing", "", http.StatusNotFound, "not found"},
		{http.MethodPost, "fail", `{"endpoint":"/auth/logout","count":1,"fault":{}}`, http.StatusBadRequest, `unknown endpoint "/auth/logout"`},
		{http.MethodPost, "fail", `{"endpoint":"/auth/login","fault":{"status":500}}`, http.StatusBadRequest, "count must not be 0"},
		{http.MethodPost, "fail", `{"endpoint":"/auth/login","count":1,"fault":{"delay":"soon"}}`, http.StatusBadRequest, `invalid delay "soon"`},
		{http.MethodPost, "fail", `{"endpoint":"/auth/login","count":1,"fault":{"delay":"-1s"}}`, http.StatusBadRequest, `invalid delay "-1s"`},
		{http.MethodPost, "fail", `{"endpoint":"/auth/login","count":1,"fault":{"status":42}}`, http.StatusBadRequest, "status must be 0 or 200-599"},
		{http.MethodPost, "fail", `{"endpoint":"/auth/login","count":1,"fault":{"pad_bytes":-1}}`, http.StatusBadRequest, "pad_bytes must not be negative"},
		{http.MethodPost, "fault-rate", `{"rate":1.5}`, http.StatusBadRequest, "rate must be between 0 and 1"},
		{http.MethodPost, "fault-rate", `{"rate":0.5,"faults":[{"status":600}]}`, http.StatusBadRequest, "status must be 0 or 200-599"},
		{http.MethodPost, "settings", `{"token_lifetime":"0s"}`, http.StatusBadRequest, `invalid token_lifetime "0s"`},
		{http.MethodPost, "settings", `{"skew":"later"}`, http.StatusBadRequest, `invalid skew "later"`},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			wantFailure(t, admin(t, ts, tt.method, tt.path, tt.body), tt.status, tt.message)
		})
	}
	for _, body := range []string{`{"endpoint":"/auth/login","count":1,"fault":{"stauts":500}}`, `{`} {
		res := admin(t, ts, http.MethodPost, "fail", body)
		if res.status != http.StatusBadRequest || !strings.HasPrefix(res.str("error"), "malformed body: ") {
			t.Errorf("fail with %s: got %d %s, want 400 malformed body", body, res.status, res.raw)
		}
	}
	// Nothing above took effect.
	login(t, ts)
	if res := whoami(t, ts, "Bearer x"); res.status != http.StatusUnauthorized {
		t.Errorf("whoami status %d, want the normal 401", res.status)
	}
	if st := s.Stats(); st.LoginCalls != 1 || st.RefreshCalls != 0 {
		t.Errorf("stats = %+v, want only the one login counted", st)
	}
}

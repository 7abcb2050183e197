package fakett

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// sessionFields are the fields of the documented session response.
var sessionFields = []string{"success", "guid", "token", "tokenExpiration", "tokenLifetime", "refreshToken", "refreshTokenExpiration"}

// checkSession checks that res is a complete session response and nothing
// more.
func checkSession(t *testing.T, res result) {
	t.Helper()
	if res.status != http.StatusOK || res.body["success"] != true {
		t.Fatalf("got %d %s, want a session", res.status, res.raw)
	}
	if len(res.body) != len(sessionFields) {
		t.Errorf("body has %d fields, want %d: %s", len(res.body), len(sessionFields), res.raw)
	}
	for _, name := range []string{"guid", "token", "refreshToken"} {
		if !uuidShape.MatchString(res.str(name)) {
			t.Errorf("%s = %q, want a UUID", name, res.str(name))
		}
	}
	for _, name := range []string{"tokenExpiration", "refreshTokenExpiration"} {
		if _, err := time.Parse(time.RFC3339, res.str(name)); err != nil || !strings.HasSuffix(res.str(name), "+00:00") {
			t.Errorf("%s = %q, want RFC 3339 in UTC as +00:00", name, res.str(name))
		}
	}
	if _, ok := res.body["tokenLifetime"].(float64); !ok {
		t.Errorf("tokenLifetime = %v, want a number", res.body["tokenLifetime"])
	}
}

func TestLoginEncodings(t *testing.T) {
	_, ts := start(t, Options{})
	tests := []struct {
		name string
		send func() result
	}{
		{"form", func() result {
			return postForm(t, ts, loginPath, url.Values{"username": {"demo"}, "password": {"demo-password"}, "account_id": {"42"}})
		}},
		{"multipart", func() result {
			return postMultipart(t, ts, loginPath, map[string]string{"username": "demo", "password": "demo-password", "account_id": "42"})
		}},
		{"json number account", func() result {
			return postJSON(t, ts, loginPath, `{"username":"demo","password":"demo-password","account_id":42}`)
		}},
		{"json string account", func() result {
			return postJSON(t, ts, loginPath, `{"username":"demo","password":"demo-password","account_id":"42"}`)
		}},
		{"json null account", func() result {
			return postJSON(t, ts, loginPath, `{"username":"demo","password":"demo-password","account_id":null}`)
		}},
		{"content-type parameters", func() result {
			req := newRequest(t, http.MethodPost, ts.URL+loginPath, "application/json; charset=utf-8", strings.NewReader(`{"username":"demo","password":"demo-password"}`))
			return apiDo(t, ts.Client(), req)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := tt.send()
			checkSession(t, res)
			if res.body["tokenLifetime"] != float64(3600) {
				t.Errorf("tokenLifetime = %v, want the default 3600", res.body["tokenLifetime"])
			}
		})
	}
}

func TestLoginUsers(t *testing.T) {
	_, ts := start(t, Options{Users: map[string]string{"alice": "a-pass"}})
	checkSession(t, postForm(t, ts, loginPath, url.Values{"username": {"alice"}, "password": {"a-pass"}}))
	res := postForm(t, ts, loginPath, url.Values{"username": {"demo"}, "password": {"demo-password"}})
	wantFailure(t, res, http.StatusUnauthorized, "invalid credentials")
}

func TestLoginAuthOnly(t *testing.T) {
	s, ts := start(t, Options{})
	for _, res := range []result{
		postForm(t, ts, loginPath, url.Values{"username": {"demo"}, "password": {"demo-password"}, "auth_only": {"1"}}),
		postJSON(t, ts, loginPath, `{"username":"demo","password":"demo-password","auth_only":1}`),
	} {
		if res.status != http.StatusOK || string(res.raw) != `{"success":true}` {
			t.Errorf("auth_only=1: got %d %s, want 200 {\"success\":true}", res.status, res.raw)
		}
	}
	wantFailure(t, postForm(t, ts, loginPath, url.Values{"username": {"demo"}, "password": {"wrong"}, "auth_only": {"1"}}),
		http.StatusUnauthorized, "invalid credentials")
	checkSession(t, postForm(t, ts, loginPath, url.Values{"username": {"demo"}, "password": {"demo-password"}, "auth_only": {"0"}}))
	if st := s.Stats(); st.LoginCalls != 4 || st.Logins != 3 {
		t.Errorf("LoginCalls, Logins = %d, %d; want 4, 3", st.LoginCalls, st.Logins)
	}
}

func TestLoginRejected(t *testing.T) {
	s, ts := start(t, Options{})
	tests := []struct {
		name    string
		body    string // JSON
		status  int
		message string
	}{
		{"bad password", `{"username":"demo","password":"nope"}`, http.StatusUnauthorized, "invalid credentials"},
		{"unknown user", `{"username":"eve","password":"demo-password"}`, http.StatusUnauthorized, "invalid credentials"},
		{"missing username", `{"password":"demo-password"}`, http.StatusBadRequest, "missing parameter: username"},
		{"missing both", `{}`, http.StatusBadRequest, "missing parameter: username"},
		{"empty username", `{"username":"","password":"demo-password"}`, http.StatusBadRequest, "missing parameter: username"},
		{"missing password", `{"username":"demo"}`, http.StatusBadRequest, "missing parameter: password"},
		{"account_id not integer", `{"username":"demo","password":"demo-password","account_id":"abc"}`, http.StatusBadRequest, "invalid parameter: account_id"},
		{"account_id fraction", `{"username":"demo","password":"demo-password","account_id":1.5}`, http.StatusBadRequest, "invalid parameter: account_id"},
		{"auth_only not integer", `{"username":"demo","password":"demo-password","auth_only":"yes"}`, http.StatusBadRequest, "invalid parameter: auth_only"},
		{"username not a string", `{"username":true,"password":"demo-password"}`, http.StatusBadRequest, "invalid parameter: username"},
		{"malformed json", `{"username":`, http.StatusBadRequest, "malformed body"},
		{"json array", `["demo"]`, http.StatusBadRequest, "malformed body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantFailure(t, postJSON(t, ts, loginPath, tt.body), tt.status, tt.message)
		})
	}
	if st := s.Stats(); st.LoginCalls != int64(len(tests)) || st.Logins != 0 {
		t.Errorf("LoginCalls, Logins = %d, %d; want %d, 0", st.LoginCalls, st.Logins, len(tests))
	}
}

func TestLoginIgnoresQuery(t *testing.T) {
	_, ts := start(t, Options{})
	req := newRequest(t, http.MethodPost, ts.URL+loginPath+"?username=demo&password=demo-password",
		"application/x-www-form-urlencoded", strings.NewReader(""))
	wantFailure(t, apiDo(t, ts.Client(), req), http.StatusBadRequest, "missing parameter: username")
}

func TestRequestRules(t *testing.T) {
	_, ts := start(t, Options{})
	form := "username=demo&password=demo-password&refresh_token=x"
	huge := "username=" + strings.Repeat("a", maxBodyBytes+1)
	hugeMultipart := "--x\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\n" + strings.Repeat("a", maxBodyBytes) + "\r\n--x--\r\n"
	tests := []struct {
		name        string
		method      string
		contentType string
		body        string
		chunked     bool // send the body chunked, with no Content-Length
		status      int
		message     string
	}{
		{"wrong method", http.MethodGet, "", "", false, http.StatusMethodNotAllowed, "method not allowed"},
		{"chunked", http.MethodPost, "application/x-www-form-urlencoded", form, true, http.StatusLengthRequired, "content-length required"},
		{"no content-type", http.MethodPost, "", form, false, http.StatusUnsupportedMediaType, "missing content-type"},
		{"unsupported content-type", http.MethodPost, "text/plain", form, false, http.StatusUnsupportedMediaType, "unsupported content-type: text/plain"},
		{"malformed content-type", http.MethodPost, "application/json; =", form, false, http.StatusUnsupportedMediaType, "malformed content-type"},
		{"form too large", http.MethodPost, "application/x-www-form-urlencoded", huge, false, http.StatusRequestEntityTooLarge, "request body too large"},
		{"json too large", http.MethodPost, "application/json", `{"username":"` + strings.Repeat("a", maxBodyBytes) + `"}`, false, http.StatusRequestEntityTooLarge, "request body too large"},
		{"multipart too large", http.MethodPost, "multipart/form-data; boundary=x", hugeMultipart, false, http.StatusRequestEntityTooLarge, "request body too large"},
		{"malformed multipart", http.MethodPost, "multipart/form-data; boundary=x", "garbage", false, http.StatusBadRequest, "malformed body"},
	}
	for _, path := range []string{loginPath, refreshPath} {
		for _, tt := range tests {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				var body io.Reader = strings.NewReader(tt.body)
				if tt.chunked {
					body = io.NopCloser(body) // hides the length from the client
				}
				req := newRequest(t, tt.method, ts.URL+path, tt.contentType, body)
				if tt.chunked && req.ContentLength != 0 {
					t.Fatalf("request has ContentLength %d, want unknown", req.ContentLength)
				}
				res := apiDo(t, ts.Client(), req)
				wantFailure(t, res, tt.status, tt.message)
				if tt.status == http.StatusMethodNotAllowed && res.header.Get("Allow") != http.MethodPost {
					t.Errorf("Allow = %q, want POST", res.header.Get("Allow"))
				}
			})
		}
	}
}

func TestNotFound(t *testing.T) {
	_, ts := start(t, Options{})
	for _, path := range []string{"/", "/auth/logout", "/_fake/nothing"} {
		wantFailure(t, apiDo(t, ts.Client(), newRequest(t, http.MethodGet, ts.URL+path, "", nil)), http.StatusNotFound, "not found")
	}
}

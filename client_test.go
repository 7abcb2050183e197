package teletracker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func okBody(extra string) []byte {
	return []byte(`{"success":true,"guid":"g-1","token":"tok-1","tokenExpiration":"2018-04-02T21:39:12+00:00",` +
		`"tokenLifetime":3600,"refreshToken":"rt-1","refreshTokenExpiration":"2018-05-01T21:39:12+00:00"` + extra + `}`)
}

func TestParseResponseSuccess(t *testing.T) {
	g, err := parseResponse(200, "", okBody(`,"unknown":{"a":[1,2]}`), testStart, "")
	if err != nil {
		t.Fatal(err)
	}
	if g.token != "tok-1" || g.refreshToken != "rt-1" || g.lifetime != time.Hour {
		t.Fatalf("%+v", g)
	}
	// 29 days between the two server timestamps, plus the token's hour.
	if g.refreshLifetime != 29*24*time.Hour+time.Hour {
		t.Fatalf("refresh lifetime %v", g.refreshLifetime)
	}
}

func TestParseResponseClasses(t *testing.T) {
	cases := []struct {
		name        string
		status      int
		retryAfter  string
		body        string
		kind        failureKind
		retry       time.Duration
		salvage     bool
		errContains string
	}{
		{name: "400 names the problem", status: 400, body: `{"success":false,"error":"missing parameter: refresh_token"}`, kind: failRejected, errContains: "HTTP 400: missing parameter: refresh_token"},
		{name: "401", status: 401, body: `{"success":false,"message":"token already used"}`, kind: failRejected, errContains: "token already used"},
		{name: "403 no body", status: 403, kind: failRejected, errContains: "HTTP 403"},
		{name: "404", status: 404, body: "<html>", kind: failTransient},
		{name: "302", status: 302, kind: failTransient, errContains: "unexpected redirect"},
		{name: "429 seconds", status: 429, retryAfter: "120", kind: failTransient, retry: 2 * time.Minute},
		{name: "429 date", status: 429, retryAfter: testStart.Add(90 * time.Second).Format(http.TimeFormat), kind: failTransient, retry: 90 * time.Second},
		{name: "429 huge", status: 429, retryAfter: "999999999999", kind: failTransient, retry: maxRetryAfter},
		{name: "429 garbage", status: 429, retryAfter: "soon", kind: failTransient},
		{name: "500", status: 500, kind: failTransient},
		{name: "503", status: 503, body: `{"success":false,"error":"maintenance"}`, kind: failTransient, errContains: "maintenance"},
		{name: "malformed", status: 200, body: `{"success":tru`, kind: failUnknown, errContains: "malformed JSON"},
		{name: "not json", status: 200, body: `<html>hello</html>`, kind: failUnknown},
		{name: "huge lifetime", status: 200, body: `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":1e30}`, kind: failTransient, salvage: true, errContains: "implausibly long"},
		{name: "success false", status: 200, body: `{"success":false,"error":"nope"}`, kind: failTransient, errContains: "call failed: nope"},
		// An answer that carries a refresh token was processed, whatever its
		// success says: the new refresh token is kept.
		{name: "success missing", status: 200, body: `{"token":"a","refreshToken":"b","tokenLifetime":5}`, kind: failTransient, salvage: true, errContains: "no boolean success"},
		{name: "success as string", status: 200, body: `{"success":"true","token":"a","refreshToken":"b","tokenLifetime":5}`, kind: failTransient, salvage: true, errContains: "no boolean success"},
		{name: "success as number", status: 201, body: `{"success":1,"refreshToken":"b"}`, kind: failTransient, salvage: true, errContains: "no boolean success, no token"},
		{name: "success false with a refresh token", status: 200, body: `{"success":false,"token":"a","refreshToken":"b","tokenLifetime":5}`, kind: failTransient, salvage: true, errContains: "success is false"},
		{name: "success as string, no refresh token", status: 200, body: `{"success":"true","token":"a"}`, kind: failTransient, errContains: "success is not true"},
		{name: "no token", status: 200, body: `{"success":true,"refreshToken":"b","tokenLifetime":60}`, kind: failTransient, salvage: true, errContains: "no token"},
		{name: "no refresh token", status: 200, body: `{"success":true,"token":"a","tokenLifetime":60}`, kind: failSpent, errContains: "no refreshToken"},
		{name: "zero lifetime", status: 200, body: `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":0}`, kind: failTransient, salvage: true, errContains: "not positive"},
		{name: "negative lifetime", status: 200, body: `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":-5}`, kind: failTransient, salvage: true},
		{name: "lifetime not a number", status: 200, body: `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":"x"}`, kind: failTransient, salvage: true, errContains: "no numeric tokenLifetime"},
		{name: "token of wrong type", status: 200, body: `{"success":true,"token":5,"refreshToken":"b","tokenLifetime":60}`, kind: failTransient, salvage: true, errContains: "no token"},
		{name: "lifetime missing", status: 200, body: `{"success":true,"token":"a","refreshToken":"b"}`, kind: failTransient, salvage: true, errContains: "no numeric tokenLifetime"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := parseResponse(tc.status, tc.retryAfter, []byte(tc.body), testStart, "")
			var ue *upstreamError
			if !errors.As(err, &ue) {
				t.Fatalf("err %v, want an upstreamError", err)
			}
			if ue.kind != tc.kind || ue.retryAfter != tc.retry {
				t.Fatalf("got kind %v retry %v", ue.kind, ue.retryAfter)
			}
			if (g != nil) != tc.salvage {
				t.Fatalf("grant %+v, salvage %v", g, tc.salvage)
			}
			if !strings.Contains(err.Error(), tc.errContains) {
				t.Fatalf("error %q lacks %q", err, tc.errContains)
			}
		})
	}
}

// TestParseResponseEchoIsNoSuccessor: the refresh token sent, echoed back,
// is not a new one.
func TestParseResponseEchoIsNoSuccessor(t *testing.T) {
	g, err := parseResponse(200, "", []byte(`{"refreshToken":"rt-sent"}`), testStart, "rt-sent")
	var ue *upstreamError
	if g != nil || !errors.As(err, &ue) || ue.kind != failTransient {
		t.Fatalf("an echo of the refresh token sent was taken for a successor: %+v %v", g, err)
	}
}

func TestParseResponseAny2xxIsProcessed(t *testing.T) {
	if g, err := parseResponse(201, "", okBody(""), testStart, ""); err != nil || g.token != "tok-1" {
		t.Fatalf("201 with a session: %+v %v", g, err)
	}
	_, err := parseResponse(204, "", nil, testStart, "")
	var ue *upstreamError
	if !errors.As(err, &ue) || ue.kind != failUnknown {
		t.Fatalf("204 without a body must count as presumably spent: %v", err)
	}
}

// testClient is a client for url with a 2 s timeout.
func testClient(t *testing.T, url string) *client {
	t.Helper()
	tr, err := newProcess(DefaultCallsPerSecond).transport("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return newClient(&config{BaseURL: url, RequestTimeout: 2 * time.Second}, tr, time.Now)
}

func TestClientDoesNotFollowRedirects(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		_, _ = w.Write(okBody(""))
	}))
	defer other.Close()
	for _, code := range []int{301, 302, 303, 307, 308} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/auth/refresh", code)
		}))
		_, err := testClient(t, srv.URL).refresh(context.Background(), "rt-secret")
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), "unexpected redirect") {
			t.Fatalf("%d: %v", code, err)
		}
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the refresh token was sent to the redirect target %d times", n)
	}
}

func TestClientRefusesLargeBody(t *testing.T) {
	// Valid JSON, then 2 MiB of whitespace: only the size check refuses it.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(okBody(""))
		_, _ = w.Write([]byte(strings.Repeat(" ", 2<<20)))
	}))
	defer srv.Close()
	g, err := testClient(t, srv.URL).refresh(context.Background(), "rt")
	var ue *upstreamError
	if g != nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), "over 1 MiB") || ue.kind != failUnknown {
		t.Fatalf("%+v %v", g, err)
	}
}

func TestClientClassifiesTransportErrors(t *testing.T) {
	tlsSrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsSrv.Config.ErrorLog = discardLog()
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	cases := []struct {
		name   string
		url    string
		kind   failureKind
		detail string
	}{
		{"refused", "http://127.0.0.1:1", failTransient, "cannot connect"},
		{"untrusted TLS", tlsSrv.URL, failTransient, "TLS handshake failed"},
		{"timeout", slow.URL, failUnknown, "timed out; the outcome is unknown"},
	}
	for _, tc := range cases {
		_, err := testClient(t, tc.url).refresh(context.Background(), "rt")
		var ue *upstreamError
		if !errors.As(err, &ue) || ue.kind != tc.kind || !strings.Contains(err.Error(), tc.detail) {
			t.Errorf("%s: %v (kind %v)", tc.name, err, ue)
		}
	}
}

func TestParseResponseLifetimeAsString(t *testing.T) {
	g, err := parseResponse(200, "", []byte(`{"success":true,"token":"a","refreshToken":"b","tokenLifetime":"90"}`), testStart, "")
	if err != nil || g.lifetime != 90*time.Second || g.refreshLifetime != 0 {
		t.Fatalf("%+v %v", g, err)
	}
}

func TestParseResponseRedactsSecret(t *testing.T) {
	body := `{"success":false,"error":"refresh token rt-secret-123 is not valid` + strings.Repeat("!", 500) + `"}`
	_, err := parseResponse(401, "", []byte(body), testStart, "rt-secret-123")
	if strings.Contains(err.Error(), "rt-secret-123") || !strings.Contains(err.Error(), "[redacted]") {
		t.Fatalf("not redacted: %v", err)
	}
	if len(err.Error()) > 300 {
		t.Fatalf("not cut short: %d bytes", len(err.Error()))
	}
}

func TestSafeTextCutsAfterRedacting(t *testing.T) {
	secret := "SECRETSECRET"
	s := safeText(strings.Repeat("a", maxErrorText-4)+secret+"\n\x00tail", secret)
	if strings.Contains(s, "SECR") || strings.ContainsAny(s, "\n\x00") {
		t.Fatalf("%q", s)
	}
}

// FuzzParseResponse: no input panics the parser, and whatever it accepts is a
// complete session with a sane lifetime.
func FuzzParseResponse(f *testing.F) {
	f.Add(200, "", string(okBody("")))
	f.Add(200, "", `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":"3600"}`)
	f.Add(200, "", `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":1e309}`)
	f.Add(200, "", `{"success":true,"token":"","refreshToken":"b","tokenLifetime":-1}`)
	f.Add(200, "", `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":3600,"tokenExpiration":"x","refreshTokenExpiration":"2018-05-01T21:39:12Z"}`)
	f.Add(429, "Wed, 21 Oct 2015 07:28:00 GMT", `{}`)
	f.Add(401, "", `{"success":false,"error":"\u0000\u001b[31m"}`)
	f.Add(500, "-1", "")
	f.Add(200, "", "null")
	f.Add(200, "", "[]")
	f.Fuzz(func(t *testing.T, status int, retryAfter, body string) {
		g, err := parseResponse(status, retryAfter, []byte(body), testStart, "")
		if err == nil {
			if status < 200 || status > 299 || g == nil || g.token == "" || g.refreshToken == "" || g.lifetime < time.Second || g.lifetime > maxTokenLifetime || g.refreshLifetime < 0 {
				t.Fatalf("accepted %d %q as %+v", status, body, g)
			}
			var sb sessionBody
			if json.Unmarshal([]byte(body), &sb) != nil && !strings.HasPrefix(strings.TrimSpace(body), "{") {
				t.Fatalf("accepted a non-object body %q", body)
			}
			return
		}
		var ue *upstreamError
		if !errors.As(err, &ue) {
			t.Fatalf("error of type %T", err)
		}
		if ue.retryAfter < 0 || ue.retryAfter > maxRetryAfter {
			t.Fatalf("retryAfter %v", ue.retryAfter)
		}
		if g != nil && g.refreshToken == "" {
			t.Fatal("a salvaged grant without a refresh token")
		}
		if len([]rune(err.Error())) > 2*maxErrorText {
			t.Fatalf("error too long: %d", len(err.Error()))
		}
	})
}

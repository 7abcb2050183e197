package teletracker

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
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
		{name: "400 in the engine's words", status: 400, body: `{"success":false,"error":"missing parameter: refresh_token"}`, kind: failRejected, errContains: "HTTP 400: bad request, or credential refused"},
		{name: "401 with a code", status: 401, body: `{"success":false,"error":"token already used","message":"token_used"}`, kind: failRejected, errContains: "HTTP 401: credential refused (code token_used)"},
		{name: "403 no body", status: 403, kind: failRejected, errContains: "HTTP 403: credential refused"},
		{name: "404", status: 404, body: "<html>", kind: failTransient, errContains: "HTTP 404: not found"},
		{name: "302", status: 302, kind: failTransient, errContains: "unexpected redirect"},
		{name: "429 seconds", status: 429, retryAfter: "120", kind: failTransient, retry: 2 * time.Minute},
		{name: "429 date", status: 429, retryAfter: testStart.Add(90 * time.Second).Format(http.TimeFormat), kind: failTransient, retry: 90 * time.Second},
		{name: "429 huge", status: 429, retryAfter: "999999999999", kind: failTransient, retry: maxRetryAfter},
		{name: "429 garbage", status: 429, retryAfter: "soon", kind: failTransient},
		{name: "500", status: 500, kind: failTransient, errContains: "HTTP 500: server error"},
		{name: "503", status: 503, body: `{"success":false,"error":"maintenance"}`, kind: failTransient, errContains: "HTTP 503: server error (code maintenance)"},
		{name: "malformed", status: 200, body: `{"success":tru`, kind: failUnknown, errContains: "malformed JSON"},
		{name: "not json", status: 200, body: `<html>hello</html>`, kind: failUnknown},
		{name: "huge lifetime", status: 200, body: `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":1e30}`, kind: failTransient, salvage: true, errContains: "implausibly long"},
		{name: "success false", status: 200, body: `{"success":false,"error":"server_busy"}`, kind: failTransient, errContains: "call failed: success is not true (code server_busy)"},
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
	return testClientCA(t, url, "")
}

// testClientCA is testClient trusting caPEM too, over the engine's own
// transport.
func testClientCA(t *testing.T, url, caPEM string) *client {
	t.Helper()
	cfg := &config{BaseURL: url, RequestTimeout: 2 * time.Second, CACert: caPEM}
	tr, err := newProcess(DefaultCallsPerSecond).transport(transportFor(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return newClient(cfg, tr, time.Now)
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

// An echo of the credential with its other characters replaced or dropped
// is no code: its letters, in order, would be the credential's.
func TestErrorCodeDropsAnEchoOfTheLetters(t *testing.T) {
	for _, tc := range []struct{ secret, echo string }{
		{"Qz7!Wx3#Rv", "Qz_Wx_Rv"},
		{"q7Wm2Rx9Tz4K", "q_Wm_Rx_Tz_K"},
		{"q7Wm2Rx9Tz4K", "q.Wm.Rx.Tz.K"},
		{"q7Wm2Rx9Tz4K", "qWmRxTzK"},
		{"q7Wm2Rx9Tz4K", "invalid_password_q_Wm_Rx_Tz_K"},
	} {
		if got := errorCode(&sessionBody{Error: tc.echo}, tc.secret); got != "" {
			t.Errorf("echo %q of %q kept as %q", tc.echo, tc.secret, got)
		}
	}
}

// An echo of the credential in an encoding of letters alone (base64,
// ROT13, reversed) shares none of its letters in a row, yet is no code:
// it is none of knownCodes. (One whose encoding is a known code would
// show that code, as the engine spells it, and nothing else: the review's
// base64 of "O*^O*^O*^", "TypeTypeType", is none.)
func TestErrorCodeDropsAnEncodedCredential(t *testing.T) {
	for _, secret := range []string{"HunterTwo", "Qz7!Wx3#Rv", "tokenUsed", "O*^O*^O*^", "nekot_deripxe"} {
		rot13 := strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z':
				return 'a' + (r-'a'+13)%26
			case r >= 'A' && r <= 'Z':
				return 'A' + (r-'A'+13)%26
			}
			return r
		}, secret)
		reversed := []byte(secret)
		slices.Reverse(reversed)
		for _, echo := range []string{
			strings.TrimRight(base64.StdEncoding.EncodeToString([]byte(secret)), "="),
			letters(rot13), string(reversed), letters(string(reversed)),
		} {
			if got := errorCode(&sessionBody{Error: echo}, secret); got != "" {
				t.Errorf("echo %q of %q kept as %q", echo, secret, got)
			}
		}
	}
}

// ca_cert is trusted for base_url's host as Go's transport dials it: a
// non-ASCII host is dialled in its ASCII (punycode) form, and the CA must
// be trusted for that form, or it is trusted for no host at all.
func TestCACertHostAsDialled(t *testing.T) {
	caPEM, _ := testCA(t)
	cfg := &config{BaseURL: "https://münchen.test", RequestTimeout: 2 * time.Second, CACert: caPEM}
	key := transportFor(cfg)
	shared, err := newProcess(DefaultCallsPerSecond).transport(key)
	if err != nil {
		t.Fatal(err)
	}
	tr := shared.Clone()
	defer tr.CloseIdleConnections()
	dialled := make(chan string, 1)
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialled <- addr
		return nil, errors.New("not dialled: the test only sees the address")
	}
	_, _ = newClient(cfg, tr, time.Now).refresh(context.Background(), "rt")
	addr := <-dialled
	if host, _, _ := net.SplitHostPort(addr); host != key.caHost {
		t.Fatalf("Go dials %q; ca_cert is trusted for %q", host, key.caHost)
	}
}

// ca_cert vouches for base_url's host alone: an https proxy on the way
// (HTTPS_PROXY=https://user:pass@proxy) whose certificate only the config
// writer's CA vouches for is refused before it is sent the CONNECT and the
// operator's Proxy-Authorization.
func TestCACertNotTrustedForTheProxy(t *testing.T) {
	caPEM, cert := testCA(t)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return // the client refused the proxy's certificate
		}
		got <- req.Method + " " + req.Header.Get("Proxy-Authorization")
		_, _ = io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
	}()
	cfg := &config{BaseURL: "https://teletracker.example", RequestTimeout: 2 * time.Second, CACert: caPEM}
	shared, err := newProcess(DefaultCallsPerSecond).transport(transportFor(cfg))
	if err != nil {
		t.Fatal(err)
	}
	tr := shared.Clone()
	defer tr.CloseIdleConnections()
	proxyURL, _ := url.Parse("https://ops:proxy-secret@" + l.Addr().String())
	tr.Proxy = http.ProxyURL(proxyURL) // what ProxyFromEnvironment gives for HTTPS_PROXY
	_, err = newClient(cfg, tr, time.Now).refresh(context.Background(), "rt")
	select {
	case req := <-got:
		t.Fatalf("the proxy, vouched for only by the config writer's ca_cert, was trusted and sent %q", req)
	case <-time.After(200 * time.Millisecond):
	}
	var ue *upstreamError
	if !errors.As(err, &ue) || ue.kind != failTransient {
		t.Fatalf("%v (kind %v): want a failure before anything was sent", err, ue)
	}
}

// Behind a plain proxy, base_url's host is still vouched for by ca_cert:
// the TLS inside the CONNECT's tunnel trusts it.
func TestCACertTrustedThroughAProxy(t *testing.T) {
	caPEM, cert := testCA(t)
	target := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(okBody("")) }))
	target.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	target.StartTLS()
	defer target.Close()
	var tunnels atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, "no upstream", http.StatusBadGateway)
			return
		}
		defer up.Close()
		tunnels.Add(1)
		w.WriteHeader(http.StatusOK)
		down, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer down.Close()
		go func() { _, _ = io.Copy(up, buf) }()
		_, _ = io.Copy(down, up)
	}))
	defer proxy.Close()
	cfg := &config{BaseURL: target.URL, RequestTimeout: 2 * time.Second, CACert: caPEM}
	shared, err := newProcess(DefaultCallsPerSecond).transport(transportFor(cfg))
	if err != nil {
		t.Fatal(err)
	}
	tr := shared.Clone()
	defer tr.CloseIdleConnections()
	proxyURL, _ := url.Parse(proxy.URL)
	tr.Proxy = http.ProxyURL(proxyURL)
	if _, err := newClient(cfg, tr, time.Now).refresh(context.Background(), "rt"); err != nil || tunnels.Load() != 1 {
		t.Fatalf("%v, %d tunnels", err, tunnels.Load())
	}
}

func TestParseResponseLifetimeAsString(t *testing.T) {
	g, err := parseResponse(200, "", []byte(`{"success":true,"token":"a","refreshToken":"b","tokenLifetime":"90"}`), testStart, "")
	if err != nil || g.lifetime != 90*time.Second || g.refreshLifetime != 0 {
		t.Fatalf("%+v %v", g, err)
	}
}

// TestErrorCode: only a word-like code of Teletracker's is kept, never text,
// a UUID, or anything that shares three characters in a row with the
// credential sent.
func TestErrorCode(t *testing.T) {
	const secret = "Hunter-Two"
	cases := []struct {
		error, message, want string
	}{
		{"invalid_grant", "", " (code invalid_grant)"},
		{"", "Auth.Failed", " (code auth_failed)"},
		{"Token already used", "token_used", " (code token_used)"},
		{"token_used", "token_spent", " (code token_used)"},
		{"invalid credentials", "", ""},
		{"E1001", "", ""},
		{"174fb2d3-22a6-4db5-b7cd-4c3c1d7d0e51", "", ""},
		{"ffffffff-ffff-ffff-ffff-ffffffffffff", "", ""},
		{"_private", "trailing_", ""},
		{"a__b", "a..b", ""},
		{"InvalidGrant", "", " (code invalid_grant)"},
		{"TypeTypeType", "", ""},
		{"expired_token", "", ""},
		{"unsupported_response_type", "", " (code unsupported_response_type)"},
		{"method_not_allowed", "", " (code method_not_allowed)"},
		{"not_implemented", "", ""}, // "nte", as in Hunter
		{"bad_gateway", "", " (code bad_gateway)"},
		{"precondition_failed", "", " (code precondition_failed)"},
		{"invalid_grnat", "", ""},
		{"Invalid_Grant.", "", ""},
		{"hunter", "", ""},
		{"bad_HUN", "", ""},
		{"wrong_two", "", ""},
		{"unknown_user", "", " (code unknown_user)"},
		{"codeé", "", ""},
	}
	for _, tc := range cases {
		if got := errorCode(&sessionBody{Error: tc.error, Message: tc.message}, secret); got != tc.want {
			t.Errorf("error %q message %q: %q, want %q", tc.error, tc.message, got, tc.want)
		}
	}
}

// fuzzCode finds the code an error ends with.
var fuzzCode = regexp.MustCompile(` \(code ([^ ]*)\)$`)

// FuzzParseResponse: no input panics the parser, whatever it accepts is a
// complete session with a sane lifetime, and whatever it refuses it says in
// the engine's words, with at most a code from the body.
func FuzzParseResponse(f *testing.F) {
	f.Add(200, "", string(okBody("")), "")
	f.Add(200, "", `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":"3600"}`, "")
	f.Add(200, "", `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":1e309}`, "")
	f.Add(200, "", `{"success":true,"token":"","refreshToken":"b","tokenLifetime":-1}`, "")
	f.Add(200, "", `{"success":true,"token":"a","refreshToken":"b","tokenLifetime":3600,"tokenExpiration":"x","refreshTokenExpiration":"2018-05-01T21:39:12Z"}`, "")
	f.Add(429, "Wed, 21 Oct 2015 07:28:00 GMT", `{}`, "")
	f.Add(401, "", `{"success":false,"error":"\u0000\u001b[31m"}`, "")
	f.Add(401, "", `{"success":false,"error":"pass_word","message":"refused p\u0026ss_word"}`, "p&ss_word")
	f.Add(500, "-1", "", "")
	f.Add(200, "", "null", "")
	f.Add(200, "", "[]", "")
	f.Fuzz(func(t *testing.T, status int, retryAfter, body, secret string) {
		g, err := parseResponse(status, retryAfter, []byte(body), testStart, secret)
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
		// The engine's words and at most a code: nothing else of the body.
		text := err.Error()
		if m := fuzzCode.FindStringSubmatch(text); m != nil {
			if code, ok := knownCode(m[1], secret); !ok || code != m[1] {
				t.Fatalf("code %q kept from %q, sent %q", m[1], body, secret)
			}
			text = strings.TrimSuffix(text, m[0])
		}
		if strings.ContainsAny(text, "\"'%&") || len(text) > 120 {
			t.Fatalf("error %q holds more than the engine's words", err)
		}
	})
}

// TestTeletrackerTextNeverPassedOn: whatever Teletracker's error answers
// echo of the password, the refresh token or the session guid (exact,
// JSON-escaped, %20-encoded, with lower-case percent hex, as
// url.QueryEscape writes it, or cut short), and wherever they put it (error
// or message, alone or in a sentence), none of it reaches a token read's
// warning, a rotate's or a config write's error, status last_error or the
// log. One password has characters every encoding changes; the other is
// shaped like an error code.
func TestTeletrackerTextNeverPassedOn(t *testing.T) {
	hex := regexp.MustCompile(`%[0-9A-F]{2}`)
	forms := []struct {
		name string
		form func(string) string
	}{
		{"exact", func(s string) string { return s }},
		{"JSON-escaped", func(s string) string { b, _ := json.Marshal(s); return string(b[1 : len(b)-1]) }},
		{"%20-encoded", url.PathEscape},
		{"lower-case hex", func(s string) string { return hex.ReplaceAllStringFunc(url.QueryEscape(s), strings.ToLower) }},
		{"url.QueryEscape", url.QueryEscape},
		{"cut short", func(s string) string { r := []rune(s); return string(r[:len(r)/2]) }},
	}
	for _, tc := range []struct{ name, password string }{{"odd", `Pa ss"wörd&x%41/+y`}, {"word-like", "Correct_Horse.Battery"}} {
		for _, f := range forms {
			t.Run(tc.name+"/"+f.name, func(t *testing.T) {
				password := tc.password
				e := newTestEnv(t, withFake(func(o *fakett.Options) { o.Users = map[string]string{"demo": password} }))
				e.configure(map[string]interface{}{"password": password})
				rt, guid := e.stored().RefreshToken, sessionGUID(t, e)
				body := func(errorText, message string) string {
					b, _ := json.Marshal(map[string]any{"success": false, "error": errorText, "message": message})
					return string(b)
				}
				e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: 503,
					Body: body(f.form(rt), "refresh token "+f.form(rt)+" of session "+f.form(guid)+" failed")})
				e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: 401,
					Body: body("refresh token "+f.form(rt)+" is spent", f.form(rt))})
				e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 401,
					Body: body("password "+f.form(password)+" refused in "+f.form(guid), f.form(password))})
				e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 503, Body: body(f.form(guid), f.form(password))})

				e.clock.Add(50 * time.Minute) // due, still valid: served with a warning
				warning := strings.Join(e.readToken().Warnings, " ")
				if !strings.Contains(warning, "HTTP 503") {
					t.Fatalf("the warning does not tell the failure: %q", warning)
				}
				texts := []string{warning}
				e.clock.Add(time.Minute)
				// A refused refresh is an operator's 400, its text in the response.
				if resp, err := e.request(logical.UpdateOperation, "rotate", nil); err == nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "HTTP 401") {
					t.Fatalf("rotate: %v %v", resp, err)
				} else {
					texts = append(texts, resp.Error().Error())
				}
				e.clock.Add(time.Minute)
				if resp, _ := e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": password}); !resp.IsError() || !strings.Contains(resp.Error().Error(), "HTTP 401") {
					t.Fatalf("config write: %v", resp)
				} else {
					texts = append(texts, resp.Error().Error())
				}
				e.clock.Add(time.Minute)
				if _, err := e.request(logical.UpdateOperation, "rotate", nil); err == nil || !strings.Contains(err.Error(), "/auth/login: HTTP 503") {
					t.Fatalf("rotate by login: %v", err)
				} else {
					texts = append(texts, err.Error())
				}
				texts = append(texts, e.status()["last_error"].(string), e.logs.String())
				text := strings.Join(texts, "\n")
				for _, secret := range []string{password, rt, guid} {
					for _, g := range forms {
						if s := g.form(secret); strings.Contains(text, s) {
							t.Errorf("%s %q reached errors, warnings, status or the log:\n%s", g.name, s, text)
						}
					}
				}
			})
		}
	}
}

// sessionGUID asks the fake for the guid of the session whose token e serves.
func sessionGUID(t *testing.T, e *testEnv) string {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/api/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+e.readToken().Data["token"].(string))
	rec := httptest.NewRecorder()
	e.fake.ServeHTTP(rec, req)
	var me struct{ GUID string }
	if err := json.Unmarshal(rec.Body.Bytes(), &me); err != nil || me.GUID == "" {
		t.Fatalf("whoami: %s", rec.Body)
	}
	return me.GUID
}

// TestTransportErrorsHoldNoServerText: what Go says of a broken answer
// quotes the server (its status line, a header line, the names in its
// certificate); none of that reaches the error.
func TestTransportErrorsHoldNoServerText(t *testing.T) {
	const echo = "rt-echoed-4f2a9c"
	raw := func(answer string) string { return rawServer(t, answer) }
	caPEM, cert := testCA(t, echo+".example")
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = discardLog()
	srv.StartTLS()
	defer srv.Close()
	named := testClientCA(t, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1), caPEM)

	cases := []struct {
		name   string
		c      *client
		detail string
	}{
		{"status line", testClient(t, raw("HTTP/1.1 "+echo+"\r\n\r\n")), "request failed; the outcome is unknown"},
		{"response line", testClient(t, raw(echo+"\r\n\r\n")), "request failed; the outcome is unknown"},
		{"header line", testClient(t, raw("HTTP/1.1 200 OK\r\n"+echo+"\r\n\r\n")), "request failed; the outcome is unknown"},
		{"certificate names", named, "TLS handshake failed: certificate not valid for localhost"},
	}
	for _, tc := range cases {
		_, err := tc.c.refresh(context.Background(), "rt")
		if err == nil || strings.Contains(err.Error(), echo) || !strings.Contains(err.Error(), tc.detail) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// A proxy that refuses the CONNECT (or cannot be reached) stops the call
// before anything reaches Teletracker: the refresh token was not sent, so
// the failure is transient, not unknown, and the proxy's text is not passed
// on.
func TestProxyRefusalIsNotSent(t *testing.T) {
	const echo = "proxy-says-4f2a9c"
	refusing := rawServer(t, "HTTP/1.1 403 "+echo+"\r\n\r\n")
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + closed.Addr().String()
	closed.Close()
	for name, proxy := range map[string]string{"refused CONNECT": refusing, "unreachable proxy": closedURL} {
		proxyURL, _ := url.Parse(proxy)
		cfg := &config{BaseURL: "https://teletracker.example", RequestTimeout: 2 * time.Second}
		c := newClient(cfg, &http.Transport{Proxy: http.ProxyURL(proxyURL)}, time.Now)
		_, err := c.refresh(context.Background(), "rt")
		var ue *upstreamError
		if !errors.As(err, &ue) || ue.kind != failTransient || strings.Contains(err.Error(), echo) {
			t.Errorf("%s: %v (want a transient failure without the proxy's text)", name, err)
		}
	}
}

// A request that got its connection may have been processed, whatever
// breaks after: here Teletracker (or whatever is on the path) reads the
// whole refresh request and answers with bytes that are no TLS record. The
// refresh token may be spent, so the outcome is unknown, not "not sent".
func TestRecordErrorAfterRequestIsUnknown(t *testing.T) {
	caPEM, cert := testCA(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var received atomic.Int64
	go func() {
		for {
			raw, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer raw.Close()
				tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{cert}})
				req, err := http.ReadRequest(bufio.NewReader(tc))
				if err != nil {
					return
				}
				_, _ = io.ReadAll(req.Body)
				received.Add(1)
				_, _ = raw.Write([]byte{0x17, 0x03, 0x09, 0x00, 0x10}) // a record header of no TLS version
				_, _ = raw.Write(make([]byte, 16))
				_, _ = raw.Read(make([]byte, 1)) // until the client closes
			}()
		}
	}()
	_, err = testClientCA(t, "https://"+l.Addr().String(), caPEM).refresh(context.Background(), "rt")
	var ue *upstreamError
	if !errors.As(err, &ue) || ue.kind != failUnknown || received.Load() != 1 {
		t.Fatalf("%v (kind %v), the server received %d requests: want an unknown outcome of one", err, ue, received.Load())
	}
}

// Every transport speaks HTTP/1.1, also to a server that offers HTTP/2:
// Go's HTTP/2 client re-sends a request, body and all, whose stream the
// server reset or a GOAWAY cut off, within the one call.
func TestTransportSpeaksHTTP1Only(t *testing.T) {
	caPEM, cert := testCA(t)
	protos := make(chan string, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos <- r.Proto
		_, _ = w.Write(okBody(""))
	}))
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	if _, err := testClientCA(t, srv.URL, caPEM).refresh(context.Background(), "rt"); err != nil {
		t.Fatal(err)
	}
	if p := <-protos; p != "HTTP/1.1" {
		t.Fatalf("the call went out over %s", p)
	}
}

// lostAnswer is a round tripper whose connection broke after the request
// went out, without a word of how far it got.
type lostAnswer struct{}

func (lostAnswer) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("connection reset by peer")
}

// An error that proves nothing (no dial seen to fail, no connection seen)
// leaves the outcome unknown: the refresh token may be spent.
func TestUnprovenTransportErrorIsUnknown(t *testing.T) {
	c := newClient(&config{BaseURL: "https://teletracker.example", RequestTimeout: 2 * time.Second}, lostAnswer{}, time.Now)
	_, err := c.refresh(context.Background(), "rt")
	var ue *upstreamError
	if !errors.As(err, &ue) || ue.kind != failUnknown {
		t.Fatalf("%v (kind %v), want an unknown outcome", err, ue)
	}
}

// rawServer is the URL of a loopback server that answers every connection
// with answer, whatever it is sent, and closes it.
func rawServer(t *testing.T, answer string) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Read(make([]byte, 4096))
			_, _ = io.WriteString(c, answer)
			c.Close()
		}
	}()
	return "http://" + l.Addr().String()
}

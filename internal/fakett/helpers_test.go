package fakett

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// uuidShape matches the API's guids and tokens.
var uuidShape = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// t0 is where every fake clock starts.
var t0 = time.Date(2018, 4, 2, 20, 39, 12, 0, time.UTC)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex // guards now
	now time.Time  // the time it shows
}

// newClock returns a fakeClock showing t0.
func newClock() *fakeClock { return &fakeClock{now: t0} }

// Now returns the clock's time.
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// start serves a Server built from opts on a loopback test server.
func start(t *testing.T, opts Options) (*Server, *httptest.Server) {
	t.Helper()
	s := New(opts)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

// result is a response, read in full.
type result struct {
	status int            // HTTP status
	header http.Header    // response headers
	raw    []byte         // the body as sent
	body   map[string]any // the body decoded, when it is a JSON object
}

// str returns the string field name of the body, or "" when it is absent.
func (r result) str(name string) string {
	v, _ := r.body[name].(string)
	return v
}

// exchange sends req with client and reads the response in full.
func exchange(client *http.Client, req *http.Request) (result, error) {
	resp, err := client.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{}, err
	}
	res := result{status: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &res.body)
	return res, nil
}

// formExchange posts params url-encoded to path; unlike postForm it may be
// called from any goroutine.
func formExchange(ts *httptest.Server, path string, params url.Values) (result, error) {
	req, err := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(params.Encode()))
	if err != nil {
		return result{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return exchange(ts.Client(), req)
}

// do sends req with client and reads the response in full.
func do(t *testing.T, client *http.Client, req *http.Request) result {
	t.Helper()
	res, err := exchange(client, req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	return res
}

// apiDo sends req and checks the API's promise about every response: JSON
// content, a JSON object body, a boolean success.
func apiDo(t *testing.T, client *http.Client, req *http.Request) result {
	t.Helper()
	res := do(t, client, req)
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type = %q, want application/json", req.URL.Path, ct)
	}
	if _, ok := res.body["success"].(bool); !ok {
		t.Errorf("%s: body %q has no boolean success", req.URL.Path, res.raw)
	}
	return res
}

// newRequest builds a request or fails the test.
func newRequest(t *testing.T, method, target, contentType string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

// postForm posts params url-encoded to path.
func postForm(t *testing.T, ts *httptest.Server, path string, params url.Values) result {
	t.Helper()
	req := newRequest(t, http.MethodPost, ts.URL+path, "application/x-www-form-urlencoded", strings.NewReader(params.Encode()))
	return apiDo(t, ts.Client(), req)
}

// postJSON posts body as JSON to path.
func postJSON(t *testing.T, ts *httptest.Server, path, body string) result {
	t.Helper()
	req := newRequest(t, http.MethodPost, ts.URL+path, "application/json", strings.NewReader(body))
	return apiDo(t, ts.Client(), req)
}

// postMultipart posts params as multipart/form-data to path.
func postMultipart(t *testing.T, ts *httptest.Server, path string, params map[string]string) result {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for name, value := range params {
		if err := mw.WriteField(name, value); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	req := newRequest(t, http.MethodPost, ts.URL+path, mw.FormDataContentType(), &buf)
	return apiDo(t, ts.Client(), req)
}

// login logs the demo user in and fails the test unless it succeeds.
func login(t *testing.T, ts *httptest.Server) result {
	t.Helper()
	res := postForm(t, ts, loginPath, url.Values{"username": {"demo"}, "password": {"demo-password"}})
	if res.status != http.StatusOK || res.body["success"] != true {
		t.Fatalf("login: %d %s", res.status, res.raw)
	}
	return res
}

// refresh presents refreshToken to /auth/refresh.
func refresh(t *testing.T, ts *httptest.Server, refreshToken string) result {
	t.Helper()
	return postForm(t, ts, refreshPath, url.Values{"refresh_token": {refreshToken}})
}

// whoami calls the protected endpoint with the given Authorization header
// (none when it is empty).
func whoami(t *testing.T, ts *httptest.Server, authorization string) result {
	t.Helper()
	req := newRequest(t, http.MethodGet, ts.URL+whoamiPath, "", nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return apiDo(t, ts.Client(), req)
}

// wantFailure checks that res is a success:false answer with the given status
// and error message.
func wantFailure(t *testing.T, res result, status int, message string) {
	t.Helper()
	if res.status != status || res.body["success"] != false || res.str("error") != message {
		t.Errorf("got %d %s, want %d with error %q", res.status, res.raw, status, message)
	}
}

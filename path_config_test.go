package teletracker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		name string
		data map[string]interface{}
		want string
	}{
		{"http to a remote host", map[string]interface{}{"base_url": "http://api.teletracker.net"}, "must use https://"},
		{"other scheme", map[string]interface{}{"base_url": "ftp://127.0.0.1"}, "must use https://"},
		{"not absolute", map[string]interface{}{"base_url": "api.teletracker.net"}, "absolute URL"},
		{"credentials in url", map[string]interface{}{"base_url": "https://u:p@api.teletracker.net"}, "must not hold credentials"},
		{"query in url", map[string]interface{}{"base_url": "https://api.teletracker.net/?a=b"}, "must not hold credentials, a query"},
		{"empty query in url", map[string]interface{}{"base_url": "https://api.teletracker.net?"}, "must not hold credentials, a query"},
		{"margin zero", map[string]interface{}{"refresh_margin": "0s"}, "refresh_margin must be a positive"},
		{"margin negative", map[string]interface{}{"refresh_margin": "-5m"}, "negative"},
		{"margin not a duration", map[string]interface{}{"refresh_margin": "soon"}, "refresh_margin"},
		{"margin 24h", map[string]interface{}{"refresh_margin": "24h"}, "refresh_margin must be below 24h"},
		{"timeout zero", map[string]interface{}{"request_timeout": 0}, "request_timeout must be a positive"},
		{"timeout too long", map[string]interface{}{"request_timeout": "31s"}, "request_timeout must be at most 30s"},
		{"timeout not a duration", map[string]interface{}{"request_timeout": "fast"}, "request_timeout"},
		{"ca_cert not pem", map[string]interface{}{"ca_cert": "hello"}, "PEM-encoded certificates"},
		{"ca_cert a key", map[string]interface{}{"ca_cert": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, `"PRIVATE KEY" PEM block`},
		{"ca_cert garbage cert", map[string]interface{}{"ca_cert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "does not parse"},
		{"ca_cert with headers", map[string]interface{}{"ca_cert": withHeader(selfSignedPEM(t))}, "with headers"},
		{"negative account", map[string]interface{}{"account_id": -1}, "account_id must not be negative"},
		{"account not a number", map[string]interface{}{"account_id": "seven"}, "account_id"},
		{"empty refresh token", map[string]interface{}{"refresh_token": " "}, "refresh_token must not be empty"},
		{"password without username", map[string]interface{}{"username": ""}, "password needs a username"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			data := map[string]interface{}{"base_url": e.url, "username": "demo", "password": "demo-password"}
			for k, v := range tc.data {
				data[k] = v
			}
			resp, err := e.request(logical.UpdateOperation, "config", data)
			if !resp.IsError() || !strings.Contains(resp.Error().Error(), tc.want) {
				t.Fatalf("got resp=%v err=%v, want an error containing %q", resp, err, tc.want)
			}
			if err != nil && !errors.Is(err, logical.ErrInvalidRequest) {
				t.Fatalf("err %v, want ErrInvalidRequest (400)", err)
			}
			if got := e.fake.Stats().LoginCalls + e.fake.Stats().RefreshCalls; got != 0 {
				t.Fatalf("an invalid write called Teletracker %d times", got)
			}
			if e.stored() != nil {
				t.Fatal("an invalid write stored a record")
			}
		})
	}
}

func TestConfigNeedsCredentials(t *testing.T) {
	e := newTestEnv(t)
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "username": "demo"})
	if !errors.Is(err, logical.ErrInvalidRequest) || !strings.Contains(resp.Error().Error(), "username and password are required") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
}

func TestConfigAcceptsLoopbackHTTPAndHTTPS(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:1", "http://127.9.9.9", "http://[::1]:8200", "http://localhost:8200/", "https://api.teletracker.net/v1/"} {
		got, err := parseBaseURL(u)
		if err != nil {
			t.Errorf("%s: %v", u, err)
		}
		if strings.HasSuffix(got, "/") {
			t.Errorf("%s: trailing slash kept: %s", u, got)
		}
	}
}

func TestConfigLoginAndRead(t *testing.T) {
	e := newTestEnv(t)
	e.configure(map[string]interface{}{"account_id": 42, "refresh_margin": "5m", "request_timeout": "3s"})
	if got := e.fake.Stats().Logins; got != 1 {
		t.Fatalf("logins %d, want 1", got)
	}
	data := e.mustRequest(logical.ReadOperation, "config", nil).Data
	want := map[string]interface{}{
		"base_url": e.url, "username": "demo", "account_id": int64(42), "refresh_margin": int64(300),
		"request_timeout": int64(3), "ca_cert": "", "password_set": true,
	}
	if !reflect.DeepEqual(data, want) {
		t.Fatalf("config read\n got %v\nwant %v", data, want)
	}
	if e.status()["state"] != stateHealthy {
		t.Fatalf("status %v", e.status())
	}
}

func TestConfigDefaults(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	data := e.mustRequest(logical.ReadOperation, "config", nil).Data
	if data["refresh_margin"] != int64(600) || data["request_timeout"] != int64(10) {
		t.Fatalf("defaults: %v", data)
	}
	r, credential, err := parseConfigWrite(nil, fieldData(map[string]interface{}{"username": "u", "password": "p"}))
	if err != nil || !credential || r.Config.BaseURL != defaultBaseURL {
		t.Fatalf("default base_url: %v %v", r, err)
	}
}

func TestConfigReadUnconfigured(t *testing.T) {
	e := newTestEnv(t)
	resp, err := e.request(logical.ReadOperation, "config", nil)
	if err != nil || resp != nil {
		t.Fatalf("resp=%v err=%v, want nothing", resp, err)
	}
}

func TestConfigSeedWithRefreshToken(t *testing.T) {
	e := newTestEnv(t)
	seed, err := e.fake.NewSession("demo")
	if err != nil {
		t.Fatal(err)
	}
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	st := e.fake.Stats()
	if st.Logins != 0 || st.Refreshes != 1 {
		t.Fatalf("seed: logins %d refreshes %d, want 0 and 1", st.Logins, st.Refreshes)
	}
	data := e.mustRequest(logical.ReadOperation, "config", nil).Data
	if data["password_set"] != false {
		t.Fatalf("password_set %v", data["password_set"])
	}
	if tok := e.readToken().Data["token"].(string); !e.fake.Live(tok) {
		t.Fatal("seeded token is not live")
	}
	// The seed is spent: the session carries on with the new refresh token.
	e.clock.Add(55 * time.Minute)
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if got := e.fake.Stats().Refreshes; got != 2 {
		t.Fatalf("refreshes %d, want 2", got)
	}
	e.wantNoReuse()
}

func TestConfigRefusedWriteChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	e.configure(map[string]interface{}{"refresh_margin": "5m"})
	before := e.mustRequest(logical.ReadOperation, "config", nil).Data
	recBefore := e.stored()
	tokenBefore := e.readToken().Data["token"]

	cases := []struct {
		name   string
		data   map[string]interface{}
		status int
		called bool
	}{
		{"wrong password", map[string]interface{}{"password": "wrong-password", "refresh_margin": "7m"}, http.StatusBadRequest, true},
		{"dead refresh token", map[string]interface{}{"refresh_token": "not-a-token", "refresh_margin": "7m"}, http.StatusBadRequest, true},
		{"unreachable", map[string]interface{}{"base_url": "http://127.0.0.1:1", "password": "demo-password", "refresh_margin": "7m"}, http.StatusBadGateway, true},
		{"new account without the password", map[string]interface{}{"base_url": "http://127.0.0.1:1", "refresh_margin": "7m"}, http.StatusBadRequest, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.clock.Add(time.Minute) // stay clear of the refresh rate limit
			resp, err := e.request(logical.UpdateOperation, "config", tc.data)
			if got := statusOf(resp, err); got != tc.status {
				t.Fatalf("status %d (resp=%v err=%v), want %d", got, resp, err, tc.status)
			}
			if after := e.mustRequest(logical.ReadOperation, "config", nil).Data; !reflect.DeepEqual(after, before) {
				t.Fatalf("config changed:\n%v\n%v", before, after)
			}
			// Nothing changes but the waits the failed call set.
			r := e.stored()
			if tc.called && (r.LastCallAt != e.clock.Now() || !r.HoldUntil.Equal(e.clock.Now().Add(minCallInterval))) {
				t.Fatalf("the failed call's waits were not stored: %+v", r)
			}
			r.LastCallAt, r.HoldUntil, r.NotBefore = recBefore.LastCallAt, recBefore.HoldUntil, recBefore.NotBefore
			if !reflect.DeepEqual(r, recBefore) {
				t.Fatalf("record changed:\n%+v\n%+v", recBefore, r)
			}
			recBefore = e.stored()
			if got := e.readToken().Data["token"]; got != tokenBefore {
				t.Fatal("served token changed")
			}
		})
	}
}

func TestConfigPartialUpdate(t *testing.T) {
	e := newTestEnv(t)
	e.configure(map[string]interface{}{"account_id": 7})
	logins := e.fake.Stats().Logins

	// Tuning fields alone: no new session.
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"refresh_margin": "15m", "request_timeout": 5})
	if got := e.fake.Stats().Logins; got != logins {
		t.Fatalf("a tuning write logged in (%d logins)", got)
	}
	data := e.mustRequest(logical.ReadOperation, "config", nil).Data
	if data["refresh_margin"] != int64(900) || data["request_timeout"] != int64(5) ||
		data["username"] != "demo" || data["account_id"] != int64(7) || data["password_set"] != true || data["base_url"] != e.url {
		t.Fatalf("partial update lost fields: %v", data)
	}

	// A new password is checked by logging in with it.
	e.clock.Add(minCallInterval)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
	if got := e.fake.Stats().Logins; got != logins+1 {
		t.Fatalf("logins %d, want %d", got, logins+1)
	}

	// A change of account starts a new session, with the password sent: a
	// stored one is never sent to another account.
	e.clock.Add(minCallInterval)
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"account_id": 8})
	if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "never sent to another account") {
		t.Fatalf("a new account without the password: resp=%v err=%v", resp, err)
	}
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"account_id": 8, "password": "demo-password"})
	if got := e.fake.Stats().Logins; got != logins+2 {
		t.Fatalf("logins %d, want %d", got, logins+2)
	}

	// An empty password removes it; the session carries on.
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": ""})
	data = e.mustRequest(logical.ReadOperation, "config", nil).Data
	if data["password_set"] != false {
		t.Fatalf("password not removed: %v", data)
	}
	e.readToken()

	// Without a password, changing the username cannot log in.
	resp, err = e.request(logical.UpdateOperation, "config", map[string]interface{}{"username": "other"})
	if !errors.Is(err, logical.ErrInvalidRequest) || !strings.Contains(resp.Error().Error(), "needs password") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
}

func TestConfigDelete(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.readToken()
	if resp, err := e.request(logical.DeleteOperation, "config", nil); err != nil || resp != nil {
		t.Fatalf("delete: %v %v", resp, err)
	}
	if r := e.stored(); r != nil && (r.configured() || r.Token != "" || r.RefreshToken != "" || r.Config != (config{})) {
		t.Fatalf("config or session survived delete: %+v", r)
	}
	e.wantGone()
}

func TestConfigCACert(t *testing.T) {
	fake := fakett.New(fakett.Options{})
	srv := httptest.NewUnstartedServer(fake)
	srv.Config.ErrorLog = discardLog() // the refused handshake is expected
	srv.StartTLS()
	defer srv.Close()
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	e := newTestEnv(t)

	// Without the CA the TLS handshake fails: verification is never off.
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{
		"base_url": srv.URL, "username": "demo", "password": "demo-password",
	})
	if statusOf(resp, err) != http.StatusBadGateway {
		t.Fatalf("untrusted TLS: resp=%v err=%v", resp, err)
	}
	e.clock.Add(minCallInterval)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{
		"base_url": srv.URL, "username": "demo", "password": "demo-password", "ca_cert": caPEM,
	})
	if got := e.mustRequest(logical.ReadOperation, "config", nil).Data["ca_cert"]; got != strings.TrimSpace(caPEM) {
		t.Fatalf("ca_cert read back %q", got)
	}
	if fake.Stats().Logins != 1 {
		t.Fatal("no login over TLS")
	}
	if _, err := certPool(selfSignedPEM(t) + caPEM); err != nil {
		t.Fatalf("two certificates: %v", err)
	}
}

func TestConfigExistenceCheck(t *testing.T) {
	e := newTestEnv(t)
	data := map[string]interface{}{"base_url": e.url, "username": "demo", "password": "demo-password"}
	if resp, err := e.request(logical.CreateOperation, "config", data); err != nil || resp != nil {
		t.Fatalf("create: %v %v", resp, err)
	}
	ok, err := e.b.pathConfigExistenceCheck(context.Background(), &logical.Request{Path: e.path("config"), Storage: e.storage}, nil)
	if err != nil || !ok {
		t.Fatalf("exists after create: %v %v", ok, err)
	}
}

// discardLog is a logger for test servers whose complaints are expected.
func discardLog() *log.Logger {
	return log.New(io.Discard, "", 0)
}

// statusOf is the HTTP status Vault would answer with.
func statusOf(resp *logical.Response, err error) int {
	var coded logical.HTTPCodedError
	switch {
	case errors.As(err, &coded):
		return coded.Code()
	case errors.Is(err, logical.ErrInvalidRequest) || (err == nil && resp != nil && resp.IsError()):
		return http.StatusBadRequest
	case err != nil:
		return http.StatusInternalServerError
	case resp == nil:
		return http.StatusNoContent
	}
	return http.StatusOK
}

// fieldData is d as the config path would see it.
func fieldData(d map[string]interface{}) *framework.FieldData {
	return &framework.FieldData{Raw: d, Schema: configFields}
}

// withHeader is the PEM block pemText with a header line, which TLS clients
// skip.
func withHeader(pemText string) string {
	block, _ := pem.Decode([]byte(pemText))
	block.Headers = map[string]string{"Proc-Type": "4,ENCRYPTED"}
	return string(pem.EncodeToMemory(block))
}

// selfSignedPEM is a throwaway CA certificate.
// storeUnusableCACert stores, under the configured mount, a ca_cert the
// client cannot use, as one written before it was checked as the client
// uses it would be, and makes the mount load it.
func (e *testEnv) storeUnusableCACert(t *testing.T) {
	r := e.stored()
	r.Config.CACert = withHeader(selfSignedPEM(t))
	e.store(r)
	e.b.invalidate(context.Background(), accountKey(e.name))
}

func selfSignedPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// FuzzConfigWrite feeds arbitrary input to the config parser: it must never
// panic, and whatever it accepts must satisfy the config's rules.
func FuzzConfigWrite(f *testing.F) {
	f.Add("https://api.teletracker.net", "demo", "pw", int64(0), "10m", "10s", "", "")
	f.Add("http://127.0.0.1:8080/", "", "", int64(3), "1", "30", "", "rt")
	f.Add("http://evil.example", "u", "p", int64(-1), "-1s", "0", "-----BEGIN CERTIFICATE-----\n", "")
	f.Add("https://[::1]:99999", "u", "", int64(1)<<40, "24h", "1h", "x", " ")
	f.Fuzz(func(t *testing.T, baseURL, username, password string, account int64, margin, timeout, ca, refresh string) {
		raw := map[string]interface{}{
			"base_url": baseURL, "username": username, "password": password, "account_id": account,
			"refresh_margin": margin, "request_timeout": timeout, "ca_cert": ca, "refresh_token": refresh,
		}
		d := fieldData(raw)
		if d.Validate() != nil {
			return // the framework refuses it before the handler runs
		}
		r, _, err := parseConfigWrite(nil, d)
		if err != nil {
			return
		}
		c := &r.Config
		if c.RefreshMargin <= 0 || c.RefreshMargin >= maxRefreshMargin || c.RequestTimeout <= 0 || c.RequestTimeout > maxRequestTimeout {
			t.Fatalf("accepted durations %v %v", c.RefreshMargin, c.RequestTimeout)
		}
		if _, err := parseBaseURL(c.BaseURL); err != nil {
			t.Fatalf("accepted base_url %q: %v", c.BaseURL, err)
		}
		if c.AccountID < 0 || (r.State != stateReady && (c.Username == "" || c.Password == "")) {
			t.Fatalf("accepted %+v", c)
		}
		if _, err := newProcess(DefaultCallsPerSecond).transport(transportFor(c)); err != nil {
			t.Fatalf("accepted a config no client can be built from: %v", err)
		}
	})
}

// TestConfigSessionStoreFailureChangesNothing: when the new session cannot
// be stored, the write fails and the previous session stays in use.
func TestConfigSessionStoreFailureChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	before := e.stored()
	e.clock.Add(minCallInterval)
	e.storage.failPuts.Store(-1)
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
	e.storage.failPuts.Store(0)
	if statusOf(resp, err) != http.StatusInternalServerError || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	e.clock.Add(time.Minute)
	_ = e.tick()
	if s := e.stored(); !reflect.DeepEqual(s, before) || e.a().held.Load() != nil {
		t.Fatal("a failed config write changed the session")
	}
}

// TestConfigSeedIncompleteAnswerKeepsRefreshToken: a seed spent for an
// answer without a bearer token but with a new refresh token keeps that
// refresh token, and the next refresh uses it.
func TestConfigSeedIncompleteAnswerKeepsRefreshToken(t *testing.T) {
	e := newTestEnv(t)
	seed, _ := e.fake.NewSession("demo")
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Omit: []string{"token"}})
	resp := e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	if resp == nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "new refresh token") {
		t.Fatalf("want a warning: %v", resp)
	}
	if _, err := e.request(logical.ReadOperation, "token", nil); err == nil {
		t.Fatal("served a token the session does not have")
	}
	e.clock.Add(40 * time.Second) // past the backoff, jitter included
	e.readLive()
	st := e.fake.Stats()
	if st.Refreshes != 2 || st.ReusedRefreshTokens != 0 || e.status()["state"] != stateHealthy {
		t.Fatalf("%+v %v", st, e.status())
	}
}

func TestConfigSeedRateLimited(t *testing.T) {
	e := newTestEnv(t)
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": "dead"})
	if statusOf(resp, err) != http.StatusBadRequest {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	seed, _ := e.fake.NewSession("demo")
	e.clock.Add(5 * time.Second)
	resp, err = e.request(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	if statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("a second seed 5 s after a failed one: resp=%v err=%v", resp, err)
	}
	e.clock.Add(30 * time.Second)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
}

// TestConfigWriteAbandonedByCallerIsWhole: a caller that goes away (Ctrl-C,
// a proxy timeout) while Teletracker is slow does not leave the write half
// applied: the new session is stored with the new config, in one record.
func TestConfigWriteAbandonedByCallerIsWhole(t *testing.T) {
	for _, seed := range []bool{false, true} {
		t.Run(fmt.Sprintf("seed=%v", seed), func(t *testing.T) {
			e := newTestEnv(t)
			seedToken, _ := e.fake.NewSession("demo")
			e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seedToken})
			other := fakett.New(fakett.Options{Now: e.clock.Now})
			otherSrv := httptest.NewServer(other)
			defer otherSrv.Close()
			data := map[string]interface{}{"base_url": otherSrv.URL, "username": "demo", "password": "demo-password"}
			op := "/auth/login"
			if seed {
				data = map[string]interface{}{"base_url": otherSrv.URL, "refresh_token": mustSession(t, other)}
				op = "/auth/refresh"
			}
			other.Fail(op, 1, fakett.Fault{Delay: 300 * time.Millisecond})
			e.clock.Add(time.Minute)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			_, _ = e.b.HandleRequest(ctx, &logical.Request{Operation: logical.UpdateOperation, Path: e.path("config"), Data: data, Storage: e.storage})
			r := e.stored()
			if r.Config.BaseURL != otherSrv.URL || r.State != stateReady || !other.Live(r.Token) {
				t.Fatalf("the write was not applied whole: %+v", r)
			}
			e.clock.Add(55 * time.Minute)
			_ = e.tick()
			if st := other.Stats(); st.Refreshes < 1 || st.ReusedRefreshTokens != 0 || e.fake.Stats().RefreshCalls != 1 {
				t.Fatalf("the session did not go on under the new config: %+v", st)
			}
		})
	}
}

// mustSession starts a session on f and returns its refresh token.
func mustSession(t *testing.T, f *fakett.Server) string {
	t.Helper()
	rt, err := f.NewSession("demo")
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// TestSeedNeverSpentUnlessKept: a refresh token handed over is sent only
// once the intent to spend it is stored; if storing its successor fails, the
// successor is held in memory, served and stored later, never dropped.
func TestSeedNeverSpentUnlessKept(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	seed := mustSession(t, e.fake)
	e.clock.Add(time.Minute)

	// Storage refuses the intent: Teletracker is not called.
	e.storage.failPuts.Store(-1)
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"refresh_token": seed})
	e.storage.failPuts.Store(0)
	if statusOf(resp, err) != http.StatusInternalServerError || !strings.Contains(err.Error(), "nothing changed") || e.fake.Stats().RefreshCalls != 0 {
		t.Fatalf("resp=%v err=%v calls=%d", resp, err, e.fake.Stats().RefreshCalls)
	}

	// Storage refuses the result: the write stands, its session is held.
	e.storage.skipPuts.Store(1)
	e.storage.failPuts.Store(-1)
	resp = e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"refresh_token": seed})
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "held in memory") {
		t.Fatalf("want a warning that the session is held: %v", resp.Warnings)
	}
	held := e.a().held.Load()
	if held == nil || e.stored().State != stateInFlight {
		t.Fatal("the seeded session is not held over its stored intent")
	}
	e.readLive()
	e.storage.failPuts.Store(0)
	e.clock.Add(time.Minute)
	_ = e.tick()
	if r := e.stored(); r.RefreshToken != held.RefreshToken || r.State != stateReady || e.a().held.Load() != nil {
		t.Fatalf("the held session was not stored: %+v", r)
	}
	e.clock.Add(55 * time.Minute)
	_ = e.tick()
	if st := e.fake.Stats(); st.Refreshes != 2 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("%+v", st)
	}
}

// TestRefusedSeedPutsBackThePrevious: a refresh token Teletracker refuses
// leaves the previous config and session as they were, though the intent to
// spend it was stored first.
func TestRefusedSeedPutsBackThePrevious(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	before := e.stored()
	e.clock.Add(time.Minute)
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"refresh_token": "dead", "refresh_margin": "5m"})
	if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "nothing changed") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	r := e.stored()
	r.LastCallAt, r.HoldUntil, r.NotBefore = before.LastCallAt, before.HoldUntil, before.NotBefore
	if !reflect.DeepEqual(r, before) {
		t.Fatalf("the previous record was not put back:\n%+v\n%+v", before, r)
	}
	e.readLive()
}

// TestUnusableCACertIsRecorded: a stored ca_cert the client cannot use
// (written before it was checked as the client uses it) makes every attempt
// fail before a call; each is recorded, so status does not say healthy.
func TestUnusableCACertIsRecorded(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.storeUnusableCACert(t)
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	s := e.status()
	if s["state"] != stateDegraded || s["consecutive_failures"] != 1 || !strings.Contains(s["last_error"].(string), "ca_cert") {
		t.Fatalf("status %v", s)
	}
}

// TestStoredPasswordNeverSentToNewBaseURL: a write that changes base_url
// without the password is refused; the stored password goes nowhere new.
func TestStoredPasswordNeverSentToNewBaseURL(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	var calls atomic.Int64
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer elsewhere.Close()
	e.clock.Add(time.Minute)
	for _, data := range []map[string]interface{}{{"base_url": elsewhere.URL}, {"username": "other"}, {"account_id": 9}} {
		if resp, err := e.request(logical.UpdateOperation, "config", data); statusOf(resp, err) != http.StatusBadRequest {
			t.Fatalf("%v: resp=%v err=%v", data, resp, err)
		}
	}
	if calls.Load() != 0 || e.fake.Stats().LoginCalls != 1 {
		t.Fatal("the stored password was sent for a new account")
	}
}

// TestSeedAnswerWithoutSuccessKeepsItsSuccessor: a refresh_token write whose
// answer carries a new refresh token but no boolean success spent the seed:
// the write stands, with a warning, and the session goes on.
func TestSeedAnswerWithoutSuccessKeepsItsSuccessor(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Omit: []string{"success"}})
	resp := e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	if resp == nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "new refresh token") {
		t.Fatalf("the write does not say the session goes on: %v", resp)
	}
	e.clock.Add(time.Minute)
	_ = e.tick()
	e.wantNoReuse()
	e.readLive()
}

// TestLoginTimeoutNamesNoRefreshToken: a password write whose login times
// out says nothing about a refresh token, since none was sent.
func TestLoginTimeoutNamesNoRefreshToken(t *testing.T) {
	e := newTestEnv(t)
	e.fake.Fail("/auth/login", 1, fakett.Fault{Delay: 3 * time.Second})
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{
		"base_url": e.url, "username": "demo", "password": "demo-password", "request_timeout": "1s"})
	if statusOf(resp, err) != http.StatusBadGateway || strings.Contains(err.Error(), "refresh_token") || !strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("a timed-out login answered %v %v", resp, err)
	}
}

// A script retrying a config write with a password while storage refuses
// Puts (Gets work: disk full, ACL) makes no login storm: the waits each
// login set are kept in memory, so the next write waits for them.
func TestCredentialWriteLoopWhileStorageRefusesPuts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault *fakett.Fault
	}{
		{"login accepted", nil},
		{"login refused 401", &fakett.Fault{Status: http.StatusUnauthorized}},
		{"login 429 Retry-After 3600", &fakett.Fault{Status: http.StatusTooManyRequests, RetryAfter: "3600"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.configure(nil)
			e.clock.Add(time.Minute)
			if tc.fault != nil {
				e.fake.Fail("/auth/login", -1, *tc.fault)
			}
			e.storage.failPuts.Store(-1)
			before := e.fake.Stats().LoginCalls
			for i := 0; i < 10; i++ {
				e.clock.Add(time.Second)
				_, _ = e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
			}
			if got := e.fake.Stats().LoginCalls - before; got > 2 {
				t.Fatalf("%d logins to Teletracker in 10 s from 10 config writes", got)
			}
		})
	}
}

// A write that changes base_url with a refresh_token but no password
// drops the stored password: once the new host refuses a refresh, the
// engine does not log in there with the old account's password.
func TestStoredPasswordNeverSentToNewHostAfterSeedWrite(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	var gotPassword atomic.Value
	evil := fakett.New(fakett.Options{Now: e.clock.Now, Users: map[string]string{"demo": "x"}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/auth/login" {
			_ = r.ParseForm()
			gotPassword.Store(r.PostForm.Get("password"))
		}
		evil.ServeHTTP(w, r)
	}))
	defer srv.Close()
	seed, _ := evil.NewSession("demo")
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": srv.URL, "refresh_token": seed})
	evil.RevokeAll() // the new host now refuses the refresh token
	e.clock.Add(time.Minute)
	_, _ = e.request(logical.UpdateOperation, "rotate", nil)
	if p, _ := gotPassword.Load().(string); p == "demo-password" {
		t.Fatal("the password stored for the old base_url was sent to the new one")
	}
}

// A write that moves the mount to another user, answered with a refresh
// token but no bearer token, succeeds with a warning, and reads never serve
// the old user's bearer token under the new config.
func TestNewAccountNeverServesOldAccountsToken(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) {
		o.Users = map[string]string{"demo": "demo-password", "other": "other-password"}
	}))
	e.configure(nil)
	old := e.readToken().Data["token"]
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/login", 1, fakett.Fault{Omit: []string{"token"}})
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"username": "other", "password": "other-password"})
	if err != nil || resp.IsError() {
		t.Skipf("write refused: %v %v", err, resp)
	}
	if r, err := e.request(logical.ReadOperation, "token", nil); err == nil && !r.IsError() && r.Data["token"] == old {
		t.Fatalf("after moving the mount to user other, the read serves user demo's bearer token")
	}
}

// TestStoredCredentialsNeverSentUnderNewCA: ca_cert says whom the engine
// trusts to be Teletracker, so a write that sets, changes or removes it
// without password or refresh_token is refused, and no call reaches a
// server that only the new CA vouches for: neither the refresh token nor,
// once that is refused, the stored password. With a credential the change
// starts a new session, and a stored password it did not bring is dropped.
func TestStoredCredentialsNeverSentUnderNewCA(t *testing.T) {
	e := newTestEnv(t)
	trustedCA, trusted := testCA(t)
	rogueCA, rogue := testCA(t)
	var intercepting atomic.Bool
	var intercepted atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if intercepting.Load() {
			intercepted.Add(1)
			w.WriteHeader(http.StatusUnauthorized) // so that the password would follow
			return
		}
		e.fake.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = discardLog() // the refused handshakes are expected
	srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert := trusted
		if intercepting.Load() {
			cert = rogue
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}}, nil
	}}
	srv.StartTLS()
	defer srv.Close()
	e.configure(map[string]interface{}{"base_url": srv.URL, "ca_cert": trustedCA})

	// From now on, whoever holds the rogue CA's key answers for the host.
	intercepting.Store(true)
	srv.CloseClientConnections()
	for _, ca := range []string{"", rogueCA + trustedCA, rogueCA} {
		e.clock.Add(time.Minute)
		resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"ca_cert": ca, "refresh_margin": "5m"})
		if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "ca_cert") {
			t.Errorf("ca_cert %.40q without a credential: resp=%v err=%v", ca, resp, err)
		}
	}
	e.clock.Add(time.Minute)
	_, _ = e.request(logical.UpdateOperation, "rotate", nil)
	e.clock.Add(time.Minute)
	_ = e.tick()
	if n := intercepted.Load(); n != 0 {
		t.Fatalf("%d calls reached a server only the new ca_cert vouches for", n)
	}
	data := e.mustRequest(logical.ReadOperation, "config", nil).Data
	if data["ca_cert"] != strings.TrimSpace(trustedCA) || data["refresh_margin"] != int64(defaultRefreshMargin.Seconds()) {
		t.Fatalf("a refused write changed the config: %v", data)
	}

	// The same ca_cert again is no change; with a credential a change is
	// accepted, and a refresh_token alone drops the stored password.
	intercepting.Store(false)
	srv.CloseClientConnections()
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"ca_cert": trustedCA, "refresh_margin": "5m"})
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"ca_cert": trustedCA + rogueCA, "password": "demo-password"})
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"ca_cert": trustedCA, "refresh_token": mustSession(t, e.fake)})
	if st := e.fake.Stats(); st.Logins != 2 || st.Refreshes != 1 || e.mustRequest(logical.ReadOperation, "config", nil).Data["password_set"] != false {
		t.Fatalf("%+v, password_set %v", st, e.mustRequest(logical.ReadOperation, "config", nil).Data["password_set"])
	}
	e.wantNoReuse()
}

// testCA is a new CA, as PEM, and a certificate it issued for 127.0.0.1
// and dnsNames.
func testCA(t *testing.T, dnsNames ...string) (string, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: dnsNames, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

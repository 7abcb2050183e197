// Regression tests from the second review of the rebuilt core: each failed
// before the fix that followed it.

package teletracker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// R1: while storage refuses Puts (Gets work: disk full, ACL), a script or
// Terraform retrying a config write with a password makes one login per
// write: the waits the login set are neither stored nor kept, and the next
// write loads the old ones from storage.
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

// R2: a login that set no floor (it came 10 s or more after the call before
// it), then a rotate whose refresh is rejected and the login after it: three
// calls within one second.
func TestNoThreeCallsWithinTenSeconds(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute)
	before := e.fake.Stats()
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"}) // login, no floor
	e.clock.Add(time.Second)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusUnauthorized})
	_, _ = e.request(logical.UpdateOperation, "rotate", nil) // refresh rejected, then a login
	st := e.fake.Stats()
	if calls := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls; calls > 2 {
		t.Fatalf("%d calls to Teletracker within 1 s (%d logins, %d refreshes)", calls,
			st.LoginCalls-before.LoginCalls, st.RefreshCalls-before.RefreshCalls)
	}
}

// R3: a rejected refresh keeps the waits as they were; with no password
// stored the operator writes a refresh_token, which is sent at once: two
// calls to /auth/refresh one second apart.
func TestRejectedRefreshThenSeedKeepsTheFloor(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusUnauthorized})
	_, _ = e.request(logical.UpdateOperation, "rotate", nil) // rejected: reauth_required
	e.clock.Add(time.Second)
	seed2 := mustSession(t, e.fake)
	_, _ = e.request(logical.UpdateOperation, "config", map[string]interface{}{"refresh_token": seed2})
	e.wantRateBound(false)
}

// A performance standby whose clock is 4 s behind the active node's
// (within the 5 s the engine assumes nodes agree on) never serves a token
// Teletracker no longer accepts, while refreshes fail on the active node.
func TestStandbyBehindNeverServesExpiredToken(t *testing.T) {
	active := newTestEnv(t)
	active.configure(nil)
	standby := newTestEnv(t, withReplicationState(consts.ReplicationPerformanceStandby))
	standby.storage.Storage = active.storage.Storage
	standby.b.now = func() time.Time { return active.clock.Now().Add(-serveGuard + time.Second) }
	active.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	for i := 0; i < 60; i++ {
		active.clock.Add(time.Minute)
		_ = active.tick()
	}
	active.clock.Add(time.Second) // 1h0m1s on the active clock: the token expired a second ago
	resp, err := standby.request(logical.ReadOperation, "token", nil)
	if err == nil && resp != nil && !resp.IsError() {
		if tok := resp.Data["token"].(string); !active.fake.Live(tok) {
			t.Fatalf("standby served a token Teletracker no longer accepts (expires_at %v, active now %v)", resp.Data["expires_at"], active.clock.Now())
		}
	}
}

// R5: a client that cannot be built (a stored ca_cert TLS would ignore) is
// counted as a call to /auth/refresh, with a latency sample, though
// Teletracker was never called.
func TestMetricsCountOnlyCallsMade(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.storeUnusableCACert(t)
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	m := e.scrape()
	made := e.fake.Stats().RefreshCalls
	counted := 0.0
	for _, o := range outcomes {
		counted += value(t, m, "teletracker_refreshes_total", "outcome="+o)
	}
	if counted != float64(made) || value(t, m, "teletracker_upstream_request_duration_seconds", "op=refresh") != float64(made) {
		t.Fatalf("metrics count %v refresh calls (histogram %v), Teletracker saw %d", counted,
			value(t, m, "teletracker_upstream_request_duration_seconds", "op=refresh"), made)
	}
}

// R6: a write that changes base_url brings a refresh_token but not the
// password: it is accepted, and the password stored for the old account
// stays. Once the new host refuses a refresh, the engine logs in there with
// it: whoever may write config (but not read the password) gets it sent to
// a host of their choice.
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

// R7: Vault's clock is set back a day. The token is of unknown age and the
// refresh is sent at once, but Teletracker rejects it: settle keeps the
// waits as they were (a day ahead), so the login with the stored password
// waits a day, and no token is served meanwhile.
func TestClockSetBackThenRejectedRefreshGoesOn(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(30 * time.Minute)
	e.b.now = func() time.Time { return e.clock.Now().Add(-24 * time.Hour) }
	e.fake.RevokeAll()
	_ = e.tick()
	for i := 0; i < 10; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
	}
	if st := e.fake.Stats(); st.LoginCalls < 2 {
		t.Fatalf("no login in the 10 minutes after a rejected refresh with a password stored: %+v; status %v", st, e.status())
	}
	e.readLive()
	if _, err := e.request(logical.ReadOperation, "token", nil); err != nil {
		t.Fatalf("no token served: %v; status %v", err, e.status())
	}
}

// R8: a v0.1.0 session with a refresh pending (sent just now by a v0.1.0
// node that stopped) migrates to in_flight without the marker's waits: the
// engine, with no password, sends the same refresh token again a second
// later, while the first call may still be under way (request_timeout 30 s).
func TestMigratedPendingRefreshWaitsForItsCall(t *testing.T) {
	e := newTestEnv(t)
	rt := mustSession(t, e.fake)
	cfg := config{BaseURL: e.url, Username: "demo", RefreshMargin: defaultRefreshMargin, RequestTimeout: 30 * time.Second}
	cfgJSON, _ := json.Marshal(cfg)
	session := fmt.Sprintf(`{"identity":%q,"token":"tok","refresh_token":%q,"lifetime":3600000000000,"obtained_at":"2026-03-01T11:10:00Z","last_refresh_at":"2026-03-01T11:10:00Z","pending":{"generation":1,"started_at":"2026-03-01T12:00:00Z"}}`, cfg.identity(), rt)
	for key, value := range map[string]string{legacyConfigKey: string(cfgJSON), legacySessionKey: session} {
		if err := e.storage.Put(context.Background(), &logical.StorageEntry{Key: key, Value: []byte(value)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Second)
	_ = e.tick()
	if got := e.fake.Stats().RefreshCalls; got != 0 {
		t.Fatalf("the pending refresh's token was sent again 1 s after the v0.1.0 node sent it (request_timeout 30 s)")
	}
}

// R10: a clock that flaps by two minutes (e.g. two time sources fighting,
// or leadership flapping between nodes two minutes apart) and an operator
// (or script) rotating every second: every step back drops the waits.
func TestFlappingClockMakesNoStorm(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	var back atomic.Bool
	e.b.now = func() time.Time {
		if back.Load() {
			return e.clock.Now().Add(-2 * time.Minute)
		}
		return e.clock.Now()
	}
	e.clock.Add(time.Minute)
	before := e.fake.Stats().RefreshCalls
	for i := 0; i < 10; i++ {
		e.clock.Add(time.Second)
		back.Store(i%2 == 0)
		_, _ = e.request(logical.UpdateOperation, "rotate", nil)
	}
	if got := e.fake.Stats().RefreshCalls - before; got > 2 {
		t.Fatalf("%d refreshes in 10 s", got)
	}
}

// R11: a write that moves the mount to another user (username + password)
// gets a login answer with a refresh token but no bearer token: the write
// succeeds with a warning, and token reads keep serving the bearer token of
// the OLD user under the new config. (A refresh_token write clears the old
// token; a login for a new account does not.)
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

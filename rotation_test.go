package teletracker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

func intp(n int) *int { return &n }

// upstreamFaults is the fault matrix's upstream half: each fault hits the
// first refresh once, and state is what status says right after. A refresh
// whose outcome is unknown (timeout, broken connection, unreadable answer)
// is followed by a login after the backoff, never by the same token.
var upstreamFaults = []struct {
	name  string
	fault fakett.Fault
	skew  time.Duration // set on the fake instead of a fault
	state string
	login bool // the engine is expected to log in again
}{
	{name: "400", fault: fakett.Fault{Status: 400}, state: stateDegraded, login: true},
	{name: "401", fault: fakett.Fault{Status: 401}, state: stateDegraded, login: true},
	{name: "403", fault: fakett.Fault{Status: 403}, state: stateDegraded, login: true},
	{name: "404", fault: fakett.Fault{Status: 404}, state: stateDegraded},
	{name: "500", fault: fakett.Fault{Status: 500}, state: stateDegraded},
	{name: "502", fault: fakett.Fault{Status: 502}, state: stateDegraded},
	{name: "503", fault: fakett.Fault{Status: 503}, state: stateDegraded},
	{name: "504", fault: fakett.Fault{Status: 504}, state: stateDegraded},
	{name: "429 with Retry-After", fault: fakett.Fault{Status: 429, RetryAfter: "240"}, state: stateDegraded},
	{name: "hang past timeout", fault: fakett.Fault{Delay: 3 * time.Second}, state: stateDegraded, login: true},
	{name: "connection reset", fault: fakett.Fault{Reset: true}, state: stateDegraded, login: true},
	{name: "malformed JSON", fault: fakett.Fault{Body: `{"success":true,"token":`}, state: stateDegraded, login: true},
	{name: "success false", fault: fakett.Fault{Body: `{"success":false,"error":"try later"}`}, state: stateDegraded},
	{name: "missing token", fault: fakett.Fault{Omit: []string{"token"}}, state: stateDegraded},
	{name: "missing refresh token", fault: fakett.Fault{Omit: []string{"refreshToken"}}, state: stateDegraded, login: true},
	{name: "missing expirations", fault: fakett.Fault{Omit: []string{"tokenExpiration", "refreshTokenExpiration"}}, state: stateHealthy},
	{name: "zero lifetime", fault: fakett.Fault{Lifetime: intp(0)}, state: stateDegraded},
	{name: "negative lifetime", fault: fakett.Fault{Lifetime: intp(-3600)}, state: stateDegraded},
	{name: "huge lifetime", fault: fakett.Fault{Lifetime: intp(1 << 40)}, state: stateDegraded},
	{name: "2 MiB body", fault: fakett.Fault{Body: `{"success":true,"padding":"` + strings.Repeat("x", 2<<20) + `"}`}, state: stateDegraded, login: true},
	{name: "2 MiB body, token spent", fault: fakett.Fault{PadBytes: 2 << 20}, state: stateDegraded, login: true},
	{name: "clock skew +1 day", skew: 24 * time.Hour, state: stateHealthy},
	{name: "clock skew -1 day", skew: -24 * time.Hour, state: stateHealthy},
}

// storageFaults is the matrix's storage half, applied at the faulted tick.
var storageFaults = []struct {
	name string
	// skip Puts pass before fail Puts fail (fail < 0: until recovered).
	skip, fail int64
}{
	{name: "storage ok"},
	{name: "marker Put fails once", fail: 1},
	{name: "result Put fails once", skip: 1, fail: 1},
	{name: "result Put fails always", skip: 1, fail: -1},
	{name: "every Put fails", fail: -1},
}

// TestFaultMatrix: for every upstream fault and every storage fault, the
// engine keeps serving only live tokens, never re-uses a refresh token,
// respects the call-rate bound, and recovers once the faults pass.
func TestFaultMatrix(t *testing.T) {
	for _, uf := range upstreamFaults {
		for _, sf := range storageFaults {
			t.Run(uf.name+"/"+sf.name, func(t *testing.T) {
				t.Parallel()
				e := newTestEnv(t)
				e.configure(map[string]interface{}{"request_timeout": 1})
				e.readToken()
				e.fake.SetSkew(uf.skew)
				e.clock.Add(49 * time.Minute)
				if uf.skew == 0 {
					e.fake.Fail("/auth/refresh", 1, uf.fault)
				}
				e.storage.skipPuts.Store(sf.skip)
				e.storage.failPuts.Store(sf.fail)

				_ = e.tick()
				if sf.name == "storage ok" {
					if got := e.status()["state"]; got != uf.state {
						t.Fatalf("state after the fault %v, want %s (%v)", got, uf.state, e.status())
					}
				}
				e.readLive()
				for minute := 0; minute < 30; minute++ {
					if minute == 3 {
						e.storage.failPuts.Store(0) // storage recovers
					}
					e.clock.Add(time.Minute)
					_ = e.tick()
					e.readLive()
				}
				if s := e.status(); s["state"] != stateHealthy || s["unsaved"] != false {
					t.Fatalf("not recovered: %v", s)
				}
				if got := e.fake.Stats().LoginCalls > 1; got != uf.login && sf.fail == 0 {
					t.Fatalf("logged in again: %v, want %v", got, uf.login)
				}
				e.wantNoReuse()
				e.wantRateBound(uf.skew == 0 && uf.name != "missing expirations")
			})
		}
	}
}

// readLive reads the token and, when a token is served, checks it is live on
// the fake. A read may fail only when the session the engine holds (in
// memory if storage refused it, else stored) has no valid token.
func (e *testEnv) readLive() {
	e.t.Helper()
	resp, err := e.request(logical.ReadOperation, "token", nil)
	if err != nil || resp.IsError() {
		held := e.a().held.Load()
		if held == nil {
			held = e.stored()
		}
		if held != nil && held.Token != "" && held.served(e.clock.Now()) {
			e.t.Fatalf("read failed while a valid token exists: %v %v", err, resp)
		}
		return
	}
	if tok := resp.Data["token"].(string); !e.fake.Live(tok) {
		e.t.Fatalf("served a token the fake does not accept (expires_at %v, now %v)", resp.Data["expires_at"], e.clock.Now())
	}
}

// wantRateBound checks the fake's record of refresh calls: never two within
// minCallInterval, and, when the first call failed, the next one at
// least minRetryInterval later.
func (e *testEnv) wantRateBound(firstFailed bool) {
	e.t.Helper()
	times := e.fake.Stats().RefreshCallTimes
	for i := 1; i < len(times); i++ {
		gap := times[i].Sub(times[i-1])
		if gap < minCallInterval || (i == 1 && firstFailed && gap < minRetryInterval) {
			e.t.Fatalf("refresh calls %d and %d are %v apart", i-1, i, gap)
		}
	}
}

func TestRejectedRefreshWithPasswordLogsIn(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.RevokeAll()
	e.clock.Add(50 * time.Minute)
	e.readToken() // the refresh is rejected: an answer, not a failure
	if s := e.status(); s["state"] != stateDegraded || s["consecutive_failures"] != 0 {
		t.Fatalf("%v", s)
	}
	e.clock.Add(minCallInterval) // the login comes after the floor
	tok := e.readToken().Data["token"].(string)
	if !e.fake.Live(tok) {
		t.Fatal("token after re-login not live")
	}
	st := e.fake.Stats()
	if st.LoginCalls != 2 || st.RefreshCalls != 1 {
		t.Fatalf("%+v", st)
	}
	if e.status()["state"] != stateHealthy {
		t.Fatalf("%v", e.status())
	}
}

func TestRejectedRefreshWithoutPasswordNeedsReauth(t *testing.T) {
	e := newTestEnv(t)
	seed, _ := e.fake.NewSession("demo")
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	first := e.readToken().Data["token"]
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: 401})
	e.clock.Add(49 * time.Minute)
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	e.wantState(stateReauthRequired, "write password or refresh_token")
	// The still-valid token is served, with a warning; nothing is retried.
	resp := e.readToken()
	if resp.Data["token"] != first || len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "re-authentication") {
		t.Fatalf("%v %v", resp.Data, resp.Warnings)
	}
	for i := 0; i < 30; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
		_, _ = e.request(logical.ReadOperation, "token", nil)
		_, _ = e.request(logical.UpdateOperation, "rotate", nil)
	}
	if got := e.fake.Stats().RefreshCalls; got != 2 {
		t.Fatalf("refresh calls %d after reauth_required, want 2 (seed and the rejected one)", got)
	}
	_, err := e.request(logical.ReadOperation, "token", nil)
	if err == nil || !strings.Contains(err.Error(), "re-authentication") {
		t.Fatalf("expired read: %v", err)
	}
	// A new credential recovers it.
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"username": "demo", "password": "demo-password"})
	if e.status()["state"] != stateHealthy {
		t.Fatalf("%v", e.status())
	}
	e.readLive()
}

func TestPasswordAlsoRejectedNeedsReauth(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.RevokeAll()
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 401})
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	e.clock.Add(time.Minute)
	_ = e.tick()
	e.wantState(stateReauthRequired, "stored password was rejected")
	if got := e.status()["consecutive_failures"]; got != 1 {
		t.Fatalf("a rejected refresh and a rejected login count %v failures, want 1", got)
	}
}

func TestLoginTransientFailureRetriesLogin(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.RevokeAll()
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 503})
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	if s := e.status(); s["state"] != stateDegraded {
		t.Fatalf("%v", s)
	}
	for i := 0; i < 5; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
	}
	st := e.fake.Stats()
	if e.status()["state"] != stateHealthy || st.RefreshCalls != 1 || st.LoginCalls != 3 {
		t.Fatalf("status %v stats %+v: the dead refresh token must not be sent again", e.status(), st)
	}
}

// TestBackoffBound simulates an hour of ticks, and a read every second,
// against an upstream that always fails, and counts the calls.
func TestBackoffBound(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: 503})
	e.clock.Add(49 * time.Minute)
	for second := 0; second < 3600; second++ {
		if second%60 == 0 {
			_ = e.tick()
		}
		_, _ = e.request(logical.ReadOperation, "token", nil)
		e.clock.Add(time.Second)
	}
	times := e.fake.Stats().RefreshCallTimes
	// 30 s doubling to 5 min (plus jitter) gives about 14 calls in an hour.
	if len(times) < 10 || len(times) > 16 {
		t.Fatalf("%d refresh calls in an hour of failures", len(times))
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < minRetryInterval {
			t.Fatalf("calls %v apart after a failure", gap)
		}
	}
	if got := e.status()["consecutive_failures"]; got != len(times) {
		t.Fatalf("consecutive_failures %v, calls %d", got, len(times))
	}
}

func TestBackoffGrowsWithJitter(t *testing.T) {
	for n := 1; n <= 12; n++ {
		base := min(minRetryInterval<<min(n-1, 9), maxBackoff)
		seen := map[time.Duration]bool{}
		for i := 0; i < 100; i++ {
			key := fmt.Sprintf("session-%d", i)
			d := backoff(n, key)
			if d < base || d > base+base/4 {
				t.Fatalf("backoff(%d) = %v, want [%v, %v]", n, d, base, base+base/4)
			}
			if backoff(n, key) != d {
				t.Fatalf("backoff(%d, %q) is not the same twice", n, key)
			}
			seen[d] = true
		}
		if len(seen) < 50 {
			t.Fatalf("backoff(%d) of 100 sessions: only %d different waits", n, len(seen))
		}
	}
}

// One user's accounts (account_id apart) without a session, as v0.1.0
// mounts come across, that fail their logins together retry apart.
func TestBackoffSpreadsOneUsersAccounts(t *testing.T) {
	seen := map[time.Time]bool{}
	for id := int64(1); id <= 20; id++ {
		r := fromV010(&config{BaseURL: "https://api.teletracker.net", Username: "svc", Password: "pw", AccountID: id,
			RefreshMargin: 10 * time.Minute, RequestTimeout: 10 * time.Second}, nil)
		failed := &upstreamError{kind: failTransient, op: loginPath, status: http.StatusServiceUnavailable, detail: "server error"}
		for range 3 {
			r = settle(r, actLogin, nil, failed, testStart, testStart)
		}
		seen[r.NotBefore] = true
	}
	if len(seen) < 10 {
		t.Fatalf("20 accounts of one user failing together retry at %d times", len(seen))
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: 429, RetryAfter: "600"})
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	for i := 0; i < 9; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
		_, _ = e.request(logical.ReadOperation, "token", nil)
	}
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatalf("called %d times inside Retry-After", got)
	}
	e.clock.Add(time.Minute)
	_ = e.tick()
	if got := e.fake.Stats().Refreshes; got != 1 {
		t.Fatalf("no refresh after Retry-After: %d", got)
	}
}

// TestRefreshFloorWhateverLifetimes: a 2 s token lifetime must not make the
// engine refresh more than once per 10 s, however often it is read.
func TestRefreshFloorWhateverLifetimes(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 2 * time.Second }))
	e.configure(nil)
	for i := 0; i < 600; i++ {
		_, _ = e.request(logical.ReadOperation, "token", nil)
		_, _ = e.request(logical.UpdateOperation, "rotate", nil)
		if i%60 == 0 {
			_ = e.tick()
		}
		e.clock.Add(100 * time.Millisecond)
	}
	if got := e.fake.Stats().RefreshCalls; got > 7 {
		t.Fatalf("%d refresh calls in 60 s", got)
	}
	e.wantRateBound(false)
}

// TestInterruptedRefresh: a marker left by a refresh whose result was never
// stored is resolved by the next tick: with a password by a login (the
// refresh token it names may be spent, and is never presented again when a
// login can replace it), without one by trying the token once more.
func TestInterruptedRefresh(t *testing.T) {
	cases := []struct {
		name     string
		password bool
		spent    bool
		state    string
	}{
		{"not spent, password stored", true, false, stateHealthy},
		{"spent, password stored", true, true, stateHealthy},
		{"not spent, no password", false, false, stateHealthy},
		{"spent, no password", false, true, stateReauthRequired},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.configure(nil)
			if !tc.password {
				e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": ""})
			}
			e.readToken()
			e.clock.Add(20 * time.Minute)
			if tc.spent {
				// Vault died after Teletracker answered: spend the token
				// behind the engine's back.
				e.fake.Fail("/auth/refresh", 1, fakett.Fault{Spend: true, Reset: true})
				e.storage.skipPuts.Store(1)
				e.storage.failPuts.Store(-1)
				_, _ = e.request(logical.UpdateOperation, "rotate", nil)
				e.storage.failPuts.Store(0)
			} else {
				e.markInterrupted()
			}
			e.b = restart(t, e)
			if e.stored().State != stateInFlight {
				t.Fatal("no marker stored")
			}
			before := e.fake.Stats()
			e.clock.Add(time.Minute)
			_ = e.tick()
			st := e.status()
			if st["state"] != tc.state {
				t.Fatalf("state %v", st)
			}
			after := e.fake.Stats()
			logins, refreshes := after.LoginCalls-before.LoginCalls, after.RefreshCalls-before.RefreshCalls
			if (tc.password && (logins != 1 || refreshes != 0)) || (!tc.password && (logins != 0 || refreshes != 1)) {
				t.Fatalf("resolved with %d logins and %d refreshes", logins, refreshes)
			}
			if tc.state == stateReauthRequired && !strings.Contains(st["last_error"].(string), "was interrupted") {
				t.Fatalf("last_error does not say a refresh was interrupted: %v", st["last_error"])
			}
			if e.stored().State == stateInFlight {
				t.Fatal("marker left behind")
			}
			e.readLive()
		})
	}
}

// restart is a new backend on the same storage, clock and fake: Vault
// restarted, and all memory is gone.
func restart(t *testing.T, e *testEnv) *backend {
	t.Helper()
	conf := logical.TestBackendConfig()
	conf.StorageView = e.storage
	conf.Logger = e.b.Logger()
	b := newBackend(newProcess(DefaultCallsPerSecond))
	b.now, b.mono = e.clock.Now, e.clock.Mono
	b.storage = e.storage
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMarkerWriteFailsNoUpstreamCall(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	e.storage.failPuts.Store(1)
	if err := e.tick(); err == nil || !errors.Is(err, errStorageDown) {
		t.Fatalf("tick: %v", err)
	}
	if got := e.fake.Stats().RefreshCalls; got != 0 {
		t.Fatalf("called Teletracker without a stored marker: %d", got)
	}
}

// TestUnsavedSessionHeldAndServed: the new session's write fails every
// retry; it is served from memory, its predecessor is never sent, and it is
// stored once storage recovers.
func TestUnsavedSessionHeldAndServed(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	e.storage.skipPuts.Store(1)
	e.storage.failPuts.Store(-1)
	before := e.storage.puts.Load()
	if _, err := e.a().apply(context.Background(), e.storage, trigger{kind: triggerTick}, nil); !errors.Is(err, errNotStored) {
		t.Fatalf("tick: %v", err)
	}
	if got := e.storage.puts.Load() - before; got != 1+saveAttempts {
		t.Fatalf("%d Puts, want the marker and %d tries", got, saveAttempts)
	}
	tok := e.readToken().Data["token"].(string)
	if e.fake.Stats().Refreshes != 1 || !e.fake.Live(tok) {
		t.Fatal("the new token is not served")
	}
	if s := e.status(); s["unsaved"] != true {
		t.Fatalf("%v", s)
	}
	// Storage still down: however long, no refresh is sent.
	for i := 0; i < 40; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
		e.readLive()
		_, _ = e.request(logical.UpdateOperation, "rotate", nil)
	}
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatalf("refresh calls %d while the session was unsaved", got)
	}
	e.storage.failPuts.Store(0)
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if s := e.stored(); s.Token != tok || s.State != stateReady || e.status()["unsaved"] != false {
		t.Fatal("held session not stored on the next tick")
	}
	e.clock.Add(10 * time.Minute)
	_ = e.tick()
	e.readLive()
	e.wantNoReuse()
}

// TestSalvagedRefreshTokenUsedNext: an answer with a refresh token but no
// bearer token keeps the new refresh token, so the next refresh works.
func TestSalvagedRefreshTokenUsedNext(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	first := e.readToken().Data["token"]
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Omit: []string{"token"}})
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	if got := e.readToken().Data["token"]; got != first {
		t.Fatal("the old bearer token should still be served")
	}
	e.clock.Add(2 * time.Minute)
	_ = e.tick()
	st := e.fake.Stats()
	if st.Refreshes != 2 || st.ReusedRefreshTokens != 0 || st.LoginCalls != 1 || e.status()["state"] != stateHealthy {
		t.Fatalf("%+v %v", st, e.status())
	}
}

func TestSecretsNeverInErrorsOrWarnings(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	rt := e.stored().RefreshToken
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: 401, Body: `{"success":false,"error":"refresh token ` + rt + ` is spent"}`})
	e.fake.Fail("/auth/login", -1, fakett.Fault{Status: 503, Body: `{"success":false,"error":"password demo-password refused"}`})
	e.clock.Add(50 * time.Minute)
	resp, err := e.request(logical.ReadOperation, "token", nil)
	var text strings.Builder
	text.WriteString(e.logs.String())
	if err != nil {
		text.WriteString(err.Error())
	}
	if resp != nil {
		text.WriteString(strings.Join(resp.Warnings, " "))
	}
	text.WriteString(e.status()["last_error"].(string))
	for _, secret := range []string{rt, "demo-password"} {
		if strings.Contains(text.String(), secret) {
			t.Fatalf("secret %q leaked: %s", secret, text.String())
		}
	}
	if !strings.Contains(text.String(), "HTTP 401: credential refused") {
		t.Fatal("the test did not exercise the rejected refresh")
	}
}

func BenchmarkRotationDecision(b *testing.B) {
	r := &record{Config: config{RefreshMargin: defaultRefreshMargin, RequestTimeout: defaultRequestTimeout}, State: stateReady,
		Token: "t", Lifetime: time.Hour, ObtainedAt: testStart.Add(-30 * time.Minute), LastCallAt: testStart.Add(-30 * time.Minute)}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if decide(r, testStart, trigger{kind: triggerTick}).kind != actNothing {
			b.Fatal("unexpected decision")
		}
	}
}

// TestRejectedRefreshThenLoginIsOneAttempt: a rejected refresh token is an
// answer, not a failure: the login follows after the floor, a failed login
// counts once and backs off from 30 s, and no two calls come within 10 s.
func TestRejectedRefreshThenLoginIsOneAttempt(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 20 * time.Second }))
	e.configure(nil)
	e.fake.RevokeAll()
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 503})
	e.clock.Add(10 * time.Second)
	_, _ = e.request(logical.ReadOperation, "token", nil) // due: the refresh is rejected
	if st, s := e.fake.Stats(), e.status(); st.RefreshCalls != 1 || st.LoginCalls != 1 || s["consecutive_failures"] != 0 {
		t.Fatalf("%+v %v: want one refresh, no login yet, no failure", st, s)
	}
	e.clock.Add(minCallInterval)
	_, _ = e.request(logical.ReadOperation, "token", nil) // the login fails
	s := e.status()
	if st := e.fake.Stats(); st.LoginCalls != 2 || s["consecutive_failures"] != 1 {
		t.Fatalf("%+v %v: want the login, one failure", st, s)
	}
	if next, _ := time.Parse(time.RFC3339, s["next_attempt_at"].(string)); next.Before(e.clock.Now().Add(minRetryInterval)) {
		t.Fatalf("next attempt at %v: the backoff after one failure is 30 s", next)
	}
	for i := 0; i < 290; i++ {
		e.clock.Add(100 * time.Millisecond)
		_, _ = e.request(logical.ReadOperation, "token", nil)
	}
	if st := e.fake.Stats(); st.RefreshCalls+st.LoginCalls != 3 {
		t.Fatalf("%+v: reads called within the backoff", st)
	}
	e.clock.Add(10 * time.Second)
	e.readLive() // the login succeeds
	if st := e.fake.Stats(); st.LoginCalls != 3 || st.RefreshCalls != 1 || e.status()["state"] != stateHealthy {
		t.Fatalf("%+v %v", st, e.status())
	}
	e.clock.Add(9 * time.Second)
	if resp, err := e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("a rotate 9 s after the login: resp=%v err=%v", resp, err)
	}
}

// TestUnknownOutcomeKeepsMarker: a refresh that timed out may have spent the
// token; the marker stays, and if the retry is rejected, status says a
// refresh was interrupted.
func TestUnknownOutcomeKeepsMarker(t *testing.T) {
	e := newTestEnv(t)
	e.configure(map[string]interface{}{"request_timeout": 1})
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": ""})
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: 3 * time.Second, Spend: true})
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	if s := e.stored(); s.State != stateInFlight || s.Failures != 1 {
		t.Fatalf("after a timeout the marker must stay: %+v", s)
	}
	e.clock.Add(2 * time.Minute)
	_ = e.tick()
	e.wantState(stateReauthRequired, "was interrupted")
}

// TestCallerLeavingDoesNotAbortRefresh: once a refresh is sent, the caller's
// context being cancelled must not stop its result from being stored.
func TestCallerLeavingDoesNotAbortRefresh(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	gen := e.stored().Generation
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	e.clock.Add(time.Minute)
	if _, err := e.a().apply(ctx, e.storage, trigger{kind: triggerRotate, at: e.clock.Now()}, nil); err != nil {
		t.Fatal(err)
	}
	if s := e.stored(); s.Generation != gen+1 || s.State != stateReady {
		t.Fatalf("refresh result not stored: %+v", s)
	}
}

// TestClockGoingBackDoesNotStopCalls: waits set before the clock was set
// back an hour do not hold calls back for an hour, and new waits hold on
// the new clock.
func TestClockGoingBackDoesNotStopCalls(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 429, RetryAfter: "3600"})
	if resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"}); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("setup: resp=%v err=%v", resp, err)
	}
	e.clock.Add(-time.Hour)
	e.clock.Add(minCallInterval) // the floor holds on the monotonic clock
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
	e.clock.Add(minCallInterval)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
	e.clock.Add(time.Second)
	if resp, err := e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("a second refresh at once: resp=%v err=%v", resp, err)
	}
	if st := e.fake.Stats(); st.LoginCalls != 3 || st.RefreshCalls != 1 {
		t.Fatalf("%+v, want 3 logins and a refresh", st)
	}
}

func TestDeleteDropsHeldSession(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	e.storage.skipPuts.Store(1)
	e.storage.failPuts.Store(-1)
	_ = e.tick()
	e.storage.failPuts.Store(0)
	if e.a().held.Load() == nil {
		t.Fatal("setup: no session held")
	}
	e.mustRequest(logical.DeleteOperation, "config", nil)
	e.clock.Add(minCallInterval)
	e.configure(nil)
	_ = e.tick()
	if s := e.stored(); s.Generation != 1 || e.a().held.Load() != nil {
		t.Fatalf("the deleted session came back: generation %d", s.Generation)
	}
}

// TestUnknownOutcomeWithPasswordLogsIn: a refresh whose outcome is unknown
// (a timeout) is followed by a login when a password is stored: the same
// refresh token is never presented again.
func TestUnknownOutcomeWithPasswordLogsIn(t *testing.T) {
	e := newTestEnv(t)
	e.configure(map[string]interface{}{"request_timeout": 1})
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: 3 * time.Second})
	e.clock.Add(49 * time.Minute)
	for i := 0; i < 3; i++ {
		_ = e.tick()
		e.clock.Add(time.Minute)
	}
	st := e.fake.Stats()
	if st.RefreshCalls != 1 || st.LoginCalls != 2 || e.status()["state"] != stateHealthy {
		t.Fatalf("%+v %v: want one refresh call, then a login", st, e.status())
	}
	e.readLive()
	e.wantNoReuse()
}

// TestConfigWriteLimitsStored: a config write's failed call holds back the
// next one by the floor and by Teletracker's Retry-After, and those limits
// are stored (a restart keeps them); Teletracker's 429 is answered 429.
func TestConfigWriteLimitsStored(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 429, RetryAfter: "120"})
	resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
	if statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("Teletracker's 429 answered: resp=%v err=%v", resp, err)
	}
	e.b = restart(t, e)
	calls := e.fake.Stats().LoginCalls
	e.clock.Add(time.Minute)
	resp, err = e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
	if statusOf(resp, err) != http.StatusTooManyRequests || e.fake.Stats().LoginCalls != calls {
		t.Fatalf("a write inside Retry-After after a restart: resp=%v err=%v", resp, err)
	}
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})

	// A looping script: a second write within 10 s of a refused one is
	// refused without a call.
	e.clock.Add(time.Minute)
	_, _ = e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "wrong-password"})
	calls = e.fake.Stats().LoginCalls
	e.clock.Add(5 * time.Second)
	resp, err = e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "wrong-password"})
	if statusOf(resp, err) != http.StatusTooManyRequests || e.fake.Stats().LoginCalls != calls {
		t.Fatalf("a write 5 s after a refused one: resp=%v err=%v", resp, err)
	}
}

// TestCredentialWriteIgnoresBackoff: a mount that asks for a password is
// not refused that very write for minutes by its own automatic backoff: a
// credential is an operator's act, held back only by the floor and a
// Retry-After.
func TestCredentialWriteIgnoresBackoff(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.RevokeAll()
	e.clock.Add(49 * time.Minute)
	r := e.stored() // the login after the rejected refresh failed six times
	r.State, r.Failures, r.LastCallAt = stateNeedLogin, 6, e.clock.Now()
	r.HoldUntil, r.NotBefore = e.clock.Now().Add(minCallInterval), e.clock.Now().Add(maxBackoff)
	e.store(r)
	e.b = restart(t, e)
	e.clock.Add(minCallInterval)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
	e.wantState(stateHealthy, "")
}

// TestEmptyPasswordNeverSent: when the password is removed while a login is
// due, no login is sent: the mount needs re-authentication.
func TestEmptyPasswordNeverSent(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.RevokeAll()
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 503})
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": ""})
	calls := e.fake.Stats().LoginCalls
	for i := 0; i < 10; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
		_, _ = e.request(logical.UpdateOperation, "rotate", nil)
	}
	if got := e.fake.Stats().LoginCalls; got != calls {
		t.Fatalf("%d logins sent without a password", got-calls)
	}
	e.wantState(stateReauthRequired, "")
}

// TestConfigWriteSupersedesHeldSession: a session held in memory because
// storage refused it is dropped when a config write stores a new one, so it
// can never overwrite the new session later.
func TestConfigWriteSupersedesHeldSession(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	e.storage.skipPuts.Store(1)
	e.storage.failPuts.Store(-1)
	_ = e.tick()
	if e.a().held.Load() == nil {
		t.Fatal("setup: no session held")
	}
	e.storage.failPuts.Store(1) // the held session's store fails once more
	e.clock.Add(time.Minute)
	seed, _ := e.fake.NewSession("demo")
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"refresh_token": seed})
	seeded := e.stored()
	if e.a().held.Load() != nil {
		t.Fatal("the superseded session is still held")
	}
	e.clock.Add(time.Minute)
	_ = e.tick()
	if s := e.stored(); s.RefreshToken != seeded.RefreshToken {
		t.Fatal("the seeded session was overwritten")
	}
}

// TestFailedDeleteKeepsHeldRecord: a config delete that storage refuses
// keeps the record held in memory: it was not deleted.
func TestFailedDeleteKeepsHeldRecord(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	e.storage.skipPuts.Store(1)
	e.storage.failPuts.Store(-1)
	_ = e.tick()
	if e.a().held.Load() == nil {
		t.Fatal("setup: no record held")
	}
	e.storage.failDeletes.Store(true) // a named account's delete deletes its entry
	if resp, err := e.request(logical.DeleteOperation, "config", nil); statusOf(resp, err) != http.StatusInternalServerError {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	if e.a().held.Load() == nil {
		t.Fatal("a failed delete dropped the held record")
	}
	e.storage.failPuts.Store(0)
	e.storage.failDeletes.Store(false)
	e.clock.Add(time.Minute)
	_ = e.tick()
	e.readLive()
	e.wantNoReuse()
}

// holdOverMarker makes the refresh at 49 m hold its result in memory over
// its stored marker, storage refusing every Put after the marker.
func (e *testEnv) holdOverMarker() {
	e.t.Helper()
	e.clock.Add(49 * time.Minute)
	e.storage.skipPuts.Store(1)
	e.storage.failPuts.Store(-1)
	_ = e.tick()
	if e.a().held.Load() == nil {
		e.t.Fatal("setup: no record held")
	}
}

// wantRefreshesGoOn runs 70 minutes of ticks and reads with storage working
// and fails unless the mount went on refreshing and serving live tokens.
func (e *testEnv) wantRefreshesGoOn() {
	e.t.Helper()
	calls := e.fake.Stats().RefreshCalls
	for i := 0; i < 70; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
		e.readLive()
	}
	if got := e.fake.Stats().RefreshCalls - calls; got < 1 {
		e.t.Fatalf("no refresh in 70 minutes with storage working; status %v", e.status())
	}
	if s := e.status(); s["unsaved"] != false || s["token_valid"] != true || s["state"] != stateHealthy {
		e.t.Fatalf("status %v", s)
	}
	e.wantNoReuse()
}

// TestTuneWriteOverHeldRecordKeepsRefreshing: a tune write that stores the
// held record (made from it) clears its mark; nothing stays "held".
func TestTuneWriteOverHeldRecordKeepsRefreshing(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.holdOverMarker()
	e.storage.failPuts.Store(saveAttempts) // load cannot store it; the write's own Put can
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"refresh_margin": "15m"})
	if e.a().held.Load() != nil || e.stored().State != stateReady {
		t.Fatal("setup: the tune write did not store the held record")
	}
	e.wantRefreshesGoOn()
}

// TestRefusedWriteOverHeldRecordKeepsRefreshing: a config write refused for
// its input after load stored the held record publishes what load stored.
func TestRefusedWriteOverHeldRecordKeepsRefreshing(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.holdOverMarker()
	e.storage.failPuts.Store(0)
	if resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"refresh_margin": "0"}); statusOf(resp, err) != http.StatusBadRequest {
		t.Fatalf("setup: resp=%v err=%v", resp, err)
	}
	e.wantRefreshesGoOn()
}

// TestRejectedRefreshLoginChainHasAFloor: a refresh token rejected again and
// again, each time followed by a successful login, makes no storm: the
// login after a call within 10 s sets the floor.
func TestRejectedRefreshLoginChainHasAFloor(t *testing.T) {
	t.Run("reads, tokenLifetime 2s", func(t *testing.T) {
		e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 2 * time.Second }))
		e.configure(nil)
		e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusUnauthorized})
		before := e.fake.Stats()
		for i := 0; i < 60; i++ {
			e.clock.Add(time.Second)
			_, _ = e.request(logical.ReadOperation, "token", nil)
		}
		st := e.fake.Stats()
		if calls := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls; calls > 14 {
			t.Fatalf("%d calls to Teletracker in 60 s", calls)
		}
		e.wantRateBound(false)
	})
	t.Run("rotate once a second", func(t *testing.T) {
		e := newTestEnv(t)
		e.configure(nil)
		e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusUnauthorized})
		e.clock.Add(time.Minute)
		before := e.fake.Stats()
		ok := 0
		for i := 0; i < 30; i++ {
			e.clock.Add(time.Second)
			if resp, err := e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) == http.StatusOK {
				ok++
			}
		}
		st := e.fake.Stats()
		if calls := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls; ok > 4 || calls > 8 {
			t.Fatalf("30 rotates in 30 s: %d succeeded, %d calls to Teletracker", ok, calls)
		}
	})
}

// TestStatusNotHealthyWhileNothingCanBeRefreshed: a record held in memory,
// or a refresh not attempted because its marker could not be stored, is not
// reported healthy.
func TestStatusNotHealthyWhileNothingCanBeRefreshed(t *testing.T) {
	for _, markerStored := range []bool{true, false} {
		t.Run(fmt.Sprintf("marker stored=%v", markerStored), func(t *testing.T) {
			e := newTestEnv(t)
			e.configure(nil)
			e.clock.Add(49 * time.Minute)
			if markerStored {
				e.storage.skipPuts.Store(1)
			}
			e.storage.failPuts.Store(-1)
			for i := 0; i < 12; i++ {
				_ = e.tick()
				e.clock.Add(5 * time.Minute)
			}
			if s := e.status(); s["state"] != stateDegraded || s["unsaved"] != true {
				t.Fatalf("status %v, want degraded and unsaved", s)
			}
			if !markerStored && !strings.Contains(e.status()["last_error"].(string), "storing its marker failed") {
				t.Fatalf("the failure to store the marker is not recorded: %v", e.status())
			}
			if got := e.fake.Stats().RefreshCalls; got > 1 {
				t.Fatalf("%d refresh calls while storage refused everything", got)
			}
		})
	}
}

// TestMarkerOfNodeWithClockAhead: a node whose clock is a few seconds ahead
// left a marker; this node still waits for its call to end.
func TestMarkerOfNodeWithClockAhead(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed, "request_timeout": "30s"})
	e.clock.Add(time.Minute)
	e.store(e.stored().marked(actRefresh, e.clock.Now().Add(5*time.Second)))
	e.b = restart(t, e)
	e.clock.Add(time.Second)
	_ = e.tick()
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatalf("the marker of a node 5 s ahead was resolved 1 s after it was seen")
	}
	e.clock.Add(50 * time.Second)
	_ = e.tick()
	if got := e.fake.Stats().Refreshes; got != 2 {
		t.Fatalf("the marker was not resolved once its call had surely ended: %d refreshes", got)
	}
}

// TestTuneDoesNotShortenMarkerWait: the wait for a marked call is the one
// set when it was sent; a later request_timeout does not shorten it.
func TestTuneDoesNotShortenMarkerWait(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed, "request_timeout": "30s"})
	e.clock.Add(time.Minute)
	e.markInterrupted()
	e.b = restart(t, e)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"request_timeout": "1s"})
	e.clock.Add(15 * time.Second)
	_ = e.tick()
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatal("the marker was resolved 15 s after its call was sent with a 30 s timeout")
	}
}

// TestClockSetBackNeverServesExpiredToken: when only Vault's clock is set
// back an hour, a token obtained "in the future" is of unknown age: it is
// replaced at once, and nothing Teletracker no longer accepts is served.
func TestClockSetBackNeverServesExpiredToken(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.readToken()
	e.b.now = func() time.Time { return e.clock.Now().Add(-time.Hour) }
	for i := 0; i < 70; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
		e.readLive()
	}
	e.wantNoReuse()
}

// TestAnswerCarryingRefreshTokenIsProcessed: a 2xx answer that carries a
// new refresh token, whatever its success says, spent the one sent: the new
// one is kept and used next, and the spent one is never sent again.
func TestAnswerCarryingRefreshTokenIsProcessed(t *testing.T) {
	for name, fault := range map[string]fakett.Fault{
		"success missing":   {Omit: []string{"success"}},
		"success as string": {Success: "true"},
		"success as number": {Success: 1},
		"success false":     {Success: false, Omit: []string{"token"}},
	} {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t)
			seed := mustSession(t, e.fake)
			e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
			e.clock.Add(55 * time.Minute)
			e.fake.Fail("/auth/refresh", 1, fault)
			_ = e.tick()
			if s := e.stored(); s.State != stateReady || s.Failures != 1 || !strings.Contains(s.LastError, "success") {
				t.Fatalf("record after the odd answer: state %s failures %d last error %q", s.State, s.Failures, s.LastError)
			}
			e.clock.Add(time.Minute)
			_ = e.tick()
			e.wantNoReuse()
			if st := e.fake.Stats(); st.Refreshes != 3 || st.LoginCalls != 0 || e.status()["state"] != stateHealthy {
				t.Fatalf("the session did not go on with the new refresh token: %+v, %v", st, e.status())
			}
			e.readLive()
		})
	}
}

// TestMarkerWindowCoversLatePut: a refresh whose marker's Put is
// acknowledged later than the marker lets it be sent is not sent: another
// node may be resolving the marker by then. It counts as a failure
// (storage's: status says so), the marker is taken back, and the refresh
// is retried on the backoff, never by presenting a spent token.
func TestMarkerWindowCoversLatePut(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	e.clock.Add(55 * time.Minute)
	e.storage.beforePut = func(*logical.StorageEntry) bool {
		e.storage.beforePut = nil
		e.clock.Add(sendWindow) // a slow commit, a paused VM
		return false
	}
	_ = e.tick()
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatalf("%d refresh calls: the refresh was sent after its marker's window", got-1)
	}
	if s := e.stored(); s.State != stateReady || s.Failures != 1 || !strings.Contains(s.LastError, "marker took longer") {
		t.Fatalf("a call not sent for a late marker left state %s, %d failures, last error %q", s.State, s.Failures, s.LastError)
	}
	if s := e.status(); s["state"] != stateDegraded || s["next_attempt_at"] == "" {
		t.Fatalf("status after a refresh storage was too slow to send: %v", s)
	}
	e.clock.Add(time.Minute)
	_ = e.tick()
	if st := e.fake.Stats(); st.Refreshes != 2 || st.LoginCalls != 0 {
		t.Fatalf("the next tick did not refresh: %+v", st)
	}
	e.wantNoReuse()
}

// TestLateMarkerAckAfterTakeoverKeepsTheWinner: node A's marker Put is
// acknowledged only after node B took over and resolved the marker (B
// refreshed with the same refresh token, which A had not sent). A sends
// nothing and stores nothing over B's session.
func TestLateMarkerAckAfterTakeoverKeepsTheWinner(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	e.clock.Add(55 * time.Minute)
	nodeB := restart(t, e)
	e.storage.beforePut = func(entry *logical.StorageEntry) bool {
		e.storage.beforePut = nil
		if err := e.storage.Storage.Put(context.Background(), entry); err != nil { // A's marker, committed
			t.Error(err)
		}
		e.clock.Add(time.Minute) // A pauses; B becomes active and resolves the marker
		if err := nodeB.periodicFunc(context.Background(), &logical.Request{Storage: e.storage.Storage}); err != nil {
			t.Error(err)
		}
		return true // and then A hears that its marker was stored
	}
	_ = e.tick() // node A
	st := e.fake.Stats()
	if st.RefreshCalls != 2 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("both nodes sent the refresh token: %+v", st)
	}
	if s := e.stored(); s.State != stateReady || s.Generation != 2 || !e.fake.Live(s.Token) {
		t.Fatalf("B's session was overwritten: state %s generation %d", s.State, s.Generation)
	}
}

// TestRejectedAfterTakeoverKeepsTheWinner: node A sent its refresh, paused,
// and came back after node B had resolved the marker with a login; A's
// answer (whatever it is) does not overwrite B's session.
func TestRejectedAfterTakeoverKeepsTheWinner(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(55 * time.Minute)
	nodeB := restart(t, e)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusUnauthorized})
	e.storage.beforePut = func(entry *logical.StorageEntry) bool {
		if strings.Contains(string(entry.Value), `"state":"in_flight"`) { // A's marker: its call comes next
			e.storage.beforePut = nil
			e.storage.beforeGet = func(string) { // A's answer came late: B took over meanwhile
				e.storage.beforeGet = nil
				e.clock.Add(time.Minute)
				if err := nodeB.periodicFunc(context.Background(), &logical.Request{Storage: e.storage.Storage}); err != nil {
					t.Error(err)
				}
			}
		}
		return false
	}
	_ = e.tick() // node A: its refresh is rejected
	if s := e.stored(); s.State != stateReady || !e.fake.Live(s.Token) || e.fake.Stats().Logins != 2 {
		t.Fatalf("A's rejected refresh was stored over B's login: state %s, %+v", s.State, e.fake.Stats())
	}
}

// TestShortRefreshTokenRenewedOnItsOwnMargin: refresh tokens that live 11
// minutes, with the default 10-minute margin, are renewed on a margin
// capped at half their lifetime: a refresh every few ticks, not every tick.
func TestShortRefreshTokenRenewedOnItsOwnMargin(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.RefreshLifetime = 11 * time.Minute }))
	e.configure(nil)
	for i := 0; i < 30; i++ {
		e.clock.Add(time.Minute)
		_ = e.tick()
		if s := e.stored(); !s.RefreshTokenExpiresAt.After(e.clock.Now()) {
			t.Fatalf("the refresh token expired at %v", s.RefreshTokenExpiresAt)
		}
	}
	if n := e.fake.Stats().Refreshes; n < 5 || n > 10 {
		t.Fatalf("%d refreshes in 30 minutes of 11-minute refresh tokens; about 6 would do", n)
	}
	e.wantNoReuse()
}

// slowUpstream carries calls to the fake Teletracker and lets each take d
// on the test clock, as every real call takes some time.
type slowUpstream struct {
	clock *testClock
	d     time.Duration
}

func (s slowUpstream) RoundTrip(req *http.Request) (*http.Response, error) {
	s.clock.Add(s.d)
	return http.DefaultTransport.RoundTrip(req)
}

// TestUnsendableRefreshIsNotHealthy: when every marker's Put is
// acknowledged too late to send the refresh (storage commits slowly), no
// refresh is sent, and status says so: degraded, with the failure, its
// count and when it is tried again, before the token runs out.
func TestUnsendableRefreshIsNotHealthy(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.storage.beforePut = func(entry *logical.StorageEntry) bool {
		if strings.Contains(string(entry.Value), `"state":"in_flight"`) {
			e.clock.Add(sendWindow + time.Second) // a slow commit
		}
		return false
	}
	e.clock.Add(50 * time.Minute) // due
	for i := 0; i < 7; i++ {
		_ = e.tick()
		e.clock.Add(time.Minute - sendWindow - time.Second)
	}
	if n := e.fake.Stats().RefreshCalls; n != 0 {
		t.Fatalf("setup: %d refreshes sent", n)
	}
	if s := e.status(); s["state"] == stateHealthy || s["last_error"] == "" {
		t.Fatalf("7 refreshes due since 50 min could not be sent, the token stops being served in %v, and status says %v",
			testStart.Add(time.Hour-serveGuard).Sub(e.clock.Now()), s)
	}
}

// gatedUpstream carries a node's calls to the fake Teletracker, but holds
// each until released: sending says a call is about to go out.
type gatedUpstream struct {
	sending chan struct{}
	release chan struct{}
}

func (g gatedUpstream) RoundTrip(req *http.Request) (*http.Response, error) {
	g.sending <- struct{}{}
	<-g.release
	return http.DefaultTransport.RoundTrip(req)
}

// TestRenewedSessionKeptOverTakeoverStillInFlight: node A (no password
// stored) sent its refresh and got the new refresh token, then paused past
// its marker's window; node B took over, stored its own marker and sent the
// same refresh token again (the rule for an unresolved marker without a
// password). A resumes while B's call is under way. B's call can only be
// refused (A spent that refresh token), so A's renewed session is the only
// way on and must be what storage ends with: a live node that holds the
// answer to its call never loses the session.
func TestRenewedSessionKeptOverTakeoverStillInFlight(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	e.clock.Add(55 * time.Minute)
	nodeB := restart(t, e)
	gate := gatedUpstream{sending: make(chan struct{}), release: make(chan struct{})}
	nodeB.proc.roundTripper = gate
	bDone := make(chan struct{})
	e.storage.beforePut = func(entry *logical.StorageEntry) bool {
		if strings.Contains(string(entry.Value), `"state":"in_flight"`) { // A's marker: its call comes next
			e.storage.beforePut = nil
			e.storage.beforeGet = func(string) { // A has its answer, and pauses before its fence
				e.storage.beforeGet = nil
				e.clock.Add(time.Minute) // past A's marker window: B, now active, resolves it
				go func() {
					defer close(bDone)
					_ = nodeB.periodicFunc(context.Background(), &logical.Request{Storage: e.storage.Storage})
				}()
				<-gate.sending // B's marker is stored, its refresh about to go out
			}
		}
		return false
	}
	_ = e.tick() // node A: its refresh succeeds
	close(gate.release)
	<-bDone
	st := e.fake.Stats()
	if s := e.stored(); s.State != stateReady || !e.fake.Live(s.Token) {
		t.Fatalf("A renewed the session, and storage ends in state %s (last error %q): the renewed session is lost; fake %+v",
			s.State, s.LastError, st)
	}
}

// TestLateMarkerAckOfFirstSeedWriteAfterTakeover: the first config write of
// a mount seeds it with a refresh_token; its marker's Put is acknowledged
// only after node B took over and resolved the marker (as in
// TestLateMarkerAckAfterTakeoverKeepsTheWinner, but for a mount with
// nothing stored before). The write is not sent and must answer, not
// panic (a panic in a multiplexed plugin takes every mount down).
func TestLateMarkerAckOfFirstSeedWriteAfterTakeover(t *testing.T) {
	e := newTestEnv(t)
	seed := mustSession(t, e.fake)
	nodeB := restart(t, e)
	e.storage.beforePut = func(entry *logical.StorageEntry) bool {
		e.storage.beforePut = nil
		if err := e.storage.Storage.Put(context.Background(), entry); err != nil { // A's marker, committed
			t.Error(err)
		}
		e.clock.Add(time.Minute) // A pauses; B becomes active and resolves the marker
		if err := nodeB.periodicFunc(context.Background(), &logical.Request{Storage: e.storage.Storage}); err != nil {
			t.Error(err)
		}
		return true // and then A hears that its marker was stored
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("the config write panicked: %v", p)
			}
		}()
		_, _ = e.request(logical.UpdateOperation, "config", map[string]interface{}{"base_url": e.url, "refresh_token": seed})
	}()
	if s := e.stored(); s == nil || s.State != stateReady || !e.fake.Live(s.Token) {
		t.Fatalf("B's session was not kept: %+v", s)
	}
}

// TestLoginLeavesATraceBeforeItIsSent: node A logs in and dies before its
// result is stored; node B, active too for a moment (it was paused past
// its HA lock's time to live while A took over, and has not yet noticed),
// ticks a second later. Nothing in storage would tell B of A's login, and
// B would log in again within the 10 s floor, unless A stored a marker
// before its login, as before a refresh. Found by the simulation (seed 658).
// A's login reaches Teletracker and only its result's Put fails: without
// the marker, B's tick sends a second.
func TestLoginLeavesATraceBeforeItIsSent(t *testing.T) {
	e := newTestEnv(t)
	nodeB, before := loginLostAfterItsMarker(t, e)
	if n := e.fake.Stats().LoginCalls - before; n != 1 {
		t.Fatalf("node A sent %d logins: want 1, its result lost", n)
	}
	e.clock.Add(time.Second)
	_ = nodeB.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
	if n := e.fake.Stats().LoginCalls - before; n != 1 {
		t.Fatalf("%d logins within %s of each other, by two nodes: want 1 (the floor is %s)", n, time.Second, minCallInterval)
	}
}

// A login's marker is no refresh's: the refresh token it stands beside was
// already refused, and stays so. Once the operator takes the password away
// (password=""), the next tick after the marker's wait must not send that
// refresh token (spent: a theft detector's signal), and status says
// reauth_required, not degraded.
func TestLoginMarkerWithoutPasswordSendsNoSpentRefreshToken(t *testing.T) {
	e := newTestEnv(t)
	nodeB, _ := loginLostAfterItsMarker(t, e)
	if r := e.stored(); r.State != stateNeedLogin || r.InFlightAt.IsZero() {
		t.Fatalf("a login's marker stored state %q, in_flight_at %v: want need_login, and when it was sent", r.State, r.InFlightAt)
	}
	if resp, err := e.request(logical.UpdateOperation, e.path("config"), map[string]interface{}{"password": ""}); err != nil || resp.IsError() {
		t.Fatalf("taking the password away: %v %v", resp, err)
	}
	refreshes := e.fake.Stats().RefreshCalls
	e.clock.Add(time.Minute) // past the marker's wait
	_ = nodeB.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
	if n := e.fake.Stats().RefreshCalls - refreshes; n != 0 {
		t.Fatalf("%d refreshes with the refused refresh token after a login's marker", n)
	}
	if st := e.status(); st["state"] != "reauth_required" {
		t.Fatalf("status %v, want reauth_required", st["state"])
	}
}

// loginLostAfterItsMarker sets up a session whose refresh token was
// refused (the next call logs in), and node A's tick logs in: its login
// reaches Teletracker, and its result is lost (A died). It returns a node B
// that loaded the record before, and the fake's count of logins before A's.
func loginLostAfterItsMarker(t *testing.T, e *testEnv) (nodeB *backend, logins int64) {
	t.Helper()
	g := newGate(t, e)
	e.configure(map[string]interface{}{"base_url": g.url})
	e.clock.Add(time.Minute)
	r := e.stored()
	r.State = stateNeedLogin // the refresh token was refused: the next call logs in
	e.store(r)
	nodeA, nodeB := restart(t, e), restart(t, e)
	t.Cleanup(func() { nodeB.Cleanup(context.Background()) }) // A is dead: it stores nothing more
	logins = e.fake.Stats().LoginCalls
	g.close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = nodeA.periodicFunc(context.Background(), &logical.Request{Storage: e.storage})
	}()
	<-g.arrived // A's login is sent (and its marker, if any, stored)
	e.storage.failPuts.Store(-1)
	g.open()
	<-done
	e.storage.failPuts.Store(0)
	return nodeB, logins
}

// The floor runs from a call's answer: after a rotate whose answer took
// 5 s, another 6 s later waits, so that Teletracker sees the calls 10 s
// apart however long the first took to arrive.
func TestFloorRunsFromTheAnswer(t *testing.T) {
	e := newTestEnv(t)
	g := newGate(t, e)
	e.configure(map[string]interface{}{"base_url": g.url})
	e.clock.Add(time.Minute)
	g.close()
	done := make(chan struct{})
	go func() { defer close(done); _, _ = e.request(logical.UpdateOperation, e.path("rotate"), nil) }()
	<-g.arrived
	e.clock.Add(5 * time.Second) // the answer takes 5 s
	g.open()
	<-done
	e.clock.Add(6 * time.Second)
	if resp, err := e.request(logical.UpdateOperation, e.path("rotate"), nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("a rotate 6 s after the last answer (11 s after its call began): %v %v, want 429", resp, err)
	}
}

package teletracker

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

func intp(n int) *int { return &n }

// upstreamFaults is the fault matrix's upstream half: each fault hits the
// first refresh once, and state is what status says right after.
var upstreamFaults = []struct {
	name  string
	fault fakett.Fault
	skew  time.Duration // set on the fake instead of a fault
	state string
	login bool // the engine is expected to log in again
}{
	{name: "400", fault: fakett.Fault{Status: 400}, state: stateHealthy, login: true},
	{name: "401", fault: fakett.Fault{Status: 401}, state: stateHealthy, login: true},
	{name: "403", fault: fakett.Fault{Status: 403}, state: stateHealthy, login: true},
	{name: "404", fault: fakett.Fault{Status: 404}, state: stateDegraded},
	{name: "500", fault: fakett.Fault{Status: 500}, state: stateDegraded},
	{name: "502", fault: fakett.Fault{Status: 502}, state: stateDegraded},
	{name: "503", fault: fakett.Fault{Status: 503}, state: stateDegraded},
	{name: "504", fault: fakett.Fault{Status: 504}, state: stateDegraded},
	{name: "429 with Retry-After", fault: fakett.Fault{Status: 429, RetryAfter: "240"}, state: stateDegraded},
	{name: "hang past timeout", fault: fakett.Fault{Delay: 3 * time.Second}, state: stateDegraded},
	{name: "connection reset", fault: fakett.Fault{Reset: true}, state: stateDegraded},
	{name: "malformed JSON", fault: fakett.Fault{Body: `{"success":true,"token":`}, state: stateHealthy, login: true},
	{name: "success false", fault: fakett.Fault{Body: `{"success":false,"error":"try later"}`}, state: stateDegraded},
	{name: "missing token", fault: fakett.Fault{Omit: []string{"token"}}, state: stateDegraded},
	{name: "missing refresh token", fault: fakett.Fault{Omit: []string{"refreshToken"}}, state: stateHealthy, login: true},
	{name: "missing expirations", fault: fakett.Fault{Omit: []string{"tokenExpiration", "refreshTokenExpiration"}}, state: stateHealthy},
	{name: "zero lifetime", fault: fakett.Fault{Lifetime: intp(0)}, state: stateDegraded},
	{name: "negative lifetime", fault: fakett.Fault{Lifetime: intp(-3600)}, state: stateDegraded},
	{name: "huge lifetime", fault: fakett.Fault{Lifetime: intp(1 << 40)}, state: stateDegraded},
	{name: "2 MiB body", fault: fakett.Fault{Body: `{"success":true,"padding":"` + strings.Repeat("x", 2<<20) + `"}`}, state: stateHealthy, login: true},
	{name: "2 MiB body, token spent", fault: fakett.Fault{PadBytes: 2 << 20}, state: stateHealthy, login: true},
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
		held := e.b.unsaved.Load()
		if held == nil {
			held = e.stored()
		}
		if held != nil && held.Token != "" && e.clock.Now().Before(held.expiresAt()) {
			e.t.Fatalf("read failed while a valid token exists: %v %v", err, resp)
		}
		return
	}
	if tok := resp.Data["token"].(string); !e.fake.Live(tok) {
		e.t.Fatalf("served a token the fake does not accept (expires_at %v, now %v)", resp.Data["expires_at"], e.clock.Now())
	}
}

// wantRateBound checks the fake's record of refresh calls: never two within
// minRefreshInterval, and, when the first call failed, the next one at
// least minRetryInterval later.
func (e *testEnv) wantRateBound(firstFailed bool) {
	e.t.Helper()
	times := e.fake.Stats().RefreshCallTimes
	for i := 1; i < len(times); i++ {
		gap := times[i].Sub(times[i-1])
		if gap < minRefreshInterval || (i == 1 && firstFailed && gap < minRetryInterval) {
			e.t.Fatalf("refresh calls %d and %d are %v apart", i-1, i, gap)
		}
	}
}

func TestRejectedRefreshWithPasswordLogsIn(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.RevokeAll()
	e.clock.Add(50 * time.Minute)
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
	e.wantState(stateReauthRequired, "stored password both rejected")
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
		for i := 0; i < 100; i++ {
			d := backoff(n)
			if d < base || d > base+base/4 {
				t.Fatalf("backoff(%d) = %v, want [%v, %v]", n, d, base, base+base/4)
			}
		}
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
// stored makes the next tick try the refresh token once at once.
func TestInterruptedRefresh(t *testing.T) {
	cases := []struct {
		name     string
		password bool
		spent    bool
		state    string
	}{
		{"token not spent", true, false, stateHealthy},
		{"spent, password stored", true, true, stateHealthy},
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
				e.b = restart(t, e)
			} else {
				e.markInterrupted()
			}
			if e.stored().Pending == nil {
				t.Fatal("no marker stored")
			}
			e.clock.Add(time.Minute)
			_ = e.tick()
			st := e.status()
			if st["state"] != tc.state {
				t.Fatalf("state %v", st)
			}
			if tc.state == stateReauthRequired && !strings.Contains(st["last_error"].(string), "was interrupted") {
				t.Fatalf("last_error does not say a refresh was interrupted: %v", st["last_error"])
			}
			if e.stored().Pending != nil {
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
	b := newBackend()
	b.now = e.clock.Now
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
	if _, err := e.b.ensure(context.Background(), e.storage, triggerTick); !errors.Is(err, errNotStored) {
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
	if s := e.stored(); s.Token != tok || s.Pending != nil || e.status()["unsaved"] != false {
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
	if !strings.Contains(text.String(), "[redacted]") {
		t.Fatal("the test did not exercise redaction")
	}
}

func BenchmarkRotationDecision(b *testing.B) {
	be := newBackend()
	be.now = func() time.Time { return testStart }
	s := &session{Lifetime: time.Hour, ObtainedAt: testStart.Add(-30 * time.Minute), LastRefreshAt: testStart.Add(-30 * time.Minute)}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if s.wants(testStart, defaultRefreshMargin, triggerTick) || testStart.Before(be.earliestCall(testStart, s, triggerTick, false)) {
			b.Fatal("unexpected decision")
		}
	}
}

// TestNoRefreshWithin30sOfFailure: a rejected refresh is followed at once by
// a login, but the next /auth/refresh still waits 30 s from the failure,
// however short the token lifetime.
func TestNoRefreshWithin30sOfFailure(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 20 * time.Second }))
	e.configure(nil)
	e.fake.RevokeAll()
	e.clock.Add(10 * time.Second)
	e.readLive() // due: the refresh is rejected, the login succeeds
	if st := e.fake.Stats(); st.RefreshCalls != 1 || st.LoginCalls != 2 {
		t.Fatalf("%+v", st)
	}
	for i := 0; i < 290; i++ {
		e.clock.Add(100 * time.Millisecond)
		_, _ = e.request(logical.ReadOperation, "token", nil)
		_, _ = e.request(logical.UpdateOperation, "rotate", nil)
	}
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatalf("%d refresh calls within 30 s of the failure", got)
	}
	e.clock.Add(time.Second)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
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
	if s := e.stored(); s.Pending == nil || s.ConsecutiveFailures != 1 {
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
	if _, err := e.b.ensure(ctx, e.storage, triggerRotate); err != nil {
		t.Fatal(err)
	}
	if s := e.stored(); s.Generation != gen+1 || s.Pending != nil {
		t.Fatalf("refresh result not stored: %+v", s)
	}
}

// TestFloorHeldInMemory: the 10 s floor holds from memory even when the
// stored record of the last refresh is lost.
func TestFloorHeldInMemory(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
	s := e.stored()
	s.LastRefreshAt = time.Time{}
	if err := putSession(context.Background(), e.storage, s); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(5 * time.Second)
	if resp, err := e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
}

// TestClockGoingBackDoesNotStopRefreshes: a clock set back an hour must not
// block refreshes for an hour, nor allow a burst.
func TestClockGoingBackDoesNotStopRefreshes(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
	e.clock.Add(-time.Hour)
	if resp, err := e.request(logical.UpdateOperation, "rotate", nil); err != nil || resp.IsError() {
		t.Fatalf("refresh blocked after the clock went back: %v %v", resp, err)
	}
	if resp, err := e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("a second refresh at once: resp=%v err=%v", resp, err)
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
	if e.b.unsaved.Load() == nil {
		t.Fatal("setup: no session held")
	}
	e.mustRequest(logical.DeleteOperation, "config", nil)
	e.configure(nil)
	_ = e.tick()
	if s := e.stored(); s.Generation != 1 || e.b.unsaved.Load() != nil {
		t.Fatalf("the deleted session came back: generation %d", s.Generation)
	}
}

// TestSecondUnknownOutcomeLogsIn: a refresh token whose fate was unknown
// twice is not sent a third time; with a password the engine logs in.
func TestSecondUnknownOutcomeLogsIn(t *testing.T) {
	e := newTestEnv(t)
	e.configure(map[string]interface{}{"request_timeout": 1})
	e.fake.Fail("/auth/refresh", 2, fakett.Fault{Delay: 3 * time.Second, Spend: true})
	e.clock.Add(49 * time.Minute)
	for i := 0; i < 6; i++ {
		_ = e.tick()
		e.clock.Add(2 * time.Minute)
	}
	st := e.fake.Stats()
	if st.RefreshCalls != 2 || st.LoginCalls != 2 || e.status()["state"] != stateHealthy {
		t.Fatalf("%+v %v: want two refresh calls, then a login", st, e.status())
	}
	if !strings.Contains(e.status()["last_error"].(string), "was interrupted") {
		t.Fatalf("last_error %v", e.status()["last_error"])
	}
	e.readLive()
}

// TestConfigWriteFailureCountsForRateLimits: a config write's failed call
// holds back the next automatic call like any other failure.
func TestConfigWriteFailureCountsForRateLimits(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.RevokeAll()
	e.clock.Add(49 * time.Minute)
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: 503})
	if resp, err := e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"}); statusOf(resp, err) != http.StatusBadGateway {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	calls := e.fake.Stats().RefreshCalls + e.fake.Stats().LoginCalls
	e.clock.Add(20 * time.Second)
	_ = e.tick()
	if got := e.fake.Stats().RefreshCalls + e.fake.Stats().LoginCalls; got != calls {
		t.Fatalf("a tick 20 s after a failed config write called Teletracker")
	}
	e.clock.Add(15 * time.Second)
	_ = e.tick()
	if e.status()["state"] != stateHealthy {
		t.Fatalf("%v", e.status())
	}
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
	if e.b.unsaved.Load() == nil {
		t.Fatal("setup: no session held")
	}
	e.storage.failPuts.Store(1) // the held session's store fails once more
	e.clock.Add(time.Minute)
	seed, _ := e.fake.NewSession("demo")
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"refresh_token": seed})
	seeded := e.stored()
	if e.b.unsaved.Load() != nil {
		t.Fatal("the superseded session is still held")
	}
	e.clock.Add(time.Minute)
	_ = e.tick()
	if s := e.stored(); s.RefreshToken != seeded.RefreshToken {
		t.Fatal("the seeded session was overwritten")
	}
}

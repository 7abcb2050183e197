package teletracker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

func TestTokenRead(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	resp := e.readToken()
	d := resp.Data
	tok, _ := d["token"].(string)
	if !e.fake.Live(tok) {
		t.Fatalf("token %q is not live on the fake", tok)
	}
	want := map[string]interface{}{
		"token_type":          "Bearer",
		"expires_at":          testStart.Add(time.Hour).Format(time.RFC3339),
		"last_vault_rotation": testStart.Format(time.RFC3339),
		"next_vault_rotation": testStart.Add(50 * time.Minute).Format(time.RFC3339),
		"ttl":                 int64(50 * 60),
		"rotation_period":     int64(50 * 60),
	}
	for k, v := range want {
		if d[k] != v {
			t.Errorf("%s = %v (%T), want %v", k, d[k], d[k], v)
		}
	}
	if len(d) != 7 {
		t.Errorf("token read returned %d fields: %v", len(d), d)
	}
	if resp.Secret != nil || len(resp.Warnings) != 0 {
		t.Errorf("lease %v warnings %v, want none", resp.Secret, resp.Warnings)
	}
	// No secret but the bearer token, in any response: not the refresh
	// token, the session guid or the password.
	secrets := append(e.fake.IssuedSecrets(), "demo-password")
	if len(secrets) != 4 {
		t.Fatalf("setup: %d secrets issued", len(secrets))
	}
	for _, path := range []string{"token", "status", "config"} {
		text := fmt.Sprint(e.mustRequest(logical.ReadOperation, path, nil).Data)
		for _, secret := range secrets {
			if secret != tok && strings.Contains(text, secret) {
				t.Errorf("%s response holds a secret", path)
			}
		}
	}
}

func TestTokenReadUnconfigured(t *testing.T) {
	e := newTestEnv(t)
	e.wantUnconfigured(e.request(logical.ReadOperation, "token", nil))
}

func TestTokenTTLCountsDown(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(20*time.Minute + 500*time.Millisecond)
	if got := e.readToken().Data["ttl"]; got != int64(29*60+59) {
		t.Fatalf("ttl %v", got)
	}
}

// TestRotationWhenDueNotBefore: ticks leave the token alone until the tick
// a tick and its spread (up to half the margin) before it enters its
// margin, then replace it once.
func TestRotationWhenDueNotBefore(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil) // lifetime 1h, margin 10m: due at 50m, spread up to 5m
	first := e.readToken().Data["token"]
	from := e.stored().timeline().replaceFrom
	refreshed := 0
	for i := 1; i <= 49; i++ {
		e.clock.Add(time.Minute)
		if err := e.tick(); err != nil {
			t.Fatal(err)
		}
		if e.fake.Stats().RefreshCalls > 0 && refreshed == 0 {
			refreshed = i
		}
	}
	// The first tick at or after replaceFrom: 50m less a tick and the spread.
	if want := int((from.Sub(testStart) + time.Minute - 1) / time.Minute); refreshed != want || refreshed < 44 {
		t.Fatalf("refreshed at %d m, want %d m (replace from %v)", refreshed, want, from)
	}
	if got := e.fake.Stats().Refreshes; got != 1 {
		t.Fatalf("refreshes %d by 49m, want 1", got)
	}
	d := e.readToken().Data
	if d["token"] == first || !e.fake.Live(d["token"].(string)) {
		t.Fatal("read did not serve the new live token")
	}
	if d["last_vault_rotation"] != testStart.Add(time.Duration(refreshed)*time.Minute).Format(time.RFC3339) {
		t.Fatalf("last_vault_rotation %v", d["last_vault_rotation"])
	}
	if e.status()["refresh_count"] != int64(1) {
		t.Fatalf("status %v", e.status())
	}
	e.wantNoReuse()
}

// TestReadRefreshesWhenTickMissed: with no tick, the read that finds the token
// due refreshes it synchronously.
func TestReadRefreshesWhenTickMissed(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	first := e.readToken().Data["token"]
	e.clock.Add(50 * time.Minute)
	d := e.readToken().Data
	if d["token"] == first || e.fake.Stats().Refreshes != 1 {
		t.Fatalf("read did not refresh: %v", e.fake.Stats())
	}
}

func TestSmallLifetimeUsesHalf(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 10 * time.Minute }))
	e.configure(nil) // margin 10m is over half of 10m: half is used
	d := e.readToken().Data
	if d["rotation_period"] != int64(300) || d["next_vault_rotation"] != testStart.Add(5*time.Minute).Format(time.RFC3339) {
		t.Fatalf("%v", d)
	}
}

// TestSingleFlight: hundreds of concurrent reads of a due token cause exactly
// one refresh, and no refresh token is sent twice.
func TestSingleFlight(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.readToken()
	e.clock.Add(55 * time.Minute)
	const readers = 500
	var wg sync.WaitGroup
	tokens := make([]string, readers)
	errs := make([]error, readers)
	start := make(chan struct{})
	for i := 0; i < readers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
				Operation: logical.ReadOperation, Path: e.path("token"), Storage: e.storage,
			})
			if err == nil && resp.IsError() {
				err = resp.Error()
			}
			errs[i] = err
			if err == nil {
				tokens[i] = resp.Data["token"].(string)
			}
		}(i)
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		if !e.fake.Live(tokens[i]) {
			t.Fatalf("reader %d got a dead token", i)
		}
	}
	st := e.fake.Stats()
	if st.RefreshCalls != 1 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("refresh calls %d, re-used %d; want 1 and 0", st.RefreshCalls, st.ReusedRefreshTokens)
	}
}

// TestReadersDoNotWaitForRefresh: while one caller refreshes a token that is
// due but still valid, other reads are answered at once with that token.
func TestReadersDoNotWaitForRefresh(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	old := e.readToken().Data["token"]
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: time.Second})
	e.clock.Add(55 * time.Minute)
	done := make(chan *logical.Response)
	go func() { done <- e.readToken() }()
	waitUntil(t, "the refresh started", func() bool { return e.fake.Stats().RefreshCalls > 0 })
	for i := 0; i < 100; i++ {
		if got := e.readToken().Data["token"]; got != old {
			t.Fatalf("read %d during the refresh got %v, want the still-valid token at once", i, got)
		}
	}
	if got := (<-done).Data["token"]; got == old || e.fake.Stats().Refreshes != 1 {
		t.Fatal("the refreshing read did not get the new token")
	}
}

// TestConcurrentTicksRotatesAndReads: ticks, rotations and reads racing
// each other never send a refresh token twice.
func TestConcurrentTicksRotatesAndReads(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	var wg sync.WaitGroup
	for round := 0; round < 20; round++ {
		e.clock.Add(11 * time.Second)
		for i := 0; i < 10; i++ {
			wg.Add(3)
			go func() { defer wg.Done(); _ = e.tick() }()
			go func() {
				defer wg.Done()
				_, _ = e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: e.path("rotate"), Storage: e.storage})
			}()
			go func() {
				defer wg.Done()
				_, _ = e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.ReadOperation, Path: e.path("token"), Storage: e.storage})
			}()
		}
		wg.Wait()
	}
	st := e.fake.Stats()
	if st.Refreshes != 20 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("refreshes %d (want one per 11 s round: 20), re-used %d", st.Refreshes, st.ReusedRefreshTokens)
	}
}

func TestExpiredTokenNeverServed(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.readToken()
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	e.clock.Add(61 * time.Minute)
	resp, err := e.request(logical.ReadOperation, "token", nil)
	if statusOf(resp, err) != http.StatusBadGateway {
		t.Fatalf("resp=%v err=%v, want 502", resp, err)
	}
	msg := err.Error()
	for _, want := range []string{"expires at " + testStart.Add(time.Hour).Format(time.RFC3339), "HTTP 503", "failed 1 times since"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	// Reads inside the backoff fail from memory without calling Teletracker.
	for i := 0; i < 100; i++ {
		if _, err := e.request(logical.ReadOperation, "token", nil); err == nil {
			t.Fatal("an expired token was served")
		}
	}
	if got := e.fake.Stats().RefreshCalls; got != 1 {
		t.Fatalf("refresh calls %d, want 1", got)
	}
}

func TestDegradedServesValidTokenWithWarning(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	first := e.readToken().Data["token"]
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusInternalServerError})
	e.clock.Add(50 * time.Minute)
	resp := e.readToken()
	if resp.Data["token"] != first || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "HTTP 500") {
		t.Fatalf("data %v warnings %v", resp.Data, resp.Warnings)
	}
	// ttl points at the next attempt, never past expiry.
	ttl := resp.Data["ttl"].(int64)
	if ttl < 30 || ttl > int64(10*60) {
		t.Fatalf("ttl %d", ttl)
	}
	if s := e.status(); s["state"] != stateDegraded || s["consecutive_failures"] != 1 || s["next_attempt_at"] == "" {
		t.Fatalf("status %v", s)
	}
}

// TestStandbyReadReturnsReadOnly: a performance standby serves a valid token
// from storage, but a due one makes Vault forward the read (the standby's
// clock may be behind the active node's).
func TestStandbyReadReturnsReadOnly(t *testing.T) {
	active := newTestEnv(t)
	active.configure(nil)
	standby := newTestEnv(t, withReplicationState(consts.ReplicationPerformanceStandby))
	standby.storage.Storage = active.storage.Storage
	standby.b.now = active.clock.Now

	if got := standby.readToken().Data["token"]; got != active.readToken().Data["token"] {
		t.Fatal("standby served another token")
	}
	active.clock.Add(55 * time.Minute)
	_, err := standby.request(logical.ReadOperation, "token", nil)
	if !errors.Is(err, logical.ErrReadOnly) {
		t.Fatalf("err %v, want ErrReadOnly", err)
	}
	if err := standby.tick(); err != nil {
		t.Fatal(err)
	}
	if st := active.fake.Stats(); st.RefreshCalls != 0 {
		t.Fatalf("a standby called Teletracker: %+v", st)
	}
	for _, path := range []string{"rotate", "config"} {
		if _, err := standby.request(logical.UpdateOperation, path, map[string]interface{}{}); !errors.Is(err, logical.ErrReadOnly) {
			t.Fatalf("%s on standby: %v, want forwarding", path, err)
		}
	}
}

// TestSkewedServerClock: expiry is computed on Vault's clock whatever the
// server's clock says, and the refresh token's expiry is the server's own
// difference, so skew cancels.
func TestSkewedServerClock(t *testing.T) {
	for _, skew := range []time.Duration{-5 * time.Hour, 7 * time.Hour, -24 * time.Hour, 24 * time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			e := newTestEnv(t, withFake(func(o *fakett.Options) { o.Skew = skew }))
			e.configure(nil)
			if got := e.readToken().Data["expires_at"]; got != testStart.Add(time.Hour).Format(time.RFC3339) {
				t.Fatalf("expires_at %v", got)
			}
			if got := e.status()["refresh_token_expires_at"]; got != testStart.Add(30*24*time.Hour).Format(time.RFC3339) {
				t.Fatalf("refresh_token_expires_at %v", got)
			}
			e.clock.Add(49 * time.Minute)
			if err := e.tick(); err != nil || e.fake.Stats().Refreshes != 1 {
				t.Fatalf("tick: %v %+v", err, e.fake.Stats())
			}
		})
	}
}

// TestRefreshBeforeRefreshTokenExpires: a long-lived bearer token does not
// let the refresh token lapse.
func TestRefreshBeforeRefreshTokenExpires(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) {
		o.TokenLifetime = 20 * time.Hour
		o.RefreshLifetime = 2 * time.Hour
	}))
	e.configure(nil)
	for i := 0; i < 103; i++ { // to 1h43m: the refresh token has 17m left
		e.clock.Add(time.Minute)
		if err := e.tick(); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.fake.Stats().Refreshes; got != 0 {
		t.Fatalf("refreshed early: %d", got)
	}
	for i := 0; i < 6; i++ { // to 1h49m: within a tick, its spread and the margin
		e.clock.Add(time.Minute)
		if err := e.tick(); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.fake.Stats().Refreshes; got != 1 {
		t.Fatalf("refresh token about to expire, refreshes %d", got)
	}
}

func BenchmarkTokenRead(b *testing.B) {
	e := newTestEnv(b)
	e.configure(nil)
	req := &logical.Request{Operation: logical.ReadOperation, Path: e.path("token"), Storage: e.storage}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := e.b.HandleRequest(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTokenReadParallel(b *testing.B) {
	e := newTestEnv(b)
	e.configure(nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := &logical.Request{Operation: logical.ReadOperation, Path: e.path("token"), Storage: e.storage}
		for pb.Next() {
			if _, err := e.b.HandleRequest(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestExpiredReadsAnsweredFromMemory: once the token has expired and the
// next attempt is not yet allowed, reads fail without the lock or storage.
func TestExpiredReadsAnsweredFromMemory(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	e.clock.Add(61 * time.Minute)
	_, _ = e.request(logical.ReadOperation, "token", nil)
	gets := e.storage.gets.Load()
	for i := 0; i < 100; i++ {
		if _, err := e.request(logical.ReadOperation, "token", nil); err == nil {
			t.Fatal("an expired token was served")
		}
	}
	if n := e.storage.gets.Load() - gets; n != 0 {
		t.Fatalf("100 failing reads made %d storage reads", n)
	}
	if s := e.status(); s["token_valid"] != false || s["state"] != stateDegraded {
		t.Fatalf("%v", s)
	}
}

// TestQueuedReadersDoNotRereadStorage: readers that waited on the lock while
// another refreshed are answered from the new copy.
func TestQueuedReadersDoNotRereadStorage(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.readToken()
	e.clock.Add(55 * time.Minute)
	gets := e.storage.gets.Load()
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.ReadOperation, Path: e.path("token"), Storage: e.storage})
		}()
	}
	wg.Wait()
	if n := e.storage.gets.Load() - gets; n > 4 {
		t.Fatalf("200 reads around one refresh made %d storage reads", n)
	}
}

// TestTokenReadWithoutToken: a mount whose session is gone and that holds
// no password says so, and a read says why no token is served.
func TestTokenReadWithoutToken(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": ""})
	r := e.stored()
	r.State, r.Token, r.RefreshToken, r.LastError = stateNeedLogin, "", "", "the refresh token was refused"
	e.store(r)
	e.b.invalidate(context.Background(), accountKey(e.name))
	resp, err := e.request(logical.ReadOperation, "token", nil)
	if statusOf(resp, err) != http.StatusBadGateway || !strings.Contains(err.Error(), "no Teletracker token is held: the session needs re-authentication") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	if s := e.status(); s["state"] != stateReauthRequired || s["token_valid"] != false {
		t.Fatalf("%v", s)
	}
	if got := e.fake.Stats().LoginCalls; got != 1 {
		t.Fatalf("a login was sent without a password: %d", got-1)
	}
}

// countingSystemView counts calls back to Vault for the replication state.
type countingSystemView struct {
	*logical.StaticSystemView
	calls atomic.Int64
}

func (c *countingSystemView) ReplicationState() consts.ReplicationState {
	c.calls.Add(1)
	return c.StaticSystemView.ReplicationState()
}

// TestTokenReadSkipsFrameworkWork: a token read served from memory makes no
// call back to Vault (the framework asks for the replication state on every
// request it routes).
func TestTokenReadSkipsFrameworkWork(t *testing.T) {
	conf := logical.TestBackendConfig()
	sys := &countingSystemView{StaticSystemView: conf.System.(*logical.StaticSystemView)}
	conf.System = sys
	conf.StorageView = &logical.InmemStorage{}
	b := newBackend(newProcess(DefaultCallsPerSecond))
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fakett.New(fakett.Options{}))
	defer srv.Close()
	e := &testEnv{name: testAccount}
	if _, err := b.HandleRequest(context.Background(), &logical.Request{Operation: logical.UpdateOperation, Path: e.path("config"), Storage: conf.StorageView,
		Data: map[string]interface{}{"base_url": srv.URL, "username": "demo", "password": "demo-password"}}); err != nil {
		t.Fatal(err)
	}
	req := &logical.Request{Operation: logical.ReadOperation, Path: e.path("token"), Storage: conf.StorageView}
	if _, err := b.HandleRequest(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	before := sys.calls.Load()
	for i := 0; i < 100; i++ {
		if resp, err := b.HandleRequest(context.Background(), req); err != nil || resp.Data["token"] == "" {
			t.Fatal(resp, err)
		}
	}
	if n := sys.calls.Load() - before; n != 0 {
		t.Fatalf("100 token reads called back to Vault %d times", n)
	}
}

// TestReadWithoutCopyDoesNotWait: with no copy in memory (after a restart or
// an Invalidate) and the refresh lock held by a slow caller, a read of a
// valid stored token is answered from storage instead of waiting.
func TestReadWithoutCopyDoesNotWait(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	want := e.readToken().Data["token"]
	e.b.invalidate(context.Background(), accountKey(e.name))
	e.a().refreshMu.Lock() // a slow refresh, say
	got := make(chan interface{}, 1)
	go func() { got <- e.readToken().Data["token"] }()
	select {
	case tok := <-got:
		e.a().refreshMu.Unlock()
		if tok != want {
			t.Errorf("read %v, want the stored token", tok)
		}
	case <-time.After(10 * time.Second):
		e.a().refreshMu.Unlock()
		<-got
		t.Error("the read waited for the refresh lock")
	}
}

// TestStorageHiccupServesValidToken: when the token is due and a read that
// would replace it cannot read storage, the token, still valid for minutes,
// is served with a warning.
func TestStorageHiccupServesValidToken(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	want := e.readToken().Data["token"]
	e.clock.Add(55 * time.Minute)
	e.storage.failGets.Store(true)
	resp := e.readToken()
	e.storage.failGets.Store(false)
	if resp.Data["token"] != want || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], errStorageDown.Error()) {
		t.Fatalf("data %v warnings %v", resp.Data, resp.Warnings)
	}
	if got := e.fake.Stats().RefreshCalls; got != 0 {
		t.Fatalf("refresh calls %d without a stored record", got)
	}
}

// TestOutageServesTokenToItsLastSeconds: while Teletracker is down, reads
// are served the token Teletracker still accepts until serveGuard before it
// expires (80 s tokens, 40 s margin, reads every 100 ms, ticks each minute).
func TestOutageServesTokenToItsLastSeconds(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 80 * time.Second }))
	e.configure(map[string]interface{}{"refresh_margin": "40s"})
	tok := e.readToken().Data["token"].(string)
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	e.fake.Fail("/auth/login", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	failed, lastServed := 0, time.Duration(0)
	for step := time.Duration(0); step < 80*time.Second; step += 100 * time.Millisecond {
		if step%time.Minute == 0 {
			_ = e.tick()
		}
		resp, err := e.request(logical.ReadOperation, "token", nil)
		switch {
		case err == nil && !resp.IsError():
			if resp.Data["token"] != tok || !e.fake.Live(tok) {
				t.Fatalf("at %v a token Teletracker refuses was served", step)
			}
			lastServed = step
		default:
			failed++
		}
		e.clock.Add(100 * time.Millisecond)
	}
	if lastServed < 80*time.Second-serveGuard-100*time.Millisecond || failed != int(serveGuard/(100*time.Millisecond)) {
		t.Fatalf("the token was served until %v of its 80 s, and %d reads failed; want until %v, and only those after", lastServed, failed, 80*time.Second-serveGuard)
	}
}

// TestSmallMarginNeverWithholds: with a refresh_margin of a second and no
// ticks at all (a node just made active, reads alone), reads replace the
// token before it stops being served: none fails.
func TestSmallMarginNeverWithholds(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 5 * time.Minute }))
	e.configure(map[string]interface{}{"refresh_margin": "1s"})
	for step := 0; step < 20*60; step++ { // 20 minutes of a read a second
		resp, err := e.request(logical.ReadOperation, "token", nil)
		if err != nil || resp.IsError() {
			t.Fatalf("read %d s in failed though Teletracker answers: %v %v", step, resp, err)
		}
		if !e.fake.Live(resp.Data["token"].(string)) {
			t.Fatalf("read %d s in served a token Teletracker refuses", step)
		}
		e.clock.Add(time.Second)
	}
	if st := e.fake.Stats(); st.Refreshes < 3 || st.Refreshes > 5 {
		t.Fatalf("%d refreshes in 20 minutes of 5-minute tokens", st.Refreshes)
	}
	e.wantNoReuse()
}

// TestMinTTL: a read with min_ttl is served a token with at least that
// long left, replacing one with less first (one call for many readers),
// and fails, saying why, when none can be had.
func TestMinTTL(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	first := e.readToken().Data["token"]
	e.clock.Add(40 * time.Minute) // 20 minutes left
	if d := e.mustRequest(logical.ReadOperation, "token", map[string]interface{}{"min_ttl": "15m"}).Data; d["token"] != first {
		t.Fatal("a token with 20 minutes left was replaced for a min_ttl of 15 minutes")
	}
	var wg sync.WaitGroup
	tokens := make([]any, 20)
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := e.request(logical.ReadOperation, "token", map[string]interface{}{"min_ttl": 1800}); err == nil && !resp.IsError() {
				tokens[i] = resp.Data["token"]
			}
		}()
	}
	wg.Wait()
	for _, tok := range tokens {
		if tok == nil || tok == first || tok != tokens[0] {
			t.Fatalf("readers asking for 30 minutes got %v", tokens)
		}
	}
	if st := e.fake.Stats(); st.RefreshCalls != 1 {
		t.Fatalf("%d refresh calls for 20 readers with min_ttl", st.RefreshCalls)
	}
	// Teletracker down: the read fails and says why; a plain read is served.
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	e.clock.Add(45 * time.Minute)
	resp, err := e.request(logical.ReadOperation, "token", map[string]interface{}{"min_ttl": "20m"})
	if statusOf(resp, err) != http.StatusBadGateway || !strings.Contains(err.Error(), "sooner than min_ttl") || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("min_ttl unmet while Teletracker fails: %v %v", resp, err)
	}
	e.readToken()
	for _, bad := range []interface{}{"2h", "soon", -5} {
		resp, err := e.request(logical.ReadOperation, "token", map[string]interface{}{"min_ttl": bad})
		if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "min_ttl") {
			t.Fatalf("min_ttl=%v: %v %v, want 400", bad, resp, err)
		}
	}
	e.wantNoReuse()
}

// A read of a due but served token that the pacer defers publishes a
// snapshot that answers the next reads from memory: they take no lock,
// read no storage and take no turn of the pacer while it is busy.
func TestDeferredDueReadStaysOffStorage(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b.proc.pacer = newPacer(1 / (time.Hour).Seconds())
	holdTurns(e.b.proc.pacer, e.clock.Mono(), 1) // other mounts hold the next turns
	e.clock.Add(55 * time.Minute)                // due for reads (refreshAt 50 min), valid until 59 min
	e.readToken()
	gets := e.storage.gets.Load()
	for i := 0; i < 100; i++ {
		e.readToken()
	}
	if n := e.storage.gets.Load() - gets; n > 1 {
		t.Fatalf("100 reads of a valid token made %d storage reads", n)
	}
}

// TestMinTTLOfWholeLifetimeIsMetOrRefused: a read whose min_ttl no new
// token could meet (the whole lifetime, when every call takes some time) is
// refused with 400 before any call: it never spends a refresh token only to
// fail with 502.
func TestMinTTLOfWholeLifetimeIsMetOrRefused(t *testing.T) {
	e := newTestEnv(t)
	e.b.proc.roundTripper = slowUpstream{clock: e.clock, d: 50 * time.Millisecond}
	e.configure(nil)
	e.clock.Add(time.Minute)
	for i := 0; i < 3; i++ {
		before := e.fake.Stats().Refreshes
		resp, err := e.request(logical.ReadOperation, "token", map[string]interface{}{"min_ttl": "1h"})
		if code := statusOf(resp, err); code != http.StatusOK && code != http.StatusBadRequest {
			t.Fatalf("read %d with min_ttl = lifetime: HTTP %d after %d refresh(es) spent for it: %v",
				i+1, code, e.fake.Stats().Refreshes-before, err)
		}
		e.clock.Add(11 * time.Second)
	}
}

// TestMinTTLLongerThanLifetimeRefusedWithoutCall: a read whose min_ttl is
// longer than the token's lifetime is a 400 with no call to Teletracker,
// also when the node has no snapshot (after an Invalidate, or an
// Initialize whose load failed).
func TestMinTTLLongerThanLifetimeRefusedWithoutCall(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute) // past the floor after the login
	e.b.invalidate(context.Background(), accountKey(e.name))
	resp, err := e.request(logical.ReadOperation, "token", map[string]interface{}{"min_ttl": "2h"})
	if code := statusOf(resp, err); code != http.StatusBadRequest {
		t.Fatalf("min_ttl 2h for 1h tokens: HTTP %d, want 400", code)
	}
	if n := e.fake.Stats().RefreshCalls; n != 0 {
		t.Fatalf("a read refused with 400 first spent %d refresh token(s)", n)
	}
}

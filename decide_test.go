package teletracker

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// TestDecide is the table of when Teletracker is called: every state of the
// record, with the waits that matter, under every trigger.
func TestDecide(t *testing.T) {
	t0 := testStart
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	// A session obtained at t0 (one-hour token, 10 m margin: due at 50 m),
	// its last call at t0; a password is stored.
	base := func() *record {
		return &record{
			Config: config{Username: "u", Password: "pw", RefreshMargin: 10 * time.Minute, RequestTimeout: 10 * time.Second},
			State:  stateReady, Token: "tok", RefreshToken: "rt", Lifetime: time.Hour, ObtainedAt: t0,
			LastCallAt: t0, HoldUntil: at(minCallInterval), NotBefore: at(minCallInterval),
		}
	}
	tick, read, cred, tune := triggerTick, triggerRead, triggerCredential, triggerTune
	const rotate = triggerRotate
	cases := []struct {
		name   string
		change func(r *record)
		now    time.Duration // after t0
		kind   triggerKind
		want   actionKind
		wantAt time.Duration // for actWait
	}{
		// ready, fresh
		{name: "fresh/tick", now: 5 * time.Minute, kind: tick, want: actNothing},
		{name: "fresh/read", now: 5 * time.Minute, kind: read, want: actNothing},
		{name: "fresh/rotate", now: 5 * time.Minute, kind: rotate, want: actRefresh},
		{name: "fresh/rotate inside floor", now: 5 * time.Second, kind: rotate, want: actWait, wantAt: minCallInterval},
		{name: "fresh/credential", now: 5 * time.Minute, kind: cred, want: actRefresh},
		{name: "fresh/tune", now: 5 * time.Minute, kind: tune, want: actNothing},
		// ready, due within the next tick, due, gone
		{name: "due next tick/tick", now: 49*time.Minute + 30*time.Second, kind: tick, want: actRefresh},
		{name: "due next tick/read", now: 49*time.Minute + 30*time.Second, kind: read, want: actNothing},
		{name: "due/read", now: 55 * time.Minute, kind: read, want: actRefresh},
		{name: "due/tune", now: 55 * time.Minute, kind: tune, want: actNothing},
		{name: "expired/read", now: 2 * time.Hour, kind: read, want: actRefresh},
		{name: "no bearer token/read", change: func(r *record) { r.Token = "" }, now: 5 * time.Minute, kind: read, want: actRefresh},
		{name: "no bearer token/rotate", change: func(r *record) { r.Token = "" }, now: 5 * time.Minute, kind: rotate, want: actRefresh},
		// a 15-minute refresh token: renewed by 7m30s (half its life), by the tick before
		{name: "refresh token expiring/tick", change: func(r *record) { r.RefreshTokenExpiresAt = at(15 * time.Minute) },
			now: 6*time.Minute + 30*time.Second, kind: tick, want: actRefresh},
		{name: "refresh token not yet expiring/tick", change: func(r *record) { r.RefreshTokenExpiresAt = at(15 * time.Minute) },
			now: 6 * time.Minute, kind: tick, want: actNothing},
		// a failure is retried by the tick on its backoff, though nothing is due
		{name: "failed rotate/tick", change: func(r *record) {
			r.Failures, r.LastCallAt, r.HoldUntil, r.NotBefore = 1, at(5*time.Minute), at(5*time.Minute+minCallInterval), at(5*time.Minute+40*time.Second)
		}, now: 5*time.Minute + 20*time.Second, kind: tick, want: actWait, wantAt: 5*time.Minute + 40*time.Second},
		{name: "failed rotate, backoff over/tick", change: func(r *record) {
			r.Failures, r.LastCallAt, r.HoldUntil, r.NotBefore = 1, at(5*time.Minute), at(5*time.Minute+minCallInterval), at(5*time.Minute+40*time.Second)
		}, now: 6 * time.Minute, kind: tick, want: actRefresh},
		{name: "failed rotate/read", change: func(r *record) {
			r.Failures, r.LastCallAt, r.HoldUntil, r.NotBefore = 1, at(5*time.Minute), at(5*time.Minute+minCallInterval), at(5*time.Minute+40*time.Second)
		}, now: 6 * time.Minute, kind: read, want: actNothing},
		{name: "refresh token expiring/read", change: func(r *record) { r.RefreshTokenExpiresAt = at(15 * time.Minute) },
			now: 5 * time.Minute, kind: read, want: actNothing},
		{name: "the floor/tick", change: func(r *record) { r.ObtainedAt = at(-55 * time.Minute) },
			now: 5 * time.Second, kind: tick, want: actWait, wantAt: minCallInterval},
		// backing off after failures: the engine waits, an operator does not
		{name: "backoff/tick", change: backingOff(at), now: 55*time.Minute + 20*time.Second, kind: tick, want: actWait, wantAt: 56 * time.Minute},
		{name: "backoff/read", change: backingOff(at), now: 55*time.Minute + 20*time.Second, kind: read, want: actWait, wantAt: 56 * time.Minute},
		{name: "backoff/rotate", change: backingOff(at), now: 55*time.Minute + 20*time.Second, kind: rotate, want: actRefresh},
		{name: "backoff/credential", change: backingOff(at), now: 55*time.Minute + 20*time.Second, kind: cred, want: actRefresh},
		{name: "backoff over/tick", change: backingOff(at), now: 56 * time.Minute, kind: tick, want: actRefresh},
		// Retry-After binds everyone
		{name: "retry-after/rotate", change: retryAfter(at), now: 55 * time.Minute, kind: rotate, want: actWait, wantAt: 60 * time.Minute},
		{name: "retry-after/credential", change: retryAfter(at), now: 55 * time.Minute, kind: cred, want: actWait, wantAt: 60 * time.Minute},
		{name: "retry-after/read", change: retryAfter(at), now: 55 * time.Minute, kind: read, want: actWait, wantAt: 60 * time.Minute},
		// a clock set back: waits set in its future are over
		{name: "clock went back/read", change: func(r *record) {
			r.ObtainedAt, r.LastCallAt, r.HoldUntil, r.NotBefore = at(-time.Hour), at(57*time.Minute), at(90*time.Minute), at(90*time.Minute)
		}, now: 55 * time.Minute, kind: read, want: actRefresh},
		{name: "clock skew within a minute/read", change: func(r *record) {
			r.ObtainedAt, r.LastCallAt, r.HoldUntil, r.NotBefore = at(-time.Hour), at(55*time.Minute+50*time.Second), at(56*time.Minute), at(56*time.Minute)
		}, now: 55 * time.Minute, kind: read, want: actWait, wantAt: 56 * time.Minute},
		{name: "token of unknown age/read", change: func(r *record) { r.ObtainedAt = at(90 * time.Minute) },
			now: 5 * time.Minute, kind: read, want: actRefresh},
		{name: "token obtained on a node slightly ahead/read", change: func(r *record) { r.ObtainedAt = at(5*time.Minute + 4*time.Second) },
			now: 5 * time.Minute, kind: read, want: actNothing},
		{name: "token obtained on a clock further ahead than serveGuard/read", change: func(r *record) { r.ObtainedAt = at(5*time.Minute + 30*time.Second) },
			now: 5 * time.Minute, kind: read, want: actRefresh},
		// a refresh in flight: resolved once its call has surely ended, by a
		// login when a password is stored
		{name: "in flight/tick too soon", change: inFlight(at, true), now: 55*time.Minute + 15*time.Second, kind: tick, want: actWait,
			wantAt: 55*time.Minute + sendWindow + 10*time.Second + minCallInterval},
		{name: "in flight/tick", change: inFlight(at, true), now: 56 * time.Minute, kind: tick, want: actLogin},
		{name: "in flight/rotate", change: inFlight(at, true), now: 56 * time.Minute, kind: rotate, want: actLogin},
		{name: "in flight, no password/tick", change: inFlight(at, false), now: 56 * time.Minute, kind: tick, want: actRefresh},
		{name: "in flight, token fresh/read", change: inFlight(at, true), now: 56 * time.Minute, kind: read, want: actNothing},
		// need_login: log in, unless there is no password
		{name: "need login/tick", change: state(stateNeedLogin), now: 5 * time.Minute, kind: tick, want: actLogin},
		{name: "need login/read, fresh", change: state(stateNeedLogin), now: 5 * time.Minute, kind: read, want: actNothing},
		{name: "need login/read, due", change: state(stateNeedLogin), now: 55 * time.Minute, kind: read, want: actLogin},
		{name: "need login/rotate", change: state(stateNeedLogin), now: 5 * time.Minute, kind: rotate, want: actLogin},
		{name: "need login/credential", change: state(stateNeedLogin), now: 5 * time.Minute, kind: cred, want: actLogin},
		{name: "need login, no password/tick", change: noPassword(stateNeedLogin), now: 5 * time.Minute, kind: tick, want: actStop},
		{name: "need login, no password/rotate", change: noPassword(stateNeedLogin), now: 5 * time.Minute, kind: rotate, want: actStop},
		{name: "need login, no password/read, fresh", change: noPassword(stateNeedLogin), now: 5 * time.Minute, kind: read, want: actNothing},
		// need_reauth: only a config write helps
		{name: "need reauth/tick", change: state(stateNeedReauth), now: 5 * time.Minute, kind: tick, want: actStop},
		{name: "need reauth/read, due", change: state(stateNeedReauth), now: 55 * time.Minute, kind: read, want: actStop},
		{name: "need reauth/rotate", change: state(stateNeedReauth), now: 5 * time.Minute, kind: rotate, want: actStop},
		{name: "need reauth/tune", change: state(stateNeedReauth), now: 5 * time.Minute, kind: tune, want: actNothing},
		// a record storage refused: nothing until it is stored
		{name: "unsaved/tick, due", change: unsaved, now: 55 * time.Minute, kind: tick, want: actHeld},
		{name: "unsaved/rotate", change: unsaved, now: 5 * time.Minute, kind: rotate, want: actHeld},
		{name: "unsaved/read, fresh", change: unsaved, now: 5 * time.Minute, kind: read, want: actNothing},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := base()
			if tc.change != nil {
				tc.change(r)
			}
			now := at(tc.now)
			got := decide(r, now, trigger{kind: tc.kind, at: now})
			if got.kind != tc.want || (tc.want == actWait && !got.at.Equal(at(tc.wantAt))) {
				t.Fatalf("decide = %+v, want kind %v at %v", got, tc.want, at(tc.wantAt))
			}
			var rl *rateLimitedError
			if (got.kind == actWait) != errors.As(got.err(), &rl) || got.calls() != (got.kind == actRefresh || got.kind == actLogin) {
				t.Fatalf("err %v calls %v for %+v", got.err(), got.calls(), got)
			}
		})
	}
}

func backingOff(at func(time.Duration) time.Time) func(*record) {
	return func(r *record) {
		r.Failures, r.LastCallAt, r.HoldUntil, r.NotBefore = 2, at(55*time.Minute), at(55*time.Minute+minCallInterval), at(56*time.Minute)
	}
}

func retryAfter(at func(time.Duration) time.Time) func(*record) {
	return func(r *record) {
		r.Failures, r.LastCallAt, r.HoldUntil, r.NotBefore = 1, at(50*time.Minute), at(60*time.Minute), at(60*time.Minute)
	}
}

func inFlight(at func(time.Duration) time.Time, password bool) func(*record) {
	return func(r *record) {
		*r = *r.marked(actRefresh, at(55*time.Minute))
		r.ObtainedAt = at(50 * time.Minute)
		if !password {
			r.Config.Password = ""
		}
	}
}

func state(s string) func(*record) {
	return func(r *record) { r.State = s }
}

func noPassword(s string) func(*record) {
	return func(r *record) { r.State, r.Config.Password = s, "" }
}

func unsaved(r *record) { r.unsaved = true }

// TestSettle: what each kind of answer does to the record.
func TestSettle(t *testing.T) {
	sent, answered := testStart, testStart.Add(time.Second)
	base := func(password string, st string) *record {
		return &record{Config: config{Username: "u", Password: password, RefreshMargin: 10 * time.Minute, RequestTimeout: 10 * time.Second},
			State: st, Token: "old", RefreshToken: "rt", Lifetime: time.Hour, ObtainedAt: sent.Add(-50 * time.Minute),
			InFlightAt: sent.Add(-time.Minute), Generation: 4, Failures: 2, FailingSince: sent.Add(-10 * time.Minute)}
	}
	g := &grant{token: "new", refreshToken: "rt2", lifetime: time.Hour, refreshLifetime: 30 * 24 * time.Hour}
	up := func(k failureKind) error { return &upstreamError{kind: k, op: refreshPath, detail: "x"} }
	cases := []struct {
		name      string
		r         *record
		kind      actionKind
		g         *grant
		err       error
		state     string
		failures  int
		waitsSet  bool
		token     string
		interrupt bool
	}{
		{"refresh ok", base("pw", stateReady), actRefresh, g, nil, stateReady, 0, true, "new", false},
		{"login ok", base("pw", stateNeedLogin), actLogin, g, nil, stateReady, 0, true, "new", false},
		{"refresh rejected, password", base("pw", stateReady), actRefresh, nil, up(failRejected), stateNeedLogin, 2, true, "old", false},
		{"refresh rejected, no password", base("", stateReady), actRefresh, nil, up(failRejected), stateNeedReauth, 2, true, "old", false},
		{"refresh spent", base("pw", stateReady), actRefresh, nil, up(failSpent), stateNeedLogin, 2, true, "old", false},
		{"interrupted refresh rejected", base("", stateInFlight), actRefresh, nil, up(failRejected), stateNeedReauth, 2, true, "old", true},
		{"refresh unknown, password", base("pw", stateReady), actRefresh, nil, up(failUnknown), stateNeedLogin, 3, true, "old", false},
		{"refresh unknown, no password", base("", stateReady), actRefresh, nil, up(failUnknown), stateInFlight, 3, true, "old", false},
		{"refresh transient", base("pw", stateReady), actRefresh, nil, up(failTransient), stateReady, 3, true, "old", false},
		{"in flight, transient", base("", stateInFlight), actRefresh, nil, up(failTransient), stateInFlight, 3, true, "old", false},
		{"refresh salvaged", base("pw", stateReady), actRefresh, &grant{refreshToken: "rt2"}, up(failTransient), stateReady, 3, true, "old", false},
		{"login rejected", base("pw", stateNeedLogin), actLogin, nil, up(failRejected), stateNeedReauth, 3, true, "old", false},
		{"login transient", base("pw", stateNeedLogin), actLogin, nil, up(failTransient), stateNeedLogin, 3, true, "old", false},
		{"client not built", base("pw", stateReady), actRefresh, nil, errors.New("ca_cert holds no certificate"), stateReady, 3, true, "old", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := settle(tc.r, tc.kind, tc.g, tc.err, sent, answered)
			if got.State != tc.state || got.Failures != tc.failures || got.Token != tc.token {
				t.Fatalf("state %s failures %d token %s, want %s %d %s", got.State, got.Failures, got.Token, tc.state, tc.failures, tc.token)
			}
			floor := tc.kind == actRefresh || tc.err != nil
			if set := !got.HoldUntil.IsZero(); set != tc.waitsSet || !got.LastCallAt.Equal(answered) || (set && floor && got.HoldUntil.Before(answered.Add(minCallInterval))) {
				t.Fatalf("waits %v %v %v, set: %v", got.LastCallAt, got.HoldUntil, got.NotBefore, tc.waitsSet)
			}
			if tc.failures > tc.r.Failures && got.NotBefore.Before(answered.Add(minRetryInterval)) {
				t.Fatalf("no backoff after a failure: not before %v", got.NotBefore)
			}
			if tc.interrupt != strings.Contains(got.LastError, "was interrupted") {
				t.Fatalf("last error %q", got.LastError)
			}
			if tc.g != nil && (got.RefreshToken != "rt2" || got.Generation != 5) {
				t.Fatalf("new refresh token not kept: %+v", got)
			}
			if tc.g == nil && got.RefreshToken != "rt" {
				t.Fatalf("refresh token changed without a grant")
			}
		})
	}
}

// TestTickSpread: records that fall due together are replaced over the
// ticks of the first half of the margin, each no later than the last tick
// before it is due.
func TestTickSpread(t *testing.T) {
	first := map[int]int{} // minute of the first tick that refreshes -> records
	for i := 0; i < 1000; i++ {
		r := &record{Config: config{RefreshMargin: 10 * time.Minute}, State: stateReady, Token: "t",
			RefreshToken: fmt.Sprintf("rt-%d", i), Lifetime: time.Hour, ObtainedAt: testStart}
		for m := 0; m <= 50; m++ {
			if decide(r, testStart.Add(time.Duration(m)*time.Minute), trigger{kind: triggerTick}).kind == actRefresh {
				first[m]++
				break
			}
		}
	}
	for m, n := range first {
		if m < 44 || m > 49 {
			t.Fatalf("%d records first refreshed at %d m, outside 44..49: %v", n, m, first)
		}
	}
	for m := 45; m <= 49; m++ { // about 200 a tick; none empty, none with most
		if first[m] < 100 || first[m] > 300 {
			t.Fatalf("refreshes by minute %v: not spread", first)
		}
	}
}

// A login that set no floor, then a rotate whose refresh is rejected and
// the login after it, never make three calls within ten seconds.
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

// A rejected refresh sets the floor: a refresh_token written just after it
// waits for it instead of calling /auth/refresh a second later.
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

// Vault's clock set back a day: the token is of unknown age and refreshed
// at once; when Teletracker rejects that refresh, the login with the stored
// password comes after the floor, not a day later.
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

// A clock that flaps by two minutes (two time sources fighting, or
// leadership flapping between nodes two minutes apart) with an operator
// rotating every second makes no storm: the floor holds on the mono clock.
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

// A read's retry time (now+1s) is capped at the end of the token's
// service: a read deferred just before the token stops being served does
// not answer the reads after that from memory alone, with a 502, while a
// call could be made.
func TestReadRetryNeverOutlivesService(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b.proc.pacer = newPacer(1 / (time.Hour).Seconds())
	holdTurns(e.b.proc.pacer, e.clock.Mono(), 1)                 // other mounts hold the next turns
	e.clock.Add(59*time.Minute - 500*time.Millisecond)           // due, valid for 0.5 s more
	e.readToken()                                                // deferred: valid, no wait
	e.b.proc.pacer = newPacer(DefaultCallsPerSecond * turnShare) // turns free again
	e.clock.Add(600 * time.Millisecond)                          // no longer valid
	before := e.fake.Stats()
	resp, err := e.request(logical.ReadOperation, "token", nil)
	st := e.fake.Stats()
	calls := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls
	if err != nil || resp == nil || resp.IsError() {
		t.Fatalf("read of a token past validity made %d call(s) with a free turn and failed: err=%v resp=%v", calls, err, resp)
	}
}

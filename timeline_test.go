package teletracker

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// timelineCase is one config and upstream the timeline must hold for.
type timelineCase struct {
	lifetime, refreshLifetime, margin, timeout time.Duration
}

func (c timelineCase) String() string {
	return fmt.Sprintf("lifetime %v, refresh lifetime %v, margin %v, timeout %v", c.lifetime, c.refreshLifetime, c.margin, c.timeout)
}

// timelineCases are the corners of what the config accepts and Teletracker
// answers (token lifetimes from 1 s to a day, margins from 1 s to just
// under 24 h, timeouts from 1 s to 30 s, refresh tokens from minutes to
// months), and as many log-uniform draws between them.
func timelineCases() []timelineCase {
	var cases []timelineCase
	for _, l := range []time.Duration{time.Second, 4 * time.Second, 20 * time.Second, 59 * time.Second, 80 * time.Second, 5 * time.Minute, time.Hour, maxTokenLifetime} {
		for _, m := range []time.Duration{time.Second, 40 * time.Second, defaultRefreshMargin, maxRefreshMargin - time.Second} {
			for _, rl := range []time.Duration{2 * time.Minute, 11 * time.Minute, 30 * 24 * time.Hour} {
				for _, to := range []time.Duration{time.Second, maxRequestTimeout} {
					cases = append(cases, timelineCase{l, rl, m, to})
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	logUniform := func(lo, hi time.Duration) time.Duration {
		return time.Duration(math.Exp(math.Log(float64(lo)) + rng.Float64()*(math.Log(float64(hi))-math.Log(float64(lo)))))
	}
	for range 300 {
		cases = append(cases, timelineCase{
			lifetime:        logUniform(time.Second, maxTokenLifetime),
			refreshLifetime: logUniform(time.Minute, 180*24*time.Hour),
			margin:          logUniform(time.Second, maxRefreshMargin-time.Second).Truncate(time.Second),
			timeout:         logUniform(time.Second, maxRequestTimeout).Truncate(time.Second),
		})
	}
	return cases
}

// record is a session just obtained at at under c.
func (c timelineCase) record(at time.Time, n int) *record {
	return &record{
		Config: config{Username: "u", Password: "pw", RefreshMargin: c.margin, RequestTimeout: c.timeout},
		State:  stateReady, Token: fmt.Sprintf("tok-%d", n), RefreshToken: fmt.Sprintf("rt-%d", n),
		Lifetime: c.lifetime, ObtainedAt: at, RefreshTokenExpiresAt: at.Add(c.refreshLifetime),
		LastCallAt: at, HoldUntil: at.Add(minCallInterval), NotBefore: at.Add(minCallInterval),
	}
}

// TestTimelineOrder: for every lifetime and margin, a token's times come in
// their order (due never before obtained), a read's call and one retry
// after the first backoff end before the token stops being served (or the
// token is due at once, its lifetime too short for that), and from
// replaceFrom to servedUntil there is a tick, the first backoff and a call's
// time for retries; the refresh token is renewed by a tick before it expires.
func TestTimelineOrder(t *testing.T) {
	for _, c := range timelineCases() {
		tl := c.record(testStart, 0).timeline()
		switch {
		case !tl.obtained.Before(tl.servedUntil) || tl.servedUntil.After(tl.expires) || tl.expires.Sub(tl.servedUntil) > serveGuard:
			t.Fatalf("%v: obtained %v, served until %v, expires %v", c, tl.obtained, tl.servedUntil, tl.expires)
		case tl.due.Before(tl.obtained) || tl.due.After(tl.servedUntil):
			t.Fatalf("%v: obtained %v, due %v, served until %v", c, tl.obtained, tl.due, tl.servedUntil)
		case tl.due.After(tl.obtained) && tl.due.Add(c.timeout+firstRetry).After(tl.servedUntil):
			t.Fatalf("%v: due %v: a read's call and one retry after the first backoff may end after it stops being served at %v", c, tl.due, tl.servedUntil)
		case tl.due.After(tl.obtained) && tl.servedUntil.Sub(tl.replaceFrom) < tickInterval+firstRetry+c.timeout:
			t.Fatalf("%v: replaced from %v, served until %v: no room for retries", c, tl.replaceFrom, tl.servedUntil)
		case tl.replaceFrom.After(tl.due):
			t.Fatalf("%v: a tick replaces from %v, after a read does at %v", c, tl.replaceFrom, tl.due)
		case !tl.renewBy.Before(testStart.Add(c.refreshLifetime)) || tl.renewBy.Sub(tl.renewFrom) < tickInterval:
			t.Fatalf("%v: the refresh token is renewed from %v by %v", c, tl.renewFrom, tl.renewBy)
		}
		if tl.served(tl.servedUntil) || !tl.served(tl.servedUntil.Add(-time.Nanosecond)) {
			t.Fatalf("%v: served does not end at servedUntil", c)
		}
	}
}

// TestTimelineSteadyState runs the real decide and settle on a virtual
// clock, every call answered at once, for every case: ticks each minute,
// and in a second run reads each 5 s as well. It checks that a tick makes
// at most one call and calls come no closer than the timeline allows, the
// refresh token never expires, a token is served at every tick when its
// lifetime outlasts a tick, reads make no call at all when a tick comes
// between a token's arrival and its replaceFrom, and no two calls come
// within the floor.
func TestTimelineSteadyState(t *testing.T) {
	const readEvery = 5 * time.Second
	for _, c := range timelineCases() {
		for _, reads := range []bool{false, true} {
			r := c.record(testStart, 0)
			span := min(6*time.Hour, 4*min(c.lifetime, c.refreshLifetime)+10*tickInterval)
			var last time.Time
			calls, readCalls, n := 0, 0, 0
			step := tickInterval
			if reads {
				step = readEvery
			}
			for at := time.Duration(0); at <= span; at += step {
				now := testStart.Add(at)
				kind := triggerRead
				if at%tickInterval == 0 {
					kind = triggerTick
				}
				tl := r.timeline()
				act := decide(r, now, trigger{kind: kind})
				if !act.calls() {
					if kind == triggerTick && c.lifetime > tickInterval+serveGuard+c.timeout && !tl.served(now) {
						t.Fatalf("%v, reads %v: at %v no token is served", c, reads, at)
					}
					if kind == triggerTick && !r.RefreshTokenExpiresAt.After(now) {
						t.Fatalf("%v: the refresh token expired by %v", c, at)
					}
					continue
				}
				if !last.IsZero() && now.Sub(last) < minCallInterval {
					t.Fatalf("%v: calls at %v and %v, within the floor", c, last, now)
				}
				if kind == triggerRead {
					readCalls++
					if tl.replaceFrom.Sub(tl.obtained) >= tickInterval {
						t.Fatalf("%v: a read called at %v though a tick should have replaced the token from %v", c, at, tl.replaceFrom.Sub(testStart))
					}
				} else if !last.IsZero() {
					// A tick's call, no sooner than the timeline says, and
					// never sooner than a quarter of the bearer token's
					// life or half the refresh token's (less the guard, a
					// call and a tick) needs.
					if want := earlier(tl.replaceFrom, tl.renewFrom).Sub(tl.obtained) - tickInterval; now.Sub(last) < want {
						t.Fatalf("%v: tick calls %v apart, the timeline allows %v", c, now.Sub(last), want)
					}
					if want := min(c.lifetime/4-serveGuard-c.timeout, c.refreshLifetime/2) - tickInterval; now.Sub(last) < want {
						t.Fatalf("%v: tick calls %v apart, where %v would do", c, now.Sub(last), want)
					}
				}
				calls++
				n++
				last = now
				r = settle(r, act.kind, &grant{token: fmt.Sprintf("tok-%d", n), refreshToken: fmt.Sprintf("rt-%d", n),
					lifetime: c.lifetime, refreshLifetime: c.refreshLifetime}, nil, now, now)
			}
			if ticks := int(span/tickInterval) + 1; !reads && calls > ticks {
				t.Fatalf("%v: %d calls in %d ticks", c, calls, ticks)
			}
		}
	}
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

// TestTokenStampedOnFastClockNeverServedExpired: a node whose clock ran 30 s
// fast obtains a token; NTP steps the clock back and the plugin reloads.
// The next look at the token, before the clock catches up with its stamp,
// finds it of unknown age (more than serveGuard ahead): it is dropped, and
// stored so, and during an outage it is never served again, also once the
// clock has passed its stamp. (A look that comes only after the clock has
// caught up cannot tell: a clock off by more than serveGuard is outside
// what the engine assumes, README "Limits".)
func TestTokenStampedOnFastClockNeverServedExpired(t *testing.T) {
	e := newTestEnv(t)
	e.b.now = func() time.Time { return e.clock.Now().Add(30 * time.Second) }
	e.configure(nil)    // obtained at true 12:00:00, stamped 12:00:30
	e.b = restart(t, e) // the clock is right again (restart uses the true clock)
	e.fake.Fail("/auth/refresh", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	e.fake.Fail("/auth/login", -1, fakett.Fault{Status: http.StatusServiceUnavailable})
	if resp, err := e.request(logical.ReadOperation, "token", nil); err == nil && !resp.IsError() {
		t.Fatalf("a token stamped 30 s ahead was served")
	}
	for i := 0; i < 60; i++ { // ticks each minute try, and fail
		e.clock.Add(time.Minute)
		_ = e.tick()
	}
	e.clock.Add(10 * time.Second) // 10 s after Teletracker's expiry
	resp, err := e.request(logical.ReadOperation, "token", nil)
	if err == nil && !resp.IsError() {
		if tok := resp.Data["token"].(string); !e.fake.Live(tok) {
			t.Fatalf("served a token Teletracker expired 10 s ago (expires_at %v, now %v)", resp.Data["expires_at"], e.clock.Now().Format(time.RFC3339))
		}
	}
}

// TestRotationTimesInOrderForShortLifetimes: Vault Agent's rotation fields
// stay meaningful for every lifetime Teletracker may answer (1 s and up):
// next_vault_rotation never before last_vault_rotation, rotation_period
// never negative (20 s tokens with request_timeout 30 s).
func TestRotationTimesInOrderForShortLifetimes(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.TokenLifetime = 20 * time.Second }))
	e.configure(map[string]interface{}{"request_timeout": "30s"})
	d := e.readToken().Data
	last, _ := time.Parse(time.RFC3339, d["last_vault_rotation"].(string))
	next, _ := time.Parse(time.RFC3339, d["next_vault_rotation"].(string))
	if p := d["rotation_period"].(int64); p < 0 || next.Before(last) {
		t.Fatalf("rotation_period %d, last_vault_rotation %s, next_vault_rotation %s", p, last, next)
	}
}

// TestOneFailedRefreshLeavesRoomToRetry: with a refresh_margin of 1 s and
// the tick at :44 each minute (Vault's ticks fall anywhere in the minute),
// one 503 to the tick before the token is due is retried, after the first
// backoff, before the token stops being served: no read fails.
func TestOneFailedRefreshLeavesRoomToRetry(t *testing.T) {
	e := newTestEnv(t)
	e.configure(map[string]interface{}{"refresh_margin": "1s"})
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusServiceUnavailable})
	failed := 0
	for s := 1; s <= 65*60; s++ {
		e.clock.Add(time.Second)
		if s%60 == 44 {
			_ = e.tick()
		}
		if resp, err := e.request(logical.ReadOperation, "token", nil); err != nil || resp.IsError() {
			failed++
		}
	}
	if failed > 0 {
		t.Fatalf("one failed refresh made %d reads fail (fake %+v)", failed, e.fake.Stats())
	}
}

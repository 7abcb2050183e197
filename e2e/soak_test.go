package e2e

import (
	"fmt"
	"net/http"
	"os"
	"sort"
	"sync"
	"testing"
	"time"
)

// TestSoak: 100 concurrent readers through Vault for SOAK_DURATION (60 s in
// make test, 20 min in make soak), tokens of SOAK_TOKEN_LIFETIME on the fake
// (30 s in make test, to see many rotations; 10 min in make soak, a
// realistic lifetime with the default margin) and 10% random upstream
// faults. No refresh token is re-used, refresh calls stay within the rate
// bound, and the session is alive at the end. With a realistic lifetime no
// read fails at all; with 30 s tokens a read may fail only once no token
// is served (a failed refresh backs off 30 s, longer than such a token has).
// The readers read testAccount's token.
func TestSoak(t *testing.T) {
	t.Parallel() // a long test: it runs beside the other long ones
	duration := soakSetting(t, "SOAK_DURATION", 60*time.Second)
	lifetime := soakSetting(t, "SOAK_TOKEN_LIFETIME", 30*time.Second)
	realistic := lifetime >= 5*time.Minute
	c := env.dev.client
	f := startFake(t, "-token-lifetime", lifetime.String())
	enableMount(t, c, "tt-soak")
	configureAccount(t, c, "tt-soak", testAccount, f, map[string]interface{}{"request_timeout": "1s"})
	f.admin(t, http.MethodPost, "/_fake/fault-rate", map[string]interface{}{
		"rate": 0.1,
		"faults": []map[string]interface{}{
			{"status": 503},
			{"status": 500},
			{"status": 429, "retry_after": "5"},
			{"reset": true},
			{"delay": "2s"},
			{"body": `{"success":false,"error":"busy"}`},
		},
	}, nil)

	// What the readers saw: every failure, and for every token when it was
	// first served and until when it was valid.
	type seenToken struct{ first, expires time.Time }
	var (
		mu       sync.Mutex
		ok       int64
		failures []time.Time
		tokens   = map[string]seenToken{}
		dead     []string // tokens the fake refused when first served
		wg       sync.WaitGroup
		stop     = make(chan struct{})
	)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				s, err := c.Logical().Read(accountPath("tt-soak", "token", testAccount))
				now := time.Now()
				if err != nil || s == nil {
					mu.Lock()
					failures = append(failures, now)
					mu.Unlock()
					continue
				}
				tok := s.Data["token"].(string)
				exp, _ := time.Parse(time.RFC3339, s.Data["expires_at"].(string))
				mu.Lock()
				ok++
				_, seen := tokens[tok]
				if !seen {
					tokens[tok] = seenToken{first: now, expires: exp}
				}
				mu.Unlock()
				if !seen && !f.live(t, tok) {
					mu.Lock()
					dead = append(dead, tok)
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(duration)
	close(stop)
	wg.Wait()

	// A read may fail only when no token served before it was still served
	// (expires_at is rounded down to the second: never later than the
	// truth; a token is served until 5 s before it expires).
	if realistic && len(failures) > 0 {
		t.Errorf("%d reads failed, the first at %s: with %v tokens none may", len(failures), failures[0].Format(time.RFC3339Nano), lifetime)
	}
	guard := min(5*time.Second, lifetime/4)
	for _, at := range failures {
		for _, tok := range tokens {
			if tok.first.Before(at) && at.Before(tok.expires.Add(-guard)) {
				t.Errorf("read failed at %s while a token served until %s existed", at.Format(time.RFC3339Nano), tok.expires.Add(-guard))
				break
			}
		}
	}
	if len(dead) > 0 {
		t.Errorf("%d tokens served that the fake refused", len(dead))
	}
	st := f.stats(t)
	gaps := make([]time.Duration, 0, len(st.RefreshCallTimes))
	for i := 1; i < len(st.RefreshCallTimes); i++ {
		gaps = append(gaps, st.RefreshCallTimes[i].Sub(st.RefreshCallTimes[i-1]))
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	var minGap time.Duration
	if len(gaps) > 0 {
		minGap = gaps[0]
	}
	maxCalls := int64(duration/(10*time.Second)) + 1
	t.Logf("soak %v: %d reads ok, %d failed while no valid token existed, %d distinct tokens", duration, ok, len(failures), len(tokens))
	t.Logf("fake: %d refresh calls (bound %d), %d refreshes, %d login calls, %d re-used refresh tokens, shortest gap between refresh calls %v",
		st.RefreshCalls, maxCalls, st.Refreshes, st.LoginCalls, st.ReusedRefreshTokens, minGap)

	if st.ReusedRefreshTokens != 0 {
		t.Errorf("%d refresh tokens re-used", st.ReusedRefreshTokens)
	}
	if st.RefreshCalls > maxCalls || (len(gaps) > 0 && minGap < 10*time.Second) {
		t.Errorf("refresh calls outside the bound: %d calls, shortest gap %v", st.RefreshCalls, minGap)
	}
	if ok == 0 || len(tokens) < 2 {
		t.Errorf("the soak did not exercise rotations: %d reads, %d tokens", ok, len(tokens))
	}
	// The faults ended, the session serves a live token again: at once, or
	// at its next attempt when the soak's last refresh failed (with 30 s
	// tokens the backoff can outlast the token, and reads fail until then).
	f.admin(t, http.MethodPost, "/_fake/fault-rate", map[string]interface{}{"rate": 0}, nil)
	s, err := c.Logical().Read(accountPath("tt-soak", "status", testAccount))
	if err != nil || s == nil || s.Data["state"] == "reauth_required" {
		t.Fatalf("the session was lost: %v %v", s, err)
	}
	limit := 10 * time.Second
	if next, err := time.Parse(time.RFC3339, fmt.Sprint(s.Data["next_attempt_at"])); err == nil {
		limit += time.Until(next)
	}
	var tok string
	if err := waitFor(limit, func() error {
		s, err := c.Logical().Read(accountPath("tt-soak", "token", testAccount))
		if err == nil && s != nil {
			tok, _ = s.Data["token"].(string)
		}
		return err
	}); err != nil {
		t.Fatalf("no token served within %v of the faults' end (status %v): %v", limit, s.Data, err)
	}
	if !f.live(t, tok) {
		t.Error("the last token served is not accepted")
	}
}

// soakSetting is the duration in the environment variable name, or def.
func soakSetting(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}

package teletracker

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

func TestRotate(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	first := e.readToken().Data["token"]
	e.clock.Add(5 * time.Minute)
	d := e.mustRequest(logical.UpdateOperation, "rotate", nil).Data
	if _, ok := d["token"]; ok {
		t.Fatal("rotate returned the token")
	}
	if d["last_vault_rotation"] != testStart.Add(5*time.Minute).Format(time.RFC3339) ||
		d["expires_at"] != testStart.Add(65*time.Minute).Format(time.RFC3339) {
		t.Fatalf("%v", d)
	}
	if e.readToken().Data["token"] == first {
		t.Fatal("rotate did not replace the served token")
	}
	// A second rotate within 10 s is refused and says when to come back.
	e.clock.Add(9 * time.Second)
	resp, err := e.request(logical.UpdateOperation, "rotate", nil)
	if statusOf(resp, err) != http.StatusTooManyRequests || !strings.Contains(err.Error(), "not be called before") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	e.clock.Add(time.Second)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
	if got := e.fake.Stats().Refreshes; got != 2 {
		t.Fatalf("refreshes %d", got)
	}
	e.wantNoReuse()
}

func TestRotateFailureAndUnconfigured(t *testing.T) {
	e := newTestEnv(t)
	e.wantUnconfigured(e.request(logical.UpdateOperation, "rotate", nil))
	e.configure(nil)
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: 500})
	resp, err := e.request(logical.UpdateOperation, "rotate", nil)
	if statusOf(resp, err) != http.StatusBadGateway || !strings.Contains(err.Error(), "HTTP 500") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	// A rotate, an operator's act, waits out the floor after a failure,
	// not the backoff that holds back the engine's own attempts.
	e.clock.Add(9 * time.Second)
	if resp, err = e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	if err := e.tick(); err != nil || e.fake.Stats().RefreshCalls != 1 {
		t.Fatalf("a tick inside the backoff: %v %+v", err, e.fake.Stats())
	}
	e.clock.Add(time.Second)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
}

func TestRotateRefusedWhenReauthRequired(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": ""})
	e.fake.RevokeAll()
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	calls := e.fake.Stats().RefreshCalls
	e.clock.Add(time.Minute)
	resp, err := e.request(logical.UpdateOperation, "rotate", nil)
	if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "re-authentication") {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	if e.fake.Stats().RefreshCalls != calls {
		t.Fatal("rotate called Teletracker in reauth_required")
	}
}

func TestRotateHonoursRetryAfter(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: 429, RetryAfter: "600"})
	e.clock.Add(time.Minute)
	if resp, err := e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("Teletracker's 429: resp=%v err=%v", resp, err)
	}
	e.clock.Add(5 * time.Minute)
	if resp, err := e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("rotate inside Retry-After: resp=%v err=%v", resp, err)
	}
	e.clock.Add(5 * time.Minute)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
}

// TestFailedRotateRetriedOnBackoff: a rotate that fails leaves the mount
// degraded only while the engine retries it: next_attempt_at is a tick in
// the future, the tick then retries, and the mount is healthy again with
// last_error kept.
func TestFailedRotateRetriedOnBackoff(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	first := e.readToken().Data["token"]
	e.clock.Add(5 * time.Minute)
	_ = e.tick()
	e.clock.Add(20 * time.Second)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusServiceUnavailable})
	if _, err := e.request(logical.UpdateOperation, "rotate", nil); err == nil {
		t.Fatal("the rotate did not fail")
	}
	s := e.status()
	next, err := time.Parse(time.RFC3339, s["next_attempt_at"].(string))
	if s["state"] != stateDegraded || err != nil || !next.After(e.clock.Now()) {
		t.Fatalf("after a failed rotate: %v, want degraded with a next attempt in the future", s)
	}
	if w := e.readToken().Warnings; len(w) != 1 || !strings.Contains(w[0], "next attempt at "+s["next_attempt_at"].(string)) {
		t.Fatalf("the read's warning does not name the next attempt: %v", w)
	}
	for e.clock.Now().Before(next) {
		e.clock.Add(time.Minute)
		_ = e.tick()
	}
	s = e.status()
	if s["state"] != stateHealthy || s["consecutive_failures"] != 0 || !strings.Contains(s["last_error"].(string), "HTTP 503") {
		t.Fatalf("after the retry: %v, want healthy with the last error kept", s)
	}
	if tok := e.readToken().Data["token"]; tok == first || !e.fake.Live(tok.(string)) || e.fake.Stats().RefreshCalls != 2 {
		t.Fatalf("the rotation was not retried once: %+v", e.fake.Stats())
	}
}

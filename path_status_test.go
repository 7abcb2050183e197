package teletracker

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// TestStatus follows one mount through its states; every answer is checked
// against the declared schema by request.
func TestStatus(t *testing.T) {
	e := newTestEnv(t)
	if e.name != "" {
		e.wantUnconfigured(e.request(logical.ReadOperation, "status", nil))
	} else if s := e.status(); s["state"] != stateUnconfigured || s["token_valid"] != false || s["expires_at"] != "" {
		t.Fatalf("unconfigured: %v", s)
	}

	e.configure(nil)
	s := e.status()
	want := map[string]interface{}{
		"state": stateHealthy, "token_valid": true, "consecutive_failures": 0, "refresh_count": int64(0),
		"expires_at":               testStart.Add(time.Hour).Format(time.RFC3339),
		"refresh_token_expires_at": testStart.Add(30 * 24 * time.Hour).Format(time.RFC3339),
		"last_vault_rotation":      testStart.Format(time.RFC3339),
		"next_vault_rotation":      testStart.Add(50 * time.Minute).Format(time.RFC3339),
		"next_attempt_at":          "", "last_error": "", "last_error_at": "", "unsaved": false,
	}
	for k, v := range want {
		if s[k] != v {
			t.Errorf("healthy: %s = %v, want %v", k, s[k], v)
		}
	}

	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusServiceUnavailable})
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	s = e.status()
	if s["state"] != stateDegraded || s["consecutive_failures"] != 1 || s["token_valid"] != true ||
		!strings.Contains(s["last_error"].(string), "HTTP 503") || s["last_error_at"] != testStart.Add(49*time.Minute).Format(time.RFC3339) ||
		s["next_attempt_at"] == "" {
		t.Fatalf("degraded: %v", s)
	}

	e.clock.Add(2 * time.Minute)
	_ = e.tick()
	s = e.status()
	if s["state"] != stateHealthy || s["consecutive_failures"] != 0 || s["refresh_count"] != int64(1) || s["next_attempt_at"] != "" {
		t.Fatalf("recovered: %v", s)
	}
	if !strings.Contains(s["last_error"].(string), "HTTP 503") {
		t.Fatalf("the last error should be kept after recovery: %v", s)
	}
}

func TestStatusNeedsNoTeletracker(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	calls := e.fake.Stats().LoginCalls + e.fake.Stats().RefreshCalls
	e.clock.Add(2 * time.Hour) // long expired: status still only reports
	for i := 0; i < 10; i++ {
		if _, err := e.request(logical.ReadOperation, "status", nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.fake.Stats().LoginCalls + e.fake.Stats().RefreshCalls; got != calls {
		t.Fatal("status called Teletracker")
	}
}

// A mount whose calls the pacer defers tick after tick until its token is
// no longer served is not healthy: status says degraded while reads fail.
func TestStatusNotHealthyWhenDeferralsExpireToken(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(48 * time.Minute)
	for i := 0; i < 13; i++ { // ticks at 49 .. 61 min
		e.clock.Add(time.Minute)
		reserveOthers(e, 460) // 460 other mounts in the queue: > 45 s
		if err := e.tick(); err != nil {
			t.Fatal(err)
		}
	}
	reserveOthers(e, 460)
	resp, err := e.request(logical.ReadOperation, "token", nil)
	s := e.status()
	t.Logf("read: %d %v; status %v", statusOf(resp, err), err, s)
	if statusOf(resp, err) == http.StatusOK {
		t.Fatal("setup: the token was still served")
	}
	if s["state"] == stateHealthy {
		t.Fatalf("status healthy (failures %v, next_attempt_at %q) while the token expired at %v and reads fail",
			s["consecutive_failures"], s["next_attempt_at"], s["expires_at"])
	}
}

// TestHeldRecordStatusNamesNextAttempt: a new session that storage refused
// is held in memory; status says degraded and, as degraded means, when it
// is tried again (the next tick stores it), a time in the future.
func TestHeldRecordStatusNamesNextAttempt(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	_ = e.tick()
	e.clock.Add(55 * time.Minute)
	e.storage.skipPuts.Store(1) // the marker is stored, the result is not
	e.storage.failPuts.Store(-1)
	_ = e.tick()
	e.storage.failPuts.Store(0)
	s := e.status()
	if s["state"] != stateDegraded || s["unsaved"] != true {
		t.Fatalf("setup: status %v, want degraded and unsaved", s)
	}
	next, err := time.Parse(time.RFC3339, s["next_attempt_at"].(string))
	if err != nil || !next.After(e.clock.Now()) {
		t.Fatalf("degraded (unsaved) with next_attempt_at %q: nothing says when the held record is stored", s["next_attempt_at"])
	}
}

// TestStatusNotHealthyWhileStorageUnreadable: once storage cannot be read
// the tick can refresh nothing (it loads the record first); status, served
// from the node's copy, says degraded, with the storage error, while the
// token runs out.
func TestStatusNotHealthyWhileStorageUnreadable(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.storage.failGets.Store(true)
	e.clock.Add(50 * time.Minute)
	for i := 0; i < 8; i++ {
		_ = e.tick()
		e.clock.Add(time.Minute)
	}
	if n := e.fake.Stats().RefreshCalls; n != 0 {
		t.Fatalf("setup: %d refreshes", n)
	}
	if s := e.status(); s["state"] == stateHealthy {
		t.Fatalf("no refresh possible for 8 minutes past due, 2 minutes of token left, and status says %v", s)
	}
}

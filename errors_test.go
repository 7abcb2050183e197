package teletracker

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// A credential Teletracker refuses is answered 400 whichever operator's act
// presented it: a config write bringing it, or a rotate presenting the
// stored refresh token or password.
func TestRefusedCredentialIsBadRequestForRotateAsForConfig(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)

	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusUnauthorized})
	resp, err := e.request(logical.UpdateOperation, "rotate", nil)
	if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "refused the stored credentials") {
		t.Fatalf("rotate whose refresh token is refused: resp=%v err=%v, want 400", resp, err)
	}

	e.clock.Add(minCallInterval)
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: http.StatusUnauthorized})
	resp, err = e.request(logical.UpdateOperation, "rotate", nil)
	if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "/auth/login: HTTP 401") {
		t.Fatalf("rotate whose login is refused: resp=%v err=%v, want 400", resp, err)
	}
	e.wantState(stateReauthRequired, "the stored password was rejected")

	e.clock.Add(minCallInterval)
	e.fake.Fail("/auth/login", 1, fakett.Fault{Status: http.StatusUnauthorized})
	resp, err = e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "wrong-password"})
	if statusOf(resp, err) != http.StatusBadRequest {
		t.Fatalf("config write whose login is refused: resp=%v err=%v, want 400", resp, err)
	}

	// Other failures of a rotate stay 502.
	e.clock.Add(minCallInterval)
	e.configure(nil)
	e.clock.Add(minCallInterval)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusInternalServerError})
	if resp, err = e.request(logical.UpdateOperation, "rotate", nil); statusOf(resp, err) != http.StatusBadGateway {
		t.Fatalf("rotate answered with 500 upstream: resp=%v err=%v, want 502", resp, err)
	}
	e.wantNoReuse()
}

// Every 429 carries a Retry-After header: the whole seconds until the next
// call is allowed, after which the same request succeeds.
func TestEvery429CarriesRetryAfter(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	retryAfter := func(what string, resp *logical.Response, err error, want string) {
		t.Helper()
		if statusOf(resp, err) != http.StatusTooManyRequests {
			t.Fatalf("%s: resp=%v err=%v, want 429", what, resp, err)
		}
		if got := resp.Headers["Retry-After"]; len(got) != 1 || got[0] != want {
			t.Fatalf("%s: Retry-After %q, want %q", what, got, want)
		}
	}

	// The floor after the config write's login, 10 s: 7.5 s are left.
	e.clock.Add(2500 * time.Millisecond)
	resp, err := e.request(logical.UpdateOperation, "rotate", nil)
	retryAfter("rotate inside the floor", resp, err, "8")
	resp, err = e.request(logical.UpdateOperation, "config", map[string]interface{}{"password": "demo-password"})
	retryAfter("config write inside the floor", resp, err, "8")
	e.clock.Add(7500 * time.Millisecond)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)

	// Teletracker's own 429, with a Retry-After and without one.
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusTooManyRequests, RetryAfter: "600"})
	resp, err = e.request(logical.UpdateOperation, "rotate", nil)
	retryAfter("Teletracker's 429 with Retry-After 600", resp, err, "600")
	e.clock.Add(599 * time.Second)
	resp, err = e.request(logical.UpdateOperation, "rotate", nil)
	retryAfter("rotate inside Teletracker's Retry-After", resp, err, "1")
	e.clock.Add(time.Second)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusTooManyRequests})
	resp, err = e.request(logical.UpdateOperation, "rotate", nil)
	retryAfter("Teletracker's 429 without Retry-After", resp, err, "10")
	e.clock.Add(minCallInterval)
	e.mustRequest(logical.UpdateOperation, "rotate", nil)
	e.wantNoReuse()
}

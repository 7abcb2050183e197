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

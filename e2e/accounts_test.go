package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// Named accounts in one mount, in a real Vault: their paths beside the
// default account's, and the example policy that gives each app its own.
// The failover of a mount with many accounts is in ha_test.go.

// TestNamedAccounts: two named accounts beside the default one are
// created, listed with their health (through the CLI, as the README shows),
// read, rotated and deleted; bad names are a 400 and unknown ones a 404 on
// every path; the default account is untouched throughout.
func TestNamedAccounts(t *testing.T) {
	defaultAccountOnly(t, "it names its accounts itself, beside the default one")
	t.Parallel() // it waits out the floor after the config writes
	c := env.dev.client
	const mount = "tt-accounts"
	f := startFake(t)
	enableMount(t, c, mount)
	configure(t, c, mount, f, nil)
	configureAccount(t, c, mount, "fleet-a", f, nil)
	configureAccount(t, c, mount, "fleet-b", f, map[string]interface{}{"account_id": 7, "refresh_margin": "5m"})

	// The config reads back as config does, without secrets.
	cfg, err := c.Logical().Read(mount + "/accounts/fleet-b")
	if err != nil || cfg == nil {
		t.Fatalf("read accounts/fleet-b: %v %v", cfg, err)
	}
	if cfg.Data["base_url"] != f.url || cfg.Data["username"] != "demo" || cfg.Data["password_set"] != true ||
		jsonInt(t, cfg.Data["account_id"]) != 7 || cfg.Data["password"] != nil || cfg.Data["refresh_token"] != nil {
		t.Fatalf("accounts/fleet-b reads %v", cfg.Data)
	}

	// Each account holds a session of its own, and answers as the default.
	def := readToken(t, c, mount)
	a, b := readAccountToken(t, c, mount, "fleet-a"), readAccountToken(t, c, mount, "fleet-b")
	tokens := map[string]string{"": def["token"].(string), "fleet-a": a["token"].(string), "fleet-b": b["token"].(string)}
	for name, d := range map[string]map[string]interface{}{"fleet-a": a, "fleet-b": b} {
		if !f.live(t, tokens[name]) || tokens[name] == tokens[""] || d["token_type"] != "Bearer" {
			t.Fatalf("token/%s: %v, want a live bearer token of its own", name, d)
		}
		if got, want := keysOf(d), keysOf(def); !slices.Equal(got, want) {
			t.Errorf("token/%s has the fields %v, token has %v", name, got, want)
		}
	}
	if tokens["fleet-a"] == tokens["fleet-b"] {
		t.Fatal("the two accounts serve the same token")
	}
	for _, name := range []string{"fleet-a", "fleet-b"} {
		s, err := c.Logical().Read(accountPath(mount, "status", name))
		if err != nil || s == nil || s.Data["state"] != "healthy" {
			t.Fatalf("status/%s: %v %v", name, s, err)
		}
	}

	// The list, as the README shows it: names, and with -detailed the
	// health of each in key_info.
	out, err := env.dev.cli(rootToken, "list", "-format=json", mount+"/accounts")
	var names []string
	if err != nil || json.Unmarshal([]byte(out), &names) != nil || !slices.Equal(names, []string{"fleet-a", "fleet-b"}) {
		t.Fatalf("vault list -format=json %s/accounts: %v\n%s", mount, err, out)
	}
	out, err = env.dev.cli(rootToken, "list", "-detailed", "-format=json", mount+"/accounts")
	var listed struct {
		Data struct {
			Keys    []string `json:"keys"`
			KeyInfo map[string]struct {
				State               string `json:"state"`
				ExpiresAt           string `json:"expires_at"`
				ConsecutiveFailures *int   `json:"consecutive_failures"`
			} `json:"key_info"`
		} `json:"data"`
	}
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil || !slices.Equal(listed.Data.Keys, []string{"fleet-a", "fleet-b"}) {
		t.Fatalf("vault list -detailed -format=json %s/accounts: %v\n%s", mount, err, out)
	}
	for _, name := range listed.Data.Keys {
		info := listed.Data.KeyInfo[name]
		exp, err := time.Parse(time.RFC3339, info.ExpiresAt)
		if info.State != "healthy" || err != nil || !exp.After(time.Now()) || info.ConsecutiveFailures == nil || *info.ConsecutiveFailures != 0 {
			t.Errorf("key_info of %s: %+v, want healthy, expiring in the future, no failures\n%s", name, info, out)
		}
	}
	// Paged, as the README shows: limit, then after the page's last name.
	for after, want := range map[string]string{"": "fleet-a", "fleet-a": "fleet-b"} {
		args := []string{"read", "-format=json", mount + "/accounts/", "list=true", "limit=1"}
		if after != "" {
			args = append(args, "after="+after)
		}
		out, err := env.dev.cli(rootToken, args...)
		var page struct {
			Data struct {
				Keys []string `json:"keys"`
			} `json:"data"`
		}
		if err != nil || json.Unmarshal([]byte(out), &page) != nil || !slices.Equal(page.Data.Keys, []string{want}) {
			t.Errorf("vault %s: %v, want [%s]\n%s", strings.Join(args, " "), err, want, out)
		}
	}

	// A rotation of one account changes its token alone.
	rotateAccount(t, c, mount, "fleet-a")
	if got := readAccountToken(t, c, mount, "fleet-a")["token"]; got == tokens["fleet-a"] || !f.live(t, got.(string)) {
		t.Fatal("rotate/fleet-a did not give fleet-a a new live token")
	}
	if readAccountToken(t, c, mount, "fleet-b")["token"] != tokens["fleet-b"] || readToken(t, c, mount)["token"] != tokens[""] {
		t.Fatal("rotate/fleet-a changed another account's token")
	}

	// A bad name is a 400 that says what is allowed, an unknown one a 404,
	// on every path of a named account.
	routes := []struct{ method, route string }{
		{http.MethodGet, "token"}, {http.MethodGet, "status"}, {http.MethodPut, "rotate"}, {http.MethodGet, "config"},
	}
	for _, name := range []string{"Fleet-A", "-lead", "_lead", "a.b", strings.Repeat("a", 65)} {
		for _, r := range routes {
			path := accountPath(mount, r.route, name)
			if code, body := env.dev.request(t, rootToken, r.method, path); code != http.StatusBadRequest || !strings.Contains(body, "a-z, 0-9") {
				t.Errorf("%s %s: %d %s, want 400 saying what a name may be", r.method, path, code, body)
			}
		}
	}
	for _, r := range routes {
		path := accountPath(mount, r.route, "no-such")
		if code, body := env.dev.request(t, rootToken, r.method, path); code != http.StatusNotFound {
			t.Errorf("%s %s: %d %s, want 404", r.method, path, code, body)
		}
	}

	// A deleted account is gone from every path and the list; the others
	// keep their sessions.
	if _, err := c.Logical().Delete(mount + "/accounts/fleet-b"); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		path := accountPath(mount, r.route, "fleet-b")
		if code, body := env.dev.request(t, rootToken, r.method, path); code != http.StatusNotFound {
			t.Errorf("after the delete, %s %s: %d %s, want 404", r.method, path, code, body)
		}
	}
	if l, err := c.Logical().List(mount + "/accounts"); err != nil || l == nil || !slices.Equal(listKeys(l), []string{"fleet-a"}) {
		t.Errorf("the list after deleting fleet-b: %v %v, want fleet-a alone", l, err)
	}
	if !f.live(t, readAccountToken(t, c, mount, "fleet-a")["token"].(string)) {
		t.Error("fleet-a lost its token when fleet-b was deleted")
	}

	// The default account's paths work as they did.
	if readToken(t, c, mount)["token"] != tokens[""] {
		t.Fatal("the default account's token changed")
	}
	rotate(t, c, mount)
	if got := readToken(t, c, mount)["token"].(string); got == tokens[""] || !f.live(t, got) {
		t.Fatal("rotate did not give the default account a new live token")
	}
	if s, err := c.Logical().Read(mount + "/status"); err != nil || s == nil || s.Data["state"] != "healthy" {
		t.Fatalf("status: %v %v", s, err)
	}
	if s, err := c.Logical().Read(mount + "/config"); err != nil || s == nil || s.Data["base_url"] != f.url {
		t.Fatalf("config: %v %v", s, err)
	}
	if st := f.stats(t); st.Logins != 3 || st.Refreshes != 2 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("fake stats %+v: want 3 logins (one per account), 2 refreshes, no re-use", st)
	}
}

// TestAccountPolicyTemplating: examples/account-policy.hcl, as it stands,
// given to two identity entities whose metadata name accounts A and B: each
// app, logged in through userpass, reads its own account's token and is
// denied the other's; an entity without the metadata gets neither.
func TestAccountPolicyTemplating(t *testing.T) {
	defaultAccountOnly(t, "it names its accounts itself")
	c := env.dev.client
	f := startFake(t)
	enableMount(t, c, "teletracker") // the mount the example names
	configureAccount(t, c, "teletracker", "fleet-a", f, nil)
	configureAccount(t, c, "teletracker", "fleet-b", f, nil)

	policy, err := os.ReadFile(filepath.Join(env.repoRoot, "examples", "account-policy.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().PutPolicy("teletracker-accounts", string(policy)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Sys().DeletePolicy("teletracker-accounts") })
	const auth = "userpass-tt-accounts"
	if err := c.Sys().EnableAuthWithOptions(auth, &api.EnableAuthOptions{Type: "userpass"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Sys().DisableAuth(auth) })
	auths, err := c.Sys().ListAuth()
	if err != nil || auths[auth+"/"] == nil {
		t.Fatalf("auth mounts: %v %v", auths, err)
	}
	accessor := auths[auth+"/"].Accessor

	// login makes an app: a userpass user, an entity with metadata (none
	// when account is empty) and the policy, the alias tying the two, and
	// a client logged in as it.
	login := func(user, account string) *api.Client {
		t.Helper()
		if _, err := c.Logical().Write("auth/"+auth+"/users/"+user, map[string]interface{}{"password": user + "-password"}); err != nil {
			t.Fatal(err)
		}
		entity := map[string]interface{}{"name": "tt-" + user, "policies": []string{"teletracker-accounts"}}
		if account != "" {
			entity["metadata"] = map[string]string{"teletracker_account": account}
		}
		e, err := c.Logical().Write("identity/entity", entity)
		if err != nil || e == nil {
			t.Fatalf("entity for %s: %v", user, err)
		}
		id := e.Data["id"].(string)
		t.Cleanup(func() { _, _ = c.Logical().Delete("identity/entity/id/" + id) })
		if _, err := c.Logical().Write("identity/entity-alias", map[string]interface{}{
			"name": user, "canonical_id": id, "mount_accessor": accessor,
		}); err != nil {
			t.Fatalf("alias for %s: %v", user, err)
		}
		s, err := c.Logical().Write("auth/"+auth+"/login/"+user, map[string]interface{}{"password": user + "-password"})
		if err != nil || s == nil || s.Auth == nil {
			t.Fatalf("login as %s: %v", user, err)
		}
		if s.Auth.EntityID != id {
			t.Fatalf("%s logged in as entity %q, want %q", user, s.Auth.EntityID, id)
		}
		app, err := c.Clone()
		if err != nil {
			t.Fatal(err)
		}
		app.SetToken(s.Auth.ClientToken)
		return app
	}
	apps := map[string]*api.Client{"fleet-a": login("app-a", "fleet-a"), "fleet-b": login("app-b", "fleet-b")}
	none := login("app-none", "")

	for own, app := range apps {
		if tok := readAccountToken(t, app, "teletracker", own)["token"].(string); !f.live(t, tok) {
			t.Errorf("the app of %s read a dead token", own)
		}
		for _, other := range []string{"fleet-a", "fleet-b"} {
			if other == own {
				continue
			}
			if _, err := app.Logical().Read("teletracker/token/" + other); statusCode(err) != http.StatusForbidden {
				t.Errorf("the app of %s reading token/%s: %v, want 403", own, other, err)
			}
		}
		for _, path := range []string{"teletracker/token", "teletracker/status/" + own, "teletracker/accounts/" + own} {
			if _, err := app.Logical().Read(path); statusCode(err) != http.StatusForbidden {
				t.Errorf("the app of %s reading %s: %v, want 403", own, path, err)
			}
		}
	}
	for _, name := range []string{"fleet-a", "fleet-b"} {
		if _, err := none.Logical().Read("teletracker/token/" + name); statusCode(err) != http.StatusForbidden {
			t.Errorf("an entity without the metadata reading token/%s: %v, want 403", name, err)
		}
	}
}

// keysOf is the sorted keys of m.
func keysOf(m map[string]interface{}) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// listKeys is the keys of a LIST answer.
func listKeys(s *api.Secret) []string {
	var keys []string
	raw, _ := s.Data["keys"].([]interface{})
	for _, k := range raw {
		keys = append(keys, k.(string))
	}
	return keys
}

package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// TestRegisterConfigureRead: the plugin is registered with its checksum and
// version, mounts, configures, and serves a token the fake accepts.
func TestRegisterConfigureRead(t *testing.T) {
	defaultAccountOnly(t, "the catalog entry, the mount and its paths' help belong to the mount, not to an account")
	c := env.dev.client
	entry, err := c.Logical().ReadWithData("sys/plugins/catalog/secret/"+pluginName, map[string][]string{"version": {env.version}})
	if err != nil || entry == nil {
		t.Fatalf("catalog: %v", err)
	}
	if entry.Data["sha256"] != env.sha256 || entry.Data["version"] != env.version {
		t.Fatalf("catalog entry %v", entry.Data)
	}
	f := startFake(t)
	enableMount(t, c, "tt-basic")
	configure(t, c, "tt-basic", f, nil)
	d := readToken(t, c, "tt-basic")
	if !f.live(t, d["token"].(string)) {
		t.Fatal("the token is not accepted by the fake")
	}
	if d["token_type"] != "Bearer" || d["ttl"] == nil || d["rotation_period"] == nil {
		t.Fatalf("token data %v", d)
	}

	mounts, err := c.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts["tt-basic/"]; m == nil || m.RunningVersion != env.version || m.RunningSha256 != env.sha256 {
		t.Fatalf("mount %+v, want running version %s", m, env.version)
	}

	status, err := c.Logical().Read("tt-basic/status")
	if err != nil || status.Data["state"] != "healthy" {
		t.Fatalf("status %v %v", status, err)
	}
	for _, path := range []string{"tt-basic/token", "tt-basic/config", "tt-basic/rotate", "tt-basic/status"} {
		out, err := env.dev.cli(rootToken, "path-help", path)
		if err != nil || !strings.Contains(out, "## DESCRIPTION") {
			t.Fatalf("path-help %s: %v\n%s", path, err, out)
		}
	}
	if st := f.stats(t); st.Logins != 1 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("fake stats %+v", st)
	}
}

// TestAppPolicy: a token with only the example app policy reads the token
// and nothing else.
func TestAppPolicy(t *testing.T) {
	defaultAccountOnly(t, "the example app policy grants teletracker/token alone; TestAccountPolicyTemplating is the named accounts' policy")
	c := env.dev.client
	f := startFake(t)
	enableMount(t, c, "teletracker")
	configure(t, c, "teletracker", f, nil)

	policy, err := os.ReadFile(filepath.Join(env.repoRoot, "examples", "app-policy.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().PutPolicy("teletracker-app", string(policy)); err != nil {
		t.Fatal(err)
	}
	secret, err := c.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"teletracker-app"}, NoDefaultPolicy: true})
	if err != nil {
		t.Fatal(err)
	}
	app, err := c.Clone()
	if err != nil {
		t.Fatal(err)
	}
	app.SetToken(secret.Auth.ClientToken)

	if d := readToken(t, app, "teletracker"); !f.live(t, d["token"].(string)) {
		t.Fatal("app read a dead token")
	}
	denied := map[string]func() error{
		"write config": func() error {
			_, err := app.Logical().Write("teletracker/config", map[string]interface{}{"refresh_margin": "5m"})
			return err
		},
		"read config":   func() error { _, err := app.Logical().Read("teletracker/config"); return err },
		"delete config": func() error { _, err := app.Logical().Delete("teletracker/config"); return err },
		"rotate":        func() error { _, err := app.Logical().Write("teletracker/rotate", nil); return err },
		"read status":   func() error { _, err := app.Logical().Read("teletracker/status"); return err },
	}
	for name, f := range denied {
		if err := f(); statusCode(err) != http.StatusForbidden {
			t.Errorf("%s with the app policy: %v, want 403", name, err)
		}
	}
}

// TestAuditLogHidesSecrets: with a file audit device, neither the bearer
// token nor the credentials appear in clear in the audit log.
func TestAuditLogHidesSecrets(t *testing.T) {
	defaultAccountOnly(t, "not a failure seam: the audit device hashes every path's responses alike")
	c := env.dev.client
	f := startFake(t)
	auditFile := filepath.Join(t.TempDir(), "audit.log")
	if err := c.Sys().EnableAuditWithOptions("tt-audit", &api.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": auditFile},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Sys().DisableAudit("tt-audit") })
	enableMount(t, c, "tt-audit")
	var seed struct {
		RefreshToken string `json:"refresh_token"`
	}
	f.admin(t, http.MethodPost, "/_fake/session", map[string]string{"username": "demo"}, &seed)
	configure(t, c, "tt-audit", f, map[string]interface{}{"refresh_token": seed.RefreshToken})
	token := readToken(t, c, "tt-audit")["token"].(string)
	if _, err := c.Logical().Write("tt-audit/rotate", nil); err != nil && statusCode(err) != http.StatusTooManyRequests {
		t.Fatal(err)
	}
	rotated := readToken(t, c, "tt-audit")["token"].(string)

	log, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "tt-audit/token") {
		t.Fatal("the audit log did not record the token reads")
	}
	for name, secret := range map[string]string{"token": token, "rotated token": rotated, "password": "demo-password", "seed": seed.RefreshToken} {
		if strings.Contains(string(log), secret) {
			t.Errorf("the %s appears in clear in the audit log", name)
		}
	}
}

// TestTwoMounts: two mounts of the plugin hold independent sessions.
func TestTwoMounts(t *testing.T) {
	defaultAccountOnly(t, "two mounts' default accounts; accounts beside each other in one mount are TestNamedAccounts'")
	t.Parallel() // it waits out the floor after the config write
	c := env.dev.client
	fa, fb := startFake(t), startFake(t)
	enableMount(t, c, "tt-a")
	enableMount(t, c, "tt-b")
	configure(t, c, "tt-a", fa, nil)
	configure(t, c, "tt-b", fb, nil)
	a, b := readToken(t, c, "tt-a")["token"].(string), readToken(t, c, "tt-b")["token"].(string)
	if !fa.live(t, a) || !fb.live(t, b) || fa.live(t, b) || fb.live(t, a) {
		t.Fatal("the mounts do not hold their own sessions")
	}
	rotate(t, c, "tt-a")
	if got := readToken(t, c, "tt-b")["token"]; got != b {
		t.Fatal("rotating one mount changed the other")
	}
	if got := readToken(t, c, "tt-a")["token"]; got == a {
		t.Fatal("rotate did not change the token")
	}
	if fa.stats(t).Refreshes != 1 || fb.stats(t).Refreshes != 0 {
		t.Fatalf("refreshes a=%d b=%d", fa.stats(t).Refreshes, fb.stats(t).Refreshes)
	}
}

// TestAgentRendersRotations: Vault Agent with the example config renders the
// token, and after a rotation holds the new one within the advertised ttl
// plus a few seconds.
func TestAgentRendersRotations(t *testing.T) {
	t.Parallel() // a long test: it runs beside the other long ones
	c := env.dev.client
	f := startFake(t, "-token-lifetime", "24s") // margin is half: a new token every 12 s
	enableMount(t, c, "teletracker-agent")
	configureAccount(t, c, "teletracker-agent", testAccount, f, nil)
	a := startAgent(t, "teletracker-agent")
	for rotation := 0; rotation < 2; rotation++ {
		first := a.rendered()
		d := readAccountToken(t, c, "teletracker-agent", testAccount)
		secs := time.Duration(jsonInt(t, d["ttl"])) * time.Second
		limit := secs + 5*time.Second
		start := time.Now()
		if err := waitFor(limit, func() error {
			if a.rendered() == first {
				return os.ErrExist
			}
			return nil
		}); err != nil {
			t.Fatalf("rotation %d: file unchanged %v after a read said ttl %v:\n%s", rotation, time.Since(start), secs, a.out.String())
		}
		if !f.live(t, a.rendered()) {
			t.Fatal("agent rendered a dead token")
		}
	}
	if st := f.stats(t); st.ReusedRefreshTokens != 0 {
		t.Fatalf("%+v", st)
	}
}

// TestAgentAfterForcedRotation: after a rotate, the old token stays valid
// (Teletracker cannot revoke it) and Vault Agent keeps rendering it, since
// the ttl it read pointed at the scheduled rotation; restarted, Agent
// renders the new token at once.
func TestAgentAfterForcedRotation(t *testing.T) {
	t.Parallel() // it waits out the floor after the config write
	c := env.dev.client
	f := startFake(t, "-token-lifetime", "2m") // ttl 1 m: far beyond this test
	enableMount(t, c, "teletracker-forced")
	configureAccount(t, c, "teletracker-forced", testAccount, f, nil)
	a := startAgent(t, "teletracker-forced")
	old := a.rendered()
	rotateAccount(t, c, "teletracker-forced", testAccount)
	fresh := readAccountToken(t, c, "teletracker-forced", testAccount)["token"].(string)
	if fresh == old || !f.live(t, old) || !f.live(t, fresh) {
		t.Fatal("after the rotate the old token and the new one are not both live and different")
	}
	time.Sleep(3 * time.Second) // Agent would have re-read by now if it could tell
	if got := a.rendered(); got != old {
		t.Fatalf("Agent rendered %q before its ttl ran out, want the old token still", got)
	}
	a.stop()
	a = startAgent(t, "teletracker-forced")
	if err := waitFor(10*time.Second, func() error {
		if a.rendered() != fresh {
			return os.ErrExist
		}
		return nil
	}); err != nil {
		t.Fatalf("restarted, Agent did not render the new token:\n%s", a.out.String())
	}
}

// agent is one Vault Agent process, run with the example config against the
// shared dev server.
type agent struct {
	cmd  *exec.Cmd
	dir  string
	out  *lockedBuffer
	done bool
}

// startAgent runs Vault Agent with examples/agent.hcl and its template,
// pointed at mount's token of testAccount, and waits for its first
// rendering.
func startAgent(t *testing.T, mount string) *agent {
	t.Helper()
	a := &agent{dir: t.TempDir(), out: &lockedBuffer{}}
	for _, name := range []string{"agent.hcl", "teletracker-token.ctmpl"} {
		b, err := os.ReadFile(filepath.Join(env.repoRoot, "examples", name))
		if err != nil {
			t.Fatal(err)
		}
		// The examples read the conventional mount's default account; a
		// test has its own mount, and the named run its account.
		b = []byte(strings.ReplaceAll(string(b), `"teletracker/token"`, `"`+accountPath(mount, "token", testAccount)+`"`))
		if err := os.WriteFile(filepath.Join(a.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(a.dir, "vault-token"), []byte(rootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(env.vaultBin, "agent", "-config=agent.hcl")
	a.cmd.Dir = a.dir
	a.cmd.Env = append(cleanEnv(), "HOME="+a.dir, "VAULT_ADDR="+env.dev.addr)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	if err := waitFor(20*time.Second, func() error {
		if a.rendered() == "" {
			return os.ErrNotExist
		}
		return nil
	}); err != nil {
		t.Fatalf("agent rendered nothing:\n%s", a.out.String())
	}
	return a
}

// rendered is the token file's content, empty before the first rendering.
func (a *agent) rendered() string {
	b, _ := os.ReadFile(filepath.Join(a.dir, "teletracker-token"))
	return string(b)
}

// stop ends the agent, once.
func (a *agent) stop() {
	if a.done {
		return
	}
	a.done = true
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	_ = a.cmd.Wait()
}

// TestRestartKeepsSession: a Vault server with file storage is killed with
// SIGKILL and restarted; after unseal it serves a working token without a
// new login and without re-using a refresh token.
func TestRestartKeepsSession(t *testing.T) {
	t.Parallel() // a long test: it runs beside the other long ones
	f := startFake(t)
	cfgPath, addr := writeServerConfig(t, "restart", env.pluginDir)
	start := func() *vaultServer {
		v, err := startVault("restart", []string{"server", "-config=" + cfgPath, "-log-level=debug"}, addr, "")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := start()
	t.Cleanup(func() { v.stop() })
	init, err := v.client.Sys().Init(&api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	unseal := func() {
		if _, err := v.client.Sys().Unseal(init.Keys[0]); err != nil {
			t.Fatal(err)
		}
		v.client.SetToken(init.RootToken)
		if err := waitFor(30*time.Second, func() error {
			_, err := v.client.Sys().ListMounts()
			return err
		}); err != nil {
			t.Fatalf("not active after unseal: %v\n%s", err, v.output())
		}
	}
	unseal()
	if err := registerPlugin(v.client); err != nil {
		t.Fatal(err)
	}
	enableMount(t, v.client, "teletracker")
	configureAccount(t, v.client, "teletracker", testAccount, f, nil)
	rotateAccount(t, v.client, "teletracker", testAccount)
	before := readAccountToken(t, v.client, "teletracker", testAccount)["token"].(string)

	v.kill()
	v = start()
	unseal()
	after := readAccountToken(t, v.client, "teletracker", testAccount)["token"].(string)
	if after != before || !f.live(t, after) {
		t.Fatal("after the restart the engine does not serve its live token")
	}
	// The stored refresh token still works: rotate once more (the 10 s
	// floor since the last refresh has passed by now, or we wait for it).
	if err := waitFor(15*time.Second, func() error {
		_, err := v.client.Logical().Write(accountPath("teletracker", "rotate", testAccount), nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if tok := readAccountToken(t, v.client, "teletracker", testAccount)["token"].(string); tok == after || !f.live(t, tok) {
		t.Fatal("rotate after the restart did not give a new live token")
	}
	st := f.stats(t)
	if st.Logins != 1 || st.ReusedRefreshTokens != 0 || st.Refreshes != 2 {
		t.Fatalf("fake stats %+v: want 1 login, 2 refreshes, no re-use", st)
	}
}

// TestRetryAfterReachesClients: Vault passes a 429's Retry-After on to the
// HTTP client when the mount's allowed_response_headers lists it, and drops
// it otherwise; Vault's CLI, told to retry, waits that long and succeeds.
func TestRetryAfterReachesClients(t *testing.T) {
	t.Parallel() // it waits out the floor after the config write
	c := env.dev.client
	f := startFake(t)
	if err := c.Sys().Mount("tt-retry-after", &api.MountInput{Type: pluginName, Config: api.MountConfigInput{
		PluginVersion: env.version, AllowedResponseHeaders: []string{"Retry-After"},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Sys().Unmount("tt-retry-after") })
	enableMount(t, c, "tt-no-retry-after")
	configureAccount(t, c, "tt-retry-after", testAccount, f, nil)
	configureAccount(t, c, "tt-no-retry-after", testAccount, f, nil)

	rotate := func(mount string) (int, string) {
		req, _ := http.NewRequest(http.MethodPut, env.dev.addr+"/v1/"+accountPath(mount, "rotate", testAccount), nil)
		req.Header.Set("X-Vault-Token", rootToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	status, header := rotate("tt-retry-after")
	if secs, err := strconv.Atoi(header); status != http.StatusTooManyRequests || err != nil || secs < 1 || secs > 10 {
		t.Fatalf("rotate inside the floor, header allowed: %d, Retry-After %q; want 429 and 1 to 10 s", status, header)
	}
	if status, header := rotate("tt-no-retry-after"); status != http.StatusTooManyRequests || header != "" {
		t.Fatalf("rotate inside the floor, header not allowed: %d, Retry-After %q; want 429 and none", status, header)
	}
	cli := exec.Command(env.vaultBin, "write", "-f", accountPath("tt-retry-after", "rotate", testAccount))
	cli.Env = append(cleanEnv(), "HOME="+t.TempDir(), "VAULT_ADDR="+env.dev.addr, "VAULT_TOKEN="+rootToken,
		"VAULT_MAX_RETRIES=1") // the CLI retries nothing by default
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("the CLI did not wait for Retry-After and succeed: %v\n%s", err, out)
	}
}

// TestMergedOpenAPIHasBodies: in Vault's merged OpenAPI document, the
// engine's request and response bodies have their schemas.
func TestMergedOpenAPIHasBodies(t *testing.T) {
	defaultAccountOnly(t, "the merged OpenAPI document describes the mount's paths, whatever accounts it holds")
	c := env.dev.client
	enableMount(t, c, "tt-openapi")
	req, _ := http.NewRequest(http.MethodGet, env.dev.addr+"/v1/sys/internal/specs/openapi", nil)
	req.Header.Set("X-Vault-Token", rootToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	type schema struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	type content struct {
		JSON struct {
			Schema schema `json:"schema"`
		} `json:"application/json"`
	}
	var doc struct {
		Paths map[string]struct {
			Get struct {
				Responses map[string]struct {
					Content content `json:"content"`
				} `json:"responses"`
			} `json:"get"`
			Post struct {
				RequestBody struct {
					Content content `json:"content"`
				} `json:"requestBody"`
			} `json:"post"`
		} `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the merged document: %d %v", resp.StatusCode, err)
	}
	paths := doc.Paths
	if p := paths["/tt-openapi/config"].Post.RequestBody.Content.JSON.Schema.Properties; p["password"] == nil {
		t.Errorf("config's request body in the merged document: %v, want its fields", p)
	}
	if p := paths["/tt-openapi/token"].Get.Responses["200"].Content.JSON.Schema.Properties; p["token"] == nil {
		t.Errorf("token's response in the merged document: %v, want its fields", p)
	}
}

// Package e2e drives a real Vault binary, with the plugin registered and the
// fake Teletracker binary behind it. `make test` runs it; alone,
// `go test ./e2e/` builds what it needs (Vault through scripts/vault.sh).
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

const (
	rootToken  = "root"
	pluginName = "teletracker"
	pluginBin  = "vault-plugin-secrets-teletracker"
)

// env is what every test shares: the binaries, the plugin's version and
// checksum, and one dev Vault server with the plugin registered.
var env struct {
	vaultBin  string // the Vault binary
	fakettBin string // the fake Teletracker binary
	pluginDir string // holds the plugin binary
	version   string // the version the plugin was built with
	sha256    string // of the plugin binary
	dev       *vaultServer
	workDir   string // scratch space removed after the run
	repoRoot  string // the repository, for examples/
}

// testAccount is the account the tests of the failure seams (restart,
// Retry-After, Vault Agent, HA failover, soak) run against:
// TELETRACKER_E2E_ACCOUNT, the default account when it is empty. make e2e
// runs the suite for both; a test that has nothing to prove for a named
// account skips in the named run (defaultAccountOnly).
var testAccount = os.Getenv("TELETRACKER_E2E_ACCOUNT")

// defaultAccountOnly skips t in the named run, saying why.
func defaultAccountOnly(t *testing.T, why string) {
	t.Helper()
	if testAccount != "" {
		t.Skipf("not run for a named account (TELETRACKER_E2E_ACCOUNT=%s): %s", testAccount, why)
	}
}

func TestMain(m *testing.M) {
	code := func() int {
		if err := setup(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e setup:", err)
			return 1
		}
		defer teardown()
		return m.Run()
	}()
	os.Exit(code)
}

// setup finds or builds the binaries and starts the shared dev server.
func setup() error {
	var err error
	if env.workDir, err = os.MkdirTemp("", "teletracker-e2e-"); err != nil {
		return err
	}
	if env.repoRoot, err = filepath.Abs(".."); err != nil {
		return err
	}
	env.version = os.Getenv("VERSION")
	if env.version == "" {
		env.version = "v0.0.0-e2e"
	}
	env.pluginDir = filepath.Join(env.workDir, "plugins")
	if err := os.MkdirAll(env.pluginDir, 0o755); err != nil {
		return err
	}
	plugin := filepath.Join(env.pluginDir, pluginBin)
	if src := os.Getenv("PLUGIN_BIN"); src != "" {
		if os.Getenv("VERSION") == "" {
			return errors.New("PLUGIN_BIN needs VERSION, the version it was built with")
		}
		if err := copyFile(src, plugin); err != nil {
			return err
		}
	} else if err := goBuild(plugin, "./cmd/"+pluginBin,
		"-X github.com/teletracker/vault-plugin-secrets-teletracker.Version="+env.version); err != nil {
		return err
	}
	if env.sha256, err = fileSHA256(plugin); err != nil {
		return err
	}
	if env.fakettBin = os.Getenv("FAKETT_BIN"); env.fakettBin == "" {
		env.fakettBin = filepath.Join(env.workDir, "fakett")
		if err := goBuild(env.fakettBin, "./cmd/fakett", ""); err != nil {
			return err
		}
	}
	if env.vaultBin = os.Getenv("VAULT_BIN"); env.vaultBin == "" {
		cmd := exec.Command(filepath.Join(env.repoRoot, "scripts", "vault.sh"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("scripts/vault.sh: %w", err)
		}
		env.vaultBin = strings.TrimSpace(string(out))
	}
	env.dev, err = startDevVault("shared-dev")
	if err != nil {
		return err
	}
	return registerPlugin(env.dev.client)
}

func teardown() {
	if env.dev != nil {
		env.dev.stop()
	}
	_ = os.RemoveAll(env.workDir)
}

// goBuild builds pkg (relative to the repository) into out.
func goBuild(out, pkg, ldflags string) error {
	cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Dir = env.repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

func fileSHA256(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// registerPlugin registers the plugin with its checksum and version.
func registerPlugin(c *api.Client) error {
	_, err := c.Logical().Write("sys/plugins/catalog/secret/"+pluginName, map[string]interface{}{
		"command": pluginBin,
		"sha256":  env.sha256,
		"version": env.version,
	})
	return err
}

// enableMount mounts the plugin at path with its registered version.
func enableMount(t *testing.T, c *api.Client, path string) {
	t.Helper()
	err := c.Sys().Mount(path, &api.MountInput{Type: pluginName, Config: api.MountConfigInput{PluginVersion: env.version}})
	if err != nil {
		t.Fatalf("enable %s: %v", path, err)
	}
	t.Cleanup(func() { _ = c.Sys().Unmount(path) })
}

// freePort returns a loopback port that is free, with the next one free too
// (a Vault server's cluster listener takes port+1).
func freePort(t testing.TB) int {
	t.Helper()
	port, err := freePortPair()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// freePortPair finds two consecutive free loopback ports below the kernel's
// ephemeral range, where no outgoing connection (and no listener on port 0)
// can take one between this check and the server binding it.
func freePortPair() (int, error) {
	low, high := 10000, 30000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if lo, err := strconv.Atoi(f[0]); err == nil && lo > 3000 {
				low, high = lo/3, lo-2
			}
		}
	}
	var lastErr error
	for i := 0; i < 200; i++ {
		port := low + rand.IntN(high-low)
		l1, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			lastErr = err
			continue
		}
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
		_ = l1.Close()
		if err == nil {
			_ = l2.Close()
			return port, nil
		}
		lastErr = err
	}
	return 0, fmt.Errorf("no free pair of loopback ports: %v", lastErr)
}

// vaultServer is one Vault process started by a test.
type vaultServer struct {
	name   string
	addr   string
	dir    string
	cmd    *exec.Cmd
	client *api.Client
	log    *bytes.Buffer // its output, for failure messages
	mu     *sync.Mutex
}

// startDevVault starts `vault server -dev` on loopback with the plugin dir.
func startDevVault(name string) (*vaultServer, error) {
	return startDevVaultIn(name, env.pluginDir)
}

// startDevVaultIn starts `vault server -dev` on loopback with pluginDir as
// its plugin_directory.
func startDevVaultIn(name, pluginDir string) (*vaultServer, error) {
	port, err := freePortPair()
	if err != nil {
		return nil, err
	}
	return startVault(name, []string{
		"server", "-dev", "-dev-root-token-id=" + rootToken,
		"-dev-listen-address=127.0.0.1:" + strconv.Itoa(port),
		"-dev-plugin-dir=" + pluginDir, "-log-level=debug",
	}, "http://127.0.0.1:"+strconv.Itoa(port), rootToken)
}

// writeServerConfig writes the configuration of a Vault server that is not
// a dev server, on loopback: file storage in env.workDir/name, pluginDir as
// its plugin_directory. It returns the file and the server's address.
func writeServerConfig(t testing.TB, name, pluginDir string) (cfgPath, addr string) {
	t.Helper()
	dir := filepath.Join(env.workDir, name)
	port := freePort(t)
	addr = "http://127.0.0.1:" + strconv.Itoa(port)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	config := `
storage "file" { path = "` + filepath.Join(dir, "data") + `" }
listener "tcp" {
  address         = "127.0.0.1:` + strconv.Itoa(port) + `"
  cluster_address = "127.0.0.1:` + strconv.Itoa(port+1) + `"
  tls_disable     = true
}
api_addr         = "` + addr + `"
plugin_directory = "` + pluginDir + `"
disable_mlock    = true
`
	cfgPath = filepath.Join(dir, "vault.hcl")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, addr
}

// startVault runs the Vault binary with args and waits for it to answer.
func startVault(name string, args []string, addr, token string) (*vaultServer, error) {
	dir := filepath.Join(env.workDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	v := &vaultServer{name: name, addr: addr, dir: dir, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	v.cmd = exec.Command(env.vaultBin, args...)
	v.cmd.Dir = dir
	v.cmd.Env = append(cleanEnv(), "HOME="+dir)
	v.cmd.Stdout = lockedWriter{v.mu, v.log}
	v.cmd.Stderr = lockedWriter{v.mu, v.log}
	// Its own process group, so that stopping it stops its plugins too.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := v.cmd.Start(); err != nil {
		return nil, err
	}
	c, err := api.NewClient(&api.Config{Address: addr, Timeout: 30 * time.Second})
	if err != nil {
		v.stop()
		return nil, err
	}
	c.SetToken(token)
	v.client = c
	if err := waitFor(30*time.Second, func() error {
		_, err := c.Sys().Health()
		return err
	}); err != nil {
		v.stop()
		return nil, fmt.Errorf("vault %s did not start: %v\n%s", name, err, v.output())
	}
	return v, nil
}

// cleanEnv is the environment without anything that points a Vault CLI or
// server somewhere else.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "HOME=") {
			out = append(out, kv)
		}
	}
	return out
}

// stop ends the server and its plugins: SIGTERM, then SIGKILL after 10 s.
func (v *vaultServer) stop() {
	if v.cmd == nil || v.cmd.Process == nil {
		return
	}
	pid := v.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = v.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL) // any plugin left in the group
	v.cmd = nil
}

// kill ends the server and its plugins at once, as a crash would.
func (v *vaultServer) kill() {
	pid := v.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = v.cmd.Wait()
	v.cmd = nil
}

func (v *vaultServer) output() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.log.String()
}

// cli runs the Vault CLI against v with token and returns its output.
func (v *vaultServer) cli(token string, args ...string) (string, error) {
	cmd := exec.Command(env.vaultBin, args...)
	cmd.Env = append(cleanEnv(), "HOME="+v.dir, "VAULT_ADDR="+v.addr, "VAULT_TOKEN="+token)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// request sends method to /v1/path on v with token, without the API
// client's handling of a 404, and returns the status and the body.
func (v *vaultServer) request(t testing.TB, token, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, v.addr+"/v1/"+path, nil)
	req.Header.Set("X-Vault-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// lockedBuffer collects a process's output safely.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// jsonInt reads a number from API response data.
func jsonInt(t testing.TB, v interface{}) int64 {
	t.Helper()
	n, ok := v.(json.Number)
	if !ok {
		t.Fatalf("%v (%T) is not a number", v, v)
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatal(err)
	}
	return i
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// waitFor polls f every 100 ms until it succeeds or timeout passes.
func waitFor(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fake is one fake Teletracker process.
type fake struct {
	url string
	cmd *exec.Cmd
}

// startFake runs the fake Teletracker binary on a loopback port with args.
func startFake(t testing.TB, args ...string) *fake {
	t.Helper()
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addr")
	cmd := exec.Command(env.fakettBin, append([]string{"-addr-file", addrFile}, args...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &fake{cmd: cmd}
	t.Cleanup(f.stop)
	if err := waitFor(10*time.Second, func() error {
		b, err := os.ReadFile(addrFile)
		f.url = string(b)
		return err
	}); err != nil {
		t.Fatalf("fakett did not start: %v", err)
	}
	return f
}

func (f *fake) stop() {
	if f.cmd != nil && f.cmd.Process != nil {
		_ = f.cmd.Process.Signal(syscall.SIGTERM)
		_ = f.cmd.Wait()
		f.cmd = nil
	}
}

// stats is the fake's /_fake/stats answer.
func (f *fake) stats(t testing.TB) fakett.Stats {
	t.Helper()
	var s fakett.Stats
	f.admin(t, http.MethodGet, "/_fake/stats", nil, &s)
	return s
}

// live asks the fake's protected endpoint whether token is accepted.
func (f *fake) live(t testing.TB, token string) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, f.url+"/api/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// admin calls the fake's admin API.
func (f *fake) admin(t testing.TB, method, path string, in, out interface{}) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, f.url+path, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fake %s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
}

// accountPath is the path of route (config, token, rotate or status) of
// mount's account name; name "" is the default account. A named account's
// config is at accounts/<name>.
func accountPath(mount, route, name string) string {
	switch {
	case name == "":
		return mount + "/" + route
	case route == "config":
		return mount + "/accounts/" + name
	}
	return mount + "/" + route + "/" + name
}

// configure writes a config that logs in to f.
func configure(t *testing.T, c *api.Client, mount string, f *fake, extra map[string]interface{}) {
	t.Helper()
	configureAccount(t, c, mount, "", f, extra)
}

// configureAccount writes the config of mount's account name (the default
// for "") that logs in to f.
func configureAccount(t testing.TB, c *api.Client, mount, name string, f *fake, extra map[string]interface{}) {
	t.Helper()
	if err := writeAccount(c, mount, name, f, extra); err != nil {
		t.Fatalf("configure %s: %v", accountPath(mount, "config", name), err)
	}
}

// writeAccount writes the config of mount's account name (the default for
// "") that logs in to f, and says how that went: for goroutines, which
// cannot end a test.
func writeAccount(c *api.Client, mount, name string, f *fake, extra map[string]interface{}) error {
	data := map[string]interface{}{"base_url": f.url, "username": "demo", "password": "demo-password"}
	for k, v := range extra {
		data[k] = v
	}
	_, err := c.Logical().Write(accountPath(mount, "config", name), data)
	return err
}

// readToken reads mount/token and returns its data.
func readToken(t testing.TB, c *api.Client, mount string) map[string]interface{} {
	t.Helper()
	return readAccountToken(t, c, mount, "")
}

// readAccountToken reads the token of mount's account name (the default
// for "") and returns its data.
func readAccountToken(t testing.TB, c *api.Client, mount, name string) map[string]interface{} {
	t.Helper()
	path := accountPath(mount, "token", name)
	s, err := c.Logical().ReadWithContext(context.Background(), path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if s == nil {
		t.Fatalf("read %s: no data", path)
	}
	return s.Data
}

// statusCode is the HTTP status of a failed API call, 0 if none.
func statusCode(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// rotate forces a rotation of mount through c, trying again while the
// engine answers 429 (its 10 s floor after the config write's login), for at
// most 20 s.
func rotate(t testing.TB, c *api.Client, mount string) {
	t.Helper()
	rotateAccount(t, c, mount, "")
}

// rotateAccount forces a rotation of mount's account name (the default for
// "") as rotate does.
func rotateAccount(t testing.TB, c *api.Client, mount, name string) {
	t.Helper()
	path := accountPath(mount, "rotate", name)
	err := waitFor(20*time.Second, func() error {
		_, err := c.Logical().Write(path, nil)
		if err != nil && statusCode(err) != http.StatusTooManyRequests {
			t.Fatalf("rotate %s: %v", path, err)
		}
		return err
	})
	if err != nil {
		t.Fatalf("rotate %s: %v", path, err)
	}
}

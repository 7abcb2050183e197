package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// upgradeVersion is the version of the second release the test builds.
const upgradeVersion = "v9.9.9-e2e"

// TestReleaseInstallUpgrade installs this platform's release archive from
// DIST_DIR (what `make release` wrote, with VERSION) into a Vault server
// that is not a dev server (file storage, plugin_directory, init, unseal,
// login), with the README's own commands: install, register, enable,
// configure against the fake, read. Then, while the token is read without a
// pause, it upgrades the mount to a second release built here, rolls it
// back, and deregisters the second version, with the README's commands
// again. Not one read fails, and the session goes on through both versions
// without another call to Teletracker.
func TestReleaseInstallUpgrade(t *testing.T) {
	defaultAccountOnly(t, "the install, upgrade and rollback run the README's blocks, which use the default account")
	dist := os.Getenv("DIST_DIR")
	if dist == "" {
		t.Skip("DIST_DIR is not set: `make e2e` sets it after `make release`")
	}
	t.Parallel()
	platform := runtime.GOOS + "_" + runtime.GOARCH
	newDist := filepath.Join(t.TempDir(), "dist")
	build := buildRelease(t, newDist, upgradeVersion) // while Vault starts

	pluginDir, downloads := t.TempDir(), t.TempDir()
	v := startServerVault(t, "release", pluginDir)
	c := v.client
	f := startFake(t)
	onDisk := [][2]string{{"sudo ", ""}, {"/etc/vault/plugins/", pluginDir + "/"}}
	release := func(dist, version string) map[string]string {
		return map[string]string{"VERSION": strings.TrimPrefix(version, "v"), "PLATFORM": platform, "URL": "file://" + dist}
	}

	readmeScript{
		blocks: []string{"install", "register", "enable"},
		set:    release(dist, env.version),
		replace: append(onDisk, [2]string{"username=me@example.com password=…",
			"base_url=" + f.url + " username=demo password=demo-password"}),
	}.run(t, v, downloads)
	token := readToken(t, c, "teletracker")["token"].(string)
	if !f.live(t, token) {
		t.Fatal("the token is not accepted by the fake")
	}
	wantRunning(t, v, env.version, sumOf(t, dist, platform))

	// From here on, the token is read without a pause until the end.
	var reads, failures atomic.Int64
	var firstFailure atomic.Value
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s, err := c.Logical().Read("teletracker/token")
			if err == nil && (s == nil || s.Data["token"] != token) {
				err = fmt.Errorf("read %v, want the token", s)
			}
			if err != nil {
				failures.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			} else {
				reads.Add(1)
			}
			time.Sleep(5 * time.Millisecond) // continuous, leaving the CPU to the rest
		}
	}()
	stopReading := sync.OnceFunc(func() { close(stop); <-stopped })
	t.Cleanup(stopReading)

	if err := build(); err != nil {
		t.Fatal(err)
	}
	first, second := strings.TrimPrefix(env.version, "v"), strings.TrimPrefix(upgradeVersion, "v")
	upgrade := release(newDist, upgradeVersion)
	upgrade["TO"] = second
	before := reads.Load()
	readmeScript{blocks: []string{"install", "register", "upgrade"}, set: upgrade, replace: onDisk}.run(t, v, downloads)
	wantRunning(t, v, upgradeVersion, sumOf(t, newDist, platform))

	readmeScript{blocks: []string{"upgrade"}, set: map[string]string{"TO": first}}.run(t, v, downloads)
	wantRunning(t, v, env.version, sumOf(t, dist, platform))

	out := readmeScript{blocks: []string{"deregister"}, set: map[string]string{"OLD": second}, replace: onDisk}.run(t, v, downloads)
	if strings.Contains(out, upgradeVersion) || !strings.Contains(out, env.version) {
		t.Errorf("plugin list after the deregistration:\n%s", out)
	}
	if entry, err := c.Logical().ReadWithData("sys/plugins/catalog/secret/"+pluginName,
		map[string][]string{"version": {upgradeVersion}}); err != nil || entry != nil {
		t.Errorf("catalog entry of %s after the deregistration: %v %v", upgradeVersion, entry, err)
	}
	if _, err := os.Stat(filepath.Join(pluginDir, pluginBin+"_"+second)); !os.IsNotExist(err) {
		t.Errorf("the deregistered binary is still there: %v", err)
	}

	stopReading()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d reads failed; the first: %v", n, n+reads.Load(), firstFailure.Load())
	}
	if n := reads.Load() - before; n < 10 {
		t.Fatalf("only %d reads during the upgrade and the rollback", n)
	}
	t.Logf("%d reads during the upgrade, the rollback and the deregistration; none failed", reads.Load()-before)
	if st := f.stats(t); st.Logins != 1 || st.Refreshes != 0 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("fake stats %+v: want the one login, nothing after it", st)
	}
}

// startServerVault starts a Vault server that is not a dev server (file
// storage, pluginDir as its plugin_directory), initializes it with one key,
// unseals it and logs in with the root token as an operator would; its
// client has the root token.
func startServerVault(t *testing.T, name, pluginDir string) *vaultServer {
	t.Helper()
	cfgPath, addr := writeServerConfig(t, name, pluginDir)
	v, err := startVault(name, []string{"server", "-config=" + cfgPath}, addr, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.stop)
	vault := func(args ...string) string {
		t.Helper()
		out, err := v.cli("", args...)
		if err != nil {
			t.Fatalf("vault %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	var init struct {
		Keys      []string `json:"unseal_keys_b64"`
		RootToken string   `json:"root_token"`
	}
	if err := json.Unmarshal([]byte(vault("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")), &init); err != nil {
		t.Fatal(err)
	}
	vault("operator", "unseal", init.Keys[0])
	vault("login", "-no-print", init.RootToken)
	v.client.SetToken(init.RootToken)
	if err := waitFor(30*time.Second, func() error { _, err := v.client.Sys().ListMounts(); return err }); err != nil {
		t.Fatalf("not active after unseal: %v\n%s", err, v.output())
	}
	return v
}

// wantRunning fails t unless the teletracker mount of v runs version from
// the binary with sum.
func wantRunning(t *testing.T, v *vaultServer, version, sum string) {
	t.Helper()
	mounts, err := v.client.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts["teletracker/"]; m == nil || m.RunningVersion != version || m.RunningSha256 != sum {
		t.Fatalf("mount %+v, want it to run %s from sha256 %s", m, version, sum)
	}
}

// sumOf is the sum SHA256SUMS.binaries in dist gives platform's binary.
func sumOf(t *testing.T, dist, platform string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS.binaries"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.Contains(f[1], "_"+platform+"/") {
			return f[0]
		}
	}
	t.Fatalf("SHA256SUMS.binaries in %s has no line for %s", dist, platform)
	return ""
}

// buildRelease starts building the release of this platform for version
// into dist, as `make release` does, and returns a function that waits for
// it. If t ends first, the build is stopped: its process group is killed.
func buildRelease(t *testing.T, dist, version string) func() error {
	cmd := exec.Command("go", "run", "./scripts/release", "-dist", dist, "-version", version,
		"-platforms", runtime.GOOS+"/"+runtime.GOARCH)
	cmd.Dir = env.repoRoot
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return func() error { return err }
	}
	var err error
	ended := make(chan struct{})
	go func() { err = cmd.Wait(); close(ended) }()
	t.Cleanup(func() {
		select {
		case <-ended:
		default: // the test failed first
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-ended
		}
	})
	return func() error {
		<-ended
		if err != nil {
			return fmt.Errorf("the release of %s: %v\n%s", version, err, out.String())
		}
		return nil
	}
}

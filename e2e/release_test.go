package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// TestReleaseArchive installs this platform's release archive from
// DIST_DIR (what `make release` wrote, with VERSION) the way the README
// tells an operator to, with its commands: check the archive against
// SHA256SUMS, unpack the binary into a fresh plugin directory, register it
// with the sum from SHA256SUMS.binaries and the version, enable, configure
// against the fake and read a token.
func TestReleaseArchive(t *testing.T) {
	dist := os.Getenv("DIST_DIR")
	if dist == "" {
		t.Skip("DIST_DIR is not set: `make e2e` sets it after `make release`")
	}
	t.Parallel()
	osArch := runtime.GOOS + "_" + runtime.GOARCH
	archive := fmt.Sprintf("%s_%s_%s.tar.gz", pluginBin, strings.TrimPrefix(env.version, "v"), osArch)
	pluginDir := t.TempDir()
	run(t, dist, "sha256sum", "-c", "--ignore-missing", "SHA256SUMS")
	run(t, dist, "tar", "-xzf", archive, "-C", pluginDir, pluginBin)
	sum := strings.Fields(run(t, dist, "grep", "_"+osArch+"/", "SHA256SUMS.binaries"))[0]

	v, err := startDevVaultIn("release", pluginDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.stop)
	vault := func(args ...string) string {
		t.Helper()
		out, err := v.cli(rootToken, args...)
		if err != nil {
			t.Fatalf("vault %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	vault("plugin", "register", "-sha256="+sum, "-version="+env.version,
		"-command="+pluginBin, "secret", pluginName)
	vault("secrets", "enable", "-path=teletracker", "-plugin-version="+env.version, pluginName)
	if out := vault("plugin", "info", "-version="+env.version, "secret", pluginName); !strings.Contains(out, sum) ||
		!strings.Contains(out, env.version) {
		t.Errorf("plugin info does not show version %s and sum %s:\n%s", env.version, sum, out)
	}

	f := startFake(t)
	configure(t, v.client, "teletracker", f, nil)
	if tok := readToken(t, v.client, "teletracker")["token"].(string); !f.live(t, tok) {
		t.Fatal("the token is not accepted by the fake")
	}
	mounts, err := v.client.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts["teletracker/"]; m.RunningVersion != env.version || m.RunningSha256 != sum {
		t.Errorf("mount runs version %q sha256 %s, want %s %s", m.RunningVersion, m.RunningSha256, env.version, sum)
	}
}

// run runs a command in dir and returns its output, failing t if it fails.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

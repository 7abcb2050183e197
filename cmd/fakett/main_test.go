package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runMainEnv, when set, makes the test binary run main instead of the tests,
// so that a test can start the real command as a subprocess.
const runMainEnv = "FAKETT_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// secret is the password the tests run with; it must never be printed.
const secret = "pw-that-must-not-leak"

// waitForFile polls for path and returns its content.
func waitForFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if content, err := os.ReadFile(path); err == nil {
			return string(content)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s did not appear within 10s", path)
	return ""
}

// post sends form to the fake and returns the status and decoded body.
func post(t *testing.T, base, path string, form url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(base+path, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	body := map[string]any{}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", path, raw, err)
	}
	return resp.StatusCode, body
}

func TestRun(t *testing.T) {
	addrFile := filepath.Join(t.TempDir(), "addr")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr-file", addrFile, "-user", "alice", "-password", secret,
			"-token-lifetime", "90s", "-skew", "-1h"}, &stdout, &stderr)
	}()
	base := waitForFile(t, addrFile)
	if !strings.HasPrefix(base, "http://127.0.0.1:") || strings.ContainsAny(base, "\n ") {
		t.Fatalf("addr-file holds %q, want http://127.0.0.1:PORT", base)
	}

	status, session := post(t, base, "/auth/login", url.Values{"username": {"alice"}, "password": {secret}})
	if status != http.StatusOK || session["tokenLifetime"] != float64(90) {
		t.Fatalf("login: %d %v, want 200 with tokenLifetime 90", status, session)
	}
	expires, err := time.Parse(time.RFC3339, session["tokenExpiration"].(string))
	if err != nil || time.Until(expires) > 0 {
		t.Errorf("tokenExpiration %v is not an hour behind, as -skew -1h asks", session["tokenExpiration"])
	}
	refreshToken := session["refreshToken"].(string)
	status, renewed := post(t, base, "/auth/refresh", url.Values{"refresh_token": {refreshToken}})
	if status != http.StatusOK {
		t.Fatalf("refresh: %d %v", status, renewed)
	}

	// A delayed answer must not hold up shutdown.
	failReq, err := http.NewRequest(http.MethodPost, base+"/_fake/fail",
		strings.NewReader(`{"endpoint":"/auth/login","count":1,"fault":{"delay":"1m"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(failReq)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/_fake/fail: %v %v", resp, err)
	}
	resp.Body.Close()
	delayed := make(chan error, 1)
	go func() {
		resp, err := http.PostForm(base+"/auth/login", url.Values{"username": {"alice"}, "password": {secret}})
		if err == nil {
			resp.Body.Close()
		}
		delayed <- err
	}()
	waitForLoginCalls(t, base, 2)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v, want a clean exit", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of being stopped")
	}
	if err := <-delayed; err == nil {
		t.Error("the delayed login got an answer, want it abandoned at shutdown")
	}

	if got := stdout.String(); got != base+"\n" {
		t.Errorf("stdout = %q, want the URL %q", got, base)
	}
	output := stdout.String() + stderr.String()
	for _, s := range []string{secret, refreshToken, session["token"].(string), renewed["refreshToken"].(string)} {
		if strings.Contains(output, s) {
			t.Errorf("output contains a secret: %q", output)
		}
	}
}

// waitForLoginCalls polls the fake's stats until it has received n logins.
func waitForLoginCalls(t *testing.T, base string, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/_fake/stats")
		if err != nil {
			t.Fatal(err)
		}
		var stats map[string]any
		err = json.NewDecoder(resp.Body).Decode(&stats)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if stats["login_calls"] == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the fake did not receive %v logins within 10s", n)
}

func TestRunRefuses(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-addr", "0.0.0.0:0"}, "not a loopback IP"},
		{[]string{"-addr", ":0"}, "not a loopback IP"},
		{[]string{"-addr", "[::]:0"}, "not a loopback IP"},
		{[]string{"-addr", "localhost:0"}, "not a loopback IP"},
		{[]string{"-addr", "192.0.2.1:8200"}, "not a loopback IP"},
		{[]string{"-addr", "127.0.0.1"}, "missing port"},
		{[]string{"-password", ""}, "must not be empty"},
		{[]string{"-token-lifetime", "0s"}, "must be positive"},
		{[]string{"-refresh-lifetime", "-1h"}, "must be positive"},
		{[]string{"-skew", "soon"}, "invalid value"},
		{[]string{"-bogus"}, "flag provided but not defined"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-addr-file", filepath.Join(t.TempDir(), "missing", "addr")}, "no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // were it to start serving, it would stop at once
			var stdout bytes.Buffer
			err := run(ctx, tt.args, &stdout, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	var stderr bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, io.Discard, &stderr); err != nil {
		t.Errorf("run(-h) = %v, want nil", err)
	}
	if !strings.Contains(stderr.String(), "-addr-file") {
		t.Errorf("usage %q does not list -addr-file", stderr.String())
	}
}

// startMain runs the command as a subprocess with args.
func startMain(t *testing.T, args ...string) (cmd *exec.Cmd, stdout, stderr *bytes.Buffer) {
	t.Helper()
	cmd = exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	stdout, stderr = new(bytes.Buffer), new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdout, stderr
}

// waitExit waits up to 10s for cmd to exit and returns its exit code.
func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return exitErr.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatal("the command did not exit within 10s")
		return -1
	}
}

func TestMainSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			addrFile := filepath.Join(t.TempDir(), "addr")
			cmd, stdout, stderr := startMain(t, "-addr-file", addrFile, "-password", secret)
			base := waitForFile(t, addrFile)
			if status, _ := post(t, base, "/auth/login", url.Values{"username": {"demo"}, "password": {secret}}); status != http.StatusOK {
				t.Errorf("login: status %d", status)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := waitExit(t, cmd); code != 0 {
				t.Errorf("exit code %d after %v, want 0; stderr %q", code, sig, stderr.String())
			}
			if stdout.String() != base+"\n" || stderr.Len() != 0 {
				t.Errorf("stdout %q, stderr %q; want the URL and nothing", stdout.String(), stderr.String())
			}
		})
	}
}

func TestMainFails(t *testing.T) {
	cmd, stdout, stderr := startMain(t, "-addr", "0.0.0.0:0", "-password", secret)
	if code := waitExit(t, cmd); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if stdout.Len() != 0 || !strings.HasPrefix(stderr.String(), "fakett: refusing to listen") || strings.Contains(stderr.String(), secret) {
		t.Errorf("stdout %q, stderr %q; want nothing and the refusal", stdout.String(), stderr.String())
	}
}

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// platform is one GOOS/GOARCH pair the plugin is released for.
type platform struct {
	os, arch string
}

func (p platform) String() string { return p.os + "/" + p.arch }

// exe is the binary's file name on p.
func (p platform) exe() string {
	if p.os == "windows" {
		return pluginName + ".exe"
	}
	return pluginName
}

// parsePlatforms reads a space- or comma-separated list of os/arch pairs.
func parsePlatforms(s string) ([]platform, error) {
	var out []platform
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' }) {
		goos, goarch, ok := strings.Cut(f, "/")
		if !ok || goos == "" || goarch == "" {
			return nil, fmt.Errorf("platform %q is not os/arch", f)
		}
		out = append(out, platform{goos, goarch})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no platforms")
	}
	return out, nil
}

// buildPlugin compiles the plugin for p into out, the same way every time:
// with the release's Go (releaseGo), static (no cgo), no file paths, no VCS
// stamp, no build ID, symbols stripped, and the version stamped in. env is
// added to the environment (the reproducibility test passes an empty
// GOCACHE). The GOAMD64 and GOARM64 levels are the Go defaults, pinned so a
// developer's environment cannot change the output.
func buildPlugin(repo string, p platform, version, out string, env ...string) error {
	toolchain, err := releaseGo(repo)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= -X "+module+".Version="+version,
		"-o", out, "./cmd/"+pluginName)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN="+toolchain, "CGO_ENABLED=0", "GOOS="+p.os, "GOARCH="+p.arch,
		"GOAMD64=v1", "GOARM64=v8.0", "GOFLAGS=")
	cmd.Env = append(cmd.Env, env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build for %s: %v\n%s", p, err, b)
	}
	return nil
}

// goModLine finds go.mod's go and toolchain lines; goRelease is a go line
// that names a release of Go.
var (
	goModLine = regexp.MustCompile(`(?m)^(go|toolchain)[ \t]+(\S+)[ \t]*(?://.*)?$`)
	goRelease = regexp.MustCompile(`^1\.\d+\.\d+$`)
)

// releaseGo is the Go toolchain the release is built with, exactly: the one
// go.mod's toolchain line names, or else its go line (go 1.26.8 names
// go1.26.8; go mod tidy drops a toolchain line that says the same). The
// builds run with GOTOOLCHAIN set to it: where the local Go is that one it
// is used as it is; elsewhere the go command fetches that one through the
// module proxy, or fails, rather than build other bytes.
func releaseGo(repo string) (string, error) {
	b, err := os.ReadFile(filepath.Join(repo, "go.mod"))
	if err != nil {
		return "", err
	}
	lines := map[string]string{}
	for _, m := range goModLine.FindAllStringSubmatch(string(b), -1) {
		lines[m[1]] = m[2]
	}
	switch goLine := lines["go"]; {
	case lines["toolchain"] != "":
		return lines["toolchain"], nil
	case goRelease.MatchString(goLine):
		return "go" + goLine, nil
	default:
		return "", fmt.Errorf("go.mod: the go line %q names no release of Go (such as 1.26.8), and there is no toolchain line: the release would be built with whatever Go is at hand", goLine)
	}
}

// binaryPath is where the release keeps p's bare binary, relative to dist:
// a directory per platform, as goreleaser lays it out.
func binaryPath(p platform) string {
	return filepath.Join(pluginName+"_"+p.os+"_"+p.arch, p.exe())
}

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readme_test.go runs the README's own commands. A fenced sh block marked
// with <!-- e2e: NAME --> is taken as it stands; the test gives its
// variables their values and makes a few stated substitutions (a plugin
// directory of its own, no sudo), each of which must still apply, so a
// README whose commands drift from what the test runs fails it.

// readmeScript is marked blocks of README.md, run one after the other in
// one shell, as an operator would type them.
type readmeScript struct {
	// blocks are the blocks' markers.
	blocks []string
	// set gives the variables the blocks assign (NAME=value at the start of
	// a line or after a space) the test's values.
	set map[string]string
	// replace substitutes text: old, new.
	replace [][2]string
}

// text is the blocks with the test's values and substitutions.
func (s readmeScript) text(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var text string
	for _, name := range s.blocks {
		marker := "<!-- e2e: " + name + " -->\n```sh\n"
		i := strings.Index(string(b), marker)
		if i < 0 {
			t.Fatalf("README.md has no block marked %q", marker)
		}
		block := string(b[i+len(marker):])
		j := strings.Index(block, "\n```\n")
		if j < 0 {
			t.Fatalf("README.md's block %q does not end", name)
		}
		text += block[:j+1]
	}
	for _, r := range s.replace {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("README.md's blocks %q no longer hold %q:\n%s", s.blocks, r[0], text)
		}
		text = strings.ReplaceAll(text, r[0], r[1])
	}
	for name, value := range s.set {
		assign := regexp.MustCompile(`(?m)(^|[ \t])` + name + `=[^ \t\n]*`)
		if !assign.MatchString(text) {
			t.Fatalf("README.md's blocks %q no longer set %s:\n%s", s.blocks, name, text)
		}
		text = assign.ReplaceAllStringFunc(text, func(m string) string {
			return m[:strings.Index(m, name)] + name + "='" + value + "'"
		})
	}
	return text
}

// run runs the blocks with bash in dir, as an operator logged in to v would
// (with the token `vault login` stored in v's HOME), and returns their
// output; the script stops at its first failing command.
func (s readmeScript) run(t *testing.T, v *vaultServer, dir string) string {
	t.Helper()
	text := s.text(t)
	bin := t.TempDir()
	if err := os.Symlink(env.vaultBin, filepath.Join(bin, "vault")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-e", "-u", "-o", "pipefail", "-c", text)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "HOME="+v.dir, "VAULT_ADDR="+v.addr, "PATH="+bin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README.md's blocks %q: %v\n--- as run:\n%s--- output:\n%s", s.blocks, err, text, out)
	}
	return string(out)
}

// Command release builds what a release ships into a dist directory, the
// same bytes every time for the same commit and settings: the plugin for
// each platform, an archive of each, a container image of the linux ones
// (an OCI image layout, and a tar per platform for `docker load`), and
// SHA-256 sums of the archives, image tars and bare binaries. `make release`
// runs it from the repository root; `go run ./scripts/release -h` lists its
// flags.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

const (
	module     = "github.com/teletracker/vault-plugin-secrets-teletracker"
	pluginName = "vault-plugin-secrets-teletracker"
	source     = "https://" + module
	license    = "MPL-2.0"

	archiveSums = "SHA256SUMS"
	binarySums  = "SHA256SUMS.binaries"
)

// options are the release's settings: the Makefile's, passed as flags.
type options struct {
	repo      string     // the repository's root
	dist      string     // the output directory, emptied first
	version   string     // vX.Y.Z or what git describe says
	platforms []platform // what to build for; the linux ones make the image
	imageName string     // the image's name, without tag
	revision  string     // the commit, for the image's labels
	created   time.Time  // the commit's time: of every file in every archive
}

func main() {
	o := options{repo: "."}
	var platforms string
	var epoch int64
	flag.StringVar(&o.dist, "dist", "dist", "output `directory`, emptied first")
	flag.StringVar(&o.version, "version", "", "plugin `version`, vX.Y.Z (required)")
	flag.StringVar(&platforms, "platforms", "linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 "+
		"windows/amd64 windows/arm64 freebsd/amd64 freebsd/arm64", "os/arch `list`, space- or comma-separated; the linux ones make the image")
	flag.StringVar(&o.imageName, "image", "ghcr.io/teletracker/"+pluginName, "image `name`, without tag")
	flag.StringVar(&o.revision, "revision", "", "git `commit` the release is built from")
	flag.Int64Var(&epoch, "source-date-epoch", 0, "time of every file and of the image, in Unix `seconds` (the commit's time)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: go run ./scripts/release -version vX.Y.Z [flags]   (make release sets them)")
		flag.PrintDefaults()
	}
	flag.Parse()
	var err error
	if o.platforms, err = parsePlatforms(platforms); err == nil {
		o.created = time.Unix(epoch, 0).UTC()
		err = release(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

// release writes everything into o.dist.
func release(o options) error {
	if !strings.HasPrefix(o.version, "v") {
		return fmt.Errorf("version %q does not start with v", o.version)
	}
	if err := checkChangelog(o.repo, o.version); err != nil {
		return err
	}
	if err := os.RemoveAll(o.dist); err != nil {
		return err
	}
	version := strings.TrimPrefix(o.version, "v")
	var archives, binaries []string
	var linux []platform
	for _, p := range o.platforms {
		bin := binaryPath(p)
		if err := buildPlugin(o.repo, p, o.version, filepath.Join(o.dist, bin)); err != nil {
			return err
		}
		name, err := writeArchive(o, version, p)
		if err != nil {
			return err
		}
		archives, binaries = append(archives, name), append(binaries, bin)
		if p.os == "linux" {
			linux = append(linux, p)
		}
	}

	if len(linux) > 0 {
		tars, err := writeImages(o, version, linux)
		if err != nil {
			return err
		}
		archives = append(archives, tars...)
	}
	if err := writeSums(o.dist, archiveSums, archives); err != nil {
		return err
	}
	return writeSums(o.dist, binarySums, binaries)
}

// writeImages writes the image of the linux platforms: the layout in
// dist/image, and the tar of each platform for docker load, whose names it
// returns.
func writeImages(o options, version string, linux []platform) ([]string, error) {
	img := image{tag: version, created: o.created, labels: map[string]string{
		"org.opencontainers.image.title":       pluginName,
		"org.opencontainers.image.description": "Teletracker secrets engine plugin for HashiCorp Vault",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.source":      source,
		"org.opencontainers.image.revision":    o.revision,
		"org.opencontainers.image.created":     o.created.Format(time.RFC3339),
		"org.opencontainers.image.licenses":    license,
	}}
	layout := filepath.Join(o.dist, "image")
	images, err := writeLayout(layout, img, o.dist, linux)
	if err != nil {
		return nil, err
	}
	var tars []string
	for _, pi := range images {
		name := fmt.Sprintf("%s_%s_%s_%s_image.tar", pluginName, version, pi.platform.os, pi.platform.arch)
		if err := writeImageTar(filepath.Join(o.dist, name), layout, pi, img, o.imageName+":"+version); err != nil {
			return nil, err
		}
		tars = append(tars, name)
	}
	return tars, nil
}

// writeArchive packs p's binary with the license and docs: a zip for
// windows, a gzipped tar elsewhere, named as goreleaser names them.
func writeArchive(o options, version string, p platform) (string, error) {
	files := []archiveFile{
		{name: "CHANGELOG.md", src: filepath.Join(o.repo, "CHANGELOG.md"), mode: 0o644},
		{name: "LICENSE", src: filepath.Join(o.repo, "LICENSE"), mode: 0o644},
		{name: "README.md", src: filepath.Join(o.repo, "README.md"), mode: 0o644},
		{name: p.exe(), src: filepath.Join(o.dist, binaryPath(p)), mode: 0o755},
	}
	name := fmt.Sprintf("%s_%s_%s_%s", pluginName, version, p.os, p.arch)
	if p.os == "windows" {
		name += ".zip"
		return name, writeZip(filepath.Join(o.dist, name), files, o.created)
	}
	name += ".tar.gz"
	return name, writeTarGz(filepath.Join(o.dist, name), files, o.created)
}

// releaseVersion is a version that is a release, not a build between two.
var releaseVersion = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

// checkChangelog refuses to build a release that CHANGELOG.md does not
// describe under a "## vX.Y.Z" heading.
func checkChangelog(repo, version string) error {
	if !releaseVersion.MatchString(version) {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(repo, "CHANGELOG.md"))
	if err != nil {
		return err
	}
	if !regexp.MustCompile(`(?m)^## ` + regexp.QuoteMeta(version) + `\b`).Match(b) {
		return fmt.Errorf("CHANGELOG.md has no \"## %s\" heading", version)
	}
	return nil
}

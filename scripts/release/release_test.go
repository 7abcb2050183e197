package main

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The release under test: dist/ as `make release-test` passes it (DIST_DIR,
// with VERSION, IMAGE and SOURCE_DATE_EPOCH as the Makefile built it), or
// else one built here for linux only.
var (
	dist string
	want options
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "release test setup:", err)
		code = 1
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	if dist = os.Getenv("DIST_DIR"); dist != "" {
		epoch, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("SOURCE_DATE_EPOCH: %v", err)
		}
		want = options{repo: "../..", version: os.Getenv("VERSION"), imageName: os.Getenv("IMAGE"),
			created: time.Unix(epoch, 0).UTC()}
		if want.version == "" || want.imageName == "" {
			return 0, fmt.Errorf("DIST_DIR needs VERSION and IMAGE, as the release was built with")
		}
		return m.Run(), nil
	}
	tmp, err := os.MkdirTemp("", "release-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	dist = filepath.Join(tmp, "dist")
	want = options{repo: "../..", dist: dist, version: "v0.0.0-test", imageName: "registry.test/plugin",
		platforms: []platform{{"linux", "amd64"}, {"linux", "arm64"}}, revision: "0123abc",
		created: time.Unix(1700000000, 0).UTC()}
	if err := release(want); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

// TestSums checks both sums files against the files they name, that they
// name every archive, image tar and binary, and that each archive holds
// its platform's binary (by that sum) with the license and docs.
func TestSums(t *testing.T) {
	archives := readSums(t, archiveSums)
	binaries := readSums(t, binarySums)
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch name := e.Name(); {
		case name == "image" || name == archiveSums || name == binarySums:
		case e.IsDir():
			if _, ok := binaries[filepath.ToSlash(filepath.Join(name, exeIn(t, name)))]; !ok {
				t.Errorf("%s: binary not in %s", name, binarySums)
			}
		case archives[name] == "":
			t.Errorf("%s not in %s", name, archiveSums)
		}
	}
	if len(binaries) == 0 || len(archives) < len(binaries) {
		t.Fatalf("%d archives and image tars for %d binaries", len(archives), len(binaries))
	}

	version := strings.TrimPrefix(want.version, "v")
	for bin, sum := range binaries {
		dir, exe := filepath.Split(bin)
		goos, goarch, _ := strings.Cut(strings.TrimPrefix(strings.TrimSuffix(dir, "/"), pluginName+"_"), "_")
		name := fmt.Sprintf("%s_%s_%s_%s", pluginName, version, goos, goarch)
		var files []entry
		if goos == "windows" {
			files = readZip(t, filepath.Join(dist, name+".zip"))
		} else {
			files = readTarGz(t, filepath.Join(dist, name+".tar.gz"))
		}
		var names []string
		for _, f := range files {
			names = append(names, f.name)
			if !f.modTime.Equal(want.created) || f.uid != 0 || f.gid != 0 {
				t.Errorf("%s: %s has mtime %v, owner %d:%d; want %v, 0:0", name, f.name, f.modTime, f.uid, f.gid, want.created)
			}
			if f.name == exe && (sha256Hex(f.data) != sum || f.mode != 0o755) {
				t.Errorf("%s: %s mode %o is not the binary in %s, mode 755", name, exe, f.mode, binarySums)
			}
		}
		if got, w := strings.Join(names, " "), "CHANGELOG.md LICENSE README.md "+exe; got != w {
			t.Errorf("%s holds %s, want %s", name, got, w)
		}
	}
}

// TestImage unpacks the image layout: an index of both linux platforms,
// each the binary alone (the one in the sums) at the entrypoint, with the
// labels; and checks that each platform's tar for docker load holds the
// same image under the same name, in both the forms docker load reads.
func TestImage(t *testing.T) {
	binaries := readSums(t, binarySums)
	layout := filepath.Join(dist, "image")
	var top index
	readJSON(t, filepath.Join(layout, "index.json"), &top)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != mediaTypeIndex {
		t.Fatalf("index.json: %+v, want one image index", top)
	}
	tag := strings.TrimPrefix(want.version, "v")
	if ref := top.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; ref != tag {
		t.Errorf("index.json names the image %q, want %q", ref, tag)
	}
	var idx index
	readBlob(t, layout, top.Manifests[0], &idx)

	wantLabels := map[string]string{
		"org.opencontainers.image.title":       pluginName,
		"org.opencontainers.image.description": "Teletracker secrets engine plugin for HashiCorp Vault",
		"org.opencontainers.image.version":     tag,
		"org.opencontainers.image.source":      "https://github.com/teletracker/vault-plugin-secrets-teletracker",
		"org.opencontainers.image.created":     want.created.Format(time.RFC3339),
		"org.opencontainers.image.licenses":    "MPL-2.0",
	}
	var platforms []string
	for _, m := range idx.Manifests {
		p := platform{m.Platform.OS, m.Platform.Architecture}
		platforms = append(platforms, p.String())
		t.Run(p.String(), func(t *testing.T) {
			var man manifest
			readBlob(t, layout, m, &man)
			var cfg imageConfig
			readBlob(t, layout, man.Config, &cfg)
			if cfg.OS != p.os || cfg.Architecture != p.arch || strings.Join(cfg.Config.Entrypoint, " ") != "/bin/"+pluginName {
				t.Errorf("config is %s/%s with entrypoint %q", cfg.OS, cfg.Architecture, cfg.Config.Entrypoint)
			}
			if cfg.Config.User != "65532:65532" {
				t.Errorf("the image runs as user %q, want the non-root 65532:65532", cfg.Config.User)
			}
			for k, v := range wantLabels {
				if cfg.Config.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, cfg.Config.Labels[k], v)
				}
			}
			if cfg.Config.Labels["org.opencontainers.image.revision"] == "" {
				t.Error("no revision label")
			}
			if len(man.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 || man.Layers[0].MediaType != mediaTypeLayer {
				t.Fatalf("want one gzipped layer: %+v, diff_ids %v", man.Layers, cfg.RootFS.DiffIDs)
			}
			gz := readBlob(t, layout, man.Layers[0], nil)
			layer := gunzip(t, gz)
			if "sha256:"+sha256Hex(layer) != cfg.RootFS.DiffIDs[0] {
				t.Error("the layer's diff_id is not the digest of its tar")
			}
			files := readTar(t, bytes.NewReader(layer))
			if len(files) != 2 || files[0].name != "bin/" || files[1].name != "bin/"+pluginName {
				t.Fatalf("layer holds %v, want bin/ and bin/%s only", files, pluginName)
			}
			bin := files[1]
			if sum := binaries[pluginName+"_linux_"+p.arch+"/"+pluginName]; sha256Hex(bin.data) != sum {
				t.Errorf("the layer's binary is not the one in %s (%s)", binarySums, sum)
			}
			if bin.mode != 0o755 || bin.uid != 0 || !bin.modTime.Equal(want.created) {
				t.Errorf("binary mode %o, uid %d, mtime %v", bin.mode, bin.uid, bin.modTime)
			}
			checkImageTar(t, p, m, man, gz)
		})
	}
	if got := strings.Join(platforms, " "); got != "linux/amd64 linux/arm64" {
		t.Errorf("image index has %s, want linux/amd64 linux/arm64", got)
	}
}

// checkImageTar checks p's tar for docker load against its image in the
// layout: m its manifest's descriptor, man the manifest, gz its layer.
func checkImageTar(t *testing.T, p platform, m descriptor, man manifest, gz []byte) {
	name := fmt.Sprintf("%s_%s_%s_%s_image.tar", pluginName, strings.TrimPrefix(want.version, "v"), p.os, p.arch)
	f, err := os.Open(filepath.Join(dist, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	for _, e := range readTar(t, f) {
		files[e.name] = e.data
	}
	ref := want.imageName + ":" + strings.TrimPrefix(want.version, "v")

	// The classic image store reads manifest.json.
	var dm []dockerManifest
	if err := json.Unmarshal(files["manifest.json"], &dm); err != nil {
		t.Fatalf("%s: manifest.json: %v", name, err)
	}
	if len(dm) != 1 || strings.Join(dm[0].RepoTags, " ") != ref || len(dm[0].Layers) != 1 ||
		sha256Hex(files[dm[0].Config]) != man.Config.Digest[7:] || !bytes.Equal(files[dm[0].Layers[0]], gz) {
		t.Errorf("%s: manifest.json %+v does not name %s with its config and layer", name, dm, ref)
	}

	// The containerd image store reads the OCI layout.
	var idx index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatalf("%s: index.json: %v", name, err)
	}
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` || len(idx.Manifests) != 1 ||
		idx.Manifests[0].Digest != m.Digest || idx.Manifests[0].Annotations["io.containerd.image.name"] != ref {
		t.Errorf("%s: index.json %s does not name %s with the layout's manifest", name, files["index.json"], ref)
	}
	for path, b := range files {
		if digest, ok := strings.CutPrefix(path, "blobs/sha256/"); ok && digest != "" && sha256Hex(b) != digest {
			t.Errorf("%s: %s does not match its digest", name, path)
		}
	}
}

// TestReproducible builds linux/amd64 again, from an empty build cache so
// that every package is compiled anew, and wants the released binary.
func TestReproducible(t *testing.T) {
	p := platform{"linux", "amd64"}
	out := filepath.Join(t.TempDir(), pluginName)
	start := time.Now()
	if err := buildPlugin(want.repo, p, want.version, out, "GOCACHE="+t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Logf("rebuilt %s from an empty cache in %s", p, time.Since(start).Round(time.Second))
	sum, err := fileSHA256(out)
	if err != nil {
		t.Fatal(err)
	}
	if w := readSums(t, binarySums)[binaryPath(p)]; sum != w {
		t.Errorf("a second build of %s has sha256 %s, the release's %s", p, sum, w)
	}
}

// readSums reads a sums file of dist, checking each sum against its file.
func readSums(t *testing.T, file string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dist, file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		sum, name, ok := strings.Cut(s.Text(), "  ")
		if !ok {
			t.Fatalf("%s: bad line %q", file, s.Text())
		}
		got, err := fileSHA256(filepath.Join(dist, name))
		if err != nil || got != sum {
			t.Errorf("%s: %s has sha256 %s (%v), the file says %s", file, name, got, err, sum)
		}
		sums[name] = sum
	}
	return sums
}

// exeIn is the one file in dist's directory dir.
func exeIn(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dist, dir))
	if err != nil || len(entries) != 1 {
		t.Fatalf("%s: want one binary: %v %v", dir, entries, err)
	}
	return entries[0].Name()
}

// entry is a file read from an archive.
type entry struct {
	name     string
	mode     int64
	uid, gid int
	modTime  time.Time
	data     []byte
}

func readTarGz(t *testing.T, path string) []entry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return readTar(t, bytes.NewReader(gunzip(t, b)))
}

func readTar(t *testing.T, r io.Reader) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{hdr.Name, hdr.Mode, hdr.Uid, hdr.Gid, hdr.ModTime, b})
	}
}

func readZip(t *testing.T, path string) []entry {
	t.Helper()
	zr, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var out []entry
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{f.Name, int64(f.Mode().Perm()), 0, 0, f.Modified, b})
	}
	return out
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// readBlob reads d's blob from the layout at dir, checks its digest and
// size, decodes it into v unless v is nil, and returns it.
func readBlob(t *testing.T, dir string, d descriptor, v any) []byte {
	t.Helper()
	b, err := os.ReadFile(blobPath(dir, d))
	if err != nil {
		t.Fatal(err)
	}
	if "sha256:"+sha256Hex(b) != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s does not match its descriptor", d.Digest)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("blob %s: %v", d.Digest, err)
		}
	}
	return b
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestBuiltWithReleaseGo: every binary was built with the Go that go.mod
// names, whatever Go ran the release, and the README says which.
func TestBuiltWithReleaseGo(t *testing.T) {
	toolchain, err := releaseGo(want.repo)
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(want.repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`built with ` + regexp.QuoteMeta(toolchain) + `\s`).Match(readme) {
		t.Errorf("the README does not say the release is built with %s", toolchain)
	}
	for bin := range readSums(t, binarySums) {
		info, err := buildinfo.ReadFile(filepath.Join(dist, bin))
		if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		if info.GoVersion != toolchain {
			t.Errorf("%s was built with %s, not go.mod's %s", bin, info.GoVersion, toolchain)
		}
	}
}

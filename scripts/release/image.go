package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"time"
)

// The OCI media types the image is written with.
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// entrypoint is where the image holds the plugin binary, and runs it.
const entrypoint = "/bin/" + pluginName

// imageUser is the uid:gid the image runs as: not root, the nonroot user of
// distroless images. The image has no /etc/passwd, so it is numeric. Vault's
// container runtime adds its own group (--group-add), which lets the plugin
// create its socket in the directory Vault shares with it.
const imageUser = "65532:65532"

// descriptor points at a blob (OCI image spec, descriptor.md).
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *ociPlatform      `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ociPlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// index is an image index, and the layout's index.json.
type index struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Manifests     []descriptor      `json:"manifests"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

// imageConfig is the image configuration (OCI image spec, config.md).
type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Created      string `json:"created"`
	Config       struct {
		User       string            `json:"User"`
		Entrypoint []string          `json:"Entrypoint"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// image is what the image is made of, for each platform.
type image struct {
	tag     string            // the version, without its "v", as Vault expects it
	labels  map[string]string // OCI labels, also the image index's annotations
	created time.Time         // of every file and of the image
}

// platformImage is one platform's image as written to the layout.
type platformImage struct {
	platform                platform
	manifest, config, layer descriptor
}

// writeLayout writes an OCI image layout to dir: one image index, tagged
// img.tag, of an image for each of platforms, made of its binary in dist.
// Each platform's image is the binary alone, in one layer, at entrypoint.
func writeLayout(dir string, img image, dist string, platforms []platform) ([]platformImage, error) {
	var out []platformImage
	var manifests []descriptor
	for _, p := range platforms {
		pi, err := writePlatformImage(dir, img, p, filepath.Join(dist, binaryPath(p)))
		if err != nil {
			return nil, err
		}
		out = append(out, pi)
		manifests = append(manifests, pi.manifest)
	}
	idx, err := putJSON(dir, mediaTypeIndex, index{SchemaVersion: 2, MediaType: mediaTypeIndex,
		Manifests: manifests, Annotations: img.labels})
	if err != nil {
		return nil, err
	}
	idx.Annotations = map[string]string{"org.opencontainers.image.ref.name": img.tag}
	if err := writeLayoutFiles(dir, idx); err != nil {
		return nil, err
	}
	return out, nil
}

// writeLayoutFiles writes the oci-layout marker and index.json, pointing at top.
func writeLayoutFiles(dir string, top descriptor) error {
	b, _ := json.Marshal(index{SchemaVersion: 2, MediaType: mediaTypeIndex, Manifests: []descriptor{top}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "oci-layout"), ociLayoutFile, 0o644)
}

var ociLayoutFile = []byte(`{"imageLayoutVersion":"1.0.0"}`)

// writePlatformImage writes p's layer, config and manifest as blobs of dir.
func writePlatformImage(dir string, img image, p platform, binary string) (platformImage, error) {
	var layer bytes.Buffer
	files := []archiveFile{
		{name: "bin/", mode: 0o755},
		{name: entrypoint[1:], src: binary, mode: 0o755},
	}
	if err := writeTar(&layer, files, img.created); err != nil {
		return platformImage{}, err
	}
	var gz bytes.Buffer
	zw := newGzip(&gz)
	zw.Write(layer.Bytes()) // a bytes.Buffer does not fail
	zw.Close()
	layerDesc, err := putBlob(dir, mediaTypeLayer, gz.Bytes())
	if err != nil {
		return platformImage{}, err
	}

	cfg := imageConfig{Architecture: p.arch, OS: p.os, Created: img.created.UTC().Format(time.RFC3339)}
	cfg.Config.User = imageUser
	cfg.Config.Entrypoint = []string{entrypoint}
	cfg.Config.Labels = img.labels
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = []string{"sha256:" + sha256Hex(layer.Bytes())}
	cfgDesc, err := putJSON(dir, mediaTypeConfig, cfg)
	if err != nil {
		return platformImage{}, err
	}

	m, err := putJSON(dir, mediaTypeManifest, manifest{SchemaVersion: 2, MediaType: mediaTypeManifest,
		Config: cfgDesc, Layers: []descriptor{layerDesc}})
	if err != nil {
		return platformImage{}, err
	}
	m.Platform = &ociPlatform{Architecture: p.arch, OS: p.os}
	return platformImage{platform: p, manifest: m, config: cfgDesc, layer: layerDesc}, nil
}

// putJSON stores v, as JSON, as a blob of dir.
func putJSON(dir, mediaType string, v any) (descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return descriptor{}, err
	}
	return putBlob(dir, mediaType, b)
}

// putBlob stores b under its digest in dir's blobs/sha256.
func putBlob(dir, mediaType string, b []byte) (descriptor, error) {
	d := descriptor{MediaType: mediaType, Digest: "sha256:" + sha256Hex(b), Size: int64(len(b))}
	path := blobPath(dir, d)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return descriptor{}, err
	}
	return d, os.WriteFile(path, b, 0o644)
}

// blobPath is where d's blob is in the layout at dir.
func blobPath(dir string, d descriptor) string {
	return filepath.Join(dir, filepath.FromSlash(blobName(d)))
}

package main

import (
	"encoding/json"
	"io"
	"sort"
)

// dockerManifest is one entry of a docker-archive's manifest.json, the file
// `docker load` reads on Docker's classic image store.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// writeImageTar writes one platform's image from the layout at dir to a tar
// at out that `docker load` accepts whichever image store Docker uses: like
// the tar `docker save` writes since Docker 25, it is an OCI image layout
// (read by the containerd image store) that also holds a manifest.json
// (read by the classic store, which requires it), both naming the image ref.
// It holds one platform only: the classic store would give the tag to
// whichever platform it loaded last.
func writeImageTar(out, dir string, pi platformImage, img image, ref string) error {
	blobs := []descriptor{pi.manifest, pi.config, pi.layer}
	sort.Slice(blobs, func(i, j int) bool { return blobs[i].Digest < blobs[j].Digest })
	files := []archiveFile{{name: "blobs/", mode: 0o755}, {name: "blobs/sha256/", mode: 0o755}}
	for _, d := range blobs {
		files = append(files, archiveFile{name: blobName(d), src: blobPath(dir, d), mode: 0o644})
	}

	top := pi.manifest
	top.Annotations = map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": img.tag,
	}
	idx, _ := json.Marshal(index{SchemaVersion: 2, MediaType: mediaTypeIndex, Manifests: []descriptor{top}})
	dm, _ := json.Marshal([]dockerManifest{{
		Config:   blobName(pi.config),
		RepoTags: []string{ref},
		Layers:   []string{blobName(pi.layer)},
	}})
	files = append(files,
		archiveFile{name: "index.json", data: idx, mode: 0o644},
		archiveFile{name: "manifest.json", data: dm, mode: 0o644},
		archiveFile{name: "oci-layout", data: ociLayoutFile, mode: 0o644})
	return writeFile(out, func(w io.Writer) error { return writeTar(w, files, img.created) })
}

// blobName is d's path inside a layout.
func blobName(d descriptor) string {
	return "blobs/sha256/" + d.Digest[len("sha256:"):]
}

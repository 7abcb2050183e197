package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// archiveFile is one file to put in an archive.
type archiveFile struct {
	name string // its name in the archive; a directory's ends in "/"
	src  string // where its content is on disk, or empty
	data []byte // its content when src is empty
	mode int64  // its permission bits in the archive
}

// writeTarGz writes files, in the order given, to a gzipped tar at out.
func writeTarGz(out string, files []archiveFile, modTime time.Time) error {
	return writeFile(out, func(w io.Writer) error {
		zw := newGzip(w)
		if err := writeTar(zw, files, modTime); err != nil {
			return err
		}
		return zw.Close()
	})
}

// newGzip compresses to w at the best level, with no name or time in the
// gzip header.
func newGzip(w io.Writer) *gzip.Writer {
	zw, _ := gzip.NewWriterLevel(w, gzip.BestCompression) // the level is valid
	return zw
}

// writeTar writes files, in the order given, as a tar stream to w. Nothing
// of the machine reaches it: every entry has mtime modTime, owner 0:0 with
// no user or group name, and only the mode given.
func writeTar(w io.Writer, files []archiveFile, modTime time.Time) error {
	tw := tar.NewWriter(w)
	for _, f := range files {
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: f.name, Mode: f.mode, ModTime: modTime, Format: tar.FormatUSTAR}
		var b []byte
		if !strings.HasSuffix(f.name, "/") {
			var err error
			if b, err = f.content(); err != nil {
				return err
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(b))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	return tw.Close()
}

// writeZip writes files, in the order given, to a zip at out, with the same
// care as writeTarGz: fixed times, Unix modes, no owner.
func writeZip(out string, files []archiveFile, modTime time.Time) error {
	return writeFile(out, func(w io.Writer) error {
		zw := zip.NewWriter(w)
		for _, f := range files {
			hdr := &zip.FileHeader{Name: f.name, Method: zip.Deflate, Modified: modTime}
			hdr.SetMode(os.FileMode(f.mode))
			fw, err := zw.CreateHeader(hdr)
			if err != nil {
				return err
			}
			b, err := f.content()
			if err != nil {
				return err
			}
			if _, err := fw.Write(b); err != nil {
				return err
			}
		}
		return zw.Close()
	})
}

// writeFile creates path (and its directory) and fills it with fill.
func writeFile(path string, fill func(io.Writer) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fill(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// content is the file's bytes.
func (f archiveFile) content() ([]byte, error) {
	if f.src == "" {
		return f.data, nil
	}
	return os.ReadFile(f.src)
}

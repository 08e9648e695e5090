// Package imagetest builds OCI images for tests: layer tars from entries,
// an image of layers and a config, written as an OCI image layout. The
// image store's tests, the image VM tests and the end-to-end tests share
// it.
package imagetest

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one tar entry of a test layer.
type Entry struct {
	Name         string
	Type         byte
	Body         string
	Link         string
	Mode         int64
	UID, GID     int
	Major, Minor int64
	Xattrs       map[string]string
}

// Dir, File, Symlink and Hardlink make the common entries.
func Dir(name string) Entry { return Entry{Name: name, Type: tar.TypeDir, Mode: 0o755} }
func File(name, body string) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Body: body, Mode: 0o644}
}
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Link: target, Mode: 0o777}
}
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Link: target, Mode: 0o644}
}

// Whiteout deletes path of the layers below (the OCI image spec's
// ".wh.NAME" entry).
func Whiteout(path string) Entry {
	return File(filepath.Join(filepath.Dir(path), ".wh."+filepath.Base(path)), "")
}

// Time is the modification time of every entry.
var Time = time.Date(2020, 2, 2, 2, 2, 2, 0, time.UTC)

// paxXattrPrefix introduces an extended attribute in a PAX record.
const paxXattrPrefix = "SCHILY.xattr."

// Tar writes entries as a tar stream (USTAR, or PAX for entries with
// xattrs).
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name: e.Name, Typeflag: e.Type, Linkname: e.Link, Mode: e.Mode,
			Uid: e.UID, Gid: e.GID, Devmajor: e.Major, Devminor: e.Minor,
			ModTime: Time,
		}
		if e.Type == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
				h.Format = tar.FormatPAX
			}
			h.PAXRecords[paxXattrPrefix+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.Type == tar.TypeReg {
			if _, err := io.WriteString(tw, e.Body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Build makes an OCI image of the layer tars, gzip-compressed, for
// linux/GOARCH, with cfg.
func Build(t testing.TB, cfg v1.Config, layers ...[]byte) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, lb := range layers {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(lb)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", runtime.GOARCH, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// RefNameAnnotation names an image in an OCI layout's index.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// WriteLayout writes img as an OCI image layout in a new directory under
// parent, with the ref name refName (none if ""), and returns it.
func WriteLayout(t testing.TB, parent string, img v1.Image, refName string) string {
	t.Helper()
	dir, err := os.MkdirTemp(parent, "layout-")
	if err != nil {
		t.Fatal(err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	var opts []layout.Option
	if refName != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{RefNameAnnotation: refName}))
	}
	if err := p.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

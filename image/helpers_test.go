package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/image/imagetest"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// needRoot skips a test that converts layers (owners, device nodes) when
// not root or without mkfs.erofs, unless CI is set: then it fails.
func needRoot(t testing.TB) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if _, err := exec.LookPath(mkfsErofs); err != nil {
		why = "needs mkfs.erofs (apt-get install erofs-utils)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// needMount skips a test that mounts EROFS images and overlayfs, unless CI
// is set.
func needMount(t testing.TB) {
	t.Helper()
	needRoot(t)
	fss, _ := os.ReadFile("/proc/filesystems")
	for _, fs := range []string{"erofs", "overlay"} {
		if !strings.Contains(string(fss), "\t"+fs+"\n") {
			if os.Getenv("CI") != "" {
				t.Fatalf("the kernel has no %s", fs)
			}
			t.Skipf("the kernel has no %s", fs)
		}
	}
}

// Test layers and images are built with package imagetest.
type ent = imagetest.Entry

var (
	dirE      = imagetest.Dir
	fileE     = imagetest.File
	symlinkE  = imagetest.Symlink
	hardlinkE = imagetest.Hardlink
)

func layerTar(t testing.TB, entries ...ent) []byte { return imagetest.Tar(t, entries...) }

// testConfig is the config of the test images.
var testConfig = v1.Config{
	Env:        []string{"PATH=/usr/bin:/bin", "GREETING=hello"},
	WorkingDir: "/app",
	User:       "1000:1000",
	Entrypoint: []string{"/app/main"},
	Cmd:        []string{"--serve"},
}

func buildImage(t testing.TB, cfg v1.Config, layers ...[]byte) v1.Image {
	return imagetest.Build(t, cfg, layers...)
}

func writeLayout(t testing.TB, img v1.Image, refName string) string {
	return imagetest.WriteLayout(t, t.TempDir(), img, refName)
}

// writeDockerSave writes img as `docker save` (before Docker 25) does:
// manifest.json, the config as <hex>.json and each layer uncompressed as
// <id>/layer.tar.
func writeDockerSave(t testing.TB, img v1.Image, tags ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "saved.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	add := func(name string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Size: int64(len(data)), Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	add(cfgName.Hex+".json", raw)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range layers {
		d, err := l.DiffID()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		n := d.Hex + "/layer.tar"
		add(n, b)
		names = append(names, n)
	}
	m, err := json.Marshal(tarball.Manifest{{Config: cfgName.Hex + ".json", RepoTags: tags, Layers: names}})
	if err != nil {
		t.Fatal(err)
	}
	add("manifest.json", m)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeGGCRTarball writes img with go-containerregistry's tarball.Write
// (compressed layers, as `crane pull` makes).
func writeGGCRTarball(t testing.TB, img v1.Image, tag string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ggcr.tar")
	ref, err := name.ParseReference(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(p, ref, img); err != nil {
		t.Fatal(err)
	}
	return p
}

func openStore(t testing.TB, home string) *Store {
	t.Helper()
	s, err := Open(home, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func importOK(t testing.TB, s *Store, path, name string) *Image {
	t.Helper()
	img, err := s.Import(context.Background(), path, ImportOptions{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// storeFiles lists the files under the store's data folders, relative to
// the store root.
func storeFiles(t testing.TB, s *Store) []string {
	t.Helper()
	var out []string
	for _, d := range []string{blobsDir, layersDir, mergedDir, indexDir, tmpDir} {
		ents, err := os.ReadDir(s.path(d))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	return out
}

// mountRootfs mounts the layer images (lowest first) read-only and an
// overlay over them, as the guest does, and returns the merged root.
func mountRootfs(t testing.TB, layers []string) string {
	t.Helper()
	base := t.TempDir()
	var lowers []string
	for i, p := range layers {
		d := filepath.Join(base, "layer"+string(rune('a'+i)))
		mount(t, d, "-t", "erofs", "-o", "loop,ro", p)
		lowers = append([]string{d}, lowers...) // overlayfs lists the top first
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root := filepath.Join(base, "root")
	mount(t, root, "-t", "overlay", "-o", "lowerdir="+strings.Join(lowers, ":")+
		",upperdir="+filepath.Join(base, "upper")+",workdir="+filepath.Join(base, "work"), "overlay")
	return root
}

func mount(t testing.TB, dir string, args ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", append(args, dir)...).CombinedOutput(); err != nil {
		t.Fatalf("mount %v %s: %v: %s", args, dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// treeOf lists every path under root with its type, mode and content, for
// comparing two views of a root filesystem.
func treeOf(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		desc := fi.Mode().String()
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(b)
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

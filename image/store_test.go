package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// netRawCap is a security.capability value (VFS_CAP_REVISION_2, effective)
// granting CAP_NET_RAW, as ping carries.
const netRawCap = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// baseLayer has one of everything a root filesystem holds.
func baseLayer(t testing.TB) []byte {
	prog := fileE("bin/prog", "#!/bin/sh\necho prog\n")
	prog.Mode = 0o4755
	data := fileE("home/u/data", "secret\n")
	data.UID, data.GID, data.Mode = 1000, 1001, 0o640
	data.Xattrs = map[string]string{"user.note": "hi", "security.capability": netRawCap}
	null := ent{Name: "dev/null", Type: tar.TypeChar, Major: 1, Minor: 3, Mode: 0o666}
	fifo := ent{Name: "run/fifo", Type: tar.TypeFifo, Mode: 0o600}
	return layerTar(t,
		dirE("./"), dirE("bin/"), prog, hardlinkE("bin/prog2", "bin/prog"), symlinkE("bin/sh", "/bin/prog"),
		dirE("etc/"), fileE("etc/hostname", "base\n"), fileE("etc/gone", "old\n"),
		dirE("opt/"), fileE("opt/old1", "1"), dirE("opt/sub/"), fileE("opt/sub/old2", "2"),
		dirE("home/"), dirE("home/u/"), data, dirE("dev/"), null, dirE("run/"), fifo,
	)
}

// topLayer deletes a file, makes a directory opaque and changes a file.
func topLayer(t testing.TB) []byte {
	return layerTar(t,
		dirE("etc/"), fileE("etc/.wh.gone", ""), fileE("etc/hostname", "top\n"),
		dirE("opt/"), fileE("opt/.wh..wh..opq", ""), fileE("opt/new", "n"),
		dirE("app/"), fileE("app/main", "main"),
	)
}

func testImage(t testing.TB) v1.Image {
	return buildImage(t, testConfig, baseLayer(t), topLayer(t))
}

// TestImportLayoutAndRun imports an OCI layout and mounts its layers as the
// guest will: the overlay shows the whiteout, the opaque directory, the
// owners, modes, device node, links and xattrs the layers say.
func TestImportLayoutAndRun(t *testing.T) {
	needMount(t)
	s := openStore(t, t.TempDir())
	img := importOK(t, s, writeLayout(t, testImage(t), "example.com/app:v1"), "")

	if want := []string{"example.com/app:v1"}; !reflect.DeepEqual(img.Names, want) {
		t.Errorf("names %q, want %q", img.Names, want)
	}
	want := Config{Env: testConfig.Env, WorkingDir: "/app", User: "1000:1000", Entrypoint: []string{"/app/main"}, Cmd: []string{"--serve"}}
	if !reflect.DeepEqual(img.Config, want) {
		t.Errorf("config %+v, want %+v", img.Config, want)
	}
	for _, ref := range []string{"example.com/app:v1", img.ID, strings.TrimPrefix(img.ID, "sha256:")[:12]} {
		got, err := s.Inspect(ref)
		if err != nil || got.ID != img.ID {
			t.Errorf("Inspect(%q) = %v, %v", ref, got, err)
		}
	}
	if _, err := s.Inspect("example.com/other:v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Inspect of an unknown name: %v, want ErrNotFound", err)
	}

	paths, err := s.LayerImages(context.Background(), img, 8)
	if err != nil {
		t.Fatal(err)
	}
	root := mountRootfs(t, paths)
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	if got := read("etc/hostname"); got != "top\n" {
		t.Errorf("etc/hostname = %q, want the top layer's", got)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/gone")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("etc/gone is whited out in the top layer, but: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "opt")); len(ents) != 1 || ents[0].Name() != "new" {
		t.Errorf("opt is opaque in the top layer with one file, has %v", ents)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(root, "bin/prog"), &st); err != nil || st.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/prog mode %o (%v), want setuid 4755", st.Mode&0o7777, err)
	}
	if err := unix.Lstat(filepath.Join(root, "home/u/data"), &st); err != nil || st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o777 != 0o640 {
		t.Errorf("home/u/data owner %d:%d mode %o (%v), want 1000:1001 640", st.Uid, st.Gid, st.Mode&0o777, err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(root, "home/u/data"), "user.note", buf); err != nil || string(buf[:n]) != "hi" {
		t.Errorf("user.note = %q, %v", buf[:max(n, 0)], err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(root, "home/u/data"), "security.capability", buf); err != nil || string(buf[:n]) != netRawCap {
		t.Errorf("security.capability = %q, %v (chown after setxattr would drop it)", buf[:max(n, 0)], err)
	}
	if err := unix.Lstat(filepath.Join(root, "dev/null"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null is not the character device 1:3: mode %o rdev %x %v", st.Mode, st.Rdev, err)
	}
	if err := unix.Lstat(filepath.Join(root, "run/fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("run/fifo is not a fifo: %o %v", st.Mode, err)
	}
	if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "/bin/prog" {
		t.Errorf("bin/sh -> %q, %v; want /bin/prog", l, err)
	}
	if err := unix.Lstat(filepath.Join(root, "bin/prog2"), &st); err != nil || st.Nlink != 2 {
		t.Errorf("bin/prog2 is a hard link of bin/prog: nlink %d, %v", st.Nlink, err)
	}
	if got := read("app/main"); got != "main" {
		t.Errorf("app/main = %q", got)
	}
}

// TestImportFormatsAgree: the same image imported as an OCI layout, a
// docker save tarball (uncompressed layers) and go-containerregistry's
// tarball (compressed layers) is one image with the same layer images,
// built once.
func TestImportFormatsAgree(t *testing.T) {
	needRoot(t)
	s := openStore(t, t.TempDir())
	img := testImage(t)
	a := importOK(t, s, writeLayout(t, img, ""), "app:layout")
	layerFiles := func() []string {
		ents, _ := os.ReadDir(s.path(layersDir))
		var out []string
		for _, e := range ents {
			fi, _ := e.Info()
			out = append(out, fmt.Sprint(e.Name(), fi.ModTime().UnixNano()))
		}
		return out
	}
	before := layerFiles()
	b := importOK(t, s, writeDockerSave(t, img, "app:saved"), "")
	c := importOK(t, s, writeGGCRTarball(t, img, "app:ggcr"), "")
	if a.ID != b.ID || a.ID != c.ID {
		t.Fatalf("IDs differ: layout %s, docker save %s, ggcr tarball %s", a.ID, b.ID, c.ID)
	}
	for i := range a.Layers {
		if a.Layers[i].DiffID != b.Layers[i].DiffID || a.Layers[i].Path != b.Layers[i].Path {
			t.Errorf("layer %d differs: %+v vs %+v", i, a.Layers[i], b.Layers[i])
		}
	}
	if b.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar" || b.Layers[0].Digest != b.Layers[0].DiffID {
		t.Errorf("a docker save layer is stored uncompressed under its diff ID: %+v", b.Layers[0])
	}
	if after := layerFiles(); !reflect.DeepEqual(before, after) {
		t.Errorf("layer images were rebuilt: %v then %v", before, after)
	}
	got, err := s.Inspect("app:ggcr")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"index.docker.io/library/app:ggcr", "index.docker.io/library/app:layout", "index.docker.io/library/app:saved"}
	if !reflect.DeepEqual(got.Names, want) {
		t.Errorf("names %q, want %q", got.Names, want)
	}
	if list, err := s.List(); err != nil || len(list) != 1 {
		t.Errorf("List: %d images, %v; want 1", len(list), err)
	}
}

// TestPullFromRegistry pulls over real HTTP from go-containerregistry's
// in-process registry.
func TestPullFromRegistry(t *testing.T) {
	needRoot(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/team/app:v2"
	img := testImage(t)
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, t.TempDir())
	var reports []Progress
	got, err := s.Pull(context.Background(), ref, PullOptions{ImportOptions: ImportOptions{
		Progress: func(p Progress) { reports = append(reports, p) },
	}})
	if err != nil {
		t.Fatal(err)
	}
	wantID, _ := img.ConfigName()
	if got.ID != wantID.String() || !reflect.DeepEqual(got.Names, []string{ref}) {
		t.Errorf("pulled %s %q, want %s %q", got.ID, got.Names, wantID, ref)
	}
	wantManifest, _ := img.Digest()
	if got.Manifest != wantManifest.String() {
		t.Errorf("manifest %s, want the registry's %s", got.Manifest, wantManifest)
	}
	done := map[int]bool{}
	for _, p := range reports {
		if p.Phase == PhaseDone && p.Done == p.Total {
			done[p.Layer] = true
		}
	}
	if len(done) != 2 {
		t.Errorf("progress reported %d layers done, want 2: %+v", len(done), reports)
	}
	// Pulling again reads no layer.
	reports = nil
	if _, err := s.Pull(context.Background(), ref, PullOptions{ImportOptions: ImportOptions{
		Progress: func(p Progress) { reports = append(reports, p) },
	}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range reports {
		if p.Phase != PhasePresent {
			t.Errorf("second pull: %+v, want only PhasePresent", p)
		}
	}
}

// TestSharedBaseLayerStoredOnce: two images on one base layer keep one
// blob and one layer image of it; removing one image keeps the base, and
// removing both leaves the store empty.
func TestSharedBaseLayerStoredOnce(t *testing.T) {
	needRoot(t)
	s := openStore(t, t.TempDir())
	base := baseLayer(t)
	a := importOK(t, s, writeLayout(t, buildImage(t, testConfig, base, layerTar(t, fileE("a", "a"))), ""), "a")
	b := importOK(t, s, writeDockerSave(t, buildImage(t, testConfig, base, layerTar(t, fileE("b", "b")))), "b")
	if a.Layers[0].DiffID != b.Layers[0].DiffID {
		t.Fatal("the base layers differ")
	}
	layers, _ := os.ReadDir(s.path(layersDir))
	if len(layers) != 3 {
		t.Errorf("%d layer images on disk, want 3 (base once, a, b)", len(layers))
	}
	// Layout a stores the base gzip-compressed, docker save b uncompressed:
	// two blobs for it, but one filesystem image.
	res, err := s.Remove("a")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 1 || res.Freed == 0 {
		t.Errorf("rm a: %+v", res)
	}
	if !exists(b.Layers[0].Path) {
		t.Fatal("rm a deleted the base layer image b still uses")
	}
	for _, l := range b.Layers {
		h, _ := v1.NewHash(l.Digest)
		if !exists(s.blobPath(h)) {
			t.Errorf("rm a deleted b's blob %s", l.Digest)
		}
	}
	if _, err := s.Remove(b.ID[:len("sha256:")+8]); err != nil {
		t.Fatal(err)
	}
	if files := storeFiles(t, s); len(files) != 0 {
		t.Errorf("store not empty after removing every image: %v", files)
	}
}

// TestRemoveName: rm of one name keeps an image that has another.
func TestRemoveName(t *testing.T) {
	needRoot(t)
	s := openStore(t, t.TempDir())
	dir := writeLayout(t, testImage(t), "")
	importOK(t, s, dir, "one")
	img := importOK(t, s, dir, "two")
	res, err := s.Remove("one")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Untagged, []string{"index.docker.io/library/one:latest"}) || len(res.Deleted) != 0 {
		t.Errorf("rm one: %+v", res)
	}
	if got, err := s.Inspect("two"); err != nil || got.ID != img.ID {
		t.Errorf("two: %v %v", got, err)
	}
	if _, err := s.Remove("one"); !errors.Is(err, ErrNotFound) {
		t.Errorf("rm one again: %v, want ErrNotFound", err)
	}
}

// TestConcurrentImports: four stores on one home import the same image at
// once, while a fifth removes another image that shares its base layer.
func TestConcurrentImports(t *testing.T) {
	needRoot(t)
	home := t.TempDir()
	img := testImage(t)
	dir := writeLayout(t, img, "")
	other := buildImage(t, testConfig, baseLayer(t), layerTar(t, fileE("x", "x")))
	importOK(t, openStore(t, home), writeLayout(t, other, ""), "other")

	var wg sync.WaitGroup
	ids := make([]string, 4)
	errs := make([]error, 5)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := openStore(t, home).Import(context.Background(), dir, ImportOptions{Name: "app"})
			if err == nil {
				ids[i] = got.ID
			}
			errs[i] = err
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, errs[4] = openStore(t, home).Remove("other")
	}()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("worker %d: %v", i, err)
		}
	}
	want, _ := img.ConfigName()
	for i, id := range ids {
		if id != want.String() {
			t.Errorf("import %d got %q, want %s", i, id, want)
		}
	}
	s := openStore(t, home)
	got, err := s.Inspect("app")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range got.Layers {
		if !exists(l.Path) {
			t.Errorf("layer image %s missing after the concurrent rm", l.Path)
		}
	}
	if _, err := s.Prune(); err != nil {
		t.Fatal(err)
	}
	if layers, _ := os.ReadDir(s.path(layersDir)); len(layers) != 2 {
		t.Errorf("%d layer images, want 2", len(layers))
	}
}

// TestLayerImagesFlatten: with fewer drives than layers, the lowest layers
// are flattened into one image whose overlay shows the same tree.
func TestLayerImagesFlatten(t *testing.T) {
	needMount(t)
	s := openStore(t, t.TempDir())
	l1 := layerTar(t, fileE("a", "a"), fileE("b", "b"), dirE("d/"), fileE("d/x", "x"), fileE("d/y", "y"), fileE("keep", "1"))
	l2 := layerTar(t, fileE(".wh.a", ""), fileE("c", "c"), fileE("keep", "2"))
	// Opaque d keeps this layer's own d/z even though it comes first.
	l3 := layerTar(t, fileE("d/z", "z"), fileE("d/.wh..wh..opq", ""))
	l4 := layerTar(t, fileE("e", "e"), fileE(".wh.c", ""))
	img := importOK(t, s, writeLayout(t, buildImage(t, testConfig, l1, l2, l3, l4), ""), "four")

	all, err := s.LayerImages(context.Background(), img, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := treeOf(t, mountRootfs(t, all))
	for _, p := range []string{"a", "c", "d/x", "d/y"} {
		if _, ok := want[p]; ok {
			t.Errorf("%s should be hidden in the full overlay", p)
		}
	}
	if want["keep"] != "-rw-r--r-- 2" || want["d/z"] == "" {
		t.Errorf("full overlay: %v", want)
	}
	for _, max := range []int{3, 2, 1} {
		paths, err := s.LayerImages(context.Background(), img, max)
		if err != nil {
			t.Fatal(err)
		}
		if len(paths) != max {
			t.Fatalf("max %d: %d drives", max, len(paths))
		}
		if !strings.Contains(paths[0], mergedDir) {
			t.Errorf("max %d: lowest drive %s is not a merged image", max, paths[0])
		}
		if got := treeOf(t, mountRootfs(t, paths)); !reflect.DeepEqual(got, want) {
			t.Errorf("max %d: flattened tree differs:\n got %v\nwant %v", max, got, want)
		}
		again, err := s.LayerImages(context.Background(), img, max)
		if err != nil || again[0] != paths[0] {
			t.Errorf("max %d: second call %v %v", max, again, err)
		}
	}
	if _, err := s.LayerImages(context.Background(), img, 0); err == nil {
		t.Error("max 0 drives accepted")
	}
	if _, err := s.Remove("four"); err != nil {
		t.Fatal(err)
	}
	if files := storeFiles(t, s); len(files) != 0 {
		t.Errorf("merged images left after rm: %v", files)
	}
}

func TestMergeCount(t *testing.T) {
	for _, c := range []struct{ layers, max, want int }{
		{1, 1, 0}, {3, 8, 0}, {8, 8, 0}, {9, 8, 2}, {20, 8, 13}, {5, 1, 5}, {2, 1, 2},
	} {
		if got := mergeCount(c.layers, c.max); got != c.want {
			t.Errorf("mergeCount(%d, %d) = %d, want %d", c.layers, c.max, got, c.want)
		}
		if n := mergeCount(c.layers, c.max); n > 0 && 1+c.layers-n != c.max {
			t.Errorf("mergeCount(%d, %d) = %d leaves %d drives", c.layers, c.max, n, 1+c.layers-n)
		}
	}
	a := mergeKey([]string{"sha256:1", "sha256:2"})
	if a == mergeKey([]string{"sha256:1", "sha256:2", "sha256:3"}) || a == mergeKey([]string{"sha256:2", "sha256:1"}) {
		t.Error("merge keys collide")
	}
}

// TestMalformedInputs: each bad input gets one error that names the
// problem and leaves nothing in the store.
func TestMalformedInputs(t *testing.T) {
	needRoot(t)
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	good := layerTar(t, fileE("ok", "ok"))
	withBad := func(bad []byte) v1.Image { return buildImage(t, testConfig, good, bad) }
	cases := []struct {
		name  string
		input func() string
		want  string
	}{
		{"truncated docker save", func() string {
			p := writeDockerSave(t, testImage(t), "app:v1")
			fi, _ := os.Stat(p)
			if err := os.Truncate(p, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
			return p
		}, "truncated"},
		{"not a tarball", func() string {
			p := filepath.Join(t.TempDir(), "junk")
			os.WriteFile(p, []byte("hello, not a tar file at all"), 0o644)
			return p
		}, "not a tar file"},
		{"layer blob corrupted", func() string {
			dir := writeLayout(t, testImage(t), "")
			m, _ := testImage(t).Manifest()
			p := filepath.Join(dir, "blobs", "sha256", m.Layers[1].Digest.Hex)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			os.WriteFile(p, b, 0o644)
			return dir
		}, "blob content has digest"},
		{"layer blob swapped", func() string {
			dir := writeLayout(t, testImage(t), "")
			m, _ := testImage(t).Manifest()
			blobs := filepath.Join(dir, "blobs", "sha256")
			b, _ := os.ReadFile(filepath.Join(blobs, m.Layers[0].Digest.Hex))
			os.WriteFile(filepath.Join(blobs, m.Layers[1].Digest.Hex), b, 0o644)
			return dir
		}, "the manifest says"},
		{"diff ID wrong", func() string {
			img := testImage(t)
			cf, _ := img.ConfigFile()
			cf = cf.DeepCopy()
			cf.RootFS.DiffIDs[1] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
			bad, err := mutate.ConfigFile(img, cf)
			if err != nil {
				t.Fatal(err)
			}
			return writeDockerSave(t, bad)
		}, "diff ID"},
		{"dot-dot escape", func() string {
			return writeLayout(t, withBad(layerTar(t, fileE("../escaped", "x"))), "")
		}, "escapes the layer root"},
		{"dot-dot escape in docker save", func() string {
			return writeDockerSave(t, withBad(layerTar(t, dirE("a/"), fileE("a/../../escaped", "x"))))
		}, "escapes the layer root"},
		{"absolute symlink escape", func() string {
			return writeLayout(t, withBad(layerTar(t, symlinkE("evil", outside), fileE("evil/pwned", "x"))), "")
		}, "goes through a symbolic link"},
		{"relative symlink escape", func() string {
			return writeLayout(t, withBad(layerTar(t, dirE("d/"), symlinkE("d/up", "../../../.."), fileE("d/up/tmp/pwned", "x"))), "")
		}, "goes through a symbolic link"},
		{"hard link to outside", func() string {
			return writeLayout(t, withBad(layerTar(t, hardlinkE("passwd", "../../../../etc/passwd"))), "")
		}, "escapes the layer root"},
		{"hard link to an absolute path", func() string {
			return writeLayout(t, withBad(layerTar(t, hardlinkE("passwd", "/etc/passwd"))), "")
		}, "is not in this layer"},
		{"hard link through a symlink", func() string {
			return writeLayout(t, withBad(layerTar(t, symlinkE("etc", "/etc"), hardlinkE("passwd", "etc/passwd"))), "")
		}, "goes through a symbolic link"},
		{"wrong architecture", func() string {
			img := testImage(t)
			cf, _ := img.ConfigFile()
			cf = cf.DeepCopy()
			cf.Architecture = "s390x"
			bad, _ := mutate.ConfigFile(img, cf)
			return writeLayout(t, bad, "")
		}, `architecture "s390x"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			_, err := s.Import(context.Background(), c.input(), ImportOptions{Name: "bad"})
			if err == nil {
				t.Fatal("import succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("error is more than one line: %q", err)
			}
			if files := storeFiles(t, s); len(files) != 0 {
				t.Errorf("left behind: %v", files)
			}
			if list, _ := s.List(); len(list) != 0 {
				t.Errorf("visible: %v", list)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("wrote outside the layer: %v", ents)
			}
		})
	}
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		t.Error("/tmp/pwned exists")
	}
}

// TestImportRootfs: a root filesystem tarball becomes a one-layer image
// with the default PATH and /bin/sh.
func TestImportRootfs(t *testing.T) {
	needRoot(t)
	s := openStore(t, t.TempDir())
	tarPath := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(tarPath, layerTar(t, dirE("bin"), fileE("bin/sh", "#!")), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := s.ImportRootfs(context.Background(), tarPath, ImportOptions{Name: "rootfs:1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Layers) != 1 || !slices.Equal(img.Config.Cmd, []string{"/bin/sh"}) || len(img.Config.Env) != 1 {
		t.Fatalf("image %+v", img)
	}
	if got, err := s.Inspect("rootfs:1"); err != nil || got.ID != img.ID {
		t.Fatalf("inspect: %v, %v", got, err)
	}
}

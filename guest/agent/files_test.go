package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/embervm/ember/agent/proto"
)

func TestFileUploadDownload(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	ctx := context.Background()
	dir := t.TempDir()
	target := filepath.Join(dir, "new", "parents", "f.bin")
	data := bytes.Repeat([]byte("0123456789abcdef"), 100000) // 1.6 MB: many windows
	e, err := c.Upload(ctx, proto.WriteRequest{PathRequest: proto.PathRequest{Path: target}, Mode: 0o600}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != proto.TypeFile || e.Size != int64(len(data)) || e.Mode != 0o600 || e.Path != target || e.Name != "f.bin" || e.Owner != "root" {
		t.Errorf("entry %+v", e)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, data) {
		t.Errorf("the file in the guest differs (%d bytes)", len(got))
	}
	got, err := c.ReadFile(ctx, target)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("download: %d bytes, %v", len(got), err)
	}
	// As a user: the file and the parents made belong to it.
	owned := filepath.Join(dir, "owned", "g")
	if _, err := c.Upload(ctx, proto.WriteRequest{PathRequest: proto.PathRequest{Path: owned, User: "65534:65534"}}, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{owned, filepath.Dir(owned)} {
		if e, err := c.Stat(ctx, proto.PathRequest{Path: p}); err != nil || e.UID != 65534 || e.GID != 65534 {
			t.Errorf("%s: %+v %v", p, e, err)
		}
	}
	// An upload whose source fails leaves the old file as it was.
	if _, err := c.Upload(ctx, proto.WriteRequest{PathRequest: proto.PathRequest{Path: target}}, io.MultiReader(strings.NewReader("partial"), errReader{})); err == nil {
		t.Error("an upload whose source failed succeeded")
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, data) {
		t.Error("a failed upload changed the file")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(target), ".*")); len(leftovers) != 0 {
		t.Errorf("a failed upload left %v", leftovers)
	}
	// A directory is refused as a file.
	if _, err := c.Download(ctx, proto.ReadRequest{PathRequest: proto.PathRequest{Path: dir}}); proto.CodeOf(err) != proto.CodeInvalid {
		t.Errorf("download of a directory as a file: %v", err)
	}
	if _, err := c.Download(ctx, proto.ReadRequest{PathRequest: proto.PathRequest{Path: filepath.Join(dir, "nope")}}); !proto.IsNotFound(err) {
		t.Errorf("download of a missing file: %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("source broke") }

// A directory goes up as a tar and comes back the same: modes, symbolic
// links, nested directories, contents.
func TestDirectoryTarRoundTrip(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	ctx := context.Background()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body)
	}
	add(&tar.Header{Name: "run.sh", Mode: 0o755, Typeflag: tar.TypeReg}, "#!/bin/sh\necho hi\n")
	add(&tar.Header{Name: "secret/", Mode: 0o700, Typeflag: tar.TypeDir}, "")
	add(&tar.Header{Name: "secret/key", Mode: 0o600, Typeflag: tar.TypeReg, Uid: 65534, Gid: 65534}, "k3y")
	add(&tar.Header{Name: "link", Linkname: "secret/key", Typeflag: tar.TypeSymlink}, "")
	add(&tar.Header{Name: "hard", Linkname: "run.sh", Typeflag: tar.TypeLink}, "")
	add(&tar.Header{Name: "deep/a/b/c.txt", Mode: 0o644, Typeflag: tar.TypeReg}, "deep")
	tw.Close()

	dst := filepath.Join(t.TempDir(), "up")
	e, err := c.Upload(ctx, proto.WriteRequest{PathRequest: proto.PathRequest{Path: dst}, Format: proto.FormatTar}, bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != proto.TypeDir {
		t.Errorf("entry %+v", e)
	}
	check := func(rel string, mode fs.FileMode) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(dst, rel))
		if err != nil {
			t.Error(err)
			return
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", rel, fi.Mode(), mode)
		}
	}
	check("run.sh", 0o755)
	check("secret", fs.ModeDir|0o700)
	check("secret/key", 0o600)
	check("link", fs.ModeSymlink|0o777)
	check("deep/a/b/c.txt", 0o644)
	if target, _ := os.Readlink(filepath.Join(dst, "link")); target != "secret/key" {
		t.Errorf("link -> %q", target)
	}
	if e, _ := c.Stat(ctx, proto.PathRequest{Path: filepath.Join(dst, "secret/key")}); e.UID != 65534 {
		t.Errorf("owner from the tar not kept: %+v", e)
	}

	// Back down: the same entries.
	d, err := c.Download(ctx, proto.ReadRequest{PathRequest: proto.PathRequest{Path: dst}, Format: proto.FormatTar})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tr := tar.NewReader(d)
	got := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		got[h.Name] = fs.FileMode(h.Mode).String() + " " + h.Linkname + " " + string(body)
	}
	want := map[string]string{
		"run.sh": "-rwxr-xr-x  #!/bin/sh\necho hi\n", "hard": "-rwxr-xr-x  #!/bin/sh\necho hi\n",
		"secret/": "-rwx------  ", "secret/key": "-rw-------  k3y", "link": "-rwxrwxrwx secret/key ",
		"deep/": "-rwxr-xr-x  ", "deep/a/": "-rwxr-xr-x  ", "deep/a/b/": "-rwxr-xr-x  ", "deep/a/b/c.txt": "-rw-r--r--  deep",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got entries %v", slices.Sorted(mapKeys(got)))
	}
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// A tar that would write outside its directory is refused.
func TestTarEscapesRefused(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	for name, entries := range map[string][]tar.Header{
		"dotdot":   {{Name: "../evil", Typeflag: tar.TypeReg}},
		"absolute": {{Name: "/evil", Typeflag: tar.TypeReg}},
		"via link": {{Name: "l", Linkname: "/tmp", Typeflag: tar.TypeSymlink}, {Name: "l/evil", Typeflag: tar.TypeReg}},
		"hardlink": {{Name: "h", Linkname: "../../etc/passwd", Typeflag: tar.TypeLink}},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range entries {
			tw.WriteHeader(&h)
		}
		tw.Close()
		dst := t.TempDir()
		_, err := c.Upload(context.Background(), proto.WriteRequest{PathRequest: proto.PathRequest{Path: dst}, Format: proto.FormatTar}, &buf)
		if proto.CodeOf(err) != proto.CodeInvalid {
			t.Errorf("%s: %v, want invalid_argument", name, err)
		}
		if _, err := os.Lstat("/tmp/evil"); err == nil {
			t.Fatalf("%s: wrote /tmp/evil", name)
		}
	}
}

func TestStatListMkdirMoveRemove(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := c.MakeDir(ctx, proto.MkdirRequest{PathRequest: proto.PathRequest{Path: filepath.Join(dir, "a/b/c")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MakeDir(ctx, proto.MkdirRequest{PathRequest: proto.PathRequest{Path: filepath.Join(dir, "a")}}); proto.CodeOf(err) != proto.CodeExists {
		t.Errorf("mkdir of an existing directory: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "a/f"), []byte("12345"), 0o640)
	os.Symlink("f", filepath.Join(dir, "a/l"))

	names := func(depth int) []string {
		es, err := c.ListDir(ctx, proto.ListRequest{PathRequest: proto.PathRequest{Path: dir}, Depth: depth})
		if err != nil {
			t.Fatal(err)
		}
		var ns []string
		for _, e := range es {
			rel, _ := filepath.Rel(dir, e.Path)
			ns = append(ns, rel+":"+e.Type)
		}
		slices.Sort(ns)
		return ns
	}
	if got := names(1); !slices.Equal(got, []string{"a:dir"}) {
		t.Errorf("depth 1: %v", got)
	}
	if got := names(3); !slices.Equal(got, []string{"a/b/c:dir", "a/b:dir", "a/f:file", "a/l:symlink", "a:dir"}) {
		t.Errorf("depth 3: %v", got)
	}
	e, err := c.Stat(ctx, proto.PathRequest{Path: filepath.Join(dir, "a/l")})
	if err != nil || e.Type != proto.TypeSymlink || e.SymlinkTarget != "f" {
		t.Errorf("stat of a link: %+v %v", e, err)
	}
	e, err = c.Stat(ctx, proto.PathRequest{Path: filepath.Join(dir, "a/f")})
	if err != nil || e.Size != 5 || e.Mode != 0o640 || e.Permissions != "-rw-r-----" || e.ModTime.IsZero() {
		t.Errorf("stat of a file: %+v %v", e, err)
	}
	e, err = c.Move(ctx, proto.MoveRequest{Source: filepath.Join(dir, "a/f"), Destination: filepath.Join(dir, "g")})
	if err != nil || e.Name != "g" || e.Size != 5 {
		t.Errorf("move: %+v %v", e, err)
	}
	if err := c.Remove(ctx, proto.PathRequest{Path: filepath.Join(dir, "a")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, proto.PathRequest{Path: filepath.Join(dir, "a")}); !proto.IsNotFound(err) {
		t.Errorf("after remove: %v", err)
	}
	if err := c.Remove(ctx, proto.PathRequest{Path: filepath.Join(dir, "a")}); !proto.IsNotFound(err) {
		t.Errorf("remove of a missing path: %v", err)
	}
	// Relative paths are in the user's home (root's, here).
	if e, err := c.Stat(ctx, proto.PathRequest{Path: "."}); err != nil || e.Path != "/root" {
		t.Errorf("stat of . : %+v %v", e, err)
	}
}

// copyAcross moves a tree between file systems by copying it.
func TestMoveAcrossFileSystems(t *testing.T) {
	needRoot(t)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "tree/sub"), 0o750)
	os.WriteFile(filepath.Join(src, "tree/sub/f"), []byte("data"), 0o604)
	os.Symlink("sub/f", filepath.Join(src, "tree/l"))
	dst := filepath.Join(t.TempDir(), "moved")
	if err := copyAcross(context.Background(), filepath.Join(src, "tree"), dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "sub/f")); string(b) != "data" {
		t.Errorf("contents %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "sub/f")); fi == nil || fi.Mode() != 0o604 {
		t.Errorf("mode %v", fi)
	}
	if l, _ := os.Readlink(filepath.Join(dst, "l")); l != "sub/f" {
		t.Errorf("link %q", l)
	}
	if _, err := os.Lstat(filepath.Join(src, "tree")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("source still there: %v", err)
	}
}

func TestWatchRecursive(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	ctx := context.Background()
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "old"), 0o755)
	w, err := c.Watch(ctx, proto.WatchRequest{PathRequest: proto.PathRequest{Path: dir}, Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	expect := func(name, typ string) {
		t.Helper()
		for {
			ev, err := w.Next(ctx)
			if err != nil {
				t.Fatalf("waiting for %s %s: %v", typ, name, err)
			}
			if ev.Name == name && ev.Type == typ {
				return
			}
		}
	}
	os.WriteFile(filepath.Join(dir, "a"), []byte("x"), 0o644)
	expect("a", proto.EventCreate)
	os.WriteFile(filepath.Join(dir, "old", "b"), []byte("x"), 0o644)
	expect("old/b", proto.EventCreate)
	os.MkdirAll(filepath.Join(dir, "new", "deeper"), 0o755)
	expect("new", proto.EventCreate)
	os.WriteFile(filepath.Join(dir, "new", "deeper", "c"), []byte("x"), 0o644)
	expect("new/deeper/c", proto.EventCreate)
	f, _ := os.OpenFile(filepath.Join(dir, "a"), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("more")
	f.Close()
	expect("a", proto.EventWrite)
	os.Chmod(filepath.Join(dir, "a"), 0o600)
	expect("a", proto.EventChmod)
	os.Rename(filepath.Join(dir, "a"), filepath.Join(dir, "a2"))
	expect("a", proto.EventRename)
	expect("a2", proto.EventCreate)
	os.Remove(filepath.Join(dir, "a2"))
	expect("a2", proto.EventRemove)

	// Not recursive: a subdirectory's changes are not reported, its own
	// creation is.
	w2, err := c.Watch(ctx, proto.WatchRequest{PathRequest: proto.PathRequest{Path: dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	os.WriteFile(filepath.Join(dir, "old", "ignored"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "seen"), nil, 0o644)
	ev, err := w2.Next(ctx)
	if err != nil || ev.Name != "seen" || ev.Type != proto.EventCreate {
		t.Errorf("non-recursive watch: %+v %v", ev, err)
	}
}

package shim

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestRootfsLayers(t *testing.T) {
	dir := t.TempDir()
	upper := filepath.Join(dir, "upper")
	os.Mkdir(upper, 0o755)
	ov := func(extra ...string) []*types.Mount {
		return []*types.Mount{{Type: "overlay", Source: "overlay",
			Options: append([]string{"index=off", "workdir=/s/3/work", "upperdir=" + upper, "lowerdir=/s/2/fs:/s/1/fs"}, extra...)}}
	}
	got, err := rootfsLayers(ov(), "/b", "rootfs")
	if err != nil || !reflect.DeepEqual(got, []string{"/s/1/fs", "/s/2/fs"}) {
		t.Errorf("overlay, empty upper: %v, %v; want the lowerdirs lowest first", got, err)
	}
	os.WriteFile(filepath.Join(upper, "f"), nil, 0o644)
	got, err = rootfsLayers(ov(), "/b", "rootfs")
	if err != nil || !reflect.DeepEqual(got, []string{"/s/1/fs", "/s/2/fs", upper}) {
		t.Errorf("overlay, upper with a file: %v, %v; want it on top", got, err)
	}
	got, err = rootfsLayers([]*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"ro", "rbind"}}}, "/b", "rootfs")
	if err != nil || !reflect.DeepEqual(got, []string{"/s/1/fs"}) {
		t.Errorf("bind: %v, %v", got, err)
	}
	got, err = rootfsLayers(nil, "/b", "rootfs")
	if err != nil || !reflect.DeepEqual(got, []string{"/b/rootfs"}) {
		t.Errorf("no mounts: %v, %v; want the bundle's root.path", got, err)
	}
	for name, c := range map[string]struct {
		m    []*types.Mount
		root string
		want string
	}{
		"no root":    {nil, "", "no root.path"},
		"two mounts": {[]*types.Mount{{Type: "bind", Source: "/a"}, {Type: "bind", Source: "/b"}}, "", "2 mounts"},
		"ext4":       {[]*types.Mount{{Type: "ext4", Source: "/dev/dm-3"}}, "", `mount type "ext4"`},
		"relative":   {[]*types.Mount{{Type: "overlay", Options: []string{"lowerdir=a:/b"}}}, "", `lowerdir "a"`},
		"no lower":   {[]*types.Mount{{Type: "overlay", Options: []string{"upperdir=/u"}}}, "", "no lowerdir"},
	} {
		if _, err := rootfsLayers(c.m, "/b", c.root); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
}

func TestSplitLowerdir(t *testing.T) {
	got := splitLowerdir(`/a:/b\:c:/d`)
	if !reflect.DeepEqual(got, []string{"/a", "/b:c", "/d"}) {
		t.Errorf("got %q", got)
	}
}

func FuzzParseOverlayOptions(f *testing.F) {
	f.Add("lowerdir=/a:/b,upperdir=/u,workdir=/w,index=off")
	f.Add(`lowerdir=/a\:b`)
	f.Add("lowerdir=")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseOverlayOptions(strings.Split(s, ","))
		if err != nil {
			return
		}
		if len(o.lower) == 0 {
			t.Fatal("accepted without a lowerdir")
		}
		for _, d := range o.lower {
			if !filepath.IsAbs(d) {
				t.Fatalf("accepted a relative lowerdir %q", d)
			}
		}
	})
}

// tree makes a small layer directory.
func tree(t *testing.T, dir string) {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "os-release"), []byte("ID=test\n"), 0o644)
	os.Symlink("etc/os-release", filepath.Join(dir, "link"))
	when := time.Unix(1700000000, 0)
	for _, p := range []string{"etc/os-release", "etc", "."} {
		os.Chtimes(filepath.Join(dir, p), when, when)
	}
	os.Lchown(filepath.Join(dir, "link"), 0, 0)
	// The link's own time too (Chtimes follows links): two trees made a
	// clock tick apart must not differ by it.
	ts := unix.NsecToTimespec(when.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, "link"), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func TestLayerKey(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	tree(t, a)
	tree(t, b)
	ka, err := layerKey(a)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := layerKey(b)
	if ka != kb {
		t.Errorf("the same content at two paths: keys %s and %s, want one", ka, kb)
	}
	os.WriteFile(filepath.Join(b, "etc", "os-release"), []byte("ID=other\n"), 0o644)
	if kb2, _ := layerKey(b); kb2 == ka {
		t.Error("a changed file kept the key")
	}
	if _, err := layerKey(filepath.Join(a, "etc", "os-release")); err == nil {
		t.Error("a file was taken as a layer")
	}
}

func TestLayerCacheBuildsOnce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mkfs.erofs keeps owners)")
	}
	if _, err := os.Stat("/usr/bin/" + mkfsErofs); err != nil {
		t.Skip("no mkfs.erofs (package erofs-utils)")
	}
	src := filepath.Join(t.TempDir(), "layer")
	tree(t, src)
	c := layerCache{dir: filepath.Join(t.TempDir(), "cache")}
	p1, err := c.image(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	st1, err := os.Stat(p1)
	if err != nil || st1.Size() == 0 {
		t.Fatalf("layer image: %v", err)
	}
	p2, err := c.image(context.Background(), src)
	if err != nil || p2 != p1 {
		t.Fatalf("second call: %s, %v; want %s", p2, err, p1)
	}
	if st2, _ := os.Stat(p2); !os.SameFile(st1, st2) {
		t.Error("the image was rebuilt")
	}
	ents, _ := os.ReadDir(c.dir)
	if len(ents) != 1 {
		t.Errorf("cache holds %d files, want 1 (no temporary left)", len(ents))
	}
	if _, err := c.image(context.Background(), filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing layer made an image")
	}
}

func TestExecStart(t *testing.T) {
	p := &specs.Process{Args: []string{"sh", "-c", "x"}, Env: []string{"A=1", "B=x=y"}, Cwd: "/w",
		User: specs.User{UID: 1000, GID: 100}}
	r, err := execStart(p, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r.Args, p.Args) || r.Env["A"] != "1" || r.Env["B"] != "x=y" || r.Cwd != "/w" ||
		r.User != "1000:100" || r.TTY != nil || !r.Stdin || !r.AutoAck {
		t.Errorf("pipes: %+v", r)
	}
	p.Terminal = true
	if r, _ = execStart(p, "", true); r.TTY == nil || r.TTY.Cols != 80 || r.TTY.Rows != 24 {
		t.Errorf("terminal without a size: %+v", r.TTY)
	}
	p.ConsoleSize = &specs.Box{Width: 120, Height: 40}
	if r, _ = execStart(p, "", false); r.TTY.Cols != 120 || r.TTY.Rows != 40 {
		t.Errorf("terminal size: %+v", r.TTY)
	}
	for name, bad := range map[string]*specs.Process{
		"no args": {},
		"bad env": {Args: []string{"x"}, Env: []string{"NOEQUALS"}},
		"nul":     {Args: []string{"x\x00"}},
		"cwd":     {Args: []string{"x"}, Cwd: "relative"},
		"no spec": nil,
		"empty 0": {Args: []string{""}},
		"env key": {Args: []string{"x"}, Env: []string{"=v"}},
	} {
		if _, err := execStart(bad, "", false); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestVMSize(t *testing.T) {
	lim, quota, period := int64(512<<20), int64(150000), uint64(100000)
	s := &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &lim}, CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}}}}
	if v, m := vmSize(s); v != 2 || m != 512+GuestOverheadMiB {
		t.Errorf("limits: %d vCPUs %d MiB", v, m)
	}
	if v, m := vmSize(&specs.Spec{}); v != 1 || m != DefaultMemoryMiB {
		t.Errorf("no limits: %d vCPUs %d MiB", v, m)
	}
}

package agent

import (
	"bufio"
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
)

// dirStorage stands in for the guest's drives: a "layer drive" is a host
// directory bind-mounted read-only; scratch is a test directory (a real
// ext4 or tmpfs, as the guest's writable drive is).
type dirStorage struct {
	mu      sync.Mutex
	layers  map[string]string // serial → directory
	scratch string
}

func (s *dirStorage) MountLayer(l proto.LayerDrive, target string) error {
	s.mu.Lock()
	dir, ok := s.layers[l.Serial]
	s.mu.Unlock()
	if !ok {
		return proto.Errorf(proto.CodeNotFound, "no drive has serial %q", l.Serial)
	}
	if err := unix.Mount(dir, target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	return unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
}

func (s *dirStorage) Scratch() (string, error) { return s.scratch, nil }

// staticBusybox returns a statically linked busybox (Debian's
// busybox-static, which `make setup` installs), or skips.
func staticBusybox(t *testing.T) string {
	t.Helper()
	const p = "/bin/busybox"
	f, err := elf.Open(p)
	if err != nil {
		t.Skipf("no busybox: %v", err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Skip("/bin/busybox is not statically linked (install busybox-static)")
		}
	}
	return p
}

// busyboxLayer makes a layer directory with busybox as /bin/sh and the
// other applets, an /etc/passwd and the files given.
func busyboxLayer(t *testing.T, files map[string]string) string {
	t.Helper()
	bb := staticBusybox(t)
	dir := t.TempDir()
	if files == nil {
		files = map[string]string{}
	}
	for _, d := range []string{"bin", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "cat", "echo", "hostname", "sleep", "ls", "touch"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	files["etc/passwd"] = "root:x:0:0:root:/root:/bin/sh\n"
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// unmountAll unmounts, at the test's end, the containers a failed test
// left, so that its temporary folders can go.
func unmountAll(t *testing.T, ta *testAgent) {
	t.Cleanup(func() {
		ta.srv.containers.mu.Lock()
		defer ta.srv.containers.mu.Unlock()
		for _, c := range ta.srv.containers.m {
			ta.srv.unmountContainer(c)
		}
	})
}

// mountsUnder lists the mount points under dir (from /proc/self/mountinfo).
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			out = append(out, fields[4])
		}
	}
	return out
}

// TestContainers: two containers of a pod, each in its own root stacked
// from layer drives, see each other's files through a shared volume and
// not each other's root; the first process of a container is PID 1 of
// its own PID namespace; an exec runs in the container's root; removing
// a container kills its processes and leaves no mount and no folder.
func TestContainers(t *testing.T) {
	base := busyboxLayer(t, map[string]string{"etc/greeting": "base\n", "etc/os-release": "ID=test\n"})
	top := t.TempDir()
	if err := os.MkdirAll(filepath.Join(top, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(top, "etc/greeting"), []byte("top\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := &dirStorage{layers: map[string]string{"spare0": base, "spare1": top, "spare2": base}, scratch: t.TempDir()}
	ta := startAgent(t, func(c *Config) { c.Storage = st })
	unmountAll(t, ta)
	c := ta.dial(t)
	ctx := context.Background()
	if !c.Hello().Supports(proto.FeatureContainer) {
		t.Fatalf("the agent does not announce %q", proto.FeatureContainer)
	}

	vol, err := c.ContainerVolume(ctx, proto.ContainerVolume{Name: "shared"})
	if err != nil || !vol.Created {
		t.Fatalf("volume: %+v, %v", vol, err)
	}
	if again, err := c.ContainerVolume(ctx, proto.ContainerVolume{Name: "shared"}); err != nil || again.Created || again.Path != vol.Path {
		t.Fatalf("volume again: %+v, %v (want the same, not created)", again, err)
	}
	if _, err := c.ContainerVolume(ctx, proto.ContainerVolume{Name: "shared", Kind: proto.VolumeFile}); proto.CodeOf(err) != proto.CodeExists {
		t.Fatalf("the directory volume as a file: %v, want %s", err, proto.CodeExists)
	}
	hosts, err := c.ContainerVolume(ctx, proto.ContainerVolume{Name: "hosts", Kind: proto.VolumeFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hosts.Path, []byte("127.0.0.1 pod\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	a, err := c.ContainerCreate(ctx, proto.ContainerCreate{ID: "a",
		Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}, {Serial: "spare1", FSType: "erofs"}},
		Mounts: []proto.ContainerMount{
			{Destination: "/shared", Type: proto.MountVolume, Source: "shared"},
			{Destination: "/etc/hosts", Type: proto.MountVolume, Source: "hosts", ReadOnly: true},
			{Destination: "/proc", Type: proto.MountProc},
			{Destination: "/dev", Type: proto.MountDev},
			{Destination: "/tmp", Type: proto.MountTmpfs, Data: "mode=1777"},
		}})
	if err != nil {
		t.Fatalf("create a: %v", err)
	}
	b, err := c.ContainerCreate(ctx, proto.ContainerCreate{ID: "b",
		Layers: []proto.LayerDrive{{Serial: "spare2", FSType: "erofs"}},
		Mounts: []proto.ContainerMount{{Destination: "/data", Type: proto.MountVolume, Source: "shared"}}})
	if err != nil {
		t.Fatalf("create b: %v", err)
	}
	if _, err := c.ContainerCreate(ctx, proto.ContainerCreate{ID: "a", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}}}); proto.CodeOf(err) != proto.CodeExists {
		t.Fatalf("create a twice: %v, want %s", err, proto.CodeExists)
	}

	out, errOut, es := run(t, c, proto.ExecStart{Container: "a", User: "0:0", Args: sh(
		"echo $$; cat /etc/greeting; cat /etc/hosts; echo from-a > /shared/x; echo mine > /etc/own; ls /proc/1/ >/dev/null && echo proc; echo $PATH")})
	want := "1\ntop\n127.0.0.1 pod\nproc\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
	if es.Code != 0 || out != want {
		t.Fatalf("in a: %q (stderr %q, %+v), want %q", out, errOut, es, want)
	}
	out, errOut, es = run(t, c, proto.ExecStart{Container: "b", Args: sh("cat /data/x; cat /etc/greeting; cat /etc/own 2>/dev/null || echo no-own")})
	if es.Code != 0 || out != "from-a\nbase\nno-own\n" {
		t.Fatalf("in b: %q (stderr %q, %+v)", out, errOut, es)
	}
	// Nothing a wrote reached its layers (or the other container).
	if _, err := os.Stat(filepath.Join(top, "etc/own")); err == nil {
		t.Fatal("a's write reached its layer directory")
	}
	if _, err := os.Stat(filepath.Join(a.Root, "etc/own")); err != nil {
		t.Fatalf("a's write is not in its root: %v", err)
	}
	if a.Root == b.Root {
		t.Fatal("two containers share a root")
	}

	// A long-running first process, an exec beside it (chrooted into the
	// same root), then remove: both are killed.
	p, err := c.Start(ctx, proto.ExecStart{Container: "a", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, c, proto.ExecStart{Container: "a", Cwd: "/work/dir", Args: sh("cat /etc/own; pwd")})
	if out != "mine\n/work/dir\n" {
		t.Fatalf("exec in a: %q", out)
	}
	if _, err := c.Start(ctx, proto.ExecStart{Container: "nope", Args: []string{"true"}}); proto.CodeOf(err) != proto.CodeNotFound {
		t.Fatalf("a process in no container: %v, want %s", err, proto.CodeNotFound)
	}
	if err := c.ContainerRemove(ctx, "a"); err != nil {
		t.Fatalf("remove a: %v", err)
	}
	if es, err := p.Wait(ctx); err != nil || es.Signal != int(unix.SIGKILL) {
		t.Fatalf("a's process after remove: %+v, %v (want killed)", es, err)
	}
	if err := c.ContainerRemove(ctx, "a"); proto.CodeOf(err) != proto.CodeNotFound {
		t.Fatalf("remove a twice: %v", err)
	}
	if err := c.ContainerRemove(ctx, "b"); err != nil {
		t.Fatalf("remove b: %v", err)
	}
	if m := mountsUnder(t, ta.cfg.RunDir); len(m) > 0 {
		t.Fatalf("mounts left: %v", m)
	}
	for _, d := range []string{filepath.Join(ta.cfg.RunDir, containersDir, "a"), filepath.Join(st.scratch, containersDir, "a")} {
		if _, err := os.Stat(d); err == nil {
			t.Fatalf("%s left after remove", d)
		}
	}
	// The volume outlives its containers (the pod's).
	if data, err := os.ReadFile(filepath.Join(vol.Path, "x")); err != nil || string(data) != "from-a\n" {
		t.Fatalf("volume after the containers: %q, %v", data, err)
	}
}

// TestContainerCreateFails: a create that fails part-way (a missing
// layer drive, a missing volume) leaves no mount and no folder, and the
// ID can be used again.
func TestContainerCreateFails(t *testing.T) {
	base := busyboxLayer(t, nil)
	st := &dirStorage{layers: map[string]string{"spare0": base}, scratch: t.TempDir()}
	ta := startAgent(t, func(c *Config) { c.Storage = st })
	unmountAll(t, ta)
	c := ta.dial(t)
	ctx := context.Background()
	for _, req := range []proto.ContainerCreate{
		{ID: "x", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}, {Serial: "spare9", FSType: "erofs"}}},
		{ID: "x", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}},
			Mounts: []proto.ContainerMount{{Destination: "/tmp", Type: proto.MountTmpfs}, {Destination: "/v", Type: proto.MountVolume, Source: "missing"}}},
	} {
		_, err := c.ContainerCreate(ctx, req)
		if err == nil {
			t.Fatalf("create %+v: no error", req)
		}
		if m := mountsUnder(t, ta.cfg.RunDir); len(m) > 0 {
			t.Fatalf("after %v: mounts left: %v", err, m)
		}
		if _, err := os.Stat(filepath.Join(st.scratch, containersDir, "x")); err == nil {
			t.Fatal("upper folder left")
		}
	}
	if _, err := c.ContainerCreate(ctx, proto.ContainerCreate{ID: "x", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}}}); err != nil {
		t.Fatalf("create after failures: %v", err)
	}
	if err := c.ContainerRemove(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	// Bad requests are refused before anything happens.
	for _, req := range []proto.ContainerCreate{
		{ID: "../x", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}}},
		{ID: "y"},
		{ID: "y", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "xfs"}}},
		{ID: "y", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}}, Mounts: []proto.ContainerMount{{Destination: "/", Type: proto.MountTmpfs}}},
		{ID: "y", Layers: []proto.LayerDrive{{Serial: "spare0", FSType: "erofs"}}, Mounts: []proto.ContainerMount{{Destination: "/v", Type: "bind"}}},
	} {
		if _, err := c.ContainerCreate(ctx, req); proto.CodeOf(err) != proto.CodeInvalid {
			t.Errorf("create %+v: %v, want %s", req, err, proto.CodeInvalid)
		}
	}
}

// TestResolveIn: symbolic links in a container's root resolve inside it.
func TestResolveIn(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "real/dir"), 0o755)
	os.Symlink("/real", filepath.Join(root, "abs"))
	os.Symlink("../../../../..", filepath.Join(root, "up"))
	os.Symlink("loop", filepath.Join(root, "loop"))
	for in, want := range map[string]string{
		"/abs/dir":   "/real/dir",
		"/up/etc":    "/etc",
		"/../../etc": "/etc",
		"/new/path":  "/new/path",
	} {
		got, err := resolveIn(root, in)
		if err != nil || got != filepath.Join(root, want) {
			t.Errorf("resolveIn(%q) = %q, %v; want %q", in, got, err, filepath.Join(root, want))
		}
	}
	if _, err := resolveIn(root, "/loop/x"); err == nil {
		t.Error("a link loop resolved")
	}
}

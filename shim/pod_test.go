package shim

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/vmm"
)

// testStorage stands in for a pod VM's drives in the test agent: a
// "drive" holds a layer directory (bind-mounted read-only), and scratch
// is a test folder.
type testStorage struct {
	mu      sync.Mutex
	layers  map[string]string // serial → directory
	scratch string
}

func (s *testStorage) MountLayer(l proto.LayerDrive, target string) error {
	s.mu.Lock()
	dir, ok := s.layers[l.Serial]
	s.mu.Unlock()
	if !ok {
		return proto.Errorf(proto.CodeNotFound, "no drive has serial %q (a free spare drive holds the placeholder)", l.Serial)
	}
	if err := unix.Mount(dir, target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	return unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
}

func (s *testStorage) Scratch() (string, error) { return s.scratch, nil }

func (s *testStorage) attached() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.layers)
}

// podAgentVM is a pod's "VM": spare drives whose swaps the test storage
// sees, as the guest sees a PATCH /drives.
type podAgentVM struct {
	*agentVM
	storage *testStorage
	mu      sync.Mutex
	slots   *spareSlots
}

func (v *podAgentVM) AttachLayers(ctx context.Context, owner string, layers []string) ([]proto.LayerDrive, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	slots, err := v.slots.take(owner, len(layers))
	if err != nil {
		return nil, err
	}
	var out []proto.LayerDrive
	v.storage.mu.Lock()
	defer v.storage.mu.Unlock()
	for i, slot := range slots {
		v.storage.layers[spareDriveID(slot)] = layers[i]
		out = append(out, proto.LayerDrive{Serial: spareDriveID(slot), FSType: layerFSType})
	}
	return out, nil
}

func (v *podAgentVM) DetachLayers(ctx context.Context, owner string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.storage.mu.Lock()
	defer v.storage.mu.Unlock()
	for _, slot := range v.slots.release(owner) {
		delete(v.storage.layers, spareDriveID(slot))
	}
	return nil
}

// busyboxRoot makes a root filesystem directory with a static busybox
// (Debian's busybox-static) as /bin/sh and some applets, or skips.
func busyboxRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	const bb = "/bin/busybox"
	f, err := elf.Open(bb)
	if err != nil {
		t.Skipf("no busybox: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			f.Close()
			t.Skip("/bin/busybox is not statically linked (install busybox-static)")
		}
	}
	f.Close()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "cat", "echo", "sleep", "ls"} {
		os.Symlink("busybox", filepath.Join(dir, "bin", a))
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// podBundle writes the bundle of a pod's container as containerd's CRI
// does: the pod annotations, the spec's mounts, no root.path (the rootfs
// comes as mounts in Create).
func (e *env) podBundle(t *testing.T, name, sandboxID, role string, p specs.Process, mounts []specs.Mount) string {
	t.Helper()
	b := filepath.Join(e.dir, name)
	if err := os.MkdirAll(b, 0o755); err != nil {
		t.Fatal(err)
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	s := specs.Spec{Version: specs.Version, Process: &p, Root: &specs.Root{Path: "rootfs"}, Hostname: "pod", Mounts: mounts,
		Annotations: map[string]string{AnnotationContainerType: role, AnnotationSandboxID: sandboxID}}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPod: a pod's sandbox boots a VM with spare drives; its two
// containers run in that VM, each in its own root from its layers, PID 1
// of its own namespace, and see each other's files through an emptyDir;
// a host file bind-mounted (/etc/hosts) arrives with its contents;
// deleting the containers frees their drives; deleting the sandbox ends
// the VM.
func TestPod(t *testing.T) {
	e := newEnv(t)
	ctx := ctx30(t)
	pauseRoot := busyboxRoot(t, nil)
	appRoot := busyboxRoot(t, map[string]string{"etc/os-release": "ID=podtest\n"})
	upper := t.TempDir() // an overlay's upperdir: empty, as for a new container
	emptyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(emptyDir, "seed"), []byte("seeded\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("10.0.0.2 pod\n"), 0o644)
	mounts := func(dest string) []specs.Mount {
		return []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro"}},
			{Destination: dest, Type: "bind", Source: emptyDir, Options: []string{"rbind", "rprivate", "rw"}},
			{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"rbind", "rprivate", "ro"}},
		}
	}

	sb := e.podBundle(t, "pod1", "pod1", containerTypeSandbox, specs.Process{Args: []string{"sleep", "1000"}, Env: []string{"PATH=/usr/bin:/bin"}}, nil)
	if _, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "pod1", Bundle: sb,
		Rootfs: []*types.Mount{{Type: "bind", Source: pauseRoot, Options: []string{"rbind", "ro"}}}}); err != nil {
		t.Fatal(err)
	}
	e.launcher.mu.Lock()
	vs := e.launcher.got[0]
	e.launcher.mu.Unlock()
	if vs.SpareDrives != virtioSlots-podReservedSlots-1 || vs.MemoryMiB < PodMemoryMiB {
		t.Fatalf("the pod's VM: %+v", vs)
	}
	if _, err := e.client.Start(ctx, &taskapi.StartRequest{ID: "pod1"}); err != nil {
		t.Fatal(err)
	}

	run := func(id, script, dest string, rootfs []*types.Mount) string {
		t.Helper()
		b := e.podBundle(t, id, "pod1", containerTypeContainer, specs.Process{Args: []string{"sh", "-c", script}, Env: []string{"PATH=/bin"}}, mounts(dest))
		out := newFifoReader(t, filepath.Join(b, "stdout"))
		errOut := newFifoReader(t, filepath.Join(b, "stderr"))
		if _, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: id, Bundle: b, Rootfs: rootfs, Stdout: out.path, Stderr: errOut.path}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
		if _, err := e.client.Start(ctx, &taskapi.StartRequest{ID: id}); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		w, err := e.client.Wait(ctx, &taskapi.WaitRequest{ID: id})
		if err != nil || w.ExitStatus != 0 {
			t.Fatalf("%s: %v, %v; stderr %q", id, w, err, errOut.text(t))
		}
		return out.text(t)
	}
	a := run("a", "echo $$; cat /etc/os-release /etc/hosts /shared/seed; echo from-a > /shared/x; echo a > /own", "/shared",
		[]*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "lowerdir=" + appRoot, "upperdir=" + upper, "workdir=" + t.TempDir()}}})
	if want := "1\nID=podtest\n10.0.0.2 pod\nseeded\n"; a != want {
		t.Fatalf("container a: %q, want %q", a, want)
	}
	b := run("b", "cat /data/x; cat /own 2>/dev/null || echo not-a-root", "/data",
		[]*types.Mount{{Type: "bind", Source: appRoot, Options: []string{"rbind", "ro"}}})
	if b != "from-a\nnot-a-root\n" {
		t.Fatalf("container b: %q", b)
	}
	if _, err := os.Stat(filepath.Join(emptyDir, "x")); err == nil {
		t.Error("a write to the pod's volume reached the host (volumes stay in the VM)")
	}
	if _, err := e.client.Exec(ctx, &taskapi.ExecProcessRequest{ID: "a", ExecID: "x1", Spec: execSpec(t, specs.Process{Args: []string{"true"}})}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("exec in a stopped container: %v", err)
	}
	if _, err := e.client.Pause(ctx, &taskapi.PauseRequest{ID: "b"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("pause one container of a pod: %v", err)
	}
	if e.launcher.storage.attached() != 2 {
		t.Errorf("%d drives attached with two containers", e.launcher.storage.attached())
	}
	// Stats: a's ended processes' CPU time, none left running; the pod's
	// sandbox task reports the whole VM (here the test's machine).
	if m := taskMetrics(t, e, "a"); m.CPU.GetUsageUsec() == 0 || m.CPU.GetUsageUsec() != m.CPU.GetUserUsec()+m.CPU.GetSystemUsec() || m.Pids.GetCurrent() != 0 {
		t.Errorf("stats of container a after its process ended: %v", m)
	}
	if m := taskMetrics(t, e, "pod1"); m.CPU.GetUsageUsec() == 0 || m.Memory.GetUsage() == 0 || m.Memory.GetUsageLimit() < m.Memory.GetUsage() {
		t.Errorf("stats of the pod's VM: %v", m)
	}
	if _, err := e.client.Stats(ctx, &taskapi.StatsRequest{ID: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of no task: %v, want NotFound", err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := e.client.Delete(ctx, &taskapi.DeleteRequest{ID: id}); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	if n := e.launcher.storage.attached(); n != 0 {
		t.Errorf("%d drives still attached after the containers went", n)
	}
	e.launcher.mu.Lock()
	nVMs, vm := len(e.launcher.vms), e.launcher.vms[0]
	e.launcher.mu.Unlock()
	if nVMs != 1 {
		t.Fatalf("%d VMs booted for one pod", nVMs)
	}
	select {
	case <-vm.done:
		t.Fatal("the pod's VM ended with its containers")
	default:
	}
	if _, err := e.client.Kill(ctx, &taskapi.KillRequest{ID: "pod1", Signal: 9, All: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Wait(ctx, &taskapi.WaitRequest{ID: "pod1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Delete(ctx, &taskapi.DeleteRequest{ID: "pod1"}); err != nil {
		t.Fatal(err)
	}
	<-vm.done
}

// TestPodContainerWithoutSandbox: a container whose sandbox this shim
// does not run is refused, and leaves nothing.
func TestPodContainerWithoutSandbox(t *testing.T) {
	e := newEnv(t)
	ctx := ctx30(t)
	b := e.podBundle(t, "lost", "nopod", containerTypeContainer, specs.Process{Args: []string{"true"}}, nil)
	_, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "lost", Bundle: b, Rootfs: []*types.Mount{{Type: "bind", Source: t.TempDir()}}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "nopod") {
		t.Fatalf("create: %v", err)
	}
	if _, err := e.client.State(ctx, &taskapi.StateRequest{ID: "lost"}); status.Code(err) != codes.NotFound {
		t.Fatalf("state after a refused create: %v", err)
	}
}

// TestPodMounts: what each OCI mount becomes in a pod's VM.
func TestPodMounts(t *testing.T) {
	ms, vols, err := podMounts([]specs.Mount{
		{Destination: "/proc", Type: "proc"},
		{Destination: "/dev", Type: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		{Destination: "/dev/pts", Type: "devpts"},
		{Destination: "/dev/shm", Type: "tmpfs", Options: []string{"nosuid", "size=65536k"}},
		{Destination: "/sys", Type: "sysfs", Options: []string{"ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup"},
		{Destination: "/cache", Type: "bind", Source: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache", Options: []string{"rbind", "rw"}},
		{Destination: "/etc/hosts", Source: "/var/lib/containerd/hosts", Options: []string{"rbind", "ro"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, fmt.Sprintf("%s %s %s %v %s", m.Destination, m.Type, m.Source, m.ReadOnly, m.Data))
	}
	cache := volumeName("/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache")
	want := []string{"/proc proc  false ", "/dev dev  false ", "/dev/shm tmpfs  false size=65536k", "/sys sysfs  true ",
		"/cache volume " + cache + " false ", "/etc/hosts volume " + volumeName("/var/lib/containerd/hosts") + " true "}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("mounts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(vols) != 2 || vols[cache] == "" {
		t.Errorf("volumes: %v", vols)
	}
	for _, bad := range []specs.Mount{{Destination: "rel", Type: "proc"}, {Destination: "/x", Type: "bind", Source: "rel"}, {Destination: "/x", Type: "nfs"}} {
		if _, _, err := podMounts([]specs.Mount{bad}); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

// TestStartJoinsGroup: `start` of a pod's container whose sandbox's shim
// serves prints that shim's address (containerd then talks to it) and
// starts no server.
func TestStartJoinsGroup(t *testing.T) {
	dir := t.TempDir()
	o := Opts{ID: "c1", Namespace: "k8s.io", Address: "/run/containerd/containerd.sock", SocketDir: filepath.Join(dir, "s")}
	os.MkdirAll(o.SocketDir, 0o700)
	sock := o.socketPath("pod1")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(bundle, 0o755)
	spec := specs.Spec{Process: &specs.Process{Args: []string{"true"}}, Annotations: map[string]string{AnnotationSandboxID: "pod1", AnnotationContainerType: containerTypeContainer}}
	data, _ := json.Marshal(spec)
	os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644)
	t.Chdir(bundle)
	addr, err := Start(o, "/nonexistent/shim", nil)
	if err != nil || addr != "unix://"+sock {
		t.Fatalf("start: %q, %v; want the sandbox shim's unix://%s", addr, err, sock)
	}
	if b, err := os.ReadFile(filepath.Join(bundle, addressFile)); err != nil || string(b) != addr {
		t.Fatalf("address file: %q, %v", b, err)
	}
	// delete of the grouped container leaves the group's socket.
	var out strings.Builder
	o.Bundle = bundle
	if err := Delete(o, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("delete of a grouped container removed the shim's socket: %v", err)
	}
	if g := groupID(&specs.Spec{}, "x"); g != "x" {
		t.Errorf("groupID without annotations: %q", g)
	}
}

// TestVirtioSlots: the shim's count of a VM's virtio slots is the VMM's
// (the shim does not import the VMM; this test does).
func TestVirtioSlots(t *testing.T) {
	if virtioSlots != vmm.MaxVirtioDevices {
		t.Fatalf("virtioSlots %d, vmm.MaxVirtioDevices %d", virtioSlots, vmm.MaxVirtioDevices)
	}
}

// TestSpareSlots: a container that needs more drives than are free is
// refused with the counts, and takes none.
func TestSpareSlots(t *testing.T) {
	s := &spareSlots{owners: make([]string, 3)}
	if got, err := s.take("a", 2); err != nil || len(got) != 2 {
		t.Fatalf("take 2 of 3: %v, %v", got, err)
	}
	if _, err := s.take("b", 2); err == nil || !strings.Contains(err.Error(), "1 free layer drives (of 3)") {
		t.Fatalf("take 2 of 1 free: %v", err)
	}
	if got, err := s.take("b", 1); err != nil || len(got) != 1 {
		t.Fatalf("take the last: %v, %v", got, err)
	}
	if freed := s.release("a"); len(freed) != 2 {
		t.Fatalf("release a: %v", freed)
	}
	if _, err := s.take("c", 2); err != nil {
		t.Fatalf("take after release: %v", err)
	}
}

// taskMetrics is Stats of task id, decoded as containerd's CRI decodes it.
func taskMetrics(t *testing.T, e *env, id string) *cgroupstats.Metrics {
	t.Helper()
	r, err := e.client.Stats(ctx30(t), &taskapi.StatsRequest{ID: id})
	if err != nil {
		t.Fatalf("stats %s: %v", id, err)
	}
	if r.Stats.GetTypeUrl() != "io.containerd.cgroups.v2.Metrics" {
		t.Fatalf("stats %s: type %q", id, r.Stats.GetTypeUrl())
	}
	var m cgroupstats.Metrics
	if err := r.Stats.UnmarshalTo(&m); err != nil {
		t.Fatalf("stats %s: %v", id, err)
	}
	return &m
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/jail"
)

// jailUID is the user (and group) the jail tests run the VMM as.
const jailUID = 10000

// needJailHost skips a jail test where it cannot run: without /dev/kvm
// (see testkvm.Need), or when not root (unless CI is set, where that is a
// failure).
func needJailHost(t *testing.T) {
	t.Helper()
	testkvm.Need(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the jailer needs root, and CI is set")
		}
		t.Skip("the jailer needs root")
	}
}

// staticBin is ember as the jail tests run it: emberBin, built statically
// as make build does (the jail holds only the exec file) and named ember,
// so jails are <base>/ember/<id>.
func staticBin(t *testing.T) string {
	t.Helper()
	return emberBin
}

// hostCgroups is how the tests limit the VM with this host's cgroups: on
// v2 where it has the memory, pids and cpu controllers, else on v1.
type hostCgroups struct {
	version int
	mounts  []string          // hierarchies the VM gets a group in
	props   map[string]string // --cgroup FILE=VALUE, read back from the group
	memFile string            // the memory limit file
}

func (h hostCgroups) flags(parent string) []string {
	if h.version == 0 {
		return nil
	}
	f := []string{"--cgroup-version", strconv.Itoa(h.version), "--parent-cgroup", parent}
	for _, k := range slices.Sorted(maps.Keys(h.props)) {
		f = append(f, "--cgroup", k+"="+h.props[k])
	}
	return f
}

// cgroupMounts lists this host's cgroup mounts: controller (v1) or
// "unified" (v2) to mount point.
func cgroupMounts(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if sep < 0 || sep+3 >= len(f) {
			continue
		}
		switch f[sep+1] {
		case "cgroup2":
			if _, ok := out["unified"]; !ok {
				out["unified"] = f[4]
			}
		case "cgroup":
			for _, c := range strings.Split(f[sep+3], ",") {
				if _, ok := out[c]; !ok {
					out[c] = f[4]
				}
			}
		}
	}
	return out
}

func detectCgroups(t *testing.T) hostCgroups {
	t.Helper()
	switch v, mounts := jail.HostCgroups("memory", "pids", "cpu"); v {
	case 2:
		return hostCgroups{version: 2, mounts: mounts, memFile: "memory.max",
			props: map[string]string{"memory.max": "268435456", "pids.max": "64", "cpu.max": "50000 100000"}}
	case 1:
		return hostCgroups{version: 1, mounts: mounts, memFile: "memory.limit_in_bytes",
			props: map[string]string{"memory.limit_in_bytes": "268435456", "pids.max": "64", "cpu.cfs_quota_us": "50000"}}
	}
	t.Log("no memory, pids and cpu controllers on either cgroup version: testing without cgroups")
	return hostCgroups{}
}

// testParentCgroup is a parent cgroup for one test, removed (with any
// groups left in it, which the test reports) when the test ends.
func testParentCgroup(t *testing.T) string {
	t.Helper()
	parent := fmt.Sprintf("ember-jail-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	t.Cleanup(func() {
		for _, mnt := range cgroupMounts(t) {
			dir := filepath.Join(mnt, parent)
			if ents, err := os.ReadDir(dir); err == nil {
				for _, e := range ents {
					if e.IsDir() {
						t.Errorf("cgroup %s left behind", filepath.Join(dir, e.Name()))
						os.Remove(filepath.Join(dir, e.Name()))
					}
				}
				os.Remove(dir)
			}
		}
	})
	return parent
}

// testNetns makes a network namespace with a tap the VMM's user owns.
func testNetns(t *testing.T) (name, tap string) {
	t.Helper()
	name, tap = fmt.Sprintf("ember-jt-%d", os.Getpid()), "tap0"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "tuntap", "add", "dev", tap, "mode", "tap", "user", strconv.Itoa(jailUID), "group", strconv.Itoa(jailUID))
	return name, tap
}

// jailed is an `ember jail` run and the VM it jails.
type jailed struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	exited chan struct{}
	dir    string // <base>/ember/<id>
	root   string // dir/root
	pid    int    // the VMM's PID
}

func jailArgs(t *testing.T, base, id string, extra []string, vmmArgs ...string) []string {
	args := append([]string{"jail", "--id", id, "--exec-file", staticBin(t), "--uid", strconv.Itoa(jailUID),
		"--gid", strconv.Itoa(jailUID), "--chroot-base-dir", base}, extra...)
	return append(append(args, "--"), vmmArgs...)
}

// startJail runs `ember jail ... -- --api-sock /run/api.sock` and waits
// for the jailed VMM's socket.
func startJail(t *testing.T, ctx context.Context, base, id string, extra ...string) (*jailed, *client.Client) {
	t.Helper()
	j := &jailed{cmd: exec.Command(emberBin, jailArgs(t, base, id, extra, "--api-sock", "/run/api.sock")...),
		exited: make(chan struct{}), dir: filepath.Join(base, "ember", id)}
	j.root = filepath.Join(j.dir, "root")
	j.cmd.Stderr = &j.stderr
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { j.cmd.Wait(); close(j.exited) }()
	t.Cleanup(func() { j.cmd.Process.Kill(); <-j.exited })
	sock := filepath.Join(j.root, "run", "api.sock")
	if err := client.WaitForSocket(ctx, sock); err != nil {
		t.Fatalf("%v\n%s", err, j.stderr.String())
	}
	j.pid = readPIDFile(t, j.root)
	if j.pid != j.cmd.Process.Pid {
		t.Errorf("PID file says %d; the jailer's PID %d should have become the VMM", j.pid, j.cmd.Process.Pid)
	}
	return j, client.New(sock)
}

func readPIDFile(t *testing.T, root string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "ember.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatalf("PID file %q: %v", b, err)
	}
	return pid
}

// wait waits for the jailer's process (the VMM) and, since the reaper
// holds the same stderr until it is done, for the jail's removal.
func (j *jailed) wait(t *testing.T) *os.ProcessState {
	t.Helper()
	select {
	case <-j.exited:
		return j.cmd.ProcessState
	case <-time.After(hangLimit):
		t.Fatalf("the jailed VMM did not exit\n%s", j.stderr.String())
	}
	return nil
}

func mustNotExist(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there (%v)", p, err)
		}
	}
}

func mustExist(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func cgroupDirs(h hostCgroups, parent, id string) []string {
	var dirs []string
	for _, m := range h.mounts {
		dirs = append(dirs, filepath.Join(m, parent, id))
	}
	return dirs
}

// statusFields reads the named fields of /proc/PID/task/TID/status.
func statusFields(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// checkConfined checks from the host what the jail promises, on every
// thread of the VMM.
func checkConfined(t *testing.T, j *jailed) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", j.pid))
	if err != nil {
		t.Fatal(err)
	}
	ids := fmt.Sprintf("%d %d %d %d", jailUID, jailUID, jailUID, jailUID)
	for _, task := range tasks {
		st := statusFields(t, fmt.Sprintf("/proc/%d/task/%s/status", j.pid, task.Name()))
		want := map[string]string{"Uid": ids, "Gid": ids, "Groups": "", "NoNewPrivs": "1",
			"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
			"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "Seccomp": "2"}
		for k, v := range want {
			if st[k] != v {
				t.Errorf("thread %s: %s %q, want %q", task.Name(), k, st[k], v)
			}
		}
	}
	t.Logf("%d threads: uid/gid %d, no groups, no capabilities in any set, NoNewPrivs 1, seccomp filters", len(tasks), jailUID)
	var procRoot, jailRoot unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/root", j.pid), &procRoot); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(j.root, &jailRoot); err != nil {
		t.Fatal(err)
	}
	if procRoot.Dev != jailRoot.Dev || procRoot.Ino != jailRoot.Ino {
		t.Errorf("/proc/%d/root is not the jail %s", j.pid, j.root)
	}
	mnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", j.pid))
	self, _ := os.Readlink("/proc/self/ns/mnt")
	if mnt == self {
		t.Errorf("the VMM shares the host's mount namespace %s", mnt)
	}
	mi, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", j.pid))
	if lines := strings.Split(strings.TrimSpace(string(mi)), "\n"); len(lines) != 1 || strings.Fields(lines[0])[4] != "/" {
		t.Errorf("the VMM sees mounts other than the jail:\n%s", mi)
	}
}

// TestJailTinyGuest jails the real ember with Firecracker's flags (uid and
// gid 10000, a network namespace with a tap, the host's cgroups with
// memory, pids and cpu limits, resource limits), checks the confinement
// from the host, drives the VM through the API socket inside the jail with
// a root drive, the tap and vsock, and checks that the jail and its
// cgroups are gone once the VM has ended.
func TestJailTinyGuest(t *testing.T) {
	needJailHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangLimit)
	defer cancel()
	base, parent, id := t.TempDir(), testParentCgroup(t), "tiny-1"
	netns, tap := testNetns(t)
	cg := detectCgroups(t)
	flags := append(cg.flags(parent), "--netns", "/var/run/netns/"+netns,
		"--resource-limit", "no-file=1024", "--resource-limit", "fsize=1073741824")
	j, c := startJail(t, ctx, base, id, flags...)

	info, err := c.Describe(ctx)
	if err != nil || info.ID != id || info.State != "Not started" {
		t.Fatalf("GET / through the jail's socket: %+v, %v", info, err)
	}
	checkConfined(t, j)
	var want, got unix.Stat_t
	unix.Stat("/var/run/netns/"+netns, &want)
	unix.Stat(fmt.Sprintf("/proc/%d/ns/net", j.pid), &got)
	if want.Ino != got.Ino {
		t.Errorf("the VMM is not in the network namespace %s", netns)
	}
	for _, dir := range cgroupDirs(cg, parent, id) {
		for file, v := range cg.props {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil && strings.TrimSpace(string(b)) != v {
				t.Errorf("%s/%s = %q, want %q", dir, file, strings.TrimSpace(string(b)), v)
			}
		}
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if !slices.Contains(strings.Fields(string(procs)), strconv.Itoa(j.pid)) {
			t.Errorf("the VMM (%d) is not in cgroup %s (%q)", j.pid, dir, procs)
		}
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", j.pid))
	for _, l := range []string{`Max file size\s+1073741824\s+1073741824`, `Max open files\s+1024\s+1024`} {
		if ok, _ := regexp.MatchString(l, string(limits)); !ok {
			t.Errorf("/proc/%d/limits has no %q:\n%s", j.pid, l, limits)
		}
	}

	// The VM's files are in the jail, named by paths inside it.
	if err := os.WriteFile(filepath.Join(j.root, "spin.elf"), tiny.Spin(), 0o644); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(j.root, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(disk, jailUID, jailUID)
	vcpus, mib := 1, 64
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, j.stderr.String())
		}
	}
	must("machine-config", c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mib}))
	must("boot-source", c.PutBootSource(ctx, api.BootSource{KernelImagePath: "/spin.elf"}))
	must("drive", c.PutDrive(ctx, api.Drive{DriveID: "rootfs", PathOnHost: "/disk.img", IsRootDevice: true}))
	must("network", c.PutNetworkInterface(ctx, api.NetworkInterface{IfaceID: "eth0", HostDevName: tap}))
	must("vsock", c.PutVsock(ctx, api.Vsock{GuestCID: 3, UDSPath: "/run/v.sock"}))
	must("start", c.InstanceStart(ctx))
	if info, err := c.Describe(ctx); err != nil || info.State != "Running" {
		t.Fatalf("after InstanceStart: %+v, %v", info, err)
	}
	if st, err := os.Stat(filepath.Join(j.root, "run", "v.sock")); err != nil || st.Mode().Type() != fs.ModeSocket {
		t.Errorf("the vsock socket is not at <jail>/run/v.sock: %v", err)
	}
	checkConfined(t, j) // again, with the vCPU and device threads running

	j.cmd.Process.Signal(syscall.SIGTERM)
	if st := j.wait(t); st.ExitCode() != 0 {
		t.Fatalf("exit %v after SIGTERM\n%s", st, j.stderr.String())
	}
	mustNotExist(t, append(cgroupDirs(cg, parent, id), j.dir)...)
}

// TestJailKeepAndSweep: with --keep-jail the jail and its cgroups outlive
// the VM; `ember jail sweep` leaves them, `ember jail sweep --kept` removes
// them.
func TestJailKeepAndSweep(t *testing.T) {
	needJailHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()
	base, parent, id := t.TempDir(), testParentCgroup(t), "kept-1"
	cg := detectCgroups(t)
	j, _ := startJail(t, ctx, base, id, append(cg.flags(parent), "--keep-jail")...)
	j.cmd.Process.Signal(syscall.SIGTERM)
	if st := j.wait(t); st.ExitCode() != 0 {
		t.Fatalf("exit %v\n%s", st, j.stderr.String())
	}
	mustExist(t, append(cgroupDirs(cg, parent, id), j.root)...)

	out, stderr, code, _ := runEmber(t, "jail", "sweep", "--chroot-base-dir", base)
	if code != 0 || !strings.Contains(out, "left "+j.dir+": kept") {
		t.Errorf("sweep: exit %d, stdout %q, stderr %q; want the kept jail left", code, out, stderr)
	}
	mustExist(t, j.root)
	out, stderr, code, _ = runEmber(t, "jail", "sweep", "--chroot-base-dir", base, "--kept")
	if code != 0 || strings.TrimSpace(out) != "removed "+j.dir {
		t.Errorf("sweep --kept: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	mustNotExist(t, append(cgroupDirs(cg, parent, id), j.dir)...)
}

// TestJailSweepOrphan: a jail whose reaper was killed outlives its VM;
// `ember jail sweep` leaves it while the VM runs and removes it after.
func TestJailSweepOrphan(t *testing.T) {
	needJailHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()
	base, parent, id := t.TempDir(), testParentCgroup(t), "orphan-1"
	cg := detectCgroups(t)
	j, _ := startJail(t, ctx, base, id, cg.flags(parent)...)
	sweep := func() string {
		t.Helper()
		out, stderr, code, _ := runEmber(t, "jail", "sweep", "--chroot-base-dir", base)
		if code != 0 {
			t.Fatalf("sweep: exit %d, %s", code, stderr)
		}
		return strings.TrimSpace(out)
	}
	if out := sweep(); !strings.HasPrefix(out, "left "+j.dir+": in use") {
		t.Errorf("sweep with its reaper alive: %q", out)
	}
	reaper := findReaper(t, j.dir)
	pidfd, err := unix.PidfdOpen(reaper, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Kill(reaper, unix.SIGKILL)
	unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int(hangLimit/time.Millisecond))
	unix.Close(pidfd)
	if out := sweep(); out != fmt.Sprintf("left %s: in use: process %d runs in it", j.dir, j.pid) {
		t.Errorf("sweep with the VM running: %q", out)
	}
	j.cmd.Process.Signal(syscall.SIGTERM)
	j.wait(t)
	mustExist(t, j.root) // the orphan
	if out := sweep(); out != "removed "+j.dir {
		t.Errorf("sweep of the orphan: %q", out)
	}
	mustNotExist(t, append(cgroupDirs(cg, parent, id), j.dir)...)
}

// findReaper returns the PID of the reaper of the jail dir.
func findReaper(t *testing.T, dir string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.HasSuffix(string(cmdline), "\x00__reap\x00"+dir+"\x00") {
			return pid
		}
	}
	t.Fatalf("no reaper for %s", dir)
	return 0
}

// TestJailOOMKill: a VM whose cgroup memory limit is too small is killed
// by the kernel, the host carries on, and the jailer's stderr says why;
// the jail and cgroup are removed as for any other end.
func TestJailOOMKill(t *testing.T) {
	needJailHost(t)
	cg := detectCgroups(t)
	if cg.version == 0 {
		t.Skip("no memory controller")
	}
	base, parent, id := t.TempDir(), testParentCgroup(t), "oom-1"
	root := filepath.Join(base, "ember", id, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "tiny.elf"), tiny.Image(), 0o644)
	flags := []string{"--cgroup-version", strconv.Itoa(cg.version), "--parent-cgroup", parent,
		"--cgroup", cg.memFile + "=1048576"}
	_, stderr, code, _ := runEmber(t, jailArgs(t, base, id, flags, "run", "--kernel", "/tiny.elf")...)
	if code == 0 || !strings.Contains(stderr, "ember jail: VM oom-1: killed by the kernel's OOM killer") {
		t.Fatalf("exit %d, stderr:\n%s\nwant a non-zero exit and the OOM kill reported", code, stderr)
	}
	t.Logf("stderr: %s", strings.TrimSpace(stderr))
	mustNotExist(t, append(cgroupDirs(cg, parent, id)[:1], filepath.Dir(root))...)
}

// TestJailerEntryPoint: the binary invoked as "jailer" is `ember jail`:
// here it jails ember linked as "firecracker" and runs the tiny guest with
// `-- run` in a jail made ahead with the kernel in it (as scripts written
// for Firecracker's jailer do), which is removed, with the kernel, once the
// guest has reset.
func TestJailerEntryPoint(t *testing.T) {
	needJailHost(t)
	links := t.TempDir()
	jailer := filepath.Join(links, "jailer")
	if err := os.Symlink(emberBin, jailer); err != nil {
		t.Fatal(err)
	}
	// The VMM under Firecracker's name, as a link: the jail is named for
	// the link, as firecracker-go-sdk expects.
	firecracker := filepath.Join(links, "firecracker")
	if err := os.Symlink(staticBin(t), firecracker); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(jailer, "--version").Output()
	if !strings.HasPrefix(string(out), "Ember jailer v") {
		t.Errorf("jailer --version: %q", out)
	}
	base, id := t.TempDir(), "run-1"
	root := filepath.Join(base, "firecracker", id, "root")
	os.MkdirAll(root, 0o700)
	os.WriteFile(filepath.Join(root, "tiny.elf"), tiny.Image(), 0o644)
	cmd := exec.Command(jailer, "--id", id, "--exec-file", firecracker, "--uid", strconv.Itoa(jailUID), "--gid", strconv.Itoa(jailUID),
		"--chroot-base-dir", base, "--", "run", "--kernel", "/tiny.elf", "--boot-timer")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || !strings.Contains(stderr.String(), "Guest-boot-time") {
		t.Fatalf("jailer ... -- run: %v\n%s", err, stderr.String())
	}
	mustNotExist(t, filepath.Dir(root))
}

// TestJailNewPIDNSAndDaemonize: with --new-pid-ns the VMM is PID 1 of a
// new PID namespace; with --daemonize it leads a new session with stdio on
// /dev/null. Either way the jailer exits 0 once the VMM runs, the PID file
// names the VMM, and the jail goes when the VM ends.
func TestJailNewPIDNSAndDaemonize(t *testing.T) {
	needJailHost(t)
	for _, mode := range [][]string{{"--new-pid-ns"}, {"--daemonize"}, {"--new-pid-ns", "--daemonize"}} {
		t.Run(strings.Join(mode, " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
			defer cancel()
			base, id := t.TempDir(), "detached-1"
			// A file, not a pipe: the VMM and the reaper outlive the jailer.
			errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
			if err != nil {
				t.Fatal(err)
			}
			defer errFile.Close()
			cmd := exec.Command(emberBin, jailArgs(t, base, id, mode, "--api-sock", "/run/api.sock")...)
			cmd.Stderr = errFile
			if err := cmd.Run(); err != nil {
				b, _ := os.ReadFile(errFile.Name())
				t.Fatalf("jailer: %v\n%s", err, b)
			}
			root := filepath.Join(base, "ember", id, "root")
			pid := readPIDFile(t, root)
			pidfd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); unix.Close(pidfd) })
			if err := client.WaitForSocket(ctx, filepath.Join(root, "run", "api.sock")); err != nil {
				t.Fatal(err)
			}
			checkConfined(t, &jailed{pid: pid, root: root})
			st := statusFields(t, fmt.Sprintf("/proc/%d/status", pid))
			if slices.Contains(mode, "--new-pid-ns") && st["NSpid"] != fmt.Sprintf("%d 1", pid) {
				t.Errorf("NSpid %q, want %d 1", st["NSpid"], pid)
			}
			if slices.Contains(mode, "--daemonize") {
				if sid, _ := unix.Getsid(pid); sid != pid {
					t.Errorf("session %d, want the VMM's own (%d)", sid, pid)
				}
				for fd := 0; fd <= 2; fd++ {
					if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); l != "/dev/null" {
						t.Errorf("fd %d is %s, want /dev/null", fd, l)
					}
				}
			}
			unix.Kill(pid, unix.SIGTERM)
			unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int(hangLimit/time.Millisecond))
			waitGone(t, filepath.Dir(root))
		})
	}
}

// waitGone waits (up to hangLimit: reaching it is a hang) for the reaper
// to remove path.
func waitGone(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(hangLimit)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%s still there", path)
}

// TestJailSnapshotAcrossJails: a Full snapshot of the counting guest taken
// in one jail loads in a second jail (File backend) and in a third (Uffd
// backend, through /dev/userfaultfd: the jailed VMM may not make a
// userfaultfd by the system call) and runs on; its memory file is edited
// so that the guest, once running, resets at once.
func TestJailSnapshotAcrossJails(t *testing.T) {
	needJailHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangLimit)
	defer cancel()
	base := t.TempDir()
	a, ca := startJail(t, ctx, base, "snap-a")
	os.WriteFile(filepath.Join(a.root, "counter.elf"), tiny.Counter(), 0o644)
	vcpus, mib := 1, 64
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, a.stderr.String())
		}
	}
	must("machine-config", ca.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mib}))
	must("boot-source", ca.PutBootSource(ctx, api.BootSource{KernelImagePath: "/counter.elf"}))
	must("start", ca.InstanceStart(ctx))
	must("pause", ca.Pause(ctx))
	must("snapshot", ca.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: "/vm.snap", MemFilePath: "/vm.mem", SnapshotType: "Full"}))

	b, cb := startJail(t, ctx, base, "snap-b")
	c, cc := startJail(t, ctx, base, "snap-c")
	mem := filepath.Join(base, "vm.mem") // the Uffd handler's, on the host
	must("link", os.Link(filepath.Join(a.root, "vm.mem"), mem))
	for _, dst := range []string{b.root, c.root} {
		for _, f := range []string{"vm.snap", "vm.mem"} {
			must("link", os.Link(filepath.Join(a.root, f), filepath.Join(dst, f)))
		}
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	a.wait(t)
	mustNotExist(t, a.dir)
	f, err := os.OpenFile(mem, os.O_RDWR, 0)
	must("open memory file", err)
	_, err = f.WriteAt([]byte{1}, tiny.ExitFlagAddr)
	f.Close()
	must("set exit flag", err)

	must("load (File)", cb.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: "/vm.snap",
		MemBackend: &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: "/vm.mem"}, ResumeVM: true}))
	if st := b.wait(t); st.ExitCode() != 0 {
		t.Fatalf("restored VM (File): exit %v, want 0 (guest reset)\n%s", st, b.stderr.String())
	}
	mustNotExist(t, b.dir)

	usock := filepath.Join(c.root, "run", "uffd.sock")
	handler := exec.Command(emberBin, "snapshot", "serve-uffd", usock, mem)
	herr, err := handler.StderrPipe()
	must("handler's stderr", err)
	must("start the handler", handler.Start())
	defer func() { handler.Process.Signal(os.Interrupt); handler.Wait() }()
	// It says so once it listens (the socket file exists a little before).
	hout := bufio.NewReader(herr)
	if line, err := hout.ReadString('\n'); err != nil || !strings.Contains(line, "serving") {
		t.Fatalf("serve-uffd: %q, %v", line, err)
	}
	var hlog bytes.Buffer
	hdone := make(chan struct{})
	go func() { io.Copy(&hlog, hout); close(hdone) }()
	must("hand the handler's socket to the jail's user", os.Chown(usock, jailUID, jailUID))
	must("load (Uffd)", cc.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: "/vm.snap",
		MemBackend: &api.MemoryBackend{BackendType: api.BackendUffd, BackendPath: "/run/uffd.sock"}, ResumeVM: true}))
	if st := c.wait(t); st.ExitCode() != 0 {
		handler.Process.Signal(os.Interrupt)
		<-hdone
		t.Fatalf("restored VM (Uffd): exit %v, want 0 (guest reset)\n%s\nhandler:\n%s", st, c.stderr.String(), hlog.String())
	}
	mustNotExist(t, c.dir)
}

// TestJailCgroupV2 places the VM in a cgroup v2 group with core values,
// which every v2 hierarchy has (this covers v2 where the host's memory,
// pids and cpu controllers are on v1): by migration in the plain mode, and
// made there by clone3 (CLONE_INTO_CGROUP) with --daemonize.
func TestJailCgroupV2(t *testing.T) {
	needJailHost(t)
	mnt, ok := cgroupMounts(t)["unified"]
	if !ok {
		t.Skip("no cgroup v2 hierarchy")
	}
	for _, mode := range []string{"plain", "--daemonize"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
			defer cancel()
			base, parent, id := t.TempDir(), testParentCgroup(t), "v2-1"
			flags := []string{"--cgroup-version", "2", "--parent-cgroup", parent,
				"--cgroup", "cgroup.max.descendants=3", "--cgroup", "cgroup.max.depth=2"}
			dir := filepath.Join(mnt, parent, id)
			root := filepath.Join(base, "ember", id, "root")
			var pid int
			var stop func()
			if mode == "plain" {
				j, _ := startJail(t, ctx, base, id, flags...)
				pid, stop = j.pid, func() { j.cmd.Process.Signal(syscall.SIGTERM); j.wait(t) }
			} else {
				cmd := exec.Command(emberBin, jailArgs(t, base, id, append(flags, mode), "--api-sock", "/run/api.sock")...)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("jailer: %v\n%s", err, out)
				}
				pid = readPIDFile(t, root)
				pidfd, err := unix.PidfdOpen(pid, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(pidfd)
				stop = func() {
					unix.PidfdSendSignal(pidfd, unix.SIGTERM, nil, 0)
					unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int(hangLimit/time.Millisecond))
					waitGone(t, filepath.Dir(root))
				}
			}
			for file, want := range map[string]string{"cgroup.max.descendants": "3", "cgroup.max.depth": "2"} {
				if b, _ := os.ReadFile(filepath.Join(dir, file)); strings.TrimSpace(string(b)) != want {
					t.Errorf("%s = %q, want %s", file, b, want)
				}
			}
			cgs, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if !strings.Contains(string(cgs), "0::/"+parent+"/"+id+"\n") {
				t.Errorf("the VMM is not in %s:\n%s", dir, cgs)
			}
			stop()
			mustNotExist(t, dir, filepath.Dir(root))
		})
	}
}

// TestJailBadFlags: every bad flag, and every flag naming a missing host
// feature, gets one line on stderr naming it and exit status 1, and leaves
// nothing on disk or in cgroupfs.
func TestJailBadFlags(t *testing.T) {
	needJailHost(t)
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	os.Mkdir(base, 0o755)
	bin := staticBin(t)
	file := write(t, "plain.txt", []byte("text\n"))
	script := write(t, "script.sh", []byte("#!/bin/sh\n"))
	os.Chmod(script, 0o755)
	nodev := filepath.Join(tmp, "nodev")
	os.Mkdir(nodev, 0o755)
	if err := unix.Mount("tmpfs", nodev, "tmpfs", unix.MS_NODEV, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(nodev, unix.MNT_DETACH)
	parent := testParentCgroup(t)
	cg := detectCgroups(t)
	// An existing jail of Ember's, which a second jailer must leave alone.
	busy := filepath.Join(base, "ember", "busy")
	os.MkdirAll(filepath.Join(busy, "root"), 0o700)
	os.WriteFile(filepath.Join(busy, "ember-jail.json"), []byte(`{"id":"busy"}`), 0o644)

	// ok is a good command line with the flags given replacing its own (or
	// added, if it has none of that name); args not starting "--" are added.
	// A jail made ahead, whose last occupant left /dev as a link out of it.
	outside := filepath.Join(tmp, "outside")
	os.Mkdir(outside, 0o755)
	linked := filepath.Join(base, "ember", "linked", "root")
	os.MkdirAll(linked, 0o700)
	os.Symlink(outside, filepath.Join(linked, "dev"))
	defer func() {
		var st unix.Stat_t
		ents, _ := os.ReadDir(outside)
		if unix.Stat(outside, &st); st.Uid != 0 || st.Mode&0o777 != 0o755 || len(ents) != 0 {
			t.Errorf("the jailer followed the jail's /dev link out: %s is now uid %d mode %o with %d entries", outside, st.Uid, st.Mode&0o777, len(ents))
		}
	}()

	ok := func(over ...string) []string {
		args := []string{"jail", "--id", "bad-1", "--exec-file", bin, "--uid", "10000", "--gid", "10000",
			"--chroot-base-dir", base, "--parent-cgroup", parent}
		for i := 0; i < len(over); i++ {
			k := over[i]
			if at := slices.Index(args, k); at > 0 && strings.HasPrefix(k, "--") && i+1 < len(over) {
				args[at+1] = over[i+1]
				i++
				continue
			}
			args = append(args, k)
		}
		return args
	}
	type badFlag struct {
		name string
		args []string
		want string
	}
	cases := []badFlag{
		{"no id", []string{"jail", "--exec-file", bin, "--uid", "1", "--gid", "1", "--chroot-base-dir", base}, "--id is required"},
		{"bad id", ok("--id", "bad id!"), "--id"},
		{"long id", ok("--id", strings.Repeat("a", 65)), "--id"},
		{"id twice", append(ok(), "--id", "other"), "more than once"},
		{"no exec file", []string{"jail", "--id", "x", "--uid", "1", "--gid", "1", "--chroot-base-dir", base}, "--exec-file is required"},
		{"missing exec file", []string{"jail", "--id", "x", "--exec-file", "/nonexistent/ember", "--uid", "1", "--gid", "1"}, "/nonexistent/ember"},
		{"exec file a directory", []string{"jail", "--id", "x", "--exec-file", tmp, "--uid", "1", "--gid", "1"}, "not a regular file"},
		{"exec file not executable", []string{"jail", "--id", "x", "--exec-file", file, "--uid", "1", "--gid", "1"}, "not executable"},
		{"exec file a script", []string{"jail", "--id", "x", "--exec-file", script, "--uid", "1", "--gid", "1"}, "not an ELF"},
		{"exec file dynamic", []string{"jail", "--id", "x", "--exec-file", "/bin/true", "--uid", "1", "--gid", "1", "--chroot-base-dir", base}, "dynamically linked"},
		{"no uid", []string{"jail", "--id", "x", "--exec-file", bin, "--gid", "1", "--chroot-base-dir", base}, "--uid is required"},
		{"no gid", []string{"jail", "--id", "x", "--exec-file", bin, "--uid", "1", "--chroot-base-dir", base}, "--gid is required"},
		{"uid not a number", []string{"jail", "--id", "x", "--exec-file", bin, "--uid", "root", "--gid", "1"}, "-uid"},
		{"gid negative", []string{"jail", "--id", "x", "--exec-file", bin, "--uid", "1", "--gid", "-1"}, "-gid"},
		{"uid meaning unchanged", []string{"jail", "--id", "x", "--exec-file", bin, "--uid", "4294967295", "--gid", "1", "--chroot-base-dir", base}, "unchanged"},
		{"missing base dir", ok("--chroot-base-dir", "/nonexistent/jails"), "/nonexistent/jails"},
		{"base dir a file", ok("--chroot-base-dir", file), "not a directory"},
		{"base dir nodev", ok("--chroot-base-dir", nodev), "nodev"},
		{"missing netns", ok("--netns", "/var/run/netns/nonexistent"), "--netns"},
		{"netns not a namespace", ok("--netns", file), "not a network namespace"},
		{"cgroup version 3", ok("--cgroup-version", "3"), "--cgroup-version"},
		{"cgroup version not a number", ok("--cgroup-version", "two"), "cgroup-version"},
		{"cgroup without value", ok("--cgroup", "pids.max"), "FILE=VALUE"},
		{"cgroup empty value", ok("--cgroup", "pids.max="), "FILE=VALUE"},
		{"cgroup file without dot", ok("--cgroup", "pids=1"), "not a cgroup file"},
		{"cgroup file with a path", ok("--cgroup", "../pids.max=1"), "not a cgroup file"},
		{"cgroup procs", ok("--cgroup", "cgroup.procs=1"), "manages"},
		{"cgroup unknown controller v1", ok("--cgroup", "nosuch.max=1"), "no cgroup v1 hierarchy has the nosuch controller"},
		{"cgroup unknown controller v2", ok("--cgroup-version", "2", "--cgroup", "nosuch.max=1"), "nosuch"},
		{"v2 parent missing", ok("--cgroup-version", "2"), "cgroup"},
		{"parent cgroup absolute", ok("--parent-cgroup", "/abs", "--cgroup", "pids.max=1"), "--parent-cgroup"},
		{"parent cgroup dotdot", ok("--parent-cgroup", "a/../b", "--cgroup", "pids.max=1"), "--parent-cgroup"},
		{"limit without value", ok("--resource-limit", "no-file"), "--resource-limit"},
		{"limit not a number", ok("--resource-limit", "no-file=many"), "not a whole number"},
		{"limit unknown", ok("--resource-limit", "cpu=1"), "unknown resource"},
		{"limit too high", ok("--resource-limit", "no-file=99999999999"), "nr_open"},
		{"limit too low", ok("--resource-limit", "no-file=3"), "below"},
		{"unknown flag", ok("--frobnicate"), "frobnicate"},
		{"stray argument", ok("extra", "--", "--api-sock", "/run/a"), "unexpected argument"},
		{"jail exists", ok("--id", "busy"), "already exists"},
		{"jail with a link out", ok("--id", "linked"), "/dev: exists and is not a directory"},
	}
	if cg.version != 0 {
		// Values the kernel sees only once the group is made: the group
		// and its new parent must go again.
		v := strconv.Itoa(cg.version)
		cases = append(cases,
			badFlag{"cgroup file missing", ok("--cgroup-version", v, "--cgroup", "pids.nosuch=1"), "has no file"},
			badFlag{"cgroup value refused", ok("--cgroup-version", v, "--cgroup", "pids.max=lots"), "refused"},
		)
	}
	snapshot := func() []string {
		var paths []string
		filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			paths = append(paths, p)
			return nil
		})
		return paths
	}
	before := snapshot()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code, _ := runEmber(t, c.args...)
			if code != 1 {
				t.Errorf("exit %d, want 1 (stderr %q)", code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "ember jail: ") || !strings.Contains(lines[0], c.want) {
				t.Errorf("stderr %q: want one line naming %q", stderr, c.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
			if after := snapshot(); !slices.Equal(before, after) {
				t.Errorf("left behind in %s: %v, was %v", base, after, before)
			}
			for _, mnt := range cgroupMounts(t) {
				mustNotExist(t, filepath.Join(mnt, parent))
			}
		})
	}
}

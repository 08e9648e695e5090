package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/jail"
)

// jailUID is the user and group the jailed VMMs run as.
const jailUID = 10000

// jailedVM is an `ember jail ... -- --api-sock /run/api.sock` run.
type jailedVM struct {
	*apiVM
	root string // the jail's root on the host
	pid  int
}

// startJailed jails ember (uid/gid jailUID, the given cgroup flags, netns)
// with its API socket inside the jail; prepare fills the jail's root before
// the jailer runs.
func startJailed(t *testing.T, base, id, netns string, cgroupFlags []string, prepare func(root string)) *jailedVM {
	t.Helper()
	root := filepath.Join(base, "ember", id, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	prepare(root)
	args := append([]string{"jail", "--id", id, "--exec-file", emberBinary(t), "--uid", strconv.Itoa(jailUID), "--gid", strconv.Itoa(jailUID),
		"--chroot-base-dir", base, "--netns", "/var/run/netns/" + netns, "--resource-limit", "no-file=1024"}, cgroupFlags...)
	args = append(args, "--", "--api-sock", "/run/api.sock")
	v := &apiVM{t: t, cmd: exec.Command(emberBinary(t), args...), out: &syncBuffer{}, err: &syncBuffer{}, exited: make(chan struct{})}
	v.cmd.Stdout, v.cmd.Stderr = v.out, v.err
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(v.kill)
	sock := filepath.Join(root, "run", "api.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		t.Fatalf("jailed API socket: %v\n%s", err, v.err)
	}
	v.c = client.New(sock)
	return &jailedVM{apiVM: v, root: root, pid: v.cmd.Process.Pid}
}

// checkJailed checks from the host what the jail promises, on every thread.
func checkJailed(t *testing.T, j *jailedVM, cgroupDir string, limits map[string]string) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", j.pid))
	if err != nil {
		t.Fatal(err)
	}
	ids := fmt.Sprintf("%d\t%d\t%d\t%d", jailUID, jailUID, jailUID, jailUID)
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", j.pid, task.Name()))
		if err != nil {
			t.Fatal(err)
		}
		status := string(b)
		for _, want := range []string{"Uid:\t" + ids, "Gid:\t" + ids, "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000",
			"CapBnd:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
			if !strings.Contains(status, want+"\n") {
				t.Errorf("thread %s lacks %q in its status", task.Name(), want)
			}
		}
	}
	var procRoot, jailRoot syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/root", j.pid), &procRoot); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(j.root, &jailRoot); err != nil {
		t.Fatal(err)
	}
	if procRoot.Dev != jailRoot.Dev || procRoot.Ino != jailRoot.Ino {
		t.Errorf("/proc/%d/root is not the jail %s", j.pid, j.root)
	}
	lim, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", j.pid))
	if !strings.Contains(string(lim), "Max open files            1024                 1024") {
		t.Errorf("rlimits:\n%s", lim)
	}
	if cgroupDir != "" {
		procs, _ := os.ReadFile(filepath.Join(cgroupDir, "cgroup.procs"))
		if !strings.Contains("\n"+string(procs), "\n"+strconv.Itoa(j.pid)+"\n") {
			t.Errorf("the VMM %d is not in %s (its procs: %q)", j.pid, cgroupDir, procs)
		}
		for file, want := range limits {
			if b, _ := os.ReadFile(filepath.Join(cgroupDir, file)); strings.TrimSpace(string(b)) != want {
				t.Errorf("%s = %q, want %q", file, strings.TrimSpace(string(b)), want)
			}
		}
	}
	t.Logf("%d threads: uid/gid %d, no capabilities, NoNewPrivs 1, seccomp, root in the jail, rlimits, cgroup %s", len(tasks), jailUID, cgroupDir)
}

// vsockSink accepts the guest's vsock connections on path (the jailed
// VMM's user may connect) and reports the bytes and hash of each.
func vsockSink(t *testing.T, path string) chan string {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Chown(path, jailUID, jailUID); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h := sha256.New()
			n, _ := io.Copy(h, c)
			c.Close()
			got <- fmt.Sprintf("sent=%d sha256=%x", n, h.Sum(nil))
		}
	}()
	return got
}

// TestJailedGuest boots the minimal kernel in a jail (uid/gid 10000, the
// network namespace of a tap, cgroup limits where the lab offers its
// controllers, rlimits, every thread under seccomp) with its API socket
// inside the jail, and the guest moves data on each device: a drive, the
// tap, vsock. A Full snapshot taken in the jail loads in a second jail,
// where the guest carries on.
func TestJailedGuest(t *testing.T) {
	lab(t)
	const (
		hostIP  = "10.79.0.1"
		guestIP = "10.79.0.2"
		vsockMB = 1 << 20
	)
	dir := scratchDir(t)
	base := filepath.Join(dir, "jails")
	ns := fmt.Sprintf("embj%d", os.Getpid())
	sh(t, "ip netns add "+ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	in := "ip netns exec " + ns + " "
	sh(t, in+"ip link set lo up && "+in+"ip tuntap add dev tap0 mode tap user "+strconv.Itoa(jailUID)+" group "+strconv.Itoa(jailUID)+
		" && "+in+"ip addr add "+hostIP+"/24 dev tap0 && "+in+"ip link set tap0 up")

	var cgFlags []string
	var cgDir func(id string) string
	limits := map[string]string{"memory.max": "536870912", "pids.max": "100", "cpu.max": "100000 100000"}
	if v, mounts := jail.HostCgroups("memory", "pids", "cpu"); v == 2 {
		parent := fmt.Sprintf("ember-e2e-%d", os.Getpid())
		cgFlags = []string{"--cgroup-version", "2", "--parent-cgroup", parent}
		for k, val := range limits {
			cgFlags = append(cgFlags, "--cgroup", k+"="+val)
		}
		cgDir = func(id string) string { return filepath.Join(mounts[0], parent, id) }
		t.Cleanup(func() { os.Remove(filepath.Join(mounts[0], parent)) })
	} else {
		t.Logf("the lab offers memory, pids and cpu on cgroup version %d, not 2: no cgroup limits", v)
		cgDir = func(string) string { return "" }
	}

	kernel, initrd, probe := guestFile(t, "minimal-bzImage"), guestFile(t, "initramfs.cpio.gz"), probeDrive(t)
	guestCmd := strings.Join([]string{
		"ip link set lo up", "ip addr add " + guestIP + "/24 dev eth0", "ip link set eth0 up",
		"ping -c 2 " + hostIP + " >/dev/null && echo ember-guest: net=ok",
		mountProbe("/dev/vda"),
		fmt.Sprintf("/probe/probe vsock-send 6000 %d", vsockMB),
		"echo jailed-data | dd of=/dev/vdb conv=fsync 2>/dev/null && echo ember-guest: blk=ok",
		"i=0; while true; do i=$((i+1)); echo ember-guest: tick=$i; sleep 0.5; done",
	}, "; ")
	args := cmdline(`ember_mode=cmd ember_cmd="` + guestCmd + `"`)
	link := func(src, dst string) {
		t.Helper()
		if err := os.Link(src, dst); err != nil {
			sh(t, "cp "+src+" "+dst)
		}
	}

	var a *jailedVM
	var sink chan string
	for attempt := 1; ; attempt++ {
		id := fmt.Sprintf("e2e-a%d", attempt)
		a = startJailed(t, base, id, ns, cgFlags, func(root string) {
			link(kernel, filepath.Join(root, "vmlinuz"))
			link(initrd, filepath.Join(root, "initrd"))
			link(probe, filepath.Join(root, "probe.ext4"))
			sh(t, "truncate -s 16M "+root+"/data.img && chown "+strconv.Itoa(jailUID)+" "+root+"/data.img")
			os.MkdirAll(filepath.Join(root, "run"), 0o755)
			os.Chown(filepath.Join(root, "run"), jailUID, jailUID)
			sink = vsockSink(t, filepath.Join(root, "run", "v.sock_6000"))
		})
		ctx, cancel := apiCtx()
		err := func() error {
			for _, step := range []func() error{
				func() error {
					return a.c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: ptr(2), MemSizeMiB: ptr(256)})
				},
				func() error {
					initrd := "/initrd"
					return a.c.PutBootSource(ctx, api.BootSource{KernelImagePath: "/vmlinuz", InitrdPath: &initrd, BootArgs: &args})
				},
				func() error {
					return a.c.PutDrive(ctx, api.Drive{DriveID: "probe", PathOnHost: "/probe.ext4", IsReadOnly: true})
				},
				func() error { return a.c.PutDrive(ctx, api.Drive{DriveID: "data", PathOnHost: "/data.img"}) },
				func() error {
					return a.c.PutNetworkInterface(ctx, api.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"})
				},
				func() error { return a.c.PutVsock(ctx, api.Vsock{GuestCID: 3, UDSPath: "/run/v.sock"}) },
				func() error { return a.c.InstanceStart(ctx) },
			} {
				if err := step(); err != nil {
					return err
				}
			}
			return nil
		}()
		cancel()
		if err != nil {
			t.Fatalf("configuring the jailed VM: %v\n%s", err, a.err)
		}
		if a.waitFor("ember-guest: tick=2", bootTimeout) {
			break
		}
		a.kill()
		if attempt == bootAttempts {
			t.Fatalf("the jailed guest did not get to its loop, %d times\n%s\n%s", attempt, tailString(a.out.String()), a.err)
		}
		t.Logf("the jailed guest did not get to its loop (a lab fault?); trying again\n%s\n%s", tailString(a.out.String()), a.err)
	}
	out := a.out.String()
	for _, want := range []string{"ember-guest: net=ok", "ember-guest: blk=ok"} {
		if !consoleHas(out, want) {
			t.Errorf("the jailed guest did not say %q", want)
		}
	}
	sent := report(t, out, "probe", "sent")
	// A connect that a signal cancelled in the guest (the probe then
	// connects again) reaches the host as a connection that carries nothing.
	want := fmt.Sprintf("sent=%s sha256=%s", sent["sent"], sent["sha256"])
	for waiting := true; waiting; {
		select {
		case got := <-sink:
			if strings.HasPrefix(got, "sent=0 ") && want != got {
				t.Logf("vsock: an empty connection (a connect the guest cancelled)")
				continue
			}
			if got != want {
				t.Errorf("vsock: the host got %s, the guest sent %s", got, want)
			}
			waiting = false
		case <-time.After(10 * time.Second):
			t.Error("nothing arrived over vsock")
			waiting = false
		}
	}
	if b, _ := os.ReadFile(filepath.Join(a.root, "data.img")); !strings.HasPrefix(string(b), "jailed-data\n") {
		t.Errorf("the drive holds %q", b[:min(len(b), 16)])
	}
	checkJailed(t, a, cgDir(filepath.Base(filepath.Dir(a.root))), limits)

	// A Full snapshot in the jail, loaded in a second jail.
	ctx, cancel := apiCtx()
	defer cancel()
	if err := a.c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: "/vm.snap", MemFilePath: "/vm.mem", SnapshotType: "Full"}); err != nil {
		t.Fatalf("snapshot in the jail: %v\n%s", err, a.err)
	}
	at := 0
	for _, l := range strings.Split(a.out.String(), "\n") {
		if _, v, ok := strings.Cut(l, "ember-guest: tick="); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				at = n
			}
		}
	}
	// The jailer removes A's jail when A ends: keep its snapshot first.
	kept := filepath.Join(dir, "snapshot-of-a")
	if err := os.Mkdir(kept, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vm.snap", "vm.mem", "probe.ext4", "data.img"} {
		link(filepath.Join(a.root, f), filepath.Join(kept, f))
	}
	killVM(a.apiVM)
	for attempt := 1; ; attempt++ {
		b := startJailed(t, base, fmt.Sprintf("e2e-b%d", attempt), ns, cgFlags, func(root string) {
			for _, f := range []string{"vm.snap", "vm.mem", "probe.ext4"} {
				link(filepath.Join(kept, f), filepath.Join(root, f))
			}
			sh(t, "cp "+kept+"/data.img "+root+"/ && chown "+strconv.Itoa(jailUID)+" "+root+"/data.img")
			os.MkdirAll(filepath.Join(root, "run"), 0o755)
			os.Chown(filepath.Join(root, "run"), jailUID, jailUID)
		})
		lctx, lcancel := apiCtx()
		err := b.c.LoadSnapshot(lctx, api.SnapshotLoadParams{SnapshotPath: "/vm.snap", MemFilePath: ptr("/vm.mem"), ResumeVM: true})
		lcancel()
		want := fmt.Sprintf("ember-guest: tick=%d", at+3)
		if err == nil && b.waitFor(want, bootTimeout) {
			t.Logf("the second jail's guest carried on from tick %d", at)
			checkJailed(t, b, cgDir(filepath.Base(filepath.Dir(b.root))), limits)
			return
		}
		b.kill()
		if attempt == bootAttempts {
			t.Fatalf("load in the second jail: %v\n%s\n%s", err, tailString(b.out.String()), b.err)
		}
		t.Logf("load in the second jail: %v (a lab fault?); trying again", err)
	}
}

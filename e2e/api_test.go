package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
)

// apiVM is an `ember --api-sock` process driven through the API client.
type apiVM struct {
	t        *testing.T
	cmd      *exec.Cmd
	out, err *syncBuffer
	sock     string
	c        *client.Client
	exited   chan struct{}
	stalled  bool // the last waitFor ended because the console went silent
}

// startAPI starts `ember --api-sock SOCK ARGS...` under prefix and waits for
// its socket.
func startAPI(t *testing.T, prefix []string, args ...string) *apiVM {
	t.Helper()
	lab(t)
	sock := filepath.Join(scratchDir(t), "api.sock")
	argv := append(append(append([]string(nil), prefix...), emberBinary(t), "--api-sock", sock), args...)
	v := &apiVM{t: t, cmd: exec.Command(argv[0], argv[1:]...), out: &syncBuffer{}, err: &syncBuffer{},
		sock: sock, c: client.New(sock), exited: make(chan struct{})}
	v.cmd.Stdout, v.cmd.Stderr = v.out, v.err
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(v.kill)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		t.Fatalf("API socket: %v\n%s", err, v.err)
	}
	return v
}

func (v *apiVM) kill() {
	select {
	case <-v.exited:
	default:
		v.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-v.exited:
		case <-time.After(10 * time.Second):
			v.cmd.Process.Kill()
			select {
			case <-v.exited:
			case <-time.After(unkillableGrace):
				labFault(v.t, "ember could not be stopped (stuck in the lab's KVM)\nstdout:\n"+tailString(v.out.String())+"\nstderr:\n"+v.err.String())
			}
		}
	}
}

// consoleHas reports whether a console line other than the kernel's echo
// of its command line (which holds the guest's script) contains s.
func consoleHas(out, s string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) && !strings.Contains(l, "ommand line") {
			return true
		}
	}
	return false
}

// waitFor waits until the guest console shows s; false on a stall, an exit
// or the timeout.
func (v *apiVM) waitFor(s string, timeout time.Duration) bool {
	v.stalled = false
	deadline := time.Now().Add(timeout)
	last, since := -1, time.Now()
	for time.Now().Before(deadline) {
		if consoleHas(v.out.String(), s) {
			return true
		}
		select {
		case <-v.exited:
			return consoleHas(v.out.String(), s)
		case <-time.After(200 * time.Millisecond):
		}
		if n := v.out.Len(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > stallTimeout {
			v.stalled = true
			return false
		}
	}
	return false
}

// labFaulted says how the guest met what looks like a lab fault after a
// waitFor failed: it "hung" (a silent console: the guest prints a
// heartbeat), "died of a triple fault or internal error", or ended after
// its kernel hit a stack guard page at its entry trampoline (see
// guestGuardPageOops); "" when none (a real failure).
func (v *apiVM) labFaulted() string {
	select {
	case <-v.exited:
		if labDeath(v.err.String()) {
			return "died of a triple fault or internal error"
		}
		if strings.Contains(v.out.String(), guestGuardPageOops) {
			return "ran a kernel that hit a stack guard page (the lab's signature)"
		}
		return ""
	default:
	}
	if v.stalled {
		return "hung"
	}
	return ""
}

// exitCode waits for the process to end and returns its exit code.
func (v *apiVM) exitCode(timeout time.Duration) (int, bool) {
	select {
	case <-v.exited:
		return v.cmd.ProcessState.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

// ctx is a context for one API call (calls answer in milliseconds; the
// bound only turns a hang into a failure).
func apiCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// bootAPI starts ember, configures it with configure, starts the instance
// and waits for the guest's init and then for ready; a lab fault (no init,
// a stall) is retried as emberWith does.
func bootAPI(t *testing.T, prefix []string, ready string, configure func(ctx context.Context, c *client.Client) error) *apiVM {
	t.Helper()
	for attempt := 1; ; attempt++ {
		v := startAPI(t, prefix)
		ctx, cancel := apiCtx()
		err := configure(ctx, v.c)
		if err == nil {
			err = v.c.InstanceStart(ctx)
		}
		cancel()
		if err != nil {
			t.Fatalf("configuring through the API: %v\nstderr:\n%s", err, v.err)
		}
		if v.waitFor(initMarker, bootTimeout) && v.waitFor(ready, transferTimeout) {
			return v
		}
		v.kill()
		if attempt == bootAttempts {
			t.Fatalf("guest did not get to %q, %d times\nstdout:\n%s\nstderr:\n%s", ready, attempt, tailString(v.out.String()), v.err)
		}
		t.Logf("guest did not get to %q (a lab fault?); trying again. Last output:\n%s\nstderr:\n%s", ready, tailString(v.out.String()), v.err)
	}
}

func ptr[T any](v T) *T { return &v }

// gettingStarted is the configuration of Firecracker's getting-started
// guide: machine, kernel, a root drive, a network interface, vsock.
type gettingStarted struct {
	kernel, rootfs, tap, uds, bootArgs string
}

func (g gettingStarted) apply(ctx context.Context, c *client.Client) error {
	steps := []func() error{
		func() error {
			return c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: ptr(2), MemSizeMiB: ptr(256)})
		},
		func() error {
			return c.PutBootSource(ctx, api.BootSource{KernelImagePath: g.kernel, BootArgs: &g.bootArgs})
		},
		func() error {
			return c.PutDrive(ctx, api.Drive{DriveID: "rootfs", PathOnHost: g.rootfs, IsRootDevice: true})
		},
		func() error {
			return c.PutNetworkInterface(ctx, api.NetworkInterface{IfaceID: "eth0", HostDevName: g.tap, GuestMAC: "06:00:0a:4e:00:02"})
		},
		func() error { return c.PutVsock(ctx, api.Vsock{GuestCID: 3, UDSPath: g.uds}) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// configFile is the same configuration as a --config-file.
func (g gettingStarted) configFile(t *testing.T) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"machine-config": map[string]any{"vcpu_count": 2, "mem_size_mib": 256},
		"boot-source":    map[string]any{"kernel_image_path": g.kernel, "boot_args": g.bootArgs},
		"drives":         []any{map[string]any{"drive_id": "rootfs", "path_on_host": g.rootfs, "is_root_device": true, "is_read_only": false}},
		"network-interfaces": []any{map[string]any{"iface_id": "eth0", "host_dev_name": g.tap,
			"guest_mac": "06:00:0a:4e:00:02"}},
		"vsock": map[string]any{"guest_cid": 3, "uds_path": g.uds},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(scratchDir(t), "vm.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// apiGuestCmd checks, inside the guest, what the configuration gave it:
// two CPUs, the root drive, eth0 that reaches the host, and vsock.
func apiGuestCmd(hostIP, guestIP, then string) string {
	return strings.Join([]string{
		"echo ember-guest: cpus=$(grep -c ^processor /proc/cpuinfo)",
		"mount | grep ' / '",
		"ip link set lo up", "ip addr add " + guestIP + "/24 dev eth0", "ip link set eth0 up",
		"ping -c 2 " + hostIP,
		"test -c /dev/vsock && echo ember-guest: vsock=yes",
		"echo ember-guest: api-ready", then,
	}, "; ")
}

// checkGettingStarted checks the guest's report.
func checkGettingStarted(t *testing.T, out string) {
	t.Helper()
	for _, want := range []string{"ember-guest: cpus=2", "/dev/root on / type ext4 (rw", "ember-guest: vsock=yes"} {
		if !consoleHas(out, want) {
			t.Errorf("guest output lacks %q\n%s", want, tailString(out))
		}
	}
	checkPing(t, out, 2)
}

// TestAPIGettingStarted drives Ember only through the API, as Firecracker's
// getting-started guide does with curl: machine-config, boot-source, a
// root drive, a network interface, vsock, InstanceStart. The guest boots
// and finds them all; GET / says Running; requests that are wrong after
// boot get a 400 and change nothing; SendCtrlAltDel stops the guest and
// Ember exits 0.
func TestAPIGettingStarted(t *testing.T) {
	const hostIP, guestIP = "10.78.0.1", "10.78.0.2"
	ns := netns(t, "tap0", hostIP+"/24")
	g := gettingStarted{kernel: guestFile(t, "minimal-bzImage"), rootfs: rootImage(t), tap: "tap0",
		uds:      filepath.Join(scratchDir(t), "vsock.sock"),
		bootArgs: cmdline(`init=/init ember_mode=cmd ember_cmd="` + apiGuestCmd(hostIP, guestIP, "sleep 3600") + `"`)}
	v := bootAPI(t, []string{"ip", "netns", "exec", ns}, "ember-guest: api-ready", g.apply)
	checkGettingStarted(t, v.out.String())

	ctx, cancel := apiCtx()
	defer cancel()
	info, err := v.c.Describe(ctx)
	if err != nil || info.State != "Running" {
		t.Fatalf("GET / after boot: %+v, %v", info, err)
	}
	cfg, err := v.c.VMConfig(ctx)
	if err != nil || len(cfg.Drives) != 1 || len(cfg.NetworkInterfaces) != 1 || cfg.Vsock == nil {
		t.Fatalf("GET /vm/config: %+v, %v", cfg, err)
	}
	// Pre-boot-only requests and a second start: 400, state unchanged.
	for name, call := range map[string]func() error{
		"PUT /machine-config": func() error {
			return v.c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: ptr(1), MemSizeMiB: ptr(128)})
		},
		"second InstanceStart": func() error { return v.c.InstanceStart(ctx) },
		"PUT /drives": func() error {
			return v.c.PutDrive(ctx, api.Drive{DriveID: "late", PathOnHost: g.rootfs})
		},
	} {
		err := call()
		if e, ok := client.IsAPIError(err); !ok || e.Status != 400 || e.FaultMessage == "" {
			t.Errorf("%s after boot: %v, want a 400 with a fault_message", name, err)
		}
	}
	if info, err := v.c.Describe(ctx); err != nil || info.State != "Running" {
		t.Fatalf("GET / after refused requests: %+v, %v", info, err)
	}
	if err := v.c.SendCtrlAltDel(ctx); err != nil {
		t.Fatal(err)
	}
	code, ok := v.exitCode(bootTimeout)
	if !ok || code != 0 {
		t.Fatalf("after SendCtrlAltDel: exited=%v code=%d\n%s\n%s", ok, code, tailString(v.out.String()), v.err)
	}
}

// TestConfigFileNoAPI boots the same machine from --config-file with
// --no-api: no socket, the guest finds its devices, and Ember exits 0 when
// it reboots.
func TestConfigFileNoAPI(t *testing.T) {
	const hostIP, guestIP = "10.78.0.1", "10.78.0.2"
	ns := netns(t, "tap0", hostIP+"/24")
	g := gettingStarted{kernel: guestFile(t, "minimal-bzImage"), rootfs: rootImage(t), tap: "tap0",
		uds:      filepath.Join(scratchDir(t), "vsock.sock"),
		bootArgs: cmdline(`init=/init ember_mode=cmd ember_cmd="` + apiGuestCmd(hostIP, guestIP, "true") + `"`)}
	r := emberArgv(t, transferTimeout, []string{"ip", "netns", "exec", ns}, "--no-api", "--config-file", g.configFile(t))
	if r.code != 0 || !consoleHas(r.stdout, "ember-guest: api-ready") {
		t.Fatalf("guest failed (exit %d)\n%s\n%s", r.code, tailString(r.stdout), r.stderr)
	}
	checkGettingStarted(t, r.stdout)
}

// TestBalloonReleasesMemory: a guest that has used most of its memory and
// freed it again is asked, through PATCH /balloon, to inflate the balloon
// by 64 MiB; Ember's resident memory drops by at least 48 MiB.
func TestBalloonReleasesMemory(t *testing.T) {
	const inflateMiB, wantDropMiB = 64, 48
	// Fill all but 16 MiB of free memory through tmpfs and free it again,
	// so that the pages the balloon takes are ones the host had to back.
	fill := "free=$(awk '/^MemFree:/ {print int($2/1024)}' /proc/meminfo); " +
		"mkdir -p /mnt; mount -t tmpfs -o size=$((free-16))m tmpfs /mnt; dd if=/dev/zero of=/mnt/fill bs=1M count=$((free-16)) 2>/dev/null; " +
		"rm /mnt/fill; umount /mnt; echo ember-guest: filled=$((free-16)); sleep 3600"
	v := bootAPI(t, nil, "ember-guest: filled", func(ctx context.Context, c *client.Client) error {
		if err := c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: ptr(1), MemSizeMiB: ptr(256)}); err != nil {
			return err
		}
		args := cmdline(`ember_mode=cmd ember_cmd="` + fill + `"`)
		if err := c.PutBootSource(ctx, api.BootSource{KernelImagePath: guestFile(t, "minimal-bzImage"),
			InitrdPath: ptr(guestFile(t, "initramfs.cpio.gz")), BootArgs: &args}); err != nil {
			return err
		}
		return c.PutBalloon(ctx, api.Balloon{AmountMiB: 0, StatsPollingIntervalS: 1})
	})
	time.Sleep(time.Second) // let the guest settle into its sleep
	before := rssMiB(t, v.cmd.Process.Pid)

	ctx, cancel := apiCtx()
	defer cancel()
	if err := v.c.PatchBalloon(ctx, api.BalloonUpdate{AmountMiB: inflateMiB}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := v.c.GetBalloonStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.ActualMiB >= inflateMiB {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("balloon at %d MiB of %d after 2 minutes", st.ActualMiB, inflateMiB)
		}
		time.Sleep(500 * time.Millisecond)
	}
	after := rssMiB(t, v.cmd.Process.Pid)
	t.Logf("Ember RSS %.1f MiB before inflating by %d MiB, %.1f MiB after (dropped %.1f MiB)", before, inflateMiB, after, before-after)
	if before-after < wantDropMiB {
		t.Fatalf("RSS dropped by %.1f MiB, want at least %d", before-after, wantDropMiB)
	}
	ctx2, cancel2 := apiCtx()
	defer cancel2()
	if err := v.c.SendCtrlAltDel(ctx2); err != nil {
		t.Fatal(err)
	}
	if code, ok := v.exitCode(bootTimeout); !ok || code != 0 {
		t.Fatalf("after SendCtrlAltDel: exited=%v code=%d", ok, code)
	}
}

// rssMiB reads a process's resident set size.
func rssMiB(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kib, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return float64(kib) / 1024
		}
	}
	t.Fatal(errors.New("no VmRSS in /proc/PID/status"))
	return 0
}

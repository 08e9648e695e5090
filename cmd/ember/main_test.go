package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testbin"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/vmm"
)

var emberBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ember-cli-test-")
	if err != nil {
		panic(err)
	}
	// Static, as make build builds it: seccomp, on by default, refuses a
	// binary linked with the C library, and a jail holds only the exec file.
	emberBin, err = testbin.Build(dir, "ember", "github.com/embervm/ember/cmd/ember")
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runEmber(t *testing.T, args ...string) (stdout, stderr string, code int, wall time.Duration) {
	t.Helper()
	cmd := exec.Command(emberBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	t0 := time.Now()
	err := cmd.Run()
	wall = time.Since(t0)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code, wall
}

func write(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBadInputOneLineExit2: every bad flag or file gets exactly one line on
// stderr that names the problem, exit status 2, and leaves no files behind.
// Most are found as the VM is built, after /dev/kvm is opened.
func TestBadInputOneLineExit2(t *testing.T) {
	testkvm.Need(t)
	text := write(t, "notes.txt", []byte("this is not a kernel\n"))
	kernel := write(t, "tiny.elf", tiny.Image())
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing kernel", []string{"run", "--kernel", "/nonexistent/vmlinux"}, "/nonexistent/vmlinux"},
		{"no kernel flag", []string{"run"}, "kernel"},
		{"text file as kernel", []string{"run", "--kernel", text}, "not a kernel"},
		{"zero memory", []string{"run", "--kernel", kernel, "--mem-mib", "0"}, "memory"},
		{"zero vcpus", []string{"run", "--kernel", kernel, "--vcpus", "0"}, "vcpu"},
		{"33 vcpus", []string{"run", "--kernel", kernel, "--vcpus", "33"}, "vcpu"},
		{"bad flag", []string{"run", "--kernel", kernel, "--frobnicate"}, "frobnicate"},
		{"missing initrd", []string{"run", "--kernel", kernel, "--initrd", "/nonexistent/initrd"}, "/nonexistent/initrd"},
		{"cmdline too long", []string{"run", "--kernel", kernel, "--cmdline", strings.Repeat("x", 5000)}, "command line"},
		{"unknown command", []string{"frob"}, "frob"},
		{"missing drive file", []string{"run", "--kernel", kernel, "--drive", "path=/nonexistent/disk"}, "/nonexistent/disk"},
		{"drive without path", []string{"run", "--kernel", kernel, "--drive", "ro"}, "path="},
		{"two root drives", []string{"run", "--kernel", kernel, "--drive", "path=" + text + ",root", "--drive", "path=" + text + ",root"}, "root"},
		{"reserved vsock cid", []string{"run", "--kernel", kernel, "--vsock", "cid=2,uds=/tmp/ember-test.sock"}, "guest_cid"},
		{"balloon bigger than RAM", []string{"run", "--kernel", kernel, "--balloon", "4096"}, "amount_mib"},
		{"tap name too long", []string{"run", "--kernel", kernel, "--net", "tap=averyveryverylongtapname0"}, "tap name"},
		{"doctor for no VMs", []string{"doctor", "--vms", "0"}, "--vms 0"},
		{"doctor bad flag", []string{"doctor", "--frobnicate"}, "frobnicate"},
		{"doctor argument", []string{"doctor", "now"}, "now"},
	}
	// The children get a temporary directory of their own: other test
	// packages, run in parallel, come and go in the shared one.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, _ := filepath.Glob(filepath.Join(tmp, "*"))
			stdout, stderr, code, _ := runEmber(t, c.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if c.name != "unknown command" && len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), stderr)
			}
			if !strings.Contains(strings.ToLower(lines[0]), strings.ToLower(c.want)) {
				t.Errorf("stderr %q does not name %q", lines[0], c.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			after, _ := filepath.Glob(filepath.Join(tmp, "*"))
			if len(after) > len(before) {
				t.Errorf("left %d new entries in %s", len(after)-len(before), tmp)
			}
		})
	}
}

// TestTinyGuestBootsAndResets runs the hand-made PVH guest on this host's
// /dev/kvm: it reports to the boot timer and resets through the i8042, so
// Ember logs the boot time and exits 0.
func TestTinyGuestBootsAndResets(t *testing.T) {
	testkvm.Need(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	_, stderr, code, wall := runEmber(t, "run", "--kernel", kernel, "--boot-timer")
	if code != 0 {
		t.Fatalf("exit %d, want 0\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "Guest-boot-time") {
		t.Fatalf("no boot-time line in the log:\n%s", stderr)
	}
	t.Logf("tiny guest: %v exec to exit", wall)
}

// TestExitsWithGuestStatus: a guest that writes its workload's status to
// the exit-status register before it resets makes ember exit with it.
func TestExitsWithGuestStatus(t *testing.T) {
	testkvm.Need(t)
	for _, status := range []int{0, 7, 125, 137} {
		kernel := write(t, "exit.elf", tiny.ExitStatus(uint32(status)))
		_, stderr, code, _ := runEmber(t, "run", "--kernel", kernel)
		if code != status {
			t.Errorf("guest status %d: ember exited %d\n%s", status, code, stderr)
		}
	}
}

// TestHostCheckNamesProblem: on a host whose KVM would emulate a Linux
// kernel (this machine's PVM), ember refuses a real kernel at once, in one
// line that names the host problem and the lab.
func TestHostCheckNamesProblem(t *testing.T) {
	if vmm.HostProblem() == "" {
		t.Skip("this host's KVM runs Linux guests natively")
	}
	testkvm.Need(t)
	// A kernel-sized image: the tiny guest padded past the 1 MiB threshold
	// stands in for a Linux kernel as far as the host check is concerned.
	kernel := os.Getenv("EMBER_TEST_LINUX_KERNEL")
	if kernel == "" {
		kernel = filepath.Join("..", "..", "build", "guest", "minimal-bzImage")
	}
	if _, err := os.Stat(kernel); err != nil {
		t.Skipf("no Linux kernel built yet (make guest): %v", err)
	}
	_, stderr, code, wall := runEmber(t, "run", "--kernel", kernel)
	if code == 0 {
		t.Fatalf("ember booted a Linux kernel on an emulating KVM")
	}
	if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 ||
		!strings.Contains(stderr, "PVM") || !strings.Contains(stderr, "ember-lab") {
		t.Fatalf("want one line naming the PVM host and the lab, got:\n%s", stderr)
	}
	if wall > 30*time.Second { // not a speed figure: emulation would take minutes
		t.Errorf("host check took %v", wall)
	}
}

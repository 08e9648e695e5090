package seccomp

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv makes the test binary act as a confined child (see
// TestMain): filters are per process and for good, so each case runs in a
// process of its own.
const childEnv = "EMBER_SECCOMP_TEST_CHILD"

// childWait bounds a child's wait for its end; reaching it is a failure
// (the reporter's deadline is 2 s).
const childWait = 20 * time.Second

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		child(mode)
		// The refused call returned (EPERM, once the handler let the
		// thread go): the reporter ends the process.
		time.Sleep(childWait)
		fmt.Fprintln(os.Stderr, "child: the process did not end")
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// denyGetppid traps getppid and allows everything else.
func denyGetppid() Filter {
	return Filter{DefaultAction: Allow, FilterAction: Trap, Rules: []Rule{{Syscall: "getppid"}}}
}

func child(mode string) {
	var p *Policy
	if strings.HasPrefix(mode, "builtin") {
		p = Builtin()
	} else {
		boot := denyGetppid()
		p = &Policy{Boot: &boot, VMM: denyGetppid(), VCPU: denyGetppid()}
	}
	c, err := New(p)
	if err != nil {
		panic(err)
	}
	report := func(v Violation) { fmt.Fprintln(os.Stderr, "report:", v) }
	if mode == "fallback" {
		report = func(Violation) { select {} } // a reporter that never finishes
	}
	start := c.Start
	if mode == "armed-vmm" {
		start = c.Arm // no boot filter: vmm is the first
	}
	if err := start(report); err != nil {
		panic(err)
	}
	if mode == "fallback" {
		trap.deadline.Value = unix.NsecToTimeval(50e6)
	}
	if mode == "boot" {
		unix.Getppid()
		return
	}
	if err := c.ConfineProcess(); err != nil {
		panic(err)
	}
	onVCPU := func(f func()) {
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread() // never unlocked: the thread carries the vcpu filter
			if err := c.ConfineVCPUThread(); err != nil {
				panic(err)
			}
			f()
			close(done)
		}()
		<-done
	}
	switch mode {
	case "vmm", "fallback", "armed-vmm":
		unix.Getppid()
	case "vcpu":
		onVCPU(func() { unix.Getppid() })
	case "builtin-execve":
		syscall.Exec("/bin/true", []string{"true"}, nil)
	case "builtin-shadow":
		os.Open("/etc/shadow")
	case "builtin-vcpu-shadow":
		onVCPU(func() { os.Open("/etc/shadow") })
	case "builtin-vcpu-ok":
		// What a vCPU thread does: an eventfd write, a log line, memory.
		onVCPU(func() {
			fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
			unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			unix.Close(fd)
			fmt.Fprintln(os.Stderr, "vcpu thread ran")
			_ = make([]byte, 64<<20)
		})
		os.Exit(0)
	}
}

func runChild(t *testing.T, mode string) (stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return string(out), code
}

// TestViolationReported: a refused call ends the process with 148 after
// one line naming the call and the thread class, from the reporter or,
// when the reporter is stuck, from the handler itself.
func TestViolationReported(t *testing.T) {
	for _, c := range []struct {
		mode string
		want string
	}{
		{"boot", "report: seccomp: bad syscall 110 (getppid) on a vmm thread (boot filter); exiting with status 148"},
		{"vmm", "report: seccomp: bad syscall 110 (getppid) on a vmm thread (vmm filter); exiting with status 148"},
		{"armed-vmm", "report: seccomp: bad syscall 110 (getppid) on a vmm thread (vmm filter); exiting with status 148"},
		{"vcpu", "report: seccomp: bad syscall 110 (getppid) on a vcpu thread (vcpu filter); exiting with status 148"},
		{"fallback", "ember: seccomp: bad syscall 110 (getppid) on a vmm thread (vmm filter); exiting with status 148"},
		{"builtin-execve", "report: seccomp: bad syscall 59 (execve) on a vmm thread (vmm filter)"},
		{"builtin-shadow", "report: seccomp: bad syscall 257 (openat) on a vmm thread (vmm filter)"},
		{"builtin-vcpu-shadow", "report: seccomp: bad syscall 257 (openat) on a vcpu thread (vcpu filter)"},
	} {
		t.Run(c.mode, func(t *testing.T) {
			out, code := runChild(t, c.mode)
			if code != ExitCode {
				t.Fatalf("exit %d, want %d; output:\n%s", code, ExitCode, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], c.want) {
				t.Fatalf("output:\n%s\nwant one line starting %q", out, c.want)
			}
		})
	}
}

// TestVCPUThreadWorks: under all three built-in filters, a vCPU thread
// can do what the exit path does.
func TestVCPUThreadWorks(t *testing.T) {
	out, code := runChild(t, "builtin-vcpu-ok")
	if code != 0 || !strings.Contains(out, "vcpu thread ran") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
}

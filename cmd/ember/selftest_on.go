//go:build seccomptest

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The seccomp self-test, compiled only with -tags seccomptest (never in a
// release binary): with EMBER_SECCOMP_SELFTEST=CLASS:ACTION, once the
// guest reports to the boot timer (on its vCPU thread, after every filter
// is installed and the guest has run), a thread of CLASS (vcpu: that vCPU
// thread; vmm: a goroutine, which runs on one of the other threads)
// attempts ACTION: execve, open-shadow, socket-inet, ptrace or fork. Each
// must end the process with exit status 148 and a log line naming the
// system call and the class.
const selfTestEnv = "EMBER_SECCOMP_SELFTEST"

// bootTimerMessage starts the boot timer's log line.
const bootTimerMessage = "Guest-boot-time"

func selfTestHandler(h slog.Handler) slog.Handler {
	spec := os.Getenv(selfTestEnv)
	if spec == "" {
		return h
	}
	class, action, ok := strings.Cut(spec, ":")
	if !ok || (class != "vcpu" && class != "vmm") {
		fmt.Fprintf(os.Stderr, "ember: %s=%q: want vcpu:ACTION or vmm:ACTION\n", selfTestEnv, spec)
		os.Exit(exitUsage)
	}
	return &selfTest{Handler: h, class: class, action: action}
}

type selfTest struct {
	slog.Handler
	class, action string
}

func (s *selfTest) Handle(ctx context.Context, r slog.Record) error {
	err := s.Handler.Handle(ctx, r)
	if !strings.HasPrefix(r.Message, bootTimerMessage) {
		return err
	}
	if s.class == "vcpu" {
		attempt(s.action)
		return err
	}
	go attempt(s.action)
	// Hold the guest (this is its vCPU thread) until the attempt ends
	// the process.
	time.Sleep(time.Hour)
	return err
}

func (s *selfTest) WithAttrs(as []slog.Attr) slog.Handler {
	return &selfTest{Handler: s.Handler.WithAttrs(as), class: s.class, action: s.action}
}

func (s *selfTest) WithGroup(name string) slog.Handler {
	return &selfTest{Handler: s.Handler.WithGroup(name), class: s.class, action: s.action}
}

// attempt makes the forbidden call; if it succeeds, the filter let it
// through, and the process says so and exits 1.
func attempt(action string) {
	var err error
	switch action {
	case "execve":
		// execve(2) itself: syscall.Exec would first call prlimit64 (to
		// restore the RLIMIT_NOFILE that the Go runtime raises at start
		// where the soft limit is below the hard one), which the filters
		// refuse too, and the test would see that call instead.
		path, _ := unix.BytePtrFromString("/bin/true")
		argv, _ := syscall.SlicePtrFromStrings([]string{"true"})
		envv := []*byte{nil}
		_, _, e := unix.Syscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(path)),
			uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])))
		err = errnoErr(e)
	case "open-shadow":
		var f *os.File
		if f, err = os.Open("/etc/shadow"); err == nil {
			f.Close()
		}
	case "socket-inet":
		var fd int
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
			unix.Close(fd)
		}
	case "ptrace":
		_, _, e := unix.Syscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
		err = errnoErr(e)
	case "fork":
		// fork(2) is clone(SIGCHLD). A child, if the filter let one
		// through, leaves at once.
		pid, _, e := unix.Syscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0)
		if e == 0 && pid == 0 {
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		err = errnoErr(e)
	default:
		fmt.Fprintf(os.Stderr, "ember: %s: unknown action %q\n", selfTestEnv, action)
		os.Exit(exitUsage)
	}
	if err != nil {
		// Refused: the call failed once the SIGSYS handler let the
		// thread go, and the reporter ends the process.
		time.Sleep(time.Hour)
	}
	fmt.Fprintf(os.Stderr, "ember: seccomp self-test: %s succeeded: the filter let it through\n", action)
	os.Exit(exitFailure)
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

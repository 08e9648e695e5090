package seccomp

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The SIGSYS path (see the package comment): a filter's SECCOMP_RET_TRAP
// makes the kernel skip the system call and deliver SIGSYS to the thread,
// with the call's number, architecture and address and the filter's datum
// (which filter, hence which thread class) in the siginfo. Go's own handler
// would turn it into a crash dump with no syscall number, and os/signal
// drops the siginfo, so the package installs its own handler, sigsysHandler
// in trap_amd64.s, with rt_sigaction. The handler runs on the thread's
// signal stack with every signal blocked, touches nothing but trap and
// makes raw system calls:
//
//  1. the first faulting thread claims trap and stores the siginfo
//     fields, arms a deadline (setitimer: SIGALRM in reporterGrace) and
//     writes to trap.wakeFD, an eventfd the reporter goroutine waits on
//     (on a thread of its own, so reporting needs no new thread); the
//     reporter logs the violation through the caller's report function
//     (the process's own logger and metrics) and exits the process with
//     ExitCode;
//  2. the handler sleeps for reporterHold, which is ample for the
//     reporter, then returns with the call failed (EPERM): a thread held
//     longer would keep what Go may need to run the reporter (a call made
//     with RawSyscall keeps its P, and a garbage collection that starts
//     waits for every P; execve holds Go's exec lock). Later faults, on
//     any thread, do the same;
//  3. should the reporter not have ended the process by the deadline,
//     sigalrmHandler writes the line itself to standard error, unless the
//     reporter already had, and exits with ExitCode.
//
// trap is process-wide state, the one exception to the package's rule:
// the signal dispositions it goes with are process-wide too.

// ExitCode is the exit status after a seccomp violation (Firecracker's).
const ExitCode = 148

// Trap data: the SECCOMP_RET_DATA of each filter's trap, which the kernel
// hands the handler in si_errno.
const (
	dataUnknown = iota
	dataBoot
	dataVMM
	dataVCPU
	numTrapData
)

// Thread classes. Go runs goroutines on any thread, so the API's and the
// VMM's goroutines share threads: one class, "vmm". vCPU loops run on
// threads locked to them: "vcpu".
const (
	ClassVMM  = "vmm"
	ClassVCPU = "vcpu"
)

// trapClass and trapFilter name the thread class and filter of each datum.
var (
	trapClass  = [numTrapData]string{"unknown", ClassVMM, ClassVMM, ClassVCPU}
	trapFilter = [numTrapData]string{"unknown", NameBoot, NameVMM, NameVCPU}
)

// Timing of the report.
const (
	// reporterHold is how long a faulting thread waits, in the handler,
	// for the reporter to end the process before it goes on with the
	// call failed.
	reporterHold = 100 * time.Millisecond
	// reporterGrace is the deadline of the reporter: then the SIGALRM
	// handler writes the line and exits itself.
	reporterGrace = 2 * time.Second
)

// Signal-handling constants (include/uapi/asm-generic/signal-defs.h,
// arch/x86/include/uapi/asm/signal.h).
const (
	saSigInfo  = 0x4        // SA_SIGINFO
	saOnStack  = 0x08000000 // SA_ONSTACK: run on the thread's signal stack (Go sets one on every thread)
	saRestorer = 0x04000000 // SA_RESTORER: x86-64 requires a restorer
	sigsetSize = 8          // sizeof(sigset_t) as the kernel takes it
)

// sigaction is struct sigaction as rt_sigaction(2) takes it on x86-64.
type sigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// trapState is read and written by sigsysHandler; trap_amd64.s reaches
// its fields through the offsets in go_asm.h.
type trapState struct {
	taken    uint32 // 0 → 1 by the first faulting thread
	reported uint32 // 1 once the reporter's line is out
	arch     uint32 // si_arch
	nr       uint32 // si_syscall
	data     uint32 // si_errno: the filter's trap datum
	_        uint32
	addr     uint64         // si_call_addr
	wakeFD   int64          // the reporter's eventfd, or -1
	logFD    int64          // where the fallback line goes
	one      uint64         // the eventfd increment
	hold     unix.Timespec  // reporterHold
	deadline unix.Itimerval // reporterGrace, once
	names    *string        // &syscallNames[0]
	nnames   uint64
	unknown  string
	tails    [numTrapData]string
	digits   [20]byte
	iov      [5]unix.Iovec // prefix, number, " (", name, tail
}

var (
	trap  trapState
	armed atomic.Bool
)

// Parts of the fallback line.
var (
	linePrefix = "ember: seccomp: bad syscall "
	lineOpen   = " ("
)

// Implemented in trap_amd64.s.
func sigsysHandler()
func sigalrmHandler()
func sigsysRestorer()
func sigsysHandlerPC() uintptr
func sigalrmHandlerPC() uintptr
func sigsysRestorerPC() uintptr

// Violation is a system call a filter refused.
type Violation struct {
	Syscall int     // the x86-64 number (or the other ABI's, when Arch says so)
	Arch    uint32  // AUDIT_ARCH_* of the call
	Addr    uintptr // the address of the system call instruction
	Class   string  // thread class: vmm or vcpu
	Filter  string  // the filter that refused it: boot, vmm or vcpu
}

// Name is the system call's name, or "unknown".
func (v Violation) Name() string {
	if v.Arch == unix.AUDIT_ARCH_X86_64 {
		if s := SyscallName(v.Syscall); s != "" {
			return s
		}
	}
	return "unknown"
}

// String is the one log line of a violation.
func (v Violation) String() string {
	return fmt.Sprintf("seccomp: bad syscall %d (%s) on a %s thread (%s filter); exiting with status %d",
		v.Syscall, v.Name(), v.Class, v.Filter, ExitCode)
}

// arm installs the SIGSYS handler and starts the reporter, once per
// process: report logs the violation, then the process exits.
func arm(report func(Violation)) error {
	if !armed.CompareAndSwap(false, true) {
		return nil
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		armed.Store(false)
		return fmt.Errorf("seccomp: eventfd: %w", err)
	}
	trap.wakeFD, trap.logFD, trap.one = int64(fd), int64(unix.Stderr), 1
	trap.hold = unix.NsecToTimespec(int64(reporterHold))
	trap.deadline.Value = unix.NsecToTimeval(int64(reporterGrace))
	trap.names, trap.nnames = &syscallNames[0], uint64(len(syscallNames))
	trap.unknown = "unknown"
	for d := range trap.tails {
		trap.tails[d] = fmt.Sprintf(") on a %s thread (%s filter); exiting with status %d\n", trapClass[d], trapFilter[d], ExitCode)
	}
	setIov(&trap.iov[0], linePrefix)
	setIov(&trap.iov[2], lineOpen)
	for _, h := range []struct {
		sig     unix.Signal
		handler uintptr
	}{{unix.SIGALRM, sigalrmHandlerPC()}, {unix.SIGSYS, sigsysHandlerPC()}} {
		act := sigaction{handler: h.handler, flags: saSigInfo | saOnStack | saRestorer,
			restorer: sigsysRestorerPC(), mask: ^uint64(0)}
		if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(h.sig), uintptr(unsafe.Pointer(&act)), 0, sigsetSize, 0, 0); e != 0 {
			unix.Close(fd)
			armed.Store(false)
			return fmt.Errorf("seccomp: rt_sigaction(%v): %w", h.sig, e)
		}
	}
	go reporter(fd, report)
	return nil
}

func setIov(v *unix.Iovec, s string) {
	v.Base = unsafe.StringData(s)
	v.SetLen(len(s))
}

// reporter waits for the handler's wake-up, reports the violation and ends
// the process. It waits on a thread of its own, in a blocking read, so
// that reporting needs no new thread: the faulting thread may hold what
// starting one takes (execve holds Go's exec lock, which stops new
// threads).
func reporter(fd int, report func(Violation)) {
	runtime.LockOSThread()
	var b [8]byte
	for {
		if _, err := unix.Read(fd, b[:]); err != unix.EINTR {
			break
		}
	}
	d := atomic.LoadUint32(&trap.data)
	if d >= numTrapData {
		d = dataUnknown
	}
	v := Violation{Syscall: int(atomic.LoadUint32(&trap.nr)), Arch: atomic.LoadUint32(&trap.arch),
		Addr: uintptr(atomic.LoadUint64(&trap.addr)), Class: trapClass[d], Filter: trapFilter[d]}
	report(v)
	atomic.StoreUint32(&trap.reported, 1)
	os.Exit(ExitCode)
}

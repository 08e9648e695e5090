package seccomp

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/kvm"
)

// OpenAfterBoot is the flag Ember's own opens after boot add (PATCH
// /drives' new backing file), which the vmm filter requires of a plain
// read or read-write open. It is O_LARGEFILE, which the x86-64 kernel sets
// on every open anyway (force_o_largefile), so it changes nothing; Go's
// os and x/sys/unix define O_LARGEFILE as 0 on amd64 and never pass it, so
// no other open in the program carries it. See the package comment for
// what this bounds and what it does not.
const OpenAfterBoot = 0x8000 // O_LARGEFILE, include/uapi/asm-generic/fcntl.h

// Argument values the built-in filters check that x/sys/unix does not
// name on amd64.
const (
	// cloneThread are the flags that make clone(2) create a thread of
	// this process (sharing memory, signal handlers and thread group):
	// the Go runtime passes them with CLONE_FS, CLONE_FILES and
	// CLONE_SYSVSEM, glibc (cgo builds) with the TLS and tid flags too.
	// fork and vfork lack CLONE_THREAD.
	cloneThread = unix.CLONE_VM | unix.CLONE_SIGHAND | unix.CLONE_THREAD
	// sockTypeMask masks SOCK_NONBLOCK and SOCK_CLOEXEC off a socket type
	// (SOCK_TYPE_MASK, include/linux/net.h).
	sockTypeMask = 0xf
)

// futex(2) operations (include/uapi/linux/futex.h). The Go runtime waits
// and wakes with the private WAIT and WAKE; glibc (cgo builds) also with
// the BITSET ones, timed by CLOCK_REALTIME.
const (
	futexWait          = 0   // FUTEX_WAIT
	futexWake          = 1   // FUTEX_WAKE
	futexWaitBitset    = 9   // FUTEX_WAIT_BITSET
	futexWakeBitset    = 10  // FUTEX_WAKE_BITSET
	futexPrivate       = 128 // FUTEX_PRIVATE_FLAG
	futexClockRealtime = 256 // FUTEX_CLOCK_REALTIME
)

// Rule helpers.
func allow(names ...string) []Rule {
	rs := make([]Rule, len(names))
	for i, n := range names {
		rs[i] = Rule{Syscall: n}
	}
	return rs
}

func allowIf(name, comment string, conds ...Cond) Rule {
	return Rule{Syscall: name, Args: conds, Comment: comment}
}

// argEq: the low 32 bits of argument i equal v (an int, a flag set, a
// request number: 32-bit values the kernel reads as such).
func argEq(i int, v uint64, comment string) Cond {
	return Cond{Arg: i, Dword: true, Op: OpEq, Val: v, Comment: comment}
}

// argMasked: the low 32 bits of argument i, masked, equal v.
func argMasked(i int, mask, v uint64, comment string) Cond {
	return Cond{Arg: i, Dword: true, Op: OpMaskedEq, Mask: mask, Val: v, Comment: comment}
}

// argPID: argument i is this process's pid.
func argPID(i int) Cond {
	return Cond{Arg: i, Dword: true, Op: OpEq, PID: true, Comment: "this process"}
}

// anyOf is one rule per value: argument i equals one of vals.
func anyOf(name string, i int, vals []named, comment string) []Rule {
	rs := make([]Rule, len(vals))
	for j, v := range vals {
		rs[j] = Rule{Syscall: name, Args: []Cond{argEq(i, v.val, v.name)}, Comment: comment}
	}
	return rs
}

// named is a value and its name, for comments.
type named struct {
	name string
	val  uint64
}

// kvmNumbers maps the names of kvm.Requests to their numbers (constant
// data, made once).
var kvmNumbers = sync.OnceValue(func() map[string]uintptr {
	all := map[string]uintptr{}
	for _, r := range kvm.Requests() {
		all[r.Name] = r.Number
	}
	return all
})

// kvmRequests picks KVM ioctls by name from kvm.Requests.
func kvmRequests(names ...string) []named {
	all := kvmNumbers()
	out := make([]named, len(names))
	for i, n := range names {
		nr, ok := all[n]
		if !ok {
			panic(fmt.Sprintf("seccomp: kvm issues no ioctl %s", n)) // a bug in this file; TestBuiltin catches it
		}
		out[i] = named{n, uint64(nr)}
	}
	return out
}

// allKVMRequests is every KVM ioctl, KVM_RUN first.
func allKVMRequests() []named {
	out := kvmRequests("KVM_RUN")
	for _, r := range kvm.Requests() {
		if r.Name != "KVM_RUN" {
			out = append(out, named{r.Name, uint64(r.Number)})
		}
	}
	return out
}

// The KVM ioctls of each stage. The hot one, KVM_RUN, comes first: a
// syscall's rules are checked in order.
var (
	// vcpuKVM: the vCPU loop (KVM_RUN, the pause's KVMCLOCK_CTRL, the
	// register dump of a failed guest) and the devices the exit path
	// drives synchronously (a port I/O device's KVM_IRQ_LINE).
	vcpuKVM = []string{"KVM_RUN", "KVM_KVMCLOCK_CTRL", "KVM_GET_REGS", "KVM_GET_SREGS", "KVM_IRQ_LINE"}
	// vmmKVM: the running VM seen from the VMM's goroutines: interrupts,
	// snapshots (every vCPU and VM state read, the dirty log, the MSR
	// list), the register dump of a stopped guest, and the teardown
	// (deleting the memory slots, deassigning irqfds and ioeventfds).
	// KVM_RUN is here too: every filter of a vCPU thread must allow it,
	// and the process-wide ones cannot tell a vCPU thread from another.
	vmmKVM = []string{
		"KVM_RUN", "KVM_IRQ_LINE", "KVM_GET_DIRTY_LOG", "KVM_GET_IRQCHIP", "KVM_GET_CLOCK", "KVM_GET_PIT2",
		"KVM_GET_MSR_INDEX_LIST", "KVM_CHECK_EXTENSION",
		"KVM_GET_REGS", "KVM_GET_SREGS", "KVM_GET_MSRS", "KVM_GET_FPU", "KVM_GET_LAPIC", "KVM_GET_CPUID2",
		"KVM_GET_MP_STATE", "KVM_GET_VCPU_EVENTS", "KVM_GET_DEBUGREGS", "KVM_GET_XSAVE", "KVM_GET_XSAVE2",
		"KVM_GET_XCRS", "KVM_GET_TSC_KHZ", "KVM_KVMCLOCK_CTRL",
		"KVM_SET_USER_MEMORY_REGION", "KVM_IRQFD", "KVM_IOEVENTFD",
	}
)

// Other ioctls, by stage.
var (
	// vcpuIoctls: a net device activated by the driver's status write
	// sets the tap's offloads; the logger asks a pipe how full it is.
	vcpuIoctls = []named{{"TUNSETOFFLOAD", unix.TUNSETOFFLOAD}, {"FIONREAD", unix.TIOCINQ}}
	// vmmIoctls: the same from the VMM's side (a device reset or
	// activation), and the terminal that ember run puts back at exit.
	vmmIoctls = []named{{"TUNSETOFFLOAD", unix.TUNSETOFFLOAD}, {"FIONREAD", unix.TIOCINQ},
		{"TCGETS", unix.TCGETS}, {"TCSETS", unix.TCSETS}}
	// bootIoctls: opening taps, the terminal check, and loading a
	// snapshot with the Uffd backend.
	bootIoctls = []named{{"TUNSETIFF", unix.TUNSETIFF}, {"TUNSETVNETHDRSZ", unix.TUNSETVNETHDRSZ},
		{"SIOCGIFMTU", unix.SIOCGIFMTU}}
)

// uffdRequests are the userfaultfd ioctls of a load with the Uffd backend
// (snapshot.MapUffd), include/uapi/linux/userfaultfd.h. UFFDIO_COPY is the
// page-fault handler's, in another process.
var uffdRequests = []named{
	{"UFFDIO_API", 0xc018aa3f},      // _IOWR(0xAA, 0x3F, struct uffdio_api)
	{"UFFDIO_REGISTER", 0xc020aa00}, // _IOWR(0xAA, 0x00, struct uffdio_register)
	// USERFAULTFD_IOC_NEW on /dev/userfaultfd, where the system call is
	// not permitted (a jailed VMM): _IO(0xAA, 0x00).
	{"USERFAULTFD_IOC_NEW", 0xaa00},
}

// fcntl commands every filter allows: the close-on-exec flag, the status
// flags (non-blocking mode), a pipe's size (the logger).
var fcntlCmds = []named{{"F_GETFD", unix.F_GETFD}, {"F_SETFD", unix.F_SETFD}, {"F_GETFL", unix.F_GETFL},
	{"F_SETFL", unix.F_SETFL}, {"F_GETPIPE_SZ", unix.F_GETPIPE_SZ}}

// runtimeRules are what the Go runtime (and the standard library under
// it) needs on any thread once it runs: memory, scheduling, signals,
// the network poller, thread exit; and what the SIGSYS and SIGALRM
// handlers use (setitimer, write, writev, nanosleep, exit_group: a call
// they make that a filter refused would find SIGSYS blocked, and the
// kernel would kill the process without the report). mmap and mprotect never with PROT_EXEC: Ember generates no
// code.
func runtimeRules() []Rule {
	noExec := argMasked(2, unix.PROT_EXEC, 0, "no PROT_EXEC")
	rs := allow("read", "write", "writev", "close", "munmap", "sched_yield", "nanosleep", "clock_gettime",
		"gettid", "getpid", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
		"exit", "exit_group", "restart_syscall", "epoll_pwait", "epoll_wait", "epoll_ctl")
	rs = append(rs,
		allowIf("mmap", "memory", noExec),
		allowIf("mprotect", "guard pages", noExec),
		allowIf("tgkill", "the vCPU kick, the runtime's preemption and crash signals, to this process only", argPID(0)),
		allowIf("prctl", "the runtime names its memory mappings", argEq(0, unix.PR_SET_VMA, "PR_SET_VMA")),
		allowIf("setitimer", "the SIGSYS handler's deadline for the report", argEq(0, unix.ITIMER_REAL, "ITIMER_REAL")))
	for _, m := range []named{{"MADV_DONTNEED", unix.MADV_DONTNEED}, {"MADV_FREE", unix.MADV_FREE},
		{"MADV_HUGEPAGE", unix.MADV_HUGEPAGE}, {"MADV_NOHUGEPAGE", unix.MADV_NOHUGEPAGE}, {"MADV_COLLAPSE", unix.MADV_COLLAPSE}} {
		rs = append(rs, allowIf("madvise", "the runtime returns and shapes memory; the balloon releases guest pages", argEq(2, m.val, m.name)))
	}
	rs = append(rs, anyOf("futex", 1, []named{{"FUTEX_WAIT_PRIVATE", futexWait | futexPrivate}, {"FUTEX_WAKE_PRIVATE", futexWake | futexPrivate},
		{"FUTEX_WAIT_BITSET_PRIVATE", futexWaitBitset | futexPrivate}, {"FUTEX_WAKE_BITSET_PRIVATE", futexWakeBitset | futexPrivate},
		{"FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME", futexWaitBitset | futexPrivate | futexClockRealtime}}, "process-private futexes only")...)
	rs = append(rs, anyOf("fcntl", 1, fcntlCmds, "")...)
	return rs
}

// deviceRules are what activating, resetting and feeding the devices
// needs, on a vCPU thread (the driver's status write activates a device
// synchronously) or a VMM one: workers' eventfds and epoll sets, rate
// limiter and balloon timers, the logger's poll of a pipe.
func deviceRules() []Rule {
	return allow("eventfd2", "epoll_create1", "timerfd_create", "timerfd_settime", "ppoll")
}

// vcpuFilter confines each vCPU thread: KVM_RUN and what the exit path
// runs synchronously (port I/O and MMIO devices: serial output, interrupt
// lines, the i8042's reset, virtio-mmio registers and device activation),
// and the runtime. No open, no socket, no fork, no VM-wide KVM ioctls
// but interrupt lines.
func vcpuFilter() Filter {
	rs := anyOf("ioctl", 1, kvmRequests(vcpuKVM...), "KVM vCPU")
	rs = append(rs, anyOf("ioctl", 1, vcpuIoctls, "")...)
	rs = append(rs, runtimeRules()...)
	rs = append(rs, deviceRules()...)
	rs = append(rs, cloneThreadRule())
	return Filter{DefaultAction: Trap, FilterAction: Allow, Rules: rs}
}

// cloneThreadRule allows clone(2) for threads only: no fork. The Go
// runtime starts the threads a locked thread asks for through its template
// thread, so a vCPU thread should never clone; the rule is there anyway,
// as a thread that exits runs the scheduler with every signal blocked, and
// a call refused then would kill the process without a report.
func cloneThreadRule() Rule {
	return allowIf("clone", "threads only, no fork", argMasked(0, cloneThread, cloneThread, "CLONE_VM|CLONE_SIGHAND|CLONE_THREAD"))
}

// processRules are the process-wide rules common to both stages.
func processRules() []Rule {
	rs := runtimeRules()
	rs = append(rs, deviceRules()...)
	rs = append(rs, allow(
		// File I/O on open files: drives (preadv/pwritev, flush),
		// snapshot files, logger and metrics, the console.
		"readv", "pread64", "pwrite64", "preadv", "pwritev", "lseek",
		"fsync", "fdatasync", "ftruncate", "fallocate", "fstat", "newfstatat",
		// The API socket's and vsock's connections (AF_UNIX only, see socket).
		"connect", "accept4", "getsockname", "getpeername", "shutdown", "sendto", "recvfrom",
		// Snapshot files appear by rename; errors remove them.
		"renameat",
		"timerfd_gettime", "getrandom", "uname", "getrusage", "sched_getaffinity",
		// glibc's thread start-up, in binaries built with cgo.
		"set_robust_list", "rseq", "brk",
	)...)
	rs = append(rs,
		allowIf("unlinkat", "snapshot temporaries, the vsock and API sockets (os.Remove tries rmdir when unlink fails)", argMasked(2, ^uint64(unix.AT_REMOVEDIR)&0xffffffff, 0, "no flag but AT_REMOVEDIR")),
		allowIf("getsockopt", "socket errors", argEq(1, unix.SOL_SOCKET, "SOL_SOCKET")),
		cloneThreadRule(),
		Rule{Syscall: "clone3", Action: &Action{Kind: ActErrno, Data: uint16(unix.ENOSYS)},
			Comment: "its flags are out of the filter's sight: ENOSYS makes glibc fall back to clone"},
		allowIf("seccomp", "each vCPU thread stacks its filter", argEq(0, setModeFilter, "SECCOMP_SET_MODE_FILTER"), argEq(1, 0, "this thread only")),
		allowIf("prctl", "set before installing a filter", argEq(0, unix.PR_SET_NO_NEW_PRIVS, "PR_SET_NO_NEW_PRIVS")),
		allowIf("kill", "Ctrl-A x stops ember run; the runtime's crash signals", argPID(0)),
		allowIf("socket", "the API socket, vsock's host side, the Uffd handler's socket",
			argEq(0, unix.AF_UNIX, "AF_UNIX"), argMasked(1, sockTypeMask, unix.SOCK_STREAM, "SOCK_STREAM")),
	)
	return rs
}

// vmmFilter confines every thread once the guest runs: the API, the
// device workers, snapshots, drive changes, the runtime. The guest is
// hostile from here on (Firecracker's trust model), so: no socket but
// AF_UNIX streams, no KVM ioctl that builds a VM, no open but the few
// shapes Ember's post-boot features use (see the package comment).
func vmmFilter() Filter {
	rs := anyOf("ioctl", 1, kvmRequests(vmmKVM...), "KVM")
	rs = append(rs, anyOf("ioctl", 1, vmmIoctls, "")...)
	rs = append(rs, processRules()...)
	for _, f := range []named{
		{"O_RDWR|O_CLOEXEC|OpenAfterBoot: PATCH /drives, read-write drive", unix.O_RDWR | unix.O_CLOEXEC | OpenAfterBoot},
		{"O_RDONLY|O_CLOEXEC|OpenAfterBoot: PATCH /drives, read-only drive", unix.O_RDONLY | unix.O_CLOEXEC | OpenAfterBoot},
		{"O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC: a new snapshot file (never an existing file)", unix.O_RDWR | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC},
		{"O_RDONLY|O_DIRECTORY|O_CLOEXEC: a snapshot's directory, to fsync it (never a file's data)", unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC},
	} {
		rs = append(rs, allowIf("openat", "after boot", argEq(2, f.val, f.name)))
	}
	return Filter{DefaultAction: Trap, FilterAction: Allow, Rules: rs}
}

// bootFilter confines every thread from start-up to the guest's first
// instruction: configuring and building the VM (any file the trusted API
// names, /dev/kvm, taps, sockets, a snapshot to load), but still no exec,
// no fork, no ptrace, no executable memory, no network socket but the
// one datagram socket that reads a tap's MTU.
func bootFilter() Filter {
	rs := anyOf("ioctl", 1, allKVMRequests(), "KVM")
	rs = append(rs, anyOf("ioctl", 1, vmmIoctls, "")...)
	rs = append(rs, anyOf("ioctl", 1, bootIoctls, "")...)
	rs = append(rs, anyOf("ioctl", 1, uffdRequests, "snapshot load, Uffd backend")...)
	rs = append(rs, processRules()...)
	rs = append(rs, allow("openat", "bind", "listen", "sendmsg", "userfaultfd", "getcwd", "statx", "pipe2", "getdents64")...)
	rs = append(rs,
		allowIf("setsockopt", "Go's listener options", argEq(1, unix.SOL_SOCKET, "SOL_SOCKET")),
		allowIf("socket", "reading a tap's MTU (SIOCGIFMTU)",
			argEq(0, unix.AF_INET, "AF_INET"), argEq(1, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, "SOCK_DGRAM|SOCK_CLOEXEC")),
		allowIf("fcntl", "", argEq(1, unix.F_DUPFD_CLOEXEC, "F_DUPFD_CLOEXEC")),
		allowIf("seccomp", "the vmm filter goes on every thread at boot", argEq(0, setModeFilter, "SECCOMP_SET_MODE_FILTER"), argEq(1, flagTSync, "SECCOMP_FILTER_FLAG_TSYNC")),
	)
	return Filter{DefaultAction: Trap, FilterAction: Allow, Rules: rs}
}

// Builtin is Ember's own policy (ember seccomp print shows it).
func Builtin() *Policy {
	boot := bootFilter()
	return &Policy{Boot: &boot, VMM: vmmFilter(), VCPU: vcpuFilter()}
}

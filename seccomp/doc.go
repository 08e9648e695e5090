// Package seccomp confines Ember with seccomp-BPF system call allowlists,
// built and installed in Go without cgo, and reports a refused call as
// Firecracker does: one log line naming the call and the thread class, then
// exit status 148.
//
// # Filters and Go's threads
//
// Firecracker gives each of its threads (vmm, api, vcpu) its own filter. Go
// cannot: goroutines move between OS threads, and the runtime starts
// threads lazily and shares them, so the API's goroutines and the VMM's
// run on the same threads. Only a goroutine locked to its thread
// (runtime.LockOSThread) owns one, and the vCPU loops are. Filters stack
// (a thread runs every filter it has, and the strictest answer wins), so
// Ember installs three:
//
//   - boot, on every thread (SECCOMP_FILTER_FLAG_TSYNC), at start-up of
//     the Firecracker mode (Start): before the API accepts its first
//     request and before a config file's VM is built. It allows what
//     configuring and building a VM needs: opening any file the (trusted)
//     API names, /dev/kvm and every KVM ioctl Ember issues, taps, AF_UNIX
//     sockets, loading a snapshot. ember run, whose VM comes from trusted
//     flags with nothing untrusted running before it, only arms the
//     reporter at start-up (Arm) and goes without: Firecracker too puts
//     its vmm filter on just before the guest runs, and the boot filter
//     would cost its installation and a layer on every later call.
//   - vmm, on every thread (TSYNC again, stacked on boot if any), when the
//     VM starts running (vmm.VM.Run, before any vCPU thread starts): the guest
//     is hostile from then on. It allows what the running VMM and the API
//     do, and no more: no KVM ioctl that builds a VM, AF_UNIX sockets only,
//     the few opens described below.
//   - vcpu, on each vCPU thread, stacked on both, before its first KVM_RUN:
//     KVM_RUN and what the exit path runs synchronously on that thread
//     (serial output, interrupt lines, the i8042's reset, virtio-mmio
//     registers, device activation and reset), and the runtime. The thread
//     stays locked to its goroutine for good, so it ends with the vCPU loop
//     instead of going back to the scheduler carrying the vcpu filter.
//
// A custom policy file (Parse, --seccomp-filter) uses Firecracker's
// seccompiler schema: its "vmm" and "api" filters become the process-wide
// one (the API shares the VMM's threads), "vcpu" the vCPU one, and an
// optional "boot" the pre-boot one; without "boot", "vmm" is installed at
// start-up. Two extensions: a rule may carry its own "action" ({"errno":
// 38} for clone3), and a condition's "val" may be "pid", the installing
// process's pid (kill and tgkill are held to the process itself).
// `ember seccomp print --json` writes the built-in policy in that form.
//
// Each thread of a process runs the process-wide filters, so they must
// allow all a vCPU thread does (KVM_RUN among it); and vmm must not allow
// what boot refuses. TestBuiltinStacking checks both over every system
// call. The thread classes a violation names are therefore two: "vmm" (any
// thread but a vCPU's: the API and VMM goroutines) and "vcpu".
//
// # Argument checks
//
//   - ioctl: only the request numbers Ember issues, per stage: KVM's (from
//     kvm.Requests, KVM_RUN first), the tap's (TUNSETIFF, TUNSETVNETHDRSZ,
//     SIOCGIFMTU before boot, TUNSETOFFLOAD), the terminal's (TCGETS,
//     TCSETS), FIONREAD (the logger's pipe check), the userfaultfd ones of
//     a Uffd load (before boot).
//   - socket: AF_UNIX streams (the API, vsock, the Uffd handler); before
//     boot also AF_INET SOCK_DGRAM|SOCK_CLOEXEC, which reading a tap's MTU
//     needs. None on a vCPU thread.
//   - mmap and mprotect: never with PROT_EXEC, before or after boot.
//   - clone: threads only (CLONE_VM|CLONE_SIGHAND|CLONE_THREAD); fork and
//     vfork are refused, clone3 answers ENOSYS (its flags are out of a
//     filter's sight). No execve, execveat, ptrace, process_vm_*.
//   - kill and tgkill: this process only; futex: private operations only;
//     prctl: PR_SET_VMA (the runtime names its mappings) and
//     PR_SET_NO_NEW_PRIVS; seccomp: adding a filter, TSYNC only before boot.
//
// # Opens after boot
//
// Seccomp cannot read a path, so it cannot refuse /etc/shadow by name. What
// it can check is openat's flags, and the running VM's opens are few and
// distinct:
//
//   - a snapshot's files are created new (os.CreateTemp:
//     O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC), which cannot open an existing
//     file, then renamed into place;
//   - their directory is opened to be synced with O_DIRECTORY, which
//     cannot open a file (and getdents64 is refused after boot, so it
//     cannot be listed);
//   - PATCH /drives opens the new backing file O_RDWR or O_RDONLY with
//     OpenAfterBoot, O_LARGEFILE: a flag the x86-64 kernel sets on every
//     open anyway, which Go never passes on amd64, so that only these
//     opens carry it;
//   - the logger and metrics open their files before boot only: PUT
//     /logger and PUT /metrics are refused once the VM runs.
//
// The vmm filter allows openat with exactly these four flag sets, the vcpu
// filter none. So an open the code did not mean to make after boot (an
// os.Open of any path, a bug that reopens a file) is refused and reported.
// What this does not bound: code an attacker controls can pass the same
// flags, and renameat and unlinkat (snapshot files, the vsock and API
// sockets at exit) take any path. Bounding paths is the jailer's work
// (chroot and a user of its own): seccomp bounds the calls and arguments.
//
// # A refused call: one line, exit 148
//
// The filters answer SECCOMP_RET_TRAP, with their own datum (which filter,
// hence which thread class). The kernel skips the call and sends SIGSYS to
// the thread with the call's number, architecture, address and the datum in
// the siginfo. Go's own SIGSYS handling cannot report that: the runtime
// turns SIGSYS into a crash dump without the call's number and exit status
// 2, and os/signal delivers the signal without its siginfo (and lets the
// thread go on as if the call had returned its own number).
// SECCOMP_RET_KILL_PROCESS reports nothing and makes the exit status the
// signal's, and Ember has no parent to watch it; gVisor's sentry, also Go,
// lets the kernel kill it or, when debugging, reads the Go runtime's SIGSYS
// crash dump. So this package installs its own SIGSYS handler (trap_amd64.s,
// plain Go assembly, no cgo) with rt_sigaction. On the signal stack, all
// signals blocked, it records the siginfo, arms a deadline (setitimer) and
// wakes a reporter goroutine through an eventfd; the reporter waits in a
// blocking read on a thread of its own, so reporting needs no new thread.
// The reporter logs Violation.String through the caller's logger (Ember's
// own log format and destination; the Firecracker mode also stores
// seccomp.num_faults and flushes the metrics), then exits with ExitCode.
// The faulting thread waits 100 ms in the handler, ample for that, then
// goes on with the call failed (EPERM), as do later faults: a thread held
// longer could keep what Go needs to run the reporter (a call made with
// RawSyscall keeps its P, and a garbage collection that starts waits for
// every P; execve holds Go's exec lock, which stops new threads). If the
// reporter has not ended the process within two seconds, the deadline's
// SIGALRM handler writes the line to standard error itself and exits 148.
//
// Limits. The faulting code goes on for a moment with the call failed: a
// caller that treats EPERM as fatal (the Go runtime throws when it cannot
// make a thread, say) may end the process first, with its own message and
// status; the filters allow every call the runtime makes. A call refused
// while the thread blocks SIGSYS cannot be
// reported: the kernel then kills the process with SIGSYS (exit by signal,
// no line). Go blocks every signal around os/exec's fork, so a fork through
// os/exec ends that way; fork(2) itself, and everything else, is reported.
// For the same reason the package refuses a binary linked with the C
// library (ErrCgo; built with cgo enabled): glibc's malloc opens
// /sys/devices/system/cpu/online with every signal blocked when a thread
// first needs an arena. Ember's release binary is static (CGO_ENABLED=0).
//
// # The compiler, and why not a library
//
// Compile turns a filter into classic BPF with golang.org/x/net/bpf's
// instruction types (whose interpreter also runs the programs in the unit
// tests): an architecture check (anything but x86-64, and x32 numbers, get
// the default action), a binary search over the numbers of the system calls
// that have rules, then each call's rules in order. github.com/elastic/go-
// seccomp-bpf was the alternative; on the vmm filter's 68 allowed calls
// and 29 ioctl requests, counting the instructions each call executes, its
// linear layout runs 78 for KVM_RUN and 39.5 on average, this compiler 13
// and 11.6. It also lacks what the policy needs (masked_eq with a value,
// 64-bit comparisons, a rule's own action, trap data, the pid). The
// built-in filters are 511 (boot), 355 (vmm) and 175 (vcpu) instructions;
// a KVM_RUN on a vCPU thread runs 13 + 13 of them (14 more under the
// Firecracker mode's boot filter), which the kernel's BPF JIT compiles to
// native code. Building the policy, compiling it and installing it cost
// about 0.8 ms of CPU at start-up in ember run (0.4 ms each), 1.1 ms in the
// Firecracker mode (its boot filter too), measured on a loaded 2-core host.
package seccomp

package seccomp

import (
	"testing"

	"golang.org/x/sys/unix"
)

const testPID = 4321

type builtinProgs struct{ boot, vmm, vcpu Program }

func compileBuiltin(t testing.TB) builtinProgs {
	t.Helper()
	p := Builtin()
	var b builtinProgs
	var err error
	if b.boot, err = Compile(p.Boot, testPID, dataBoot); err != nil {
		t.Fatal(err)
	}
	if b.vmm, err = Compile(&p.VMM, testPID, dataVMM); err != nil {
		t.Fatal(err)
	}
	if b.vcpu, err = Compile(&p.VCPU, testPID, dataVCPU); err != nil {
		t.Fatal(err)
	}
	return b
}

// The calls the issue names as forbidden, and the shapes of calls Ember
// makes.
var (
	execve         = sys("execve")
	ptraceAttach   = sys("ptrace", unix.PTRACE_ATTACH, 1)
	fork           = sys("clone", uint64(unix.SIGCHLD))
	vfork          = sys("vfork")
	inetStream     = sys("socket", unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC)
	inetDgram      = sys("socket", unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC)
	unixStream     = sys("socket", unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	openShadow     = sys("openat", uint64(unix.AT_FDCWD&0xffffffff), 0x1000, unix.O_RDONLY|unix.O_CLOEXEC)
	openRW         = sys("openat", uint64(unix.AT_FDCWD&0xffffffff), 0x1000, unix.O_RDWR|unix.O_CLOEXEC)
	openDrive      = sys("openat", uint64(unix.AT_FDCWD&0xffffffff), 0x1000, unix.O_RDWR|unix.O_CLOEXEC|OpenAfterBoot)
	createTemp     = sys("openat", uint64(unix.AT_FDCWD&0xffffffff), 0x1000, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC)
	openDir        = sys("openat", uint64(unix.AT_FDCWD&0xffffffff), 0x1000, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	goThread       = sys("clone", unix.CLONE_VM|unix.CLONE_FS|unix.CLONE_FILES|unix.CLONE_SIGHAND|unix.CLONE_SYSVSEM|unix.CLONE_THREAD)
	mmapRW         = sys("mmap", 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	mmapRX         = sys("mmap", 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	mprotectX      = sys("mprotect", 0x1000, 4096, unix.PROT_READ|unix.PROT_EXEC)
	kvmRunCall     = sys("ioctl", 12, uint64(kvmRequests("KVM_RUN")[0].val))
	kvmCreateVM    = sys("ioctl", 12, uint64(kvmRequests("KVM_CREATE_VM")[0].val))
	kvmSetRegs     = sys("ioctl", 12, uint64(kvmRequests("KVM_SET_REGS")[0].val))
	kvmGetXSave2   = sys("ioctl", 12, uint64(kvmRequests("KVM_GET_XSAVE2")[0].val))
	tiocsti        = sys("ioctl", 0, unix.TIOCSTI)
	tgkillSelf     = sys("tgkill", testPID, 77, uint64(unix.SIGURG))
	tgkillOther    = sys("tgkill", 1, 1, uint64(unix.SIGKILL))
	killOther      = sys("kill", 1, uint64(unix.SIGKILL))
	futexWaitPriv  = sys("futex", 0, futexWait|futexPrivate)
	futexRequeue   = sys("futex", 0, 3) // FUTEX_REQUEUE
	accept         = sys("accept4", 3, 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	userfaultfd    = sys("userfaultfd")
	seccompThread  = sys("seccomp", setModeFilter, 0)
	seccompTSync   = sys("seccomp", setModeFilter, flagTSync)
	clone3         = sys("clone3")
	getdents       = sys("getdents64")
	unlinkDir      = sys("unlinkat", uint64(unix.AT_FDCWD&0xffffffff), 0x1000, unix.AT_REMOVEDIR)
	processVMWrite = sys("process_vm_writev")
)

func TestBuiltinDecisions(t *testing.T) {
	b := compileBuiltin(t)
	const (
		allow = retAllow
		boot  = retTrap | dataBoot
		vmm   = retTrap | dataVMM
		vcpu  = retTrap | dataVCPU
	)
	enosys := uint32(retErrno | uint32(unix.ENOSYS))
	cases := []struct {
		name             string
		call             call
		boot, vmm, vcpu_ uint32
	}{
		{"execve", execve, boot, vmm, vcpu},
		{"ptrace", ptraceAttach, boot, vmm, vcpu},
		{"fork", fork, boot, vmm, vcpu},
		{"vfork", vfork, boot, vmm, vcpu},
		{"process_vm_writev", processVMWrite, boot, vmm, vcpu},
		{"socket(AF_INET, SOCK_STREAM)", inetStream, boot, vmm, vcpu},
		{"socket(AF_INET, SOCK_DGRAM): a tap's MTU, before boot", inetDgram, allow, vmm, vcpu},
		{"socket(AF_UNIX)", unixStream, allow, allow, vcpu},
		{"open /etc/shadow read-only", openShadow, allow, vmm, vcpu},
		{"open read-write", openRW, allow, vmm, vcpu},
		{"open a drive after boot", openDrive, allow, allow, vcpu},
		{"create a snapshot temporary", createTemp, allow, allow, vcpu},
		{"open a directory to fsync it", openDir, allow, allow, vcpu},
		{"getdents64", getdents, allow, vmm, vcpu},
		{"unlinkat a directory", unlinkDir, allow, allow, vcpu},
		{"a Go thread", goThread, allow, allow, allow},
		{"clone3", clone3, enosys, enosys, vcpu},
		{"mmap read-write", mmapRW, allow, allow, allow},
		{"mmap executable", mmapRX, boot, vmm, vcpu},
		{"mprotect executable", mprotectX, boot, vmm, vcpu},
		{"KVM_RUN", kvmRunCall, allow, allow, allow},
		{"KVM_CREATE_VM", kvmCreateVM, allow, vmm, vcpu},
		{"KVM_SET_REGS", kvmSetRegs, allow, vmm, vcpu},
		{"KVM_GET_XSAVE2 (snapshot)", kvmGetXSave2, allow, allow, vcpu},
		{"TIOCSTI", tiocsti, boot, vmm, vcpu},
		{"tgkill this process", tgkillSelf, allow, allow, allow},
		{"tgkill another process", tgkillOther, boot, vmm, vcpu},
		{"kill another process", killOther, boot, vmm, vcpu},
		{"futex wait private", futexWaitPriv, allow, allow, allow},
		{"futex requeue", futexRequeue, boot, vmm, vcpu},
		{"accept4", accept, allow, allow, vcpu},
		{"userfaultfd", userfaultfd, allow, vmm, vcpu},
		{"seccomp on this thread", seccompThread, allow, allow, vcpu},
		{"seccomp TSYNC", seccompTSync, allow, vmm, vcpu},
	}
	for _, c := range cases {
		for _, f := range []struct {
			name string
			prog Program
			want uint32
		}{{"boot", b.boot, c.boot}, {"vmm", b.vmm, c.vmm}, {"vcpu", b.vcpu, c.vcpu_}} {
			if got := run(t, f.prog, c.call); got != f.want {
				t.Errorf("%s under the %s filter: %#x, want %#x", c.name, f.name, got, f.want)
			}
		}
	}
}

// TestBuiltinAllowsTheHandler: every built-in filter allows what the
// SIGSYS handler calls, whatever the arguments.
func TestBuiltinAllowsTheHandler(t *testing.T) {
	b := compileBuiltin(t)
	for _, c := range []call{sys("write", 7, 0xdead, 99), sys("writev", 2, 0xdead, 5), sys("nanosleep", 0xdead),
		sys("exit_group", ExitCode), sys("rt_sigreturn"), sys("setitimer", unix.ITIMER_REAL, 0xdead)} {
		for _, p := range []Program{b.boot, b.vmm, b.vcpu} {
			if got := run(t, p, c); got != retAllow {
				t.Errorf("%s: %#x, want allow", SyscallName(c.nr), got)
			}
		}
	}
}

// TestBuiltinStacking: whatever the vcpu filter allows the process-wide
// filters allow too, and whatever vmm allows boot does: a vCPU thread runs
// under all three, so otherwise a call the vcpu filter means to allow would
// be refused, and reported as another filter's. Checked over every system
// call with the argument values the filters mention.
func TestBuiltinStacking(t *testing.T) {
	b := compileBuiltin(t)
	p := Builtin()
	vals := map[uint64]bool{0: true, 1: true, testPID: true}
	for _, f := range []*Filter{p.Boot, &p.VMM, &p.VCPU} {
		for _, r := range f.Rules {
			for _, c := range r.Args {
				vals[c.Val] = true
				vals[c.Mask] = true
				vals[c.Val|c.Mask] = true
			}
		}
	}
	vals[testPID] = true
	var vs []uint64
	for v := range vals {
		vs = append(vs, v)
	}
	ruled := map[string]bool{}
	for _, f := range []*Filter{p.Boot, &p.VMM, &p.VCPU} {
		for _, r := range f.Rules {
			ruled[r.Syscall] = true
		}
	}
	checked := 0
	for nr := range len(syscallNames) {
		vs := vs
		if !ruled[SyscallName(nr)] {
			vs = vs[:1] // no filter has a rule for it: each refuses it whatever its arguments
		}
		for _, v := range vs {
			for arg := range 4 {
				c := call{nr: nr, arch: unix.AUDIT_ARCH_X86_64}
				c.args[arg] = v
				if arg == 1 {
					c.args[0] = testPID // tgkill, kill
				}
				if arg == 2 {
					c.args[1] = unix.SOL_SOCKET
				}
				vc, vm, bo := run(t, b.vcpu, c), run(t, b.vmm, c), run(t, b.boot, c)
				if vc == retAllow && vm != retAllow {
					t.Errorf("%s %v: allowed by vcpu, not by vmm (%#x)", SyscallName(nr), c.args, vm)
				}
				if vm == retAllow && bo != retAllow {
					t.Errorf("%s %v: allowed by vmm, not by boot (%#x)", SyscallName(nr), c.args, bo)
				}
				checked++
			}
		}
	}
	t.Logf("%d calls checked", checked)
}

// TestBuiltinJSONRoundTrip: the built-in policy printed as a seccompiler
// file parses back to the same policy and the same programs.
func TestBuiltinJSONRoundTrip(t *testing.T) {
	p := Builtin()
	b, err := p.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	q, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse of the printed policy: %v", err)
	}
	for _, pair := range [][2]*Filter{{p.Boot, q.Boot}, {&p.VMM, &q.VMM}, {&p.VCPU, &q.VCPU}} {
		a, err1 := Compile(pair[0], testPID, 1)
		c, err2 := Compile(pair[1], testPID, 1)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if len(a) != len(c) {
			t.Fatalf("round trip changed the program: %d → %d instructions", len(a), len(c))
		}
		for i := range a {
			if a[i] != c[i] {
				t.Fatalf("round trip changed instruction %d: %v → %v", i, a[i], c[i])
			}
		}
	}
}

// BenchmarkBuiltinNew is what ember spends at start-up before installing
// the filters: building the built-in policy and compiling its three
// filters.
func BenchmarkBuiltinNew(b *testing.B) {
	for b.Loop() {
		if _, err := New(Builtin()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuiltinPolicy(b *testing.B) {
	for b.Loop() {
		Builtin()
	}
}

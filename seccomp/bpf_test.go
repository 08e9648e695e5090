package seccomp

import (
	"encoding/binary"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// call is a system call as a filter sees it (struct seccomp_data).
type call struct {
	nr   int
	arch uint32
	args [maxArgs]uint64
}

func sys(name string, args ...uint64) call {
	nr, ok := syscallNumber(name)
	if !ok {
		panic("unknown syscall " + name)
	}
	c := call{nr: nr, arch: unix.AUDIT_ARCH_X86_64}
	copy(c.args[:], args)
	return c
}

// vms caches the interpreter of each program tested (tests of this
// package do not run in parallel).
var vms = map[*bpf.RawInstruction]*bpf.VM{}

// run evaluates prog on c in x/net/bpf's interpreter. The interpreter
// loads words big-endian, as a packet filter does; seccomp_data is
// native-endian, so every 32-bit word goes in byte-swapped and the program
// reads the values the kernel would give it.
func run(t testing.TB, prog Program, c call) uint32 {
	t.Helper()
	vm := vms[&prog[0]]
	if vm == nil {
		insns, ok := bpf.Disassemble(prog)
		if !ok {
			t.Fatalf("the program does not disassemble")
		}
		var err error
		if vm, err = bpf.NewVM(insns); err != nil {
			t.Fatalf("bpf.NewVM: %v", err)
		}
		vms[&prog[0]] = vm
	}
	in := make([]byte, offArgs+argSize*maxArgs)
	binary.BigEndian.PutUint32(in[offNr:], uint32(c.nr))
	binary.BigEndian.PutUint32(in[offArch:], c.arch)
	for i, a := range c.args {
		binary.BigEndian.PutUint32(in[offArgs+argSize*i:], uint32(a))
		binary.BigEndian.PutUint32(in[offArgs+argSize*i+wordSize:], uint32(a>>32))
	}
	r, err := vm.Run(in)
	if err != nil {
		t.Fatalf("bpf run: %v", err)
	}
	return uint32(r)
}

func mustCompile(t testing.TB, f *Filter, pid int) Program {
	t.Helper()
	p, err := Compile(f, pid, 7)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

const trap7 = retTrap | 7

func TestCompileConditions(t *testing.T) {
	dw := func(arg int, op Op, v uint64) Cond { return Cond{Arg: arg, Dword: true, Op: op, Val: v} }
	qw := func(arg int, op Op, v uint64) Cond { return Cond{Arg: arg, Op: op, Val: v} }
	cases := []struct {
		cond Cond
		yes  []uint64
		no   []uint64
	}{
		{dw(1, OpEq, 5), []uint64{5, 1<<32 | 5}, []uint64{4, 6}},
		{dw(1, OpNe, 5), []uint64{4, 1 << 32}, []uint64{5, 1<<32 | 5}},
		{dw(1, OpGt, 5), []uint64{6, 0xffffffff}, []uint64{5, 0, 1 << 32}},
		{dw(1, OpGe, 5), []uint64{5, 6}, []uint64{4, 0}},
		{dw(1, OpLt, 5), []uint64{4, 0, 1 << 40}, []uint64{5, 6}},
		{dw(1, OpLe, 5), []uint64{5, 0}, []uint64{6, 0xffffffff}},
		{Cond{Arg: 2, Dword: true, Op: OpMaskedEq, Mask: 0x4, Val: 0}, []uint64{0x3, 0x1_0000_0003}, []uint64{0x4, 0x7}},
		{qw(0, OpEq, 1<<32|5), []uint64{1<<32 | 5}, []uint64{5, 2<<32 | 5, 1 << 32}},
		{qw(0, OpNe, 1<<32|5), []uint64{5, 1 << 32, 0}, []uint64{1<<32 | 5}},
		{qw(0, OpGt, 1<<32|5), []uint64{1<<32 | 6, 2 << 32}, []uint64{1<<32 | 5, 1<<32 | 4, 0xffffffff}},
		{qw(0, OpGe, 1<<32|5), []uint64{1<<32 | 5, 2 << 32}, []uint64{1<<32 | 4, 0xffffffff}},
		{qw(0, OpLt, 1<<32|5), []uint64{1<<32 | 4, 0xffffffff}, []uint64{1<<32 | 5, 2 << 32}},
		{qw(0, OpLe, 1<<32|5), []uint64{1<<32 | 5, 7}, []uint64{1<<32 | 6, 2 << 32}},
		{Cond{Arg: 3, Op: OpMaskedEq, Mask: 0xff00_0000_00ff, Val: 0x1200_0000_0034}, []uint64{0x1234_5678_9a34, 0x1200_0000_0034}, []uint64{0x1300_0000_0034, 0x1200_0000_0035}},
		{Cond{Arg: 5, Op: OpEq, PID: true}, []uint64{4242}, []uint64{4243, 1<<32 | 4242}},
	}
	for _, c := range cases {
		f := &Filter{DefaultAction: Trap, FilterAction: Allow, Rules: []Rule{{Syscall: "ioctl", Args: []Cond{c.cond}}}}
		prog := mustCompile(t, f, 4242)
		for _, v := range c.yes {
			var args [maxArgs]uint64
			args[c.cond.Arg] = v
			if got := run(t, prog, call{nr: unix.SYS_IOCTL, arch: unix.AUDIT_ARCH_X86_64, args: args}); got != retAllow {
				t.Errorf("%v with arg %#x: %#x, want allow", c.cond, v, got)
			}
		}
		for _, v := range c.no {
			var args [maxArgs]uint64
			args[c.cond.Arg] = v
			if got := run(t, prog, call{nr: unix.SYS_IOCTL, arch: unix.AUDIT_ARCH_X86_64, args: args}); got != trap7 {
				t.Errorf("%v with arg %#x: %#x, want trap", c.cond, v, got)
			}
		}
	}
}

func TestCompileRulesAndSearch(t *testing.T) {
	errnoENOSYS := Action{Kind: ActErrno, Data: uint16(unix.ENOSYS)}
	f := &Filter{DefaultAction: Trap, FilterAction: Allow, Rules: []Rule{
		{Syscall: "read"}, {Syscall: "write"}, {Syscall: "close"}, {Syscall: "futex"}, {Syscall: "exit_group"},
		{Syscall: "socket", Args: []Cond{{Arg: 0, Dword: true, Op: OpEq, Val: unix.AF_UNIX}}},
		{Syscall: "socket", Args: []Cond{{Arg: 0, Dword: true, Op: OpEq, Val: unix.AF_INET}, {Arg: 1, Dword: true, Op: OpEq, Val: unix.SOCK_DGRAM}}},
		{Syscall: "clone3", Action: &errnoENOSYS},
	}}
	prog := mustCompile(t, f, 1)
	for _, c := range []struct {
		call call
		want uint32
	}{
		{sys("read"), retAllow},
		{sys("write"), retAllow},
		{sys("close"), retAllow},
		{sys("futex"), retAllow},
		{sys("exit_group"), retAllow},
		{sys("execve"), trap7},
		{sys("openat"), trap7},
		{sys("socket", unix.AF_UNIX, unix.SOCK_STREAM), retAllow},
		{sys("socket", unix.AF_INET, unix.SOCK_DGRAM), retAllow},
		{sys("socket", unix.AF_INET, unix.SOCK_STREAM), trap7},
		{sys("socket", unix.AF_INET6, unix.SOCK_DGRAM), trap7},
		{sys("clone3"), retErrno | uint32(unix.ENOSYS)},
		{call{nr: unix.SYS_READ | x32Bit, arch: unix.AUDIT_ARCH_X86_64}, trap7},
		{call{nr: unix.SYS_READ, arch: unix.AUDIT_ARCH_I386}, trap7},
		{call{nr: 100000, arch: unix.AUDIT_ARCH_X86_64}, trap7},
	} {
		if got := run(t, prog, c.call); got != c.want {
			t.Errorf("%s(%v): %#x, want %#x", SyscallName(c.call.nr), c.call.args[:2], got, c.want)
		}
	}
}

// TestCompileEverySyscall: a filter allowing every other system call
// allows exactly those, through the binary search at any size.
func TestCompileEverySyscall(t *testing.T) {
	for _, step := range []int{1, 2, 3, 7, 50} {
		f := &Filter{DefaultAction: Trap, FilterAction: Allow}
		allowed := map[int]bool{}
		for nr, name := range syscallNames {
			if name != "" && nr%step == 0 {
				f.Rules = append(f.Rules, Rule{Syscall: name})
				allowed[nr] = true
			}
		}
		prog := mustCompile(t, f, 1)
		for nr := range len(syscallNames) + 5 {
			want := uint32(trap7)
			if allowed[nr] {
				want = retAllow
			}
			if got := run(t, prog, call{nr: nr, arch: unix.AUDIT_ARCH_X86_64}); got != want {
				t.Fatalf("step %d: syscall %d: %#x, want %#x", step, nr, got, want)
			}
		}
	}
}

// TestCompileLongJumps: hundreds of conditions on one syscall need jumps
// beyond a conditional jump's 8-bit reach.
func TestCompileLongJumps(t *testing.T) {
	f := &Filter{DefaultAction: Trap, FilterAction: Allow}
	for i := range 600 {
		f.Rules = append(f.Rules, Rule{Syscall: "ioctl", Args: []Cond{{Arg: 1, Op: OpEq, Val: uint64(i) * 3}}})
	}
	f.Rules = append(f.Rules, Rule{Syscall: "read"}, Rule{Syscall: "write"}, Rule{Syscall: "close"}, Rule{Syscall: "exit"})
	prog := mustCompile(t, f, 1)
	if len(prog) < 600*3 {
		t.Fatalf("%d instructions: expected a long program", len(prog))
	}
	for _, v := range []uint64{0, 3, 300, 897, 1797} {
		if got := run(t, prog, sys("ioctl", 0, v)); got != retAllow {
			t.Errorf("ioctl %d: %#x, want allow", v, got)
		}
	}
	for _, v := range []uint64{1, 299, 1800, 1 << 33} {
		if got := run(t, prog, sys("ioctl", 0, v)); got != trap7 {
			t.Errorf("ioctl %d: %#x, want trap", v, got)
		}
	}
	for _, name := range []string{"read", "write", "close", "exit"} {
		if got := run(t, prog, sys(name)); got != retAllow {
			t.Errorf("%s: %#x, want allow", name, got)
		}
	}
	if got := run(t, prog, sys("openat")); got != trap7 {
		t.Errorf("openat: %#x, want trap", got)
	}
}

func TestCompileTooLong(t *testing.T) {
	f := &Filter{DefaultAction: Trap, FilterAction: Allow}
	for i := range 2000 {
		f.Rules = append(f.Rules, Rule{Syscall: "ioctl", Args: []Cond{{Arg: 1, Op: OpEq, Val: uint64(i)}}})
	}
	if _, err := Compile(f, 1, 0); err == nil {
		t.Fatal("a program over 4096 instructions compiled")
	}
}

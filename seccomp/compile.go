package seccomp

import (
	"fmt"
	"math"
	"sort"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The layout of struct seccomp_data (include/uapi/linux/seccomp.h) that the
// filter reads: nr, arch, instruction_pointer, args[6], native-endian
// (little-endian on x86-64, so an argument's low word comes first).
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
	argSize = 8
	// wordSize is the size of every load: classic BPF on seccomp_data
	// only allows aligned 32-bit loads.
	wordSize = 4
)

// Return values of a filter (include/uapi/linux/seccomp.h): the action in
// the high 16 bits, its datum in the low 16.
const (
	retKillProcess = 0x80000000 // SECCOMP_RET_KILL_PROCESS
	retKillThread  = 0x00000000 // SECCOMP_RET_KILL_THREAD
	retTrap        = 0x00030000 // SECCOMP_RET_TRAP
	retErrno       = 0x00050000 // SECCOMP_RET_ERRNO
	retTrace       = 0x7ff00000 // SECCOMP_RET_TRACE
	retLog         = 0x7ffc0000 // SECCOMP_RET_LOG
	retAllow       = 0x7fff0000 // SECCOMP_RET_ALLOW
	retDataMask    = 0x0000ffff // SECCOMP_RET_DATA
)

// x32Bit marks the x32 ABI's system call numbers (__X32_SYSCALL_BIT in
// arch/x86/include/uapi/asm/unistd.h): x86-64 processes can make those
// calls too, so a filter that did not refuse them could be bypassed.
const x32Bit = 0x40000000

// maxInstructions is BPF_MAXINSNS (include/uapi/linux/bpf_common.h), the
// longest program the kernel accepts.
const maxInstructions = 4096

// maxShortJump is the longest jump a conditional BPF jump encodes (8 bits).
const maxShortJump = math.MaxUint8

// linearBelow: a run of fewer syscalls than this is searched with one
// comparison each, as a binary-search node costs two instructions.
const linearBelow = 4

// Program is a compiled filter.
type Program []bpf.RawInstruction

// Compile turns a filter into a BPF program for x86-64. pid is the value of
// conditions on "pid". trapData is the datum of SECCOMP_RET_TRAP actions,
// which the SIGSYS handler reads back to name the filter (see Install).
//
// The program checks the architecture (anything but x86-64, and x32
// numbers, get the default action), then finds the syscall in a binary
// search over the numbers that have rules, so a system call costs about
// log2(rules) comparisons, then checks its rules' conditions in order.
func Compile(f *Filter, pid int, trapData uint16) (Program, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	c := &compiler{pid: uint64(pid), trapData: trapData}
	// About four instructions a rule; growing the slices costs more
	// than the whole compilation otherwise.
	c.asm.items = make([]item, 0, 8*len(f.Rules)+64)
	c.asm.labels = make([]int, 0, 2*len(f.Rules)+16)
	def := c.ret(f.DefaultAction)
	// Rules by syscall number, keeping their order within a syscall.
	bySys := map[uint32][]Rule{}
	for _, r := range f.Rules {
		nr, _ := syscallNumber(r.Syscall)
		bySys[uint32(nr)] = append(bySys[uint32(nr)], r)
	}
	nrs := make([]uint32, 0, len(bySys))
	for nr := range bySys {
		nrs = append(nrs, nr)
	}
	sort.Slice(nrs, func(i, j int) bool { return nrs[i] < nrs[j] })

	a := &c.asm
	deny := a.newLabel()
	a.load(offArch)
	a.jumpIf(bpf.JumpEqual, unix.AUDIT_ARCH_X86_64, fall, deny)
	a.load(offNr)
	a.jumpIf(bpf.JumpGreaterOrEqual, x32Bit, deny, fall)
	matches := make([]label, len(nrs))
	for i := range nrs {
		matches[i] = a.newLabel()
	}
	c.search(nrs, matches, deny)
	for i, nr := range nrs {
		a.mark(matches[i])
		c.syscall(bySys[nr], c.ret(f.FilterAction), def)
	}
	a.mark(deny)
	a.emit(bpf.RetConstant{Val: def})
	prog, err := a.assemble()
	if err != nil {
		return nil, err
	}
	if len(prog) > maxInstructions {
		return nil, fmt.Errorf("the filter compiles to %d BPF instructions, over the kernel's limit of %d", len(prog), maxInstructions)
	}
	return prog, nil
}

type compiler struct {
	asm      assembler
	pid      uint64
	trapData uint16
}

// ret is the filter's return value for an action.
func (c *compiler) ret(a Action) uint32 {
	switch a.Kind {
	case ActAllow:
		return retAllow
	case ActTrap:
		return retTrap | uint32(c.trapData)
	case ActErrno:
		return retErrno | uint32(a.Data)&retDataMask
	case ActKillThread:
		return retKillThread
	case ActLog:
		return retLog
	case ActTrace:
		return retTrace | uint32(a.Data)&retDataMask
	}
	return retKillProcess
}

// search emits a binary search of nrs (sorted) with the syscall number in
// A: a match jumps to its label, anything else to deny.
func (c *compiler) search(nrs []uint32, matches []label, deny label) {
	a := &c.asm
	if len(nrs) < linearBelow {
		for i, nr := range nrs {
			a.jumpIf(bpf.JumpEqual, nr, matches[i], fall)
		}
		a.jump(deny)
		return
	}
	mid := len(nrs) / 2
	right := a.newLabel()
	a.jumpIf(bpf.JumpGreaterOrEqual, nrs[mid], right, fall)
	c.search(nrs[:mid], matches[:mid], deny)
	a.mark(right)
	c.search(nrs[mid:], matches[mid:], deny)
}

// syscall emits one syscall's rules: the first whose conditions all hold
// returns its action; none returns def.
func (c *compiler) syscall(rules []Rule, match, def uint32) {
	a := &c.asm
	// A rule with one 32-bit condition leaves A holding the argument's
	// word when it fails, so the next rule on the same word (ioctl's list
	// of requests) does not load it again.
	held := -1
	for _, r := range rules {
		ret := match
		if r.Action != nil {
			ret = c.ret(*r.Action)
		}
		if len(r.Args) == 0 {
			a.emit(bpf.RetConstant{Val: ret})
			return // later rules of this syscall cannot be reached
		}
		next := a.newLabel()
		for i, cond := range r.Args {
			c.cond(cond, next, i == 0 && held == cond.Arg && cond.Dword)
		}
		a.emit(bpf.RetConstant{Val: ret})
		a.mark(next)
		held = -1
		if len(r.Args) == 1 && r.Args[0].Dword && r.Args[0].Op != OpMaskedEq {
			held = r.Args[0].Arg
		}
	}
	a.emit(bpf.RetConstant{Val: def})
}

// cond emits a check of one condition that goes on to the next
// instruction when it holds and jumps to fail when not. held says A
// already holds the argument's low word.
func (c *compiler) cond(k Cond, fail label, held bool) {
	a := &c.asm
	val := k.Val
	if k.PID {
		val = c.pid
	}
	lo, hi := uint32(val), uint32(val>>32)
	mlo, mhi := uint32(k.Mask), uint32(k.Mask>>32)
	off := uint32(offArgs + argSize*k.Arg)
	ok := a.newLabel()
	if k.Dword {
		if !held {
			a.load(off)
		}
		switch k.Op {
		case OpEq:
			a.jumpIf(bpf.JumpEqual, lo, ok, fail)
		case OpNe:
			a.jumpIf(bpf.JumpEqual, lo, fail, ok)
		case OpGt:
			a.jumpIf(bpf.JumpGreaterThan, lo, ok, fail)
		case OpGe:
			a.jumpIf(bpf.JumpGreaterOrEqual, lo, ok, fail)
		case OpLt:
			a.jumpIf(bpf.JumpGreaterOrEqual, lo, fail, ok)
		case OpLe:
			a.jumpIf(bpf.JumpGreaterThan, lo, fail, ok)
		case OpMaskedEq:
			a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mlo})
			a.jumpIf(bpf.JumpEqual, lo, ok, fail)
		}
		a.mark(ok)
		return
	}
	// A 64-bit comparison: the high words decide unless they are equal.
	a.load(off + wordSize)
	switch k.Op {
	case OpEq:
		a.jumpIf(bpf.JumpEqual, hi, fall, fail)
		a.load(off)
		a.jumpIf(bpf.JumpEqual, lo, ok, fail)
	case OpNe:
		a.jumpIf(bpf.JumpEqual, hi, fall, ok)
		a.load(off)
		a.jumpIf(bpf.JumpEqual, lo, fail, ok)
	case OpGt, OpGe:
		a.jumpIf(bpf.JumpGreaterThan, hi, ok, fall)
		a.jumpIf(bpf.JumpEqual, hi, fall, fail)
		a.load(off)
		cmp := bpf.JumpGreaterThan
		if k.Op == OpGe {
			cmp = bpf.JumpGreaterOrEqual
		}
		a.jumpIf(cmp, lo, ok, fail)
	case OpLt, OpLe:
		a.jumpIf(bpf.JumpGreaterThan, hi, fail, fall)
		a.jumpIf(bpf.JumpEqual, hi, fall, ok)
		a.load(off)
		cmp := bpf.JumpGreaterOrEqual // lo >= val fails lt
		if k.Op == OpLe {
			cmp = bpf.JumpGreaterThan
		}
		a.jumpIf(cmp, lo, fail, ok)
	case OpMaskedEq:
		a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mhi})
		a.jumpIf(bpf.JumpEqual, hi, fall, fail)
		a.load(off)
		a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mlo})
		a.jumpIf(bpf.JumpEqual, lo, ok, fail)
	}
	a.mark(ok)
}

// assembler lays out instructions whose jumps name labels. A conditional
// jump encodes 8-bit offsets; one whose target is farther becomes a
// conditional jump over one or two unconditional ones (32-bit offsets),
// found by relaxation.
type assembler struct {
	items  []item
	labels []int // label → index in items of its mark, -1 until marked
}

// label names a place in the program; fall is the instruction right after
// the jump that names it.
type label int

const fall label = -1

type itemKind int

const (
	kindInsn  itemKind = iota // a plain instruction
	kindMark                  // a label's place
	kindCJump                 // if A cond val goto t else goto f
	kindJump                  // goto t
)

type item struct {
	kind itemKind
	insn bpf.RawInstruction
	cond bpf.JumpTest
	val  uint32
	t, f label
	long bool // a conditional jump too far for 8-bit offsets
	pos  int  // index of the item's first instruction
}

func (a *assembler) newLabel() label {
	a.labels = append(a.labels, -1)
	return label(len(a.labels) - 1)
}

func (a *assembler) mark(l label) {
	a.labels[l] = len(a.items)
	a.items = append(a.items, item{kind: kindMark})
}

// emit adds a plain instruction (a load, an ALU operation, a return:
// none of which fails to assemble).
func (a *assembler) emit(i bpf.Instruction) {
	raw, err := i.Assemble()
	if err != nil {
		panic("seccomp compiler: " + err.Error())
	}
	a.items = append(a.items, item{kind: kindInsn, insn: raw})
}

func (a *assembler) load(off uint32) {
	a.emit(bpf.LoadAbsolute{Off: off, Size: wordSize})
}

// jumpIf goes to t if A cond val, else to f.
func (a *assembler) jumpIf(cond bpf.JumpTest, val uint32, t, f label) {
	a.items = append(a.items, item{kind: kindCJump, cond: cond, val: val, t: t, f: f})
}

func (a *assembler) jump(t label) { a.items = append(a.items, item{kind: kindJump, t: t}) }

// size is the number of instructions an item lays out as.
func (it *item) size() int {
	switch {
	case it.kind == kindMark:
		return 0
	case it.kind == kindCJump && it.long && (it.t == fall || it.f == fall):
		return 2
	case it.kind == kindCJump && it.long:
		return 3
	}
	return 1
}

// assemble resolves the labels and returns the program.
func (a *assembler) assemble() (Program, error) {
	for l, at := range a.labels {
		if at < 0 {
			return nil, fmt.Errorf("seccomp compiler: label %d never placed", l)
		}
	}
	for changed := true; changed; {
		changed = false
		a.layout()
		for i := range a.items {
			it := &a.items[i]
			if it.kind != kindCJump || it.long {
				continue
			}
			if a.target(it, it.t)-it.pos-1 > maxShortJump || a.target(it, it.f)-it.pos-1 > maxShortJump {
				it.long, changed = true, true
			}
		}
	}
	a.layout()
	last := &a.items[len(a.items)-1]
	out := make(Program, 0, last.pos+last.size())
	raw := func(i bpf.Instruction) bpf.RawInstruction {
		r, err := i.Assemble()
		if err != nil {
			panic("seccomp compiler: " + err.Error()) // only known-good jumps are assembled here
		}
		return r
	}
	ja := func(from int, to int) bpf.RawInstruction { return raw(bpf.Jump{Skip: uint32(to - from - 1)}) }
	for i := range a.items {
		it := &a.items[i]
		t, f := a.target(it, it.t), a.target(it, it.f)
		switch {
		case it.kind == kindInsn:
			out = append(out, it.insn)
		case it.kind == kindJump:
			out = append(out, ja(it.pos, t))
		case it.kind == kindCJump && !it.long:
			out = append(out, raw(bpf.JumpIf{Cond: it.cond, Val: it.val,
				SkipTrue: uint8(t - it.pos - 1), SkipFalse: uint8(f - it.pos - 1)}))
		case it.kind == kindCJump && it.t == fall:
			out = append(out, raw(bpf.JumpIf{Cond: it.cond, Val: it.val, SkipTrue: 1}), ja(it.pos+1, f))
		case it.kind == kindCJump && it.f == fall:
			out = append(out, raw(bpf.JumpIf{Cond: it.cond, Val: it.val, SkipFalse: 1}), ja(it.pos+1, t))
		case it.kind == kindCJump:
			out = append(out, raw(bpf.JumpIf{Cond: it.cond, Val: it.val, SkipFalse: 1}), ja(it.pos+1, t), ja(it.pos+2, f))
		}
	}
	return out, nil
}

// layout assigns each item its instruction index.
func (a *assembler) layout() {
	pos := 0
	for i := range a.items {
		a.items[i].pos = pos
		pos += a.items[i].size()
	}
}

// target is the instruction index l stands for, seen from it: fall is the
// instruction after it. Every jump goes forward.
func (a *assembler) target(it *item, l label) int {
	if l == fall {
		return it.pos + it.size()
	}
	return a.items[a.labels[l]].pos
}

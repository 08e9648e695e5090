package x86

import (
	"encoding/binary"
	"testing"

	"github.com/embervm/ember/kvm"
)

func TestLinuxBootRegs(t *testing.T) {
	r := LinuxBootRegs(0x1000200)
	want := kvm.Regs{RIP: 0x1000200, RSI: 0x7000, RSP: 0x8ff0, RBP: 0x8ff0, RFLAGS: 2}
	if r != want {
		t.Errorf("LinuxBootRegs = %+v, want %+v", r, want)
	}
}

func TestPVHBootRegs(t *testing.T) {
	r := PVHBootRegs(0x1000000)
	want := kvm.Regs{RIP: 0x1000000, RBX: 0x6000, RFLAGS: 2}
	if r != want {
		t.Errorf("PVHBootRegs = %+v, want %+v", r, want)
	}
}

func TestBootFPU(t *testing.T) {
	f := BootFPU()
	if f.FCW != 0x37f || f.MXCSR != 0x1f80 {
		t.Errorf("FCW %#x MXCSR %#x", f.FCW, f.MXCSR)
	}
	f.FCW, f.MXCSR = 0, 0
	if f != (kvm.FPU{}) {
		t.Errorf("other FPU fields set: %+v", f)
	}
}

func TestSetLAPICLINT(t *testing.T) {
	var s kvm.LAPICState
	le := binary.LittleEndian
	// Reset state: both LINTs masked (bit 16), plus stray bits in the
	// delivery mode and elsewhere that must be replaced or kept.
	le.PutUint32(s.Regs[0x350:], 0x00010000|0x200|0x30)
	le.PutUint32(s.Regs[0x360:], 0x00018700|0x40)
	le.PutUint32(s.Regs[0x340:], 0xdeadbeef)
	SetLAPICLINT(&s)
	if got, want := le.Uint32(s.Regs[0x350:]), uint32(0x00010000|0x700|0x30); got != want {
		t.Errorf("LINT0 = %#x, want %#x (ExtINT)", got, want)
	}
	if got, want := le.Uint32(s.Regs[0x360:]), uint32(0x00018400|0x40); got != want {
		t.Errorf("LINT1 = %#x, want %#x (NMI)", got, want)
	}
	if le.Uint32(s.Regs[0x340:]) != 0xdeadbeef {
		t.Error("neighbouring register changed")
	}
}

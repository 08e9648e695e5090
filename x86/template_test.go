package x86

import (
	"testing"

	"github.com/embervm/ember/kvm"
)

func TestApplyCPUIDTemplate(t *testing.T) {
	in := []kvm.CPUIDEntry{
		{Function: 1, ECX: 0xffff0000, EDX: 0x1},
		{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 0xff},
		{Function: 7, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 0xff},
	}
	out := ApplyCPUIDTemplate(in, []CPUIDBits{
		{Leaf: 1, Register: ECX, Mask: 0x80000001, Value: 0x00000001}, // clear bit 31, set bit 0
		{Leaf: 7, Subleaf: 1, Flags: kvm.CPUIDFlagSignificantIndex, Register: EBX, Mask: 0xf, Value: 0},
		{Leaf: 0x40000010, Register: EAX, Mask: ^uint32(0), Value: 42},
	})
	if out[0].ECX != 0x7fff0001 || out[0].EDX != 1 {
		t.Errorf("leaf 1: ECX %#x EDX %#x", out[0].ECX, out[0].EDX)
	}
	if out[1].EBX != 0xff || out[2].EBX != 0xf0 {
		t.Errorf("leaf 7: subleaf 0 EBX %#x (want untouched), subleaf 1 EBX %#x", out[1].EBX, out[2].EBX)
	}
	if len(out) != 4 || out[3].Function != 0x40000010 || out[3].EAX != 42 {
		t.Errorf("missing leaf not added: %+v", out[len(out)-1])
	}
}

func TestApplyMSRTemplate(t *testing.T) {
	out := ApplyMSRTemplate(BootMSRs(), []MSRBits{
		{Index: MSRIA32MiscEnable, Mask: MiscEnableFastString, Value: 0},
		{Index: 0x123, Mask: 0xff00, Value: 0xabcd},
	})
	for _, e := range out {
		if e.Index == MSRIA32MiscEnable && e.Data != 0 {
			t.Errorf("MISC_ENABLE = %#x, want fast strings cleared", e.Data)
		}
	}
	if last := out[len(out)-1]; last.Index != 0x123 || last.Data != 0xab00 {
		t.Errorf("added MSR %+v", last)
	}
}

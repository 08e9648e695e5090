package x86

import "testing"

func TestBootMSRs(t *testing.T) {
	want := map[uint32]uint64{
		0x174:      0,     // IA32_SYSENTER_CS
		0x175:      0,     // IA32_SYSENTER_ESP
		0x176:      0,     // IA32_SYSENTER_EIP
		0xc0000081: 0,     // STAR
		0xc0000082: 0,     // LSTAR
		0xc0000083: 0,     // CSTAR
		0xc0000084: 0,     // SYSCALL_MASK
		0xc0000102: 0,     // KERNEL_GS_BASE
		0x10:       0,     // IA32_TSC
		0x1a0:      1,     // IA32_MISC_ENABLE: FAST_STRING
		0x2ff:      0x806, // MTRRdefType: E | WB
	}
	got := BootMSRs()
	if len(got) != len(want) {
		t.Errorf("%d MSRs, want %d", len(got), len(want))
	}
	seen := map[uint32]bool{}
	for _, m := range got {
		w, ok := want[m.Index]
		if !ok || seen[m.Index] {
			t.Errorf("unexpected or duplicate MSR %#x", m.Index)
			continue
		}
		seen[m.Index] = true
		if m.Data != w {
			t.Errorf("MSR %#x = %#x, want %#x", m.Index, m.Data, w)
		}
	}
}

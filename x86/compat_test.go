package x86

import (
	"strings"
	"testing"

	"github.com/embervm/ember/kvm"
)

func TestCheckCPUIDFeatures(t *testing.T) {
	const avx512f = 1 << 16 // leaf 7 EBX
	host := []kvm.CPUIDEntry{
		{Function: 1, ECX: 1 << 0},
		{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 1 << 3},
	}
	// What a PVM host's vCPU holds beyond its supported list.
	held := []kvm.CPUIDEntry{{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 1 << 5}}
	for _, tc := range []struct {
		name  string
		saved []kvm.CPUIDEntry
		want  string // "" = accepted
	}{
		{"same", host, ""},
		{"bits Ember and KVM set", []kvm.CPUIDEntry{{Function: 1, ECX: 1 | leaf1ECXHypervisor | leaf1ECXTSCDeadline | leaf1ECXOSXSave, EDX: leaf1EDXHTT}}, ""},
		{"bit only the held table has", []kvm.CPUIDEntry{{Function: 7, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 1<<3 | 1<<5}}, ""},
		{"newer CPU", []kvm.CPUIDEntry{{Function: 7, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 1<<3 | avx512f}}, "leaf 0x7 subleaf 0 EBX has bits 0x10000"},
		{"leaf the host lacks", []kvm.CPUIDEntry{{Function: 0x80000001, EDX: 1 << 29}}, "leaf 0x80000001 subleaf 0 EDX has bits 0x20000000"},
		{"subleaf 1", []kvm.CPUIDEntry{{Function: 7, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 1 << 4}}, "leaf 0x7 subleaf 1 EAX"},
		{"informational leaf not checked", []kvm.CPUIDEntry{{Function: 0x80000002, EAX: 0x6c65746e}}, ""},
	} {
		err := CheckCPUIDFeatures(tc.saved, host, held)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

package x86

import "github.com/embervm/ember/kvm"

// CPUIDRegister names a register of a CPUID entry.
type CPUIDRegister int

// CPUID registers, in the order custom templates name them.
const (
	EAX CPUIDRegister = iota
	EBX
	ECX
	EDX
)

// CPUIDBits sets Mask's bits of one register of leaf Leaf (subleaf
// Subleaf when Flags has kvm.CPUIDFlagSignificantIndex) to Value's: one
// modifier of a custom CPU template (Firecracker's cpuid_modifiers).
type CPUIDBits struct {
	Leaf, Subleaf, Flags uint32
	Register             CPUIDRegister
	Mask, Value          uint32
}

// ApplyCPUIDTemplate applies mods to entries, in order, after
// NormalizeCPUID. A leaf missing from entries is added (zero but for the
// modified bits), as a template may expose a leaf KVM did not list.
func ApplyCPUIDTemplate(entries []kvm.CPUIDEntry, mods []CPUIDBits) []kvm.CPUIDEntry {
	for _, m := range mods {
		i := findCPUID(entries, m.Leaf, m.Subleaf)
		if i < 0 {
			entries = append(entries, kvm.CPUIDEntry{Function: m.Leaf, Index: m.Subleaf, Flags: m.Flags})
			i = len(entries) - 1
		}
		e := &entries[i]
		r := [...]*uint32{&e.EAX, &e.EBX, &e.ECX, &e.EDX}[m.Register]
		*r = *r&^m.Mask | m.Value&m.Mask
	}
	return entries
}

// findCPUID returns the index of the entry for leaf and subleaf (the
// subleaf matters only for entries flagged as indexed), or -1.
func findCPUID(entries []kvm.CPUIDEntry, leaf, subleaf uint32) int {
	for i, e := range entries {
		if e.Function == leaf && (e.Flags&kvm.CPUIDFlagSignificantIndex == 0 || e.Index == subleaf) {
			return i
		}
	}
	return -1
}

// MSRBits sets Mask's bits of MSR Index to Value's (Firecracker's
// msr_modifiers).
type MSRBits struct {
	Index       uint32
	Mask, Value uint64
}

// ApplyMSRTemplate applies mods to the boot MSRs; an MSR not in the list
// is added with the modified bits set and the others zero.
func ApplyMSRTemplate(msrs []kvm.MSREntry, mods []MSRBits) []kvm.MSREntry {
	for _, m := range mods {
		i := -1
		for j, e := range msrs {
			if e.Index == m.Index {
				i = j
				break
			}
		}
		if i < 0 {
			msrs = append(msrs, kvm.MSREntry{Index: m.Index})
			i = len(msrs) - 1
		}
		msrs[i].Data = msrs[i].Data&^m.Mask | m.Value&m.Mask
	}
	return msrs
}

package x86

import (
	"fmt"

	"github.com/embervm/ember/kvm"
)

// Feature-flag registers a restored guest may already rely on: every bit
// set in a snapshot's CPUID must be offered by this host's
// KVM_GET_SUPPORTED_CPUID, or the guest would execute instructions or use
// state (XSAVE components) the host cannot give it. References: Intel SDM
// Vol. 2A "CPUID—CPU Identification"; AMD APM Vol. 3 Appendix E; the
// kernel's Documentation/virt/kvm/x86/cpuid.rst for leaf 0x40000001.
//
// The ignore masks are bits that are not host features: those Ember sets
// itself (NormalizeCPUID), and those KVM recomputes at run time from the
// guest's own state (kvm_update_cpuid_runtime), which KVM_GET_CPUID2 then
// reports although KVM_GET_SUPPORTED_CPUID does not list them.
var featureRegisters = []struct {
	leaf, subleaf uint32
	reg           CPUIDRegister
	ignore        uint32
}{
	{cpuidFeatures, 0, ECX, leaf1ECXTSCDeadline | leaf1ECXHypervisor | leaf1ECXOSXSave | leaf1ECXMonitor},
	{cpuidFeatures, 0, EDX, leaf1EDXHTT | leaf1EDXAPIC},
	{cpuidExtFeatures, 0, EBX, 0},
	{cpuidExtFeatures, 0, ECX, leaf7ECXOSPKE},
	{cpuidExtFeatures, 0, EDX, 0},
	{cpuidExtFeatures, 1, EAX, 0},
	{cpuidXSave, 0, EAX, 0}, // XCR0 components, low half
	{cpuidXSave, 0, EDX, 0}, // XCR0 components, high half
	{cpuidXSave, 1, EAX, 0}, // XSAVEOPT, XSAVEC, XGETBV1, XSAVES
	{cpuidExtProcFeatures, 0, ECX, 0},
	{cpuidExtProcFeatures, 0, EDX, 0},
	{cpuidAMDSizes, 0, EBX, 0}, // AMD extended features (IBPB, ...)
	{cpuidKVMFeatures, 0, EAX, 0},
}

// Bits KVM recomputes at run time (kvm_update_cpuid_runtime) or that
// NormalizeCPUID sets, ignored by CheckCPUIDFeatures.
const (
	leaf1ECXMonitor = 1 << 3  // MONITOR/MWAIT: follows IA32_MISC_ENABLE
	leaf1ECXOSXSave = 1 << 27 // OSXSAVE: mirrors the guest's CR4.OSXSAVE
	leaf1EDXAPIC    = 1 << 9  // APIC: follows IA32_APIC_BASE's enable bit
	leaf7ECXOSPKE   = 1 << 4  // OSPKE: mirrors the guest's CR4.PKE
)

// Leaves checked by CheckCPUIDFeatures besides those NormalizeCPUID edits.
const (
	cpuidXSave           = 0xd        // processor extended state enumeration
	cpuidExtProcFeatures = 0x80000001 // extended processor features
	cpuidKVMFeatures     = 0x40000001 // KVM_CPUID_FEATURES
)

// CheckCPUIDFeatures reports the first feature bit that a vCPU's CPUID
// (as a snapshot saved it) sets and that none of the host's tables offers
// (KVM_GET_SUPPORTED_CPUID, and what a vCPU holds after being given it).
// A snapshot taken on a newer CPU model cannot run here: its guest has
// already decided to use those features. The error names the leaf,
// subleaf, register and bits.
func CheckCPUIDFeatures(saved []kvm.CPUIDEntry, offered ...[]kvm.CPUIDEntry) error {
	for _, f := range featureRegisters {
		i := findCPUID(saved, f.leaf, f.subleaf)
		if i < 0 {
			continue
		}
		have := uint32(0)
		for _, table := range offered {
			if j := findCPUID(table, f.leaf, f.subleaf); j >= 0 {
				have |= f.reg.of(&table[j])
			}
		}
		if missing := f.reg.of(&saved[i]) &^ have &^ f.ignore; missing != 0 {
			return fmt.Errorf("CPUID leaf %#x subleaf %d %s has bits %#x that this host's KVM does not offer (the snapshot was taken on a CPU with features this one lacks)",
				f.leaf, f.subleaf, f.reg, missing)
		}
	}
	return nil
}

// of returns register r of e.
func (r CPUIDRegister) of(e *kvm.CPUIDEntry) uint32 {
	return *[...]*uint32{&e.EAX, &e.EBX, &e.ECX, &e.EDX}[r]
}

// String returns the register's name, e.g. "ECX".
func (r CPUIDRegister) String() string {
	if r < EAX || r > EDX {
		return fmt.Sprintf("CPUIDRegister(%d)", int(r))
	}
	return [...]string{"EAX", "EBX", "ECX", "EDX"}[r]
}

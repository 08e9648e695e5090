package x86

import (
	"math/bits"

	"github.com/embervm/ember/kvm"
)

// CPUID leaves edited by NormalizeCPUID. References: Intel SDM Vol. 2A,
// "CPUID—CPU Identification" (the "Information Returned by CPUID
// Instruction" table); AMD APM Vol. 3, Appendix E "Obtaining Processor
// Information Via the CPUID Instruction".
const (
	cpuidVendor        = 0x0        // vendor string in EBX, EDX, ECX
	cpuidFeatures      = 0x1        // version and feature information
	cpuidCacheParams   = 0x4        // Intel deterministic cache parameters
	cpuidThermalPower  = 0x6        // thermal and power management
	cpuidExtFeatures   = 0x7        // structured extended feature flags
	cpuidPerfMon       = 0xa        // architectural performance monitoring
	cpuidTopology      = 0xb        // extended topology enumeration
	cpuidTopologyV2    = 0x1f       // V2 extended topology enumeration
	cpuidAMDSizes      = 0x80000008 // AMD: address sizes and core count
	cpuidAMDExtAPICID  = 0x8000001e // AMD: extended APIC ID, core and node IDs
	vendorIntel        = "GenuineIntel"
	vendorAMD          = "AuthenticAMD"
	vendorHygon        = "HygonGenuine" // AMD-compatible (APM leaves apply)
	clflushLineSize    = 64             // bytes; leaf 1 EBX[15:8] counts 8-byte units
	clflushUnit        = 8
	leaf4CacheTypeMask = 0x1f // leaf 4 EAX[4:0] cache type, 0 = no more caches
	leaf4LevelShift    = 5    // leaf 4 EAX[7:5] cache level
	leaf4LevelMask     = 0x7
)

// Bit fields edited by NormalizeCPUID.
const (
	// Leaf 1 EBX (SDM): [15:8] CLFLUSH line size in 8-byte units, [23:16]
	// maximum number of addressable logical processor IDs in the package
	// (valid when EDX.HTT is set), [31:24] initial APIC ID.
	leaf1EBXCLFlushShift = 8
	leaf1EBXLogicalShift = 16
	leaf1EBXAPICIDShift  = 24
	leaf1EBXBrandMask    = 0xff // [7:0] brand index, kept
	// leaf1ECXTSCDeadline is ECX bit 24, TSC-Deadline: the LAPIC timer
	// supports one-shot operation with a TSC deadline (KVM emulates it, but
	// does not report it in KVM_GET_SUPPORTED_CPUID).
	leaf1ECXTSCDeadline = 1 << 24
	// leaf1ECXHypervisor is ECX bit 31, reserved for hypervisor use: set to
	// tell the guest it runs in a VM.
	leaf1ECXHypervisor = 1 << 31
	// leaf1EDXHTT is EDX bit 28, HTT: EBX[23:16] is valid (more than one
	// logical processor per package).
	leaf1EDXHTT = 1 << 28

	// Leaf 4 EAX (SDM): [25:14] max addressable logical processor IDs
	// sharing this cache, minus 1; [31:26] max addressable core IDs in the
	// package, minus 1.
	leaf4SharingShift = 14
	leaf4SharingMask  = 0xfff
	leaf4CoresShift   = 26
	leaf4CoresMask    = 0x3f
	// leaf4SharedLevel is the first cache level shared by all vCPUs: L1 and
	// L2 are per core, with one thread per core per vCPU.
	leaf4SharedLevel = 3

	// leaf6EAXTurbo is leaf 6 EAX bit 1, Intel Turbo Boost Technology
	// available: the guest cannot control it.
	leaf6EAXTurbo = 1 << 1
	// leaf6ECXEPB is leaf 6 ECX bit 3, performance-energy bias preference
	// (IA32_ENERGY_PERF_BIAS): KVM does not emulate the MSR.
	leaf6ECXEPB = 1 << 3

	// leaf7ECXWaitPkg is leaf 7 subleaf 0 ECX bit 5, WAITPKG (TPAUSE,
	// UMONITOR, UMWAIT): hidden so guests do not idle in UMWAIT against the
	// host's IA32_UMWAIT_CONTROL.
	leaf7ECXWaitPkg = 1 << 5

	// Leaf 0xb/0x1f (SDM "Extended Topology Enumeration Leaf"): EAX[4:0]
	// bits to shift the x2APIC ID right to get the next level's ID; EBX[15:0]
	// logical processors at this level; ECX[7:0] the subleaf, ECX[15:8] the
	// level type; EDX the x2APIC ID of the current logical processor.
	topoLevelTypeShift = 8
	topoLevelInvalid   = 0
	topoLevelSMT       = 1
	topoLevelCore      = 2
	topoSubleafSMT     = 0
	topoSubleafCore    = 1
	topoSubleafEnd     = 2 // first invalid subleaf, which ends enumeration

	// Leaf 0x80000008 ECX (APM): [7:0] NC, number of physical cores minus 1;
	// [15:12] ApicIdSize, number of low APIC ID bits that identify the core.
	amdNCMask          = 0xff
	amdAPICIDSizeShift = 12
	amdAPICIDSizeMask  = 0xf

	// Leaf 0x8000001e (APM): EAX extended APIC ID; EBX[7:0] compute unit (core)
	// ID, EBX[15:8] threads per compute unit minus 1; ECX[7:0] node ID,
	// ECX[10:8] nodes per processor minus 1.
	amdCoreIDMask   = 0xff
	amdThreadsShift = 8 // 0x8000001e EBX[15:8]: threads per compute unit - 1
)

// NormalizeCPUID returns the CPUID table for vCPU vcpuID of nvcpus, derived
// from KVM_GET_SUPPORTED_CPUID's list. The input is not modified. The caller
// ensures 0 <= vcpuID < nvcpus <= MaxVCPUs. The topology presented is one
// package of nvcpus cores with one thread each, APIC ID = vCPU index; with
// smt (and an even nvcpus) it is nvcpus/2 cores of two threads each
// (Firecracker's smt), vCPUs 2k and 2k+1 being siblings.
//
// Changes (SDM = Intel SDM Vol. 2A CPUID; APM = AMD APM Vol. 3 Appendix E):
//   - leaf 1: EBX initial APIC ID, logical processor count (next power of
//     two of nvcpus) and 64-byte CLFLUSH line; ECX TSC-Deadline and
//     HYPERVISOR set; EDX HTT set only when nvcpus > 1.
//   - leaf 4 (Intel): cores per package = nvcpus; L1/L2 private to a vCPU,
//     L3 and beyond shared by all.
//   - leaf 6: Turbo Boost (EAX bit 1) and EPB (ECX bit 3) cleared.
//   - leaf 7 subleaf 0: WAITPKG (ECX bit 5) cleared.
//   - leaf 0xa: zeroed, so the guest sees no architectural PMU.
//   - leaves 0xb and 0x1f, where reported: rebuilt as an SMT level of one
//     thread, a core level of nvcpus, and an invalid terminating level,
//     each with EDX = x2APIC ID = vcpuID.
//   - leaf 0x80000008 (AMD): ECX NC = nvcpus-1 and ApicIdSize.
//   - leaf 0x8000001e (AMD): extended APIC ID and core ID = vcpuID, one
//     thread per core, one node.
//
// KVM's paravirt leaves (0x40000000 signature "KVMKVMKVM\0\0\0",
// 0x40000001 features) and everything else pass through as reported.
func NormalizeCPUID(supported []kvm.CPUIDEntry, vcpuID, nvcpus int, smt bool) []kvm.CPUIDEntry {
	id := uint32(vcpuID)
	n := uint32(nvcpus)
	threads := uint32(1)
	if smt && n > 1 && n%2 == 0 {
		threads = 2
	}
	vendor := cpuVendor(supported)
	amd := vendor == vendorAMD || vendor == vendorHygon
	out := make([]kvm.CPUIDEntry, 0, len(supported)+topoSubleafEnd+1)
	rebuilt := map[uint32]bool{}

	for _, e := range supported {
		switch e.Function {
		case cpuidFeatures:
			e.EBX = e.EBX&leaf1EBXBrandMask |
				clflushLineSize/clflushUnit<<leaf1EBXCLFlushShift |
				min(nextPow2(n), 0xff)<<leaf1EBXLogicalShift |
				id<<leaf1EBXAPICIDShift
			e.ECX |= leaf1ECXTSCDeadline | leaf1ECXHypervisor
			if n > 1 {
				e.EDX |= leaf1EDXHTT
			} else {
				e.EDX &^= leaf1EDXHTT
			}
		case cpuidCacheParams:
			if vendor != vendorIntel || e.EAX&leaf4CacheTypeMask == 0 {
				break
			}
			sharing := threads - 1 // L1 and L2 are private to a core
			if (e.EAX>>leaf4LevelShift)&leaf4LevelMask >= leaf4SharedLevel {
				sharing = min(n-1, leaf4SharingMask)
			}
			e.EAX = setField(e.EAX, leaf4SharingShift, leaf4SharingMask, sharing)
			e.EAX = setField(e.EAX, leaf4CoresShift, leaf4CoresMask, min(n/threads-1, leaf4CoresMask))
		case cpuidThermalPower:
			e.EAX &^= leaf6EAXTurbo
			e.ECX &^= leaf6ECXEPB
		case cpuidExtFeatures:
			if e.Index == 0 {
				e.ECX &^= leaf7ECXWaitPkg
			}
		case cpuidPerfMon:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case cpuidTopology, cpuidTopologyV2:
			if !rebuilt[e.Function] {
				rebuilt[e.Function] = true
				out = append(out, topologyLeaf(e.Function, id, n, threads)...)
			}
			continue
		case cpuidAMDSizes:
			if !amd {
				break
			}
			e.ECX = setField(e.ECX, 0, amdNCMask, n-1)
			e.ECX = setField(e.ECX, amdAPICIDSizeShift, amdAPICIDSizeMask, uint32(bits.Len32(n-1)))
		case cpuidAMDExtAPICID:
			if !amd {
				break
			}
			e.EAX = id
			e.EBX = (id/threads)&amdCoreIDMask | (threads-1)<<amdThreadsShift
			e.ECX = 0 // node 0 of one node per processor
			e.EDX = 0
		}
		out = append(out, e)
	}
	return out
}

// topologyLeaf builds leaf 0xb or 0x1f (SDM "Extended Topology Enumeration
// Leaf" / "V2 Extended Topology Enumeration Leaf"): threads threads per
// core, nvcpus logical processors per package.
func topologyLeaf(fn, x2apicID, nvcpus, threads uint32) []kvm.CPUIDEntry {
	level := func(sub, shift, count, typ uint32) kvm.CPUIDEntry {
		return kvm.CPUIDEntry{
			Function: fn,
			Index:    sub,
			Flags:    kvm.CPUIDFlagSignificantIndex,
			EAX:      shift,
			EBX:      count,
			ECX:      sub | typ<<topoLevelTypeShift,
			EDX:      x2apicID,
		}
	}
	return []kvm.CPUIDEntry{
		level(topoSubleafSMT, uint32(bits.Len32(threads-1)), threads, topoLevelSMT),
		level(topoSubleafCore, uint32(bits.Len32(nvcpus-1)), nvcpus, topoLevelCore),
		level(topoSubleafEnd, 0, 0, topoLevelInvalid),
	}
}

// cpuVendor returns the 12-character vendor string of leaf 0 (EBX, EDX,
// ECX), or "" if the list has no leaf 0.
func cpuVendor(entries []kvm.CPUIDEntry) string {
	for _, e := range entries {
		if e.Function == cpuidVendor {
			var b [12]byte
			for i, r := range [3]uint32{e.EBX, e.EDX, e.ECX} {
				b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(r), byte(r>>8), byte(r>>16), byte(r>>24)
			}
			return string(b[:])
		}
	}
	return ""
}

// setField replaces the field of v at shift, mask wide, with val.
func setField(v uint32, shift uint, mask, val uint32) uint32 {
	return v&^(mask<<shift) | (val&mask)<<shift
}

// nextPow2 is the smallest power of two >= v (v >= 1).
func nextPow2(v uint32) uint32 {
	if v <= 1 {
		return 1
	}
	return 1 << bits.Len32(v-1)
}

package kvm

import "slices"

// MSR indices used by snapshots (arch/x86/include/asm/msr-index.h and
// arch/x86/include/uapi/asm/kvm_para.h).
const (
	MSRIA32TSC          = 0x00000010 // MSR_IA32_TSC
	MSRIA32APICBase     = 0x0000001b // MSR_IA32_APICBASE
	MSRIA32TSCAdjust    = 0x0000003b // MSR_IA32_TSC_ADJUST
	MSRIA32SysenterCS   = 0x00000174 // MSR_IA32_SYSENTER_CS
	MSRIA32SysenterESP  = 0x00000175 // MSR_IA32_SYSENTER_ESP
	MSRIA32SysenterEIP  = 0x00000176 // MSR_IA32_SYSENTER_EIP
	MSRIA32MCGCtl       = 0x0000017b // MSR_IA32_MCG_CTL
	MSRIA32MiscEnable   = 0x000001a0 // MSR_IA32_MISC_ENABLE
	MSRIA32XFD          = 0x000001c4 // MSR_IA32_XFD (AMX first-use trap)
	MSRIA32XFDErr       = 0x000001c5 // MSR_IA32_XFD_ERR
	MSRIA32CRPAT        = 0x00000277 // MSR_IA32_CR_PAT
	MSRMTRRDefType      = 0x000002ff // MSR_MTRRdefType
	MSRIA32TSCDeadline  = 0x000006e0 // MSR_IA32_TSC_DEADLINE
	MSRIA32BNDCFGS      = 0x00000d90 // MSR_IA32_BNDCFGS (MPX)
	MSRIA32XSS          = 0x00000da0 // MSR_IA32_XSS
	MSRIA32UCET         = 0x000006a0 // MSR_IA32_U_CET
	MSRIA32SCET         = 0x000006a2 // MSR_IA32_S_CET
	MSRIA32PL0SSP       = 0x000006a4 // MSR_IA32_PL0_SSP (PL1-3 follow)
	MSRIA32IntSSPTab    = 0x000006a8 // MSR_IA32_INT_SSP_TAB
	MSREFER             = 0xc0000080 // MSR_EFER
	MSRSTAR             = 0xc0000081 // MSR_STAR
	MSRLSTAR            = 0xc0000082 // MSR_LSTAR
	MSRCSTAR            = 0xc0000083 // MSR_CSTAR
	MSRSyscallMask      = 0xc0000084 // MSR_SYSCALL_MASK
	MSRFSBase           = 0xc0000100 // MSR_FS_BASE
	MSRGSBase           = 0xc0000101 // MSR_GS_BASE
	MSRKernelGSBase     = 0xc0000102 // MSR_KERNEL_GS_BASE
	MSRTSCAux           = 0xc0000103 // MSR_TSC_AUX
	MSRKVMWallClockNew  = 0x4b564d00 // MSR_KVM_WALL_CLOCK_NEW
	MSRKVMSystemTimeNew = 0x4b564d01 // MSR_KVM_SYSTEM_TIME_NEW
	MSRKVMAsyncPFEn     = 0x4b564d02 // MSR_KVM_ASYNC_PF_EN
	MSRKVMStealTime     = 0x4b564d03 // MSR_KVM_STEAL_TIME
	MSRKVMPVEOIEn       = 0x4b564d04 // MSR_KVM_PV_EOI_EN
	MSRKVMPollControl   = 0x4b564d05 // MSR_KVM_POLL_CONTROL
	MSRKVMAsyncPFInt    = 0x4b564d06 // MSR_KVM_ASYNC_PF_INT
	MSRKVMMigrationCtl  = 0x4b564d08 // MSR_KVM_MIGRATION_CONTROL
)

// msrRange is [base, base+n).
type msrRange struct{ base, n uint32 }

func (r msrRange) contains(i uint32) bool { return i >= r.base && i-r.base < r.n }

// serializableMSRs is Firecracker's SERIALIZABLE_MSR_RANGES
// (src/vmm/src/arch/x86_64/msr.rs): the MSRs from KVM_GET_MSR_INDEX_LIST that
// carry guest state worth saving, plus XSS, XFD, XFD_ERR and
// AMD64_VIRT_SPEC_CTRL, which Firecracker leaves out but a guest using
// supervisor XSAVE states, AMX or AMD's virtual SSBD needs back (KVM lists
// them only where it supports them). MSR_IA32_MCG_CTL is excluded
// (msr_should_serialize).
var serializableMSRs = []msrRange{
	{0x0, 1},   // MSR_IA32_P5_MC_ADDR
	{0x1, 1},   // MSR_IA32_P5_MC_TYPE
	{0x10, 1},  // MSR_IA32_TSC
	{0x17, 1},  // MSR_IA32_PLATFORM_ID
	{0x1b, 1},  // MSR_IA32_APICBASE
	{0x2a, 1},  // MSR_IA32_EBL_CR_POWERON
	{0x2c, 1},  // MSR_EBC_FREQUENCY_ID
	{0x34, 1},  // MSR_SMI_COUNT
	{0x3a, 1},  // MSR_IA32_FEAT_CTL
	{0x3b, 1},  // MSR_IA32_TSC_ADJUST
	{0x48, 1},  // MSR_IA32_SPEC_CTRL
	{0x49, 1},  // MSR_IA32_PRED_CMD
	{0x79, 1},  // MSR_IA32_UCODE_WRITE
	{0x8b, 1},  // MSR_IA32_UCODE_REV
	{0x9e, 1},  // MSR_IA32_SMBASE
	{0xcd, 1},  // MSR_FSB_FREQ
	{0xce, 1},  // MSR_PLATFORM_INFO
	{0xe2, 1},  // MSR_PKG_CST_CONFIG_CONTROL
	{0xe7, 1},  // MSR_IA32_MPERF
	{0xe8, 1},  // MSR_IA32_APERF
	{0xfe, 1},  // MSR_MTRRcap
	{0x11e, 1}, // MSR_IA32_BBL_CR_CTL3
	{0x122, 1}, // MSR_IA32_TSX_CTRL
	{0x140, 1}, // MSR_MISC_FEATURES_ENABLES
	{0x174, 1}, // MSR_IA32_SYSENTER_CS
	{0x175, 1}, // MSR_IA32_SYSENTER_ESP
	{0x176, 1}, // MSR_IA32_SYSENTER_EIP
	{0x179, 1}, // MSR_IA32_MCG_CAP
	{0x17a, 1}, // MSR_IA32_MCG_STATUS
	{0x198, 1}, // MSR_IA32_PERF_STATUS
	{0x1a0, 1}, // MSR_IA32_MISC_ENABLE
	{0x1a4, 1}, // MSR_MISC_FEATURE_CONTROL
	{0x1aa, 1}, // MSR_MISC_PWR_MGMT
	{0x1ad, 1}, // MSR_TURBO_RATIO_LIMIT
	{0x1ae, 1}, // MSR_TURBO_RATIO_LIMIT1
	{0x1c4, 2}, // MSR_IA32_XFD, MSR_IA32_XFD_ERR (Ember addition)
	{0x1d9, 1}, // MSR_IA32_DEBUGCTLMSR
	{0x1db, 1}, // MSR_IA32_LASTBRANCHFROMIP
	{0x1dc, 1}, // MSR_IA32_LASTBRANCHTOIP
	{0x1dd, 1}, // MSR_IA32_LASTINTFROMIP
	{0x1de, 1}, // MSR_IA32_LASTINTTOIP
	{0x1fc, 1}, // MSR_IA32_POWER_CTL
	{0x200, 0x100},
	{0x3fc, 3},    // MSR_CORE_C3/C6/C7_RESIDENCY
	{0x400, 0x80}, // MSR_IA32_MC0_CTL.. (32 MCE banks)
	{0x606, 1},    // MSR_RAPL_POWER_UNIT
	{0x60a, 3},    // MSR_PKGC3/6/7_IRTL
	{0x610, 1},    // MSR_PKG_POWER_LIMIT
	{0x611, 1},    // MSR_PKG_ENERGY_STATUS
	{0x613, 1},    // MSR_PKG_PERF_STATUS
	{0x614, 1},    // MSR_PKG_POWER_INFO
	{0x618, 1},    // MSR_DRAM_POWER_LIMIT
	{0x619, 1},    // MSR_DRAM_ENERGY_STATUS
	{0x61b, 1},    // MSR_DRAM_PERF_STATUS
	{0x61c, 1},    // MSR_DRAM_POWER_INFO
	{0x648, 1},    // MSR_CONFIG_TDP_NOMINAL
	{0x649, 1},    // MSR_CONFIG_TDP_LEVEL_1
	{0x64a, 1},    // MSR_CONFIG_TDP_LEVEL_2
	{0x64b, 1},    // MSR_CONFIG_TDP_CONTROL
	{0x64c, 1},    // MSR_TURBO_ACTIVATION_RATIO
	{0x6e0, 1},    // MSR_IA32_TSC_DEADLINE
	{0x800, 0x400},
	{0xda0, 1},      // MSR_IA32_XSS (Ember addition)
	{0x4b564d00, 7}, // MSR_KVM_WALL_CLOCK_NEW .. MSR_KVM_ASYNC_PF_INT
	{0xc0000080, 1}, // MSR_EFER
	{0xc0000081, 1}, // MSR_STAR
	{0xc0000082, 1}, // MSR_LSTAR
	{0xc0000083, 1}, // MSR_CSTAR
	{0xc0000084, 1}, // MSR_SYSCALL_MASK
	{0xc0000100, 1}, // MSR_FS_BASE
	{0xc0000101, 1}, // MSR_GS_BASE
	{0xc0000102, 1}, // MSR_KERNEL_GS_BASE
	{0xc0000103, 1}, // MSR_TSC_AUX
	{0xc0010015, 1}, // MSR_K7_HWCR
	{0xc001011f, 1}, // MSR_AMD64_VIRT_SPEC_CTRL (Ember addition: AMD guests' SSBD)
}

// MSRShouldSave reports whether an MSR from KVM_GET_MSR_INDEX_LIST belongs
// in a snapshot (Firecracker's msr_should_serialize, plus XSS, XFD,
// XFD_ERR and AMD64_VIRT_SPEC_CTRL).
func MSRShouldSave(index uint32) bool {
	if index == MSRIA32MCGCtl {
		return false
	}
	for _, r := range serializableMSRs {
		if r.contains(index) {
			return true
		}
	}
	return false
}

// KVM paravirtual feature bits in CPUID leaf 0x40000001 EAX
// (KVM_FEATURE_* in arch/x86/include/uapi/asm/kvm_para.h).
const (
	kvmFeatureClocksource2    = 3
	kvmFeatureAsyncPF         = 4
	kvmFeatureStealTime       = 5
	kvmFeaturePVEOI           = 6
	kvmFeaturePollControl     = 12
	kvmFeatureAsyncPFInt      = 14
	kvmCPUIDFeatures          = 0x40000001
	cpuidFeatureEDXMCE        = 7  // CPUID.1:EDX.MCE
	cpuidFeatureEDXMTRR       = 12 // CPUID.1:EDX.MTRR
	cpuidFeatureEDXPAT        = 16 // CPUID.1:EDX.PAT
	cpuid7EBXMPX              = 14 // CPUID.(7,0):EBX.MPX
	cpuid7ECXShadowStack      = 7  // CPUID.(7,0):ECX.CET_SS
	cpuid7EDXIndirectBranchTr = 20 // CPUID.(7,0):EDX.CET_IBT
)

// cpuidBit reports whether bit of register reg ('a', 'b', 'c', 'd') of
// leaf function, subleaf index is set.
func cpuidBit(cpuid []CPUIDEntry, function, index uint32, reg byte, bit uint) bool {
	for _, e := range cpuid {
		if e.Function != function || e.Index != index {
			continue
		}
		var v uint32
		switch reg {
		case 'a':
			v = e.EAX
		case 'b':
			v = e.EBX
		case 'c':
			v = e.ECX
		case 'd':
			v = e.EDX
		}
		return v&(1<<bit) != 0
	}
	return false
}

// MSRsByCPUID returns the MSRs a guest with this CPUID has that
// KVM_GET_MSR_INDEX_LIST does not list (Firecracker's
// msrs_to_save_by_cpuid, applied to every vendor since KVM emulates these
// MSRs in common code): MTRRs and PAT, the MCE banks, MPX's BNDCFGS, the CET
// MSRs, and KVM's paravirtual MSRs the guest may enable.
func MSRsByCPUID(cpuid []CPUIDEntry) []uint32 {
	var out []uint32
	if cpuidBit(cpuid, 1, 0, 'd', cpuidFeatureEDXMTRR) {
		for i := uint32(0x200); i < 0x210; i++ { // MTRR_PHYSBASE/MASK 0-7
			out = append(out, i)
		}
		out = append(out, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b,
			0x26c, 0x26d, 0x26e, 0x26f, MSRMTRRDefType)
	}
	if cpuidBit(cpuid, 1, 0, 'd', cpuidFeatureEDXMTRR) || cpuidBit(cpuid, 1, 0, 'd', cpuidFeatureEDXPAT) {
		out = append(out, MSRIA32CRPAT)
	}
	if cpuidBit(cpuid, 1, 0, 'd', cpuidFeatureEDXMCE) {
		for i := uint32(0x400); i < 0x480; i++ {
			out = append(out, i)
		}
	}
	if cpuidBit(cpuid, 7, 0, 'b', cpuid7EBXMPX) {
		out = append(out, MSRIA32BNDCFGS)
	}
	shstk := cpuidBit(cpuid, 7, 0, 'c', cpuid7ECXShadowStack)
	if shstk || cpuidBit(cpuid, 7, 0, 'd', cpuid7EDXIndirectBranchTr) {
		out = append(out, MSRIA32UCET, MSRIA32SCET)
	}
	if shstk {
		out = append(out, MSRIA32PL0SSP, MSRIA32PL0SSP+1, MSRIA32PL0SSP+2, MSRIA32PL0SSP+3, MSRIA32IntSSPTab)
	}
	for _, pv := range []struct {
		bit  uint
		msrs []uint32
	}{
		{kvmFeatureClocksource2, []uint32{MSRKVMWallClockNew, MSRKVMSystemTimeNew}},
		{kvmFeatureAsyncPF, []uint32{MSRKVMAsyncPFEn}},
		{kvmFeatureStealTime, []uint32{MSRKVMStealTime}},
		{kvmFeaturePVEOI, []uint32{MSRKVMPVEOIEn}},
		{kvmFeaturePollControl, []uint32{MSRKVMPollControl}},
		{kvmFeatureAsyncPFInt, []uint32{MSRKVMAsyncPFInt}},
	} {
		if cpuidBit(cpuid, kvmCPUIDFeatures, 0, 'a', pv.bit) {
			out = append(out, pv.msrs...)
		}
	}
	return out
}

// MSRsToSave returns the MSRs a snapshot of a vCPU with this CPUID must
// hold: KVM_GET_MSR_INDEX_LIST filtered by MSRShouldSave (in the kernel's
// order), then MSRsByCPUID, without duplicates. Pass the CPUID set on the
// vCPUs (VCPU.GetCPUID2 or what was given to SetCPUID2).
//
// KVM may still refuse some of these on a particular host or vCPU
// configuration (e.g. PMU or MCE MSRs the CPUID hides); VCPU.ReadableMSRs
// drops those once, at boot, so that SaveState does not fail later.
func (s *System) MSRsToSave(cpuid []CPUIDEntry) ([]uint32, error) {
	list, err := s.MSRIndexList()
	if err != nil {
		return nil, err
	}
	return mergeMSRs(list, MSRsByCPUID(cpuid)), nil
}

// mergeMSRs filters list with MSRShouldSave and appends extra, dropping
// duplicates and keeping first occurrences in order.
func mergeMSRs(list, extra []uint32) []uint32 {
	seen := make(map[uint32]bool, len(list)+len(extra))
	out := make([]uint32, 0, len(list)+len(extra))
	for _, i := range list {
		if MSRShouldSave(i) && !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	for _, i := range extra {
		if !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	return out
}

// ReadableMSRs returns the subset of indices that KVM_GET_MSRS reads on
// this vCPU, in order. KVM_GET_MSRS stops at the first MSR it refuses and
// reports how many it read, so this costs one ioctl per refused MSR plus
// one per chunk.
func (v *VCPU) ReadableMSRs(indices []uint32) ([]uint32, error) {
	out := make([]uint32, 0, len(indices))
	rest := slices.Clone(indices)
	for len(rest) > 0 {
		chunk := rest[:min(len(rest), msrChunk)]
		entries := make([]MSREntry, len(chunk))
		for i, idx := range chunk {
			entries[i].Index = idx
		}
		n, err := v.GetMSRs(entries)
		if err != nil {
			return nil, err
		}
		out = append(out, chunk[:n]...)
		if n < len(chunk) {
			rest = rest[n+1:] // skip the refused MSR
		} else {
			rest = rest[len(chunk):]
		}
	}
	return out, nil
}

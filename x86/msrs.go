package x86

import "github.com/embervm/ember/kvm"

// MSR numbers (Intel SDM Vol. 4, "Model-Specific Registers", table 2-2
// "IA-32 Architectural MSRs"; arch/x86/include/asm/msr-index.h).
const (
	MSRIA32TSC           = 0x10       // IA32_TIME_STAMP_COUNTER
	MSRIA32SysenterCS    = 0x174      // IA32_SYSENTER_CS
	MSRIA32SysenterESP   = 0x175      // IA32_SYSENTER_ESP
	MSRIA32SysenterEIP   = 0x176      // IA32_SYSENTER_EIP
	MSRIA32MiscEnable    = 0x1a0      // IA32_MISC_ENABLE
	MSRIA32MTRRDefType   = 0x2ff      // IA32_MTRR_DEF_TYPE
	MSRSTAR              = 0xc0000081 // IA32_STAR: SYSCALL/SYSRET segments
	MSRLSTAR             = 0xc0000082 // IA32_LSTAR: 64-bit SYSCALL target
	MSRCSTAR             = 0xc0000083 // IA32_CSTAR: compatibility-mode SYSCALL target (AMD)
	MSRSyscallMask       = 0xc0000084 // IA32_FMASK: RFLAGS mask on SYSCALL
	MSRKernelGSBase      = 0xc0000102 // IA32_KERNEL_GS_BASE: SWAPGS value
	MiscEnableFastString = 1 << 0     // IA32_MISC_ENABLE bit 0: fast-strings enable
	MTRRDefTypeEnable    = 1 << 11    // IA32_MTRR_DEF_TYPE bit 11 (E): MTRRs enabled
	MTRRTypeWriteBack    = 6          // memory type WB (SDM Vol. 3A, "Memory Types")
)

// BootMSRs returns the MSR values a vCPU starts with: the SYSENTER and
// SYSCALL MSRs, KERNEL_GS_BASE and the TSC zeroed; fast strings enabled in
// IA32_MISC_ENABLE; MTRRs enabled with write-back as the default type, so
// all memory not covered by a variable MTRR is cacheable.
func BootMSRs() []kvm.MSREntry {
	return []kvm.MSREntry{
		{Index: MSRIA32SysenterCS},
		{Index: MSRIA32SysenterESP},
		{Index: MSRIA32SysenterEIP},
		{Index: MSRSTAR},
		{Index: MSRCSTAR},
		{Index: MSRKernelGSBase},
		{Index: MSRSyscallMask},
		{Index: MSRLSTAR},
		{Index: MSRIA32TSC},
		{Index: MSRIA32MiscEnable, Data: MiscEnableFastString},
		{Index: MSRIA32MTRRDefType, Data: MTRRDefTypeEnable | MTRRTypeWriteBack},
	}
}

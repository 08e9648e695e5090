package kvm

// Request is an ioctl request number this package issues, with its name in
// include/uapi/linux/kvm.h.
type Request struct {
	Name   string
	Number uintptr
}

// Requests lists every ioctl request this package issues on /dev/kvm, a VM
// or a vCPU: what a system call filter must let through for this package to
// work (package seccomp picks from it by name).
func Requests() []Request {
	return []Request{
		{"KVM_GET_API_VERSION", kvmGetAPIVersion},
		{"KVM_CREATE_VM", kvmCreateVM},
		{"KVM_GET_MSR_INDEX_LIST", kvmGetMSRIndexList},
		{"KVM_CHECK_EXTENSION", kvmCheckExtension},
		{"KVM_GET_VCPU_MMAP_SIZE", kvmGetVCPUMmapSize},
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID},
		{"KVM_CREATE_VCPU", kvmCreateVCPU},
		{"KVM_GET_DIRTY_LOG", kvmGetDirtyLog},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion},
		{"KVM_SET_TSS_ADDR", kvmSetTSSAddr},
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr},
		{"KVM_CREATE_IRQCHIP", kvmCreateIRQChip},
		{"KVM_IRQ_LINE", kvmIRQLine},
		{"KVM_GET_IRQCHIP", kvmGetIRQChip},
		{"KVM_SET_IRQCHIP", kvmSetIRQChip},
		{"KVM_IRQFD", kvmIRQFD},
		{"KVM_CREATE_PIT2", kvmCreatePIT2},
		{"KVM_REINJECT_CONTROL", kvmReinjectControl},
		{"KVM_IOEVENTFD", kvmIOEventFD},
		{"KVM_SET_CLOCK", kvmSetClock},
		{"KVM_GET_CLOCK", kvmGetClock},
		{"KVM_GET_PIT2", kvmGetPIT2},
		{"KVM_SET_PIT2", kvmSetPIT2},
		{"KVM_ENABLE_CAP", kvmEnableCap},
		{"KVM_RUN", kvmRun},
		{"KVM_GET_REGS", kvmGetRegs},
		{"KVM_SET_REGS", kvmSetRegs},
		{"KVM_GET_SREGS", kvmGetSregs},
		{"KVM_SET_SREGS", kvmSetSregs},
		{"KVM_INTERRUPT", kvmInterrupt},
		{"KVM_GET_MSRS", kvmGetMSRs},
		{"KVM_SET_MSRS", kvmSetMSRs},
		{"KVM_GET_FPU", kvmGetFPU},
		{"KVM_SET_FPU", kvmSetFPU},
		{"KVM_GET_LAPIC", kvmGetLAPIC},
		{"KVM_SET_LAPIC", kvmSetLAPIC},
		{"KVM_SET_CPUID2", kvmSetCPUID2},
		{"KVM_GET_CPUID2", kvmGetCPUID2},
		{"KVM_GET_MP_STATE", kvmGetMPState},
		{"KVM_SET_MP_STATE", kvmSetMPState},
		{"KVM_NMI", kvmNMI},
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents},
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents},
		{"KVM_GET_DEBUGREGS", kvmGetDebugRegs},
		{"KVM_SET_DEBUGREGS", kvmSetDebugRegs},
		{"KVM_SET_TSC_KHZ", kvmSetTSCKHz},
		{"KVM_GET_TSC_KHZ", kvmGetTSCKHz},
		{"KVM_GET_XSAVE", kvmGetXSave},
		{"KVM_SET_XSAVE", kvmSetXSave},
		{"KVM_GET_XCRS", kvmGetXCRS},
		{"KVM_SET_XCRS", kvmSetXCRS},
		{"KVM_KVMCLOCK_CTRL", kvmKVMClockCtrl},
		{"KVM_GET_XSAVE2", kvmGetXSave2},
	}
}

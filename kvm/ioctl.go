package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request encoding, from include/uapi/asm-generic/ioctl.h:
// dir<<30 | size<<16 | type<<8 | nr.
const (
	iocNone  = 0 // _IOC_NONE
	iocWrite = 1 // _IOC_WRITE
	iocRead  = 2 // _IOC_READ

	iocNRShift   = 0  // _IOC_NRSHIFT
	iocTypeShift = 8  // _IOC_TYPESHIFT
	iocSizeShift = 16 // _IOC_SIZESHIFT
	iocDirShift  = 30 // _IOC_DIRSHIFT

	iocSizeMask = 1<<14 - 1 // _IOC_SIZEBITS = 14

	// kvmio is KVMIO, the ioctl type of every KVM request (include/uapi/linux/kvm.h).
	kvmio = 0xAE
)

// Sizes of the variable-length headers and structs that are not exported.
const (
	sizeofMSRList  = 4  // struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; }
	sizeofCPUID2   = 8  // struct kvm_cpuid2 { __u32 nent; __u32 padding; entries[] }
	sizeofMSRs     = 8  // struct kvm_msrs { __u32 nmsrs; __u32 pad; entries[] }
	sizeofDirtyLog = 16 // struct kvm_dirty_log
	sizeofU64      = 8  // __u64 (KVM_SET_IDENTITY_MAP_ADDR)
)

// ioctl numbers on /dev/kvm (system ioctls), include/uapi/linux/kvm.h.
const (
	// KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
	kvmGetAPIVersion = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x00<<iocNRShift
	// KVM_CREATE_VM = _IO(KVMIO, 0x01)
	kvmCreateVM = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x01<<iocNRShift
	// KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, struct kvm_msr_list)
	kvmGetMSRIndexList = (iocRead|iocWrite)<<iocDirShift | sizeofMSRList<<iocSizeShift | kvmio<<iocTypeShift | 0x02<<iocNRShift
	// KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03); also a VM ioctl with KVM_CAP_CHECK_EXTENSION_VM.
	kvmCheckExtension = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x03<<iocNRShift
	// KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
	kvmGetVCPUMmapSize = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x04<<iocNRShift
	// KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
	kvmGetSupportedCPUID = (iocRead|iocWrite)<<iocDirShift | sizeofCPUID2<<iocSizeShift | kvmio<<iocTypeShift | 0x05<<iocNRShift
)

// ioctl numbers on a VM file descriptor, include/uapi/linux/kvm.h.
const (
	// KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
	kvmCreateVCPU = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x41<<iocNRShift
	// KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, struct kvm_dirty_log)
	kvmGetDirtyLog = iocWrite<<iocDirShift | sizeofDirtyLog<<iocSizeShift | kvmio<<iocTypeShift | 0x42<<iocNRShift
	// KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
	kvmSetUserMemoryRegion = iocWrite<<iocDirShift | unsafe.Sizeof(UserspaceMemoryRegion{})<<iocSizeShift | kvmio<<iocTypeShift | 0x46<<iocNRShift
	// KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
	kvmSetTSSAddr = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x47<<iocNRShift
	// KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, __u64)
	kvmSetIdentityMapAddr = iocWrite<<iocDirShift | sizeofU64<<iocSizeShift | kvmio<<iocTypeShift | 0x48<<iocNRShift
	// KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
	kvmCreateIRQChip = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x60<<iocNRShift
	// KVM_IRQ_LINE = _IOW(KVMIO, 0x61, struct kvm_irq_level)
	kvmIRQLine = iocWrite<<iocDirShift | unsafe.Sizeof(IRQLevel{})<<iocSizeShift | kvmio<<iocTypeShift | 0x61<<iocNRShift
	// KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, struct kvm_irqchip)
	kvmGetIRQChip = (iocRead|iocWrite)<<iocDirShift | unsafe.Sizeof(IRQChip{})<<iocSizeShift | kvmio<<iocTypeShift | 0x62<<iocNRShift
	// KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, struct kvm_irqchip). The kernel
	// really declares it _IOR; the number must match.
	kvmSetIRQChip = iocRead<<iocDirShift | unsafe.Sizeof(IRQChip{})<<iocSizeShift | kvmio<<iocTypeShift | 0x63<<iocNRShift
	// KVM_IRQFD = _IOW(KVMIO, 0x76, struct kvm_irqfd)
	kvmIRQFD = iocWrite<<iocDirShift | unsafe.Sizeof(IRQFDConfig{})<<iocSizeShift | kvmio<<iocTypeShift | 0x76<<iocNRShift
	// KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, struct kvm_pit_config)
	kvmCreatePIT2 = iocWrite<<iocDirShift | unsafe.Sizeof(PITConfig{})<<iocSizeShift | kvmio<<iocTypeShift | 0x77<<iocNRShift
	// KVM_REINJECT_CONTROL = _IO(KVMIO, 0x71), taking a struct
	// kvm_reinject_control pointer despite its _IO declaration.
	kvmReinjectControl = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x71<<iocNRShift
	// KVM_IOEVENTFD = _IOW(KVMIO, 0x79, struct kvm_ioeventfd)
	kvmIOEventFD = iocWrite<<iocDirShift | unsafe.Sizeof(IOEventFDConfig{})<<iocSizeShift | kvmio<<iocTypeShift | 0x79<<iocNRShift
	// KVM_SET_CLOCK = _IOW(KVMIO, 0x7b, struct kvm_clock_data)
	kvmSetClock = iocWrite<<iocDirShift | unsafe.Sizeof(ClockData{})<<iocSizeShift | kvmio<<iocTypeShift | 0x7b<<iocNRShift
	// KVM_GET_CLOCK = _IOR(KVMIO, 0x7c, struct kvm_clock_data)
	kvmGetClock = iocRead<<iocDirShift | unsafe.Sizeof(ClockData{})<<iocSizeShift | kvmio<<iocTypeShift | 0x7c<<iocNRShift
	// KVM_GET_PIT2 = _IOR(KVMIO, 0x9f, struct kvm_pit_state2)
	kvmGetPIT2 = iocRead<<iocDirShift | unsafe.Sizeof(PITState2{})<<iocSizeShift | kvmio<<iocTypeShift | 0x9f<<iocNRShift
	// KVM_SET_PIT2 = _IOW(KVMIO, 0xa0, struct kvm_pit_state2)
	kvmSetPIT2 = iocWrite<<iocDirShift | unsafe.Sizeof(PITState2{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa0<<iocNRShift
	// KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, struct kvm_enable_cap); a VM ioctl
	// with KVM_CAP_ENABLE_CAP_VM, a vCPU ioctl with KVM_CAP_ENABLE_CAP.
	kvmEnableCap = iocWrite<<iocDirShift | unsafe.Sizeof(enableCap{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa3<<iocNRShift
)

// ioctl numbers on a vCPU file descriptor, include/uapi/linux/kvm.h.
const (
	// KVM_RUN = _IO(KVMIO, 0x80)
	kvmRun = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x80<<iocNRShift
	// KVM_GET_REGS = _IOR(KVMIO, 0x81, struct kvm_regs)
	kvmGetRegs = iocRead<<iocDirShift | unsafe.Sizeof(Regs{})<<iocSizeShift | kvmio<<iocTypeShift | 0x81<<iocNRShift
	// KVM_SET_REGS = _IOW(KVMIO, 0x82, struct kvm_regs)
	kvmSetRegs = iocWrite<<iocDirShift | unsafe.Sizeof(Regs{})<<iocSizeShift | kvmio<<iocTypeShift | 0x82<<iocNRShift
	// KVM_GET_SREGS = _IOR(KVMIO, 0x83, struct kvm_sregs)
	kvmGetSregs = iocRead<<iocDirShift | unsafe.Sizeof(Sregs{})<<iocSizeShift | kvmio<<iocTypeShift | 0x83<<iocNRShift
	// KVM_SET_SREGS = _IOW(KVMIO, 0x84, struct kvm_sregs)
	kvmSetSregs = iocWrite<<iocDirShift | unsafe.Sizeof(Sregs{})<<iocSizeShift | kvmio<<iocTypeShift | 0x84<<iocNRShift
	// KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt) (a single __u32)
	kvmInterrupt = iocWrite<<iocDirShift | 4<<iocSizeShift | kvmio<<iocTypeShift | 0x86<<iocNRShift
	// KVM_GET_MSRS = _IOWR(KVMIO, 0x88, struct kvm_msrs)
	kvmGetMSRs = (iocRead|iocWrite)<<iocDirShift | sizeofMSRs<<iocSizeShift | kvmio<<iocTypeShift | 0x88<<iocNRShift
	// KVM_SET_MSRS = _IOW(KVMIO, 0x89, struct kvm_msrs)
	kvmSetMSRs = iocWrite<<iocDirShift | sizeofMSRs<<iocSizeShift | kvmio<<iocTypeShift | 0x89<<iocNRShift
	// KVM_GET_FPU = _IOR(KVMIO, 0x8c, struct kvm_fpu)
	kvmGetFPU = iocRead<<iocDirShift | unsafe.Sizeof(FPU{})<<iocSizeShift | kvmio<<iocTypeShift | 0x8c<<iocNRShift
	// KVM_SET_FPU = _IOW(KVMIO, 0x8d, struct kvm_fpu)
	kvmSetFPU = iocWrite<<iocDirShift | unsafe.Sizeof(FPU{})<<iocSizeShift | kvmio<<iocTypeShift | 0x8d<<iocNRShift
	// KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, struct kvm_lapic_state)
	kvmGetLAPIC = iocRead<<iocDirShift | unsafe.Sizeof(LAPICState{})<<iocSizeShift | kvmio<<iocTypeShift | 0x8e<<iocNRShift
	// KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, struct kvm_lapic_state)
	kvmSetLAPIC = iocWrite<<iocDirShift | unsafe.Sizeof(LAPICState{})<<iocSizeShift | kvmio<<iocTypeShift | 0x8f<<iocNRShift
	// KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, struct kvm_cpuid2)
	kvmSetCPUID2 = iocWrite<<iocDirShift | sizeofCPUID2<<iocSizeShift | kvmio<<iocTypeShift | 0x90<<iocNRShift
	// KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, struct kvm_cpuid2)
	kvmGetCPUID2 = (iocRead|iocWrite)<<iocDirShift | sizeofCPUID2<<iocSizeShift | kvmio<<iocTypeShift | 0x91<<iocNRShift
	// KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, struct kvm_mp_state)
	kvmGetMPState = iocRead<<iocDirShift | unsafe.Sizeof(MPState{})<<iocSizeShift | kvmio<<iocTypeShift | 0x98<<iocNRShift
	// KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, struct kvm_mp_state)
	kvmSetMPState = iocWrite<<iocDirShift | unsafe.Sizeof(MPState{})<<iocSizeShift | kvmio<<iocTypeShift | 0x99<<iocNRShift
	// KVM_NMI = _IO(KVMIO, 0x9a)
	kvmNMI = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0x9a<<iocNRShift
	// KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, struct kvm_vcpu_events)
	kvmGetVCPUEvents = iocRead<<iocDirShift | unsafe.Sizeof(VCPUEvents{})<<iocSizeShift | kvmio<<iocTypeShift | 0x9f<<iocNRShift
	// KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, struct kvm_vcpu_events)
	kvmSetVCPUEvents = iocWrite<<iocDirShift | unsafe.Sizeof(VCPUEvents{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa0<<iocNRShift
	// KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xa1, struct kvm_debugregs)
	kvmGetDebugRegs = iocRead<<iocDirShift | unsafe.Sizeof(DebugRegs{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa1<<iocNRShift
	// KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xa2, struct kvm_debugregs)
	kvmSetDebugRegs = iocWrite<<iocDirShift | unsafe.Sizeof(DebugRegs{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa2<<iocNRShift
	// KVM_SET_TSC_KHZ = _IO(KVMIO, 0xa2)
	kvmSetTSCKHz = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0xa2<<iocNRShift
	// KVM_GET_TSC_KHZ = _IO(KVMIO, 0xa3)
	kvmGetTSCKHz = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0xa3<<iocNRShift
	// KVM_GET_XSAVE = _IOR(KVMIO, 0xa4, struct kvm_xsave)
	kvmGetXSave = iocRead<<iocDirShift | unsafe.Sizeof(XSave{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa4<<iocNRShift
	// KVM_SET_XSAVE = _IOW(KVMIO, 0xa5, struct kvm_xsave)
	kvmSetXSave = iocWrite<<iocDirShift | unsafe.Sizeof(XSave{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa5<<iocNRShift
	// KVM_GET_XCRS = _IOR(KVMIO, 0xa6, struct kvm_xcrs)
	kvmGetXCRS = iocRead<<iocDirShift | unsafe.Sizeof(XCRS{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa6<<iocNRShift
	// KVM_SET_XCRS = _IOW(KVMIO, 0xa7, struct kvm_xcrs)
	kvmSetXCRS = iocWrite<<iocDirShift | unsafe.Sizeof(XCRS{})<<iocSizeShift | kvmio<<iocTypeShift | 0xa7<<iocNRShift
	// KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xad)
	kvmKVMClockCtrl = iocNone<<iocDirShift | kvmio<<iocTypeShift | 0xad<<iocNRShift
)

// ioctl issues an ioctl whose argument is a plain integer (or none) and
// returns the kernel's non-negative result. The bare errno is returned on
// failure; converting an Errno (< 256) to error does not allocate.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlPtr issues an ioctl whose argument points to memory the kernel reads
// or writes. The pointer is passed as unsafe.Pointer so the referenced
// object stays alive for the duration of the call; it does not escape.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

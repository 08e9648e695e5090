package kvm

import (
	"encoding/binary"
	"unsafe"
)

// Offsets into struct kvm_run (include/uapi/linux/kvm.h), the shared page a
// vCPU's fd mmaps. Layout on x86-64:
//
//	0   __u8  request_interrupt_window
//	1   __u8  immediate_exit
//	8   __u32 exit_reason
//	12  __u8  ready_for_interrupt_injection
//	13  __u8  if_flag
//	14  __u16 flags
//	16  __u64 cr8
//	24  __u64 apic_base
//	32  union { ... } exit information, 256 bytes
const (
	runRequestInterruptWindow     = 0
	runImmediateExit              = 1
	runExitReason                 = 8
	runReadyForInterruptInjection = 12
	runIFFlag                     = 13
	runFlags                      = 14
	runCR8                        = 16
	runAPICBase                   = 24
	runExit                       = 32  // start of the exit union
	runExitUnionSize              = 256 // char padding[256] in the union
	runMinSize                    = runExit + runExitUnionSize

	// io: __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset
	runIODirection  = runExit + 0
	runIOSize       = runExit + 1
	runIOPort       = runExit + 2
	runIOCount      = runExit + 4
	runIODataOffset = runExit + 8

	// mmio: __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write
	runMMIOPhysAddr = runExit + 0
	runMMIOData     = runExit + 8
	runMMIOLen      = runExit + 16
	runMMIOIsWrite  = runExit + 20
	mmioDataMax     = 8

	// internal: __u32 suberror; __u32 ndata; __u64 data[16]
	runInternalSuberror = runExit + 0
	runInternalNData    = runExit + 4
	runInternalData     = runExit + 8
	internalDataMax     = 16

	// system_event: __u32 type; __u32 ndata; union { __u64 flags; __u64 data[16]; }
	runSystemEventType  = runExit + 0
	runSystemEventNData = runExit + 4
	runSystemEventData  = runExit + 8

	// fail_entry: __u64 hardware_entry_failure_reason; __u32 cpu
	runFailEntryReason = runExit + 0
	runFailEntryCPU    = runExit + 8

	// ex: __u32 exception; __u32 error_code
	runExException = runExit + 0
	runExErrorCode = runExit + 4

	// hw: __u64 hardware_exit_reason
	runHWExitReason = runExit + 0
)

// The accessors below read and write the vCPU's mmapped struct kvm_run. They
// never allocate; the slices they return alias the shared page and are valid
// until the next Run (the kernel reads back IO-in and MMIO-read data from
// them on the next KVM_RUN). CreateVCPU guarantees len(v.run) >= runMinSize,
// so the fixed offsets below are always in range.

// ExitReason returns kvm_run.exit_reason, one of the Exit* constants.
func (v *VCPU) ExitReason() uint32 {
	return binary.LittleEndian.Uint32(v.run[runExitReason:])
}

// SetImmediateExit sets kvm_run.immediate_exit: while set, Run returns
// unix.EINTR at once without entering the guest. A signal handler or another
// thread sets it to kick a vCPU out of (or keep it from entering) the guest.
func (v *VCPU) SetImmediateExit(on bool) {
	v.run[runImmediateExit] = boolByte(on)
}

// SetRequestInterruptWindow sets kvm_run.request_interrupt_window, asking for
// an ExitIRQWindowOpen exit once the guest can take an interrupt (for a
// user-space interrupt controller).
func (v *VCPU) SetRequestInterruptWindow(on bool) {
	v.run[runRequestInterruptWindow] = boolByte(on)
}

// ReadyForInterruptInjection returns kvm_run.ready_for_interrupt_injection.
func (v *VCPU) ReadyForInterruptInjection() bool {
	return v.run[runReadyForInterruptInjection] != 0
}

// IFFlag returns kvm_run.if_flag, the guest's RFLAGS.IF at exit.
func (v *VCPU) IFFlag() bool { return v.run[runIFFlag] != 0 }

// RunFlags returns kvm_run.flags (KVM_RUN_X86_SMM, KVM_RUN_X86_BUS_LOCK, ...).
func (v *VCPU) RunFlags() uint16 {
	return binary.LittleEndian.Uint16(v.run[runFlags:])
}

// CR8 returns kvm_run.cr8.
func (v *VCPU) CR8() uint64 { return binary.LittleEndian.Uint64(v.run[runCR8:]) }

// APICBase returns kvm_run.apic_base.
func (v *VCPU) APICBase() uint64 { return binary.LittleEndian.Uint64(v.run[runAPICBase:]) }

// IO decodes an ExitIO exit. data is the slice of the kvm_run area at
// data_offset holding size*count bytes: for an OUT it holds what the guest
// wrote, for an IN the caller fills it before the next Run. If the kernel's
// data_offset or length do not fit in the mapping, data is empty.
func (v *VCPU) IO() (direction uint8, size uint8, port uint16, count uint32, data []byte) {
	direction = v.run[runIODirection]
	size = v.run[runIOSize]
	port = binary.LittleEndian.Uint16(v.run[runIOPort:])
	count = binary.LittleEndian.Uint32(v.run[runIOCount:])
	off := binary.LittleEndian.Uint64(v.run[runIODataOffset:])
	n := uint64(size) * uint64(count) // at most 255 * (2^32-1): no overflow
	if l := uint64(len(v.run)); off <= l && n <= l-off {
		data = v.run[off : off+n : off+n]
	} else {
		data = v.run[:0:0]
	}
	return direction, size, port, count, data
}

// MMIO decodes an ExitMMIO exit. data is kvm_run.mmio.data sliced to the
// access length (clamped to 8): for a write it holds what the guest wrote,
// for a read the caller fills it before the next Run.
func (v *VCPU) MMIO() (physAddr uint64, data []byte, isWrite bool) {
	physAddr = binary.LittleEndian.Uint64(v.run[runMMIOPhysAddr:])
	n := min(binary.LittleEndian.Uint32(v.run[runMMIOLen:]), mmioDataMax)
	data = v.run[runMMIOData : runMMIOData+n : runMMIOData+n]
	isWrite = v.run[runMMIOIsWrite] != 0
	return physAddr, data, isWrite
}

// InternalError decodes an ExitInternalError exit: the sub-error
// (InternalError* constants) and the ndata words of diagnostic data (at most
// 16). data aliases kvm_run.
func (v *VCPU) InternalError() (suberror uint32, data []uint64) {
	suberror = binary.LittleEndian.Uint32(v.run[runInternalSuberror:])
	n := min(binary.LittleEndian.Uint32(v.run[runInternalNData:]), internalDataMax)
	return suberror, v.runWords(runInternalData, n)
}

// SystemEvent decodes an ExitSystemEvent exit: the type (SystemEvent*
// constants) and flags, which is data[0] of the kernel's union.
func (v *VCPU) SystemEvent() (typ uint32, flags uint64) {
	typ = binary.LittleEndian.Uint32(v.run[runSystemEventType:])
	flags = binary.LittleEndian.Uint64(v.run[runSystemEventData:])
	return typ, flags
}

// SystemEventData returns the ndata words of an ExitSystemEvent exit (with
// KVM_CAP_SYSTEM_EVENT_DATA), at most 16. data aliases kvm_run.
func (v *VCPU) SystemEventData() []uint64 {
	n := min(binary.LittleEndian.Uint32(v.run[runSystemEventNData:]), internalDataMax)
	return v.runWords(runSystemEventData, n)
}

// FailEntry decodes an ExitFailEntry exit: the hardware VM-entry failure
// reason and the host CPU it happened on.
func (v *VCPU) FailEntry() (reason uint64, cpu uint32) {
	reason = binary.LittleEndian.Uint64(v.run[runFailEntryReason:])
	cpu = binary.LittleEndian.Uint32(v.run[runFailEntryCPU:])
	return reason, cpu
}

// Exception decodes an ExitException exit: the vector and error code.
func (v *VCPU) Exception() (vector uint32, errorCode uint32) {
	vector = binary.LittleEndian.Uint32(v.run[runExException:])
	errorCode = binary.LittleEndian.Uint32(v.run[runExErrorCode:])
	return vector, errorCode
}

// HardwareExitReason decodes an ExitUnknown exit: the hardware exit reason.
func (v *VCPU) HardwareExitReason() uint64 {
	return binary.LittleEndian.Uint64(v.run[runHWExitReason:])
}

// runWords returns n uint64 words of kvm_run starting at byte offset off,
// which is 8-byte aligned (the mapping is page aligned).
func (v *VCPU) runWords(off int, n uint32) []uint64 {
	b := v.run[off : off+int(n)*8]
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n)
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

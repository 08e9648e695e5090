package kvm

// The structures below mirror the Linux KVM UAPI (include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h) byte for byte, so they can be passed to the
// kernel directly. uapi_test.go pins every size and the offsets that matter.

// Regs is struct kvm_regs: the general-purpose registers of a vCPU.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment is struct kvm_segment: a segment register in its descriptor-cache form.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable: a descriptor-table register (GDTR, IDTR).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs: the segment and control registers of a vCPU.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu: the x87 and SSE state of a vCPU.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// CPUIDEntry is struct kvm_cpuid_entry2: one CPUID leaf (and subleaf) result.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDFlagSignificantIndex is KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the leaf has
// subleaves selected by ECX (Index).
const CPUIDFlagSignificantIndex = 1 << 0

// LAPICState is struct kvm_lapic_state: the 1 KiB local APIC register page.
type LAPICState struct {
	Regs [1024]byte
}

// UserspaceMemoryRegion is struct kvm_userspace_memory_region.
type UserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// MemLogDirtyPages is KVM_MEM_LOG_DIRTY_PAGES for UserspaceMemoryRegion.Flags.
const MemLogDirtyPages = 1 << 0

// PITConfig is struct kvm_pit_config.
type PITConfig struct {
	Flags uint32
	_     [15]uint32
}

// reinjectControl is struct kvm_reinject_control.
type reinjectControl struct {
	PITReinject uint8
	_           [31]uint8
}

// PITSpeakerDummy is KVM_PIT_SPEAKER_DUMMY: emulate the PC speaker port (0x61)
// in the kernel so guests that probe it do not exit to user space.
const PITSpeakerDummy = 1

// IRQLevel is struct kvm_irq_level, the argument of KVM_IRQ_LINE.
type IRQLevel struct {
	IRQ   uint32
	Level uint32
}

// MPState is struct kvm_mp_state.
type MPState struct {
	State uint32
}

// MP states (KVM_MP_STATE_* in include/uapi/linux/kvm.h), for MPState.State.
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
	MPStateSIPIReceived  = 4
)

// Exit reasons (KVM_EXIT_* in include/uapi/linux/kvm.h), from VCPU.ExitReason.
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitSetTPR        = 11
	ExitTPRAccess     = 12
	ExitNMI           = 16
	ExitInternalError = 17
	ExitSystemEvent   = 24
	ExitIOAPICEOI     = 26
	ExitHyperV        = 27
	ExitX86RDMSR      = 29
	ExitX86WRMSR      = 30
	ExitDirtyRingFull = 31
	ExitX86BusLock    = 33
	ExitNotify        = 37
	ExitMemoryFault   = 39
)

// Internal error sub-codes (KVM_INTERNAL_ERROR_* in include/uapi/linux/kvm.h),
// from VCPU.InternalError.
const (
	InternalErrorEmulation            = 1
	InternalErrorSimulEx              = 2
	InternalErrorDeliveryEv           = 3
	InternalErrorUnexpectedExitReason = 4
)

// System event types (KVM_SYSTEM_EVENT_* in include/uapi/linux/kvm.h), from
// VCPU.SystemEvent.
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
	SystemEventWakeup   = 4
	SystemEventSuspend  = 5
	SystemEventSEVTerm  = 6
)

// Port I/O directions (KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT).
const (
	IODirectionIn  = 0
	IODirectionOut = 1
)

// IOEventFDConfig is struct kvm_ioeventfd, the argument of VM.IOEventFD: it
// binds a guest port-I/O or MMIO write to an eventfd.
type IOEventFDConfig struct {
	Datamatch uint64 // value a write must carry (with IOEventFDFlagDatamatch)
	Addr      uint64 // guest port (IOEventFDFlagPIO) or physical address
	Len       uint32 // access width 1, 2, 4 or 8; 0 matches any width
	FD        int32  // the eventfd
	Flags     uint32 // IOEventFDFlag*
	_         [36]uint8
}

// Flags for IOEventFDConfig.Flags (KVM_IOEVENTFD_FLAG_* in include/uapi/linux/kvm.h).
const (
	IOEventFDFlagDatamatch = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH
	IOEventFDFlagPIO       = 1 << 1 // KVM_IOEVENTFD_FLAG_PIO
	IOEventFDFlagDeassign  = 1 << 2 // KVM_IOEVENTFD_FLAG_DEASSIGN
)

// IRQFDConfig is struct kvm_irqfd, the argument of VM.IRQFD: it binds an
// eventfd to a GSI of the in-kernel irqchip.
type IRQFDConfig struct {
	FD         uint32 // the eventfd that raises the interrupt
	GSI        uint32
	Flags      uint32 // IRQFDFlag*
	ResampleFD uint32 // with IRQFDFlagResample: signalled on EOI of a level interrupt
	_          [16]uint8
}

// Flags for IRQFDConfig.Flags (KVM_IRQFD_FLAG_* in include/uapi/linux/kvm.h).
const (
	IRQFDFlagDeassign = 1 << 0 // KVM_IRQFD_FLAG_DEASSIGN
	IRQFDFlagResample = 1 << 1 // KVM_IRQFD_FLAG_RESAMPLE
)

// IRQChip is struct kvm_irqchip, the argument of VM.GetIRQChip/SetIRQChip.
// Chip holds a struct kvm_pic_state (16 bytes) or struct kvm_ioapic_state
// (216 bytes) depending on ChipID; it is kept opaque for snapshots.
type IRQChip struct {
	ChipID uint32 // IRQChipPICMaster, IRQChipPICSlave or IRQChipIOAPIC
	_      uint32
	Chip   [512]byte
}

// Chip ids for IRQChip.ChipID (KVM_IRQCHIP_* in arch/x86/include/uapi/asm/kvm.h).
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// PITChannelState is struct kvm_pit_channel_state.
type PITChannelState struct {
	Count         uint32 // can be 65536
	LatchedCount  uint16
	CountLatched  uint8
	StatusLatched uint8
	Status        uint8
	ReadState     uint8
	WriteState    uint8
	WriteLatch    uint8
	RWMode        uint8
	Mode          uint8
	BCD           uint8
	Gate          uint8
	CountLoadTime int64
}

// PITState2 is struct kvm_pit_state2, the argument of VM.GetPIT2/SetPIT2.
type PITState2 struct {
	Channels [3]PITChannelState
	Flags    uint32 // PITFlagsHPETLegacy, PITFlagsSpeakerDataOn
	_        [9]uint32
}

// Flags for PITState2.Flags (arch/x86/include/uapi/asm/kvm.h).
const (
	PITFlagsHPETLegacy    = 0x00000001 // KVM_PIT_FLAGS_HPET_LEGACY
	PITFlagsSpeakerDataOn = 0x00000002 // KVM_PIT_FLAGS_SPEAKER_DATA_ON
)

// ClockData is struct kvm_clock_data, the argument of VM.GetClock/SetClock.
type ClockData struct {
	Clock    uint64 // kvmclock, ns
	Flags    uint32 // ClockTSCStable, ClockRealtime, ClockHostTSC
	_        uint32
	Realtime uint64 // CLOCK_REALTIME, ns, valid with ClockRealtime
	HostTSC  uint64 // host TSC, valid with ClockHostTSC
	_        [4]uint32
}

// Flags for ClockData.Flags (KVM_CLOCK_* in include/uapi/linux/kvm.h).
const (
	ClockTSCStable = 1 << 1 // KVM_CLOCK_TSC_STABLE
	ClockRealtime  = 1 << 2 // KVM_CLOCK_REALTIME
	ClockHostTSC   = 1 << 3 // KVM_CLOCK_HOST_TSC
)

// dirtyLog is struct kvm_dirty_log; Bitmap holds a user-space address.
type dirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uint64
}

// enableCap is struct kvm_enable_cap.
type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

// VCPUEvents is struct kvm_vcpu_events (arch/x86/include/uapi/asm/kvm.h): the
// pending/injected exception, interrupt, NMI and SMI state of a vCPU. The
// kernel's nested anonymous structs are flattened with a prefix.
type VCPUEvents struct {
	ExceptionInjected     uint8
	ExceptionNr           uint8
	ExceptionHasErrorCode uint8
	ExceptionPending      uint8
	ExceptionErrorCode    uint32

	InterruptInjected uint8
	InterruptNr       uint8
	InterruptSoft     uint8
	InterruptShadow   uint8

	NMIInjected uint8
	NMIPending  uint8
	NMIMasked   uint8
	_           uint8

	SIPIVector uint32
	Flags      uint32 // VCPUEventValid*

	SMISMM             uint8
	SMIPending         uint8
	SMIInsideNMI       uint8
	SMILatchedInit     uint8
	TripleFaultPending uint8
	_                  [26]uint8

	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// Flags for VCPUEvents.Flags (KVM_VCPUEVENT_VALID_* in arch/x86/include/uapi/asm/kvm.h).
const (
	VCPUEventValidNMIPending  = 0x00000001 // KVM_VCPUEVENT_VALID_NMI_PENDING
	VCPUEventValidSIPIVector  = 0x00000002 // KVM_VCPUEVENT_VALID_SIPI_VECTOR
	VCPUEventValidShadow      = 0x00000004 // KVM_VCPUEVENT_VALID_SHADOW
	VCPUEventValidSMM         = 0x00000008 // KVM_VCPUEVENT_VALID_SMM
	VCPUEventValidPayload     = 0x00000010 // KVM_VCPUEVENT_VALID_PAYLOAD
	VCPUEventValidTripleFault = 0x00000020 // KVM_VCPUEVENT_VALID_TRIPLE_FAULT
)

// DebugRegs is struct kvm_debugregs (arch/x86/include/uapi/asm/kvm.h).
type DebugRegs struct {
	DB    [4]uint64
	DR6   uint64
	DR7   uint64
	Flags uint64
	_     [9]uint64
}

// XSave is struct kvm_xsave (arch/x86/include/uapi/asm/kvm.h): the vCPU's
// XSAVE area in the standard (non-compacted) format, first 4 KiB.
type XSave struct {
	Region [1024]uint32
}

// XCR is struct kvm_xcr: one extended control register (XCR0 has index 0).
type XCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

// MaxXCRs is KVM_MAX_XCRS (arch/x86/include/uapi/asm/kvm.h).
const MaxXCRs = 16

// XCRS is struct kvm_xcrs (arch/x86/include/uapi/asm/kvm.h).
type XCRS struct {
	NrXCRs uint32
	Flags  uint32
	XCRs   [MaxXCRs]XCR
	_      [16]uint64
}

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

// Exit reasons (KVM_EXIT_* in include/uapi/linux/kvm.h).
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
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// System event types (KVM_SYSTEM_EVENT_*), in Run.SystemEvent().Type.
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// Port I/O directions (KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT).
const (
	IODirectionIn  = 0
	IODirectionOut = 1
)

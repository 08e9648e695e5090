package x86

import (
	"encoding/binary"

	"github.com/embervm/ember/kvm"
)

// rflagsReserved is RFLAGS bit 1, reserved and always 1 (Intel SDM Vol. 1,
// "EFLAGS Register"); the other bits start clear (interrupts disabled).
const rflagsReserved = 1 << 1

// LinuxBootRegs returns the general-purpose registers for the Linux 64-bit
// boot protocol (boot.rst, "64-bit Boot Protocol"): RIP at the kernel's
// 64-bit entry, RSI pointing at the zero page, and a boot stack below the
// page tables.
func LinuxBootRegs(entry uint64) kvm.Regs {
	return kvm.Regs{
		RIP:    entry,
		RSI:    ZeroPageAddr,
		RSP:    BootStackPointer,
		RBP:    BootStackPointer,
		RFLAGS: rflagsReserved,
	}
}

// PVHBootRegs returns the general-purpose registers for a Xen PVH boot
// (xen/include/public/arch-x86/hvm/start_info.h: "ebx: contains the
// physical memory address where the loader has placed the boot start info
// structure"), entering at the kernel's XEN_ELFNOTE_PHYS32_ENTRY.
func PVHBootRegs(entry uint64) kvm.Regs {
	return kvm.Regs{
		RIP:    entry,
		RBX:    PVHInfoAddr,
		RFLAGS: rflagsReserved,
	}
}

// x87 and SSE reset state.
const (
	// fpuControlWord is the x87 control word FINIT sets: all exceptions
	// masked, 64-bit precision, round to nearest (Intel SDM Vol. 1, "x87 FPU
	// Control Word").
	fpuControlWord = 0x37f
	// mxcsrDefault is MXCSR's power-up value: all SIMD exceptions masked,
	// round to nearest (Intel SDM Vol. 1, "MXCSR Control and Status
	// Register").
	mxcsrDefault = 0x1f80
)

// BootFPU returns the x87/SSE state a vCPU starts with.
func BootFPU() kvm.FPU {
	return kvm.FPU{FCW: fpuControlWord, MXCSR: mxcsrDefault}
}

// Local APIC register offsets and LVT fields (Intel SDM Vol. 3A, "Local
// APIC Register Address Map" and "Local Vector Table").
const (
	// LAPICLVTLINT0 is the offset of LVT LINT0 in the LAPIC register page.
	LAPICLVTLINT0 = 0x350
	// LAPICLVTLINT1 is the offset of LVT LINT1.
	LAPICLVTLINT1 = 0x360
	// lvtDeliveryModeShift and lvtDeliveryModeMask locate the delivery mode,
	// bits 10:8 of an LVT entry.
	lvtDeliveryModeShift = 8
	lvtDeliveryModeMask  = 0x7
	// lvtDeliveryNMI is delivery mode 100b, NMI.
	lvtDeliveryNMI = 0x4
	// lvtDeliveryExtINT is delivery mode 111b, ExtINT: the interrupt comes
	// from an external 8259-compatible controller.
	lvtDeliveryExtINT = 0x7
)

// SetLAPICLINT sets LVT LINT0 to ExtINT and LVT LINT1 to NMI delivery in a
// LAPIC state read with KVM_GET_LAPIC, keeping the other bits of both
// entries: the PIC's output reaches the CPU through LINT0 (virtual wire mode,
// MP spec 1.4 section 3.6.2.2), and NMIs through LINT1.
func SetLAPICLINT(s *kvm.LAPICState) {
	setLVTDeliveryMode(s, LAPICLVTLINT0, lvtDeliveryExtINT)
	setLVTDeliveryMode(s, LAPICLVTLINT1, lvtDeliveryNMI)
}

func setLVTDeliveryMode(s *kvm.LAPICState, off int, mode uint32) {
	b := s.Regs[off : off+4]
	v := binary.LittleEndian.Uint32(b)
	v = v&^(lvtDeliveryModeMask<<lvtDeliveryModeShift) | mode<<lvtDeliveryModeShift
	binary.LittleEndian.PutUint32(b, v)
}

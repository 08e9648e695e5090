package x86

import (
	"encoding/binary"
	"fmt"

	"github.com/embervm/ember/memory"
)

// MaxVCPUs is the most vCPUs the MP table (and Firecracker) supports.
const MaxVCPUs = 32

// MultiProcessor Specification 1.4, chapter 4 ("MP Configuration Table").
const (
	// mpFloatingSignature is the MP floating pointer signature (section 4.1).
	mpFloatingSignature = "_MP_"
	// mpConfigSignature is the configuration table header signature
	// (section 4.2).
	mpConfigSignature = "PCMP"
	// mpSpecRev is the specification revision byte for MP spec 1.4.
	mpSpecRev = 4

	// mpFloatingSize is the floating pointer structure's size; its length
	// field counts 16-byte paragraphs (section 4.1, table 4-1).
	mpFloatingSize       = 16
	mpFloatingParagraphs = mpFloatingSize / 16
	// mpConfigHeaderSize is the configuration table header's size (table 4-2).
	mpConfigHeaderSize = 44
	// Entry sizes (section 4.3, table 4-3).
	mpProcessorSize = 20
	mpBusSize       = 8
	mpIOAPICSize    = 8
	mpIOIntSize     = 8
	mpLocalIntSize  = 8

	// Entry type codes (table 4-3).
	mpEntryProcessor = 0
	mpEntryBus       = 1
	mpEntryIOAPIC    = 2
	mpEntryIOInt     = 3
	mpEntryLocalInt  = 4

	// Processor entry CPU flags (section 4.3.1, table 4-5).
	mpCPUEnabled = 1 << 0 // EN
	mpCPUBSP     = 1 << 1 // BP
	// mpCPUSignature is the CPU signature: family 6 (stepping/model 0), as
	// Firecracker reports (CPU_STEPPING 0x600); the guest uses CPUID anyway.
	mpCPUSignature = 0x600
	// mpCPUFeatures is the feature flags word, CPUID.1:EDX layout: FPU
	// (bit 0) and APIC (bit 9) present.
	mpCPUFeatures = 1<<0 | 1<<9
	// mpLAPICVersion is the local APIC version KVM's LAPIC reports
	// (APIC_VERSION 0x14 in arch/x86/kvm/lapic.c: an integrated xAPIC).
	mpLAPICVersion = 0x14

	// mpIOAPICVersion is the version KVM's in-kernel IOAPIC reports
	// (IOAPIC_VERSION_ID 0x11, as the 82093AA).
	mpIOAPICVersion = 0x11
	// mpIOAPICEnabled is the I/O APIC entry's EN flag (section 4.3.3).
	mpIOAPICEnabled = 1 << 0

	// Interrupt types (table 4-9).
	mpIntINT    = 0 // vectored interrupt, vector from the APIC redirection table
	mpIntNMI    = 1
	mpIntExtINT = 3 // vectored interrupt, vector from the 8259 PIC
	// mpIntFlagsConforms is polarity and trigger mode "conforms to the
	// specifications of the bus" (table 4-10).
	mpIntFlagsConforms = 0
	// mpAllLocalAPICs is the destination local APIC ID meaning "all"
	// (section 4.3.5, table 4-11).
	mpAllLocalAPICs = 0xff
	// mpBSPAPICID is the BSP's local APIC ID, the destination of ExtINT:
	// only the BSP takes 8259 interrupts (virtual wire mode, section 3.6.2.2).
	mpBSPAPICID = 0

	// mpISABusID is the ID of the one (ISA) bus.
	mpISABusID = 0
	// mpISABusType is the ISA bus type string, blank-padded (table 4-8).
	mpISABusType = "ISA   "
	// mpIOAPICPins is the number of IOAPIC inputs KVM emulates
	// (KVM_IOAPIC_NUM_PINS); IRQ n is wired to input n.
	mpIOAPICPins = 24
	// mpLocalInts is the number of local interrupt entries: LINT0 and LINT1.
	mpLocalInts = 2

	// OEM and product IDs in the configuration table header, blank-padded.
	mpOEMID     = "EMBER   "
	mpProductID = "EMBERVM     "
)

// Offsets in the floating pointer structure (table 4-1) and configuration
// table header (table 4-2).
const (
	mpfSignature = 0  // char[4]
	mpfPhysPtr   = 4  // u32 configuration table address
	mpfLength    = 8  // u8 length in paragraphs
	mpfSpecRev   = 9  // u8
	mpfChecksum  = 10 // u8, whole structure sums to 0
	// feature bytes 1-5 at 11..15 stay 0: a configuration table is present
	// and there is no IMCR.

	mpcSignature   = 0  // char[4]
	mpcLength      = 4  // u16 base table length, header included
	mpcSpecRev     = 6  // u8
	mpcChecksum    = 7  // u8, base table sums to 0
	mpcOEMID       = 8  // char[8]
	mpcProductID   = 16 // char[12]
	mpcEntryCount  = 34 // u16 base table entry count
	mpcLAPICAddr   = 36 // u32 local APIC address
	mpcExtLength   = 40 // u16 extended table length (0)
	mpcExtChecksum = 42 // u8 extended table checksum (0)
)

// MPTableSize is the number of bytes WriteMPTable writes for ncpus vCPUs,
// from MPTableAddr.
func MPTableSize(ncpus int) uint64 {
	return mpFloatingSize + mpConfigHeaderSize + uint64(ncpus)*mpProcessorSize +
		mpBusSize + mpIOAPICSize + mpIOAPICPins*mpIOIntSize + mpLocalInts*mpLocalIntSize
}

// MPTable builds the MP floating pointer structure followed by the MP
// configuration table (MP spec 1.4) for ncpus vCPUs, to be placed at
// MPTableAddr: one processor entry per vCPU (APIC ID = index, vCPU 0 the
// BSP), the ISA bus, the IOAPIC (ID ncpus, at IOAPICAddr), IOAPIC input n
// for ISA IRQ n (n = 0..23, KVM's default GSI routing), LINT0 of the BSP as
// ExtINT and LINT1 of every CPU as NMI.
func MPTable(ncpus int) ([]byte, error) {
	if ncpus < 1 || ncpus > MaxVCPUs {
		return nil, fmt.Errorf("MP table for %d vCPUs: want 1 to %d", ncpus, MaxVCPUs)
	}
	size := MPTableSize(ncpus)
	if MPTableAddr+size > SystemAreaEnd {
		return nil, fmt.Errorf("MP table of %d bytes at %#x overruns the system area end %#x", size, MPTableAddr, SystemAreaEnd)
	}
	le := binary.LittleEndian
	t := make([]byte, size)

	mpf := t[:mpFloatingSize]
	copy(mpf[mpfSignature:], mpFloatingSignature)
	le.PutUint32(mpf[mpfPhysPtr:], MPTableAddr+mpFloatingSize)
	mpf[mpfLength] = mpFloatingParagraphs
	mpf[mpfSpecRev] = mpSpecRev

	mpc := t[mpFloatingSize:]
	ioapicID := uint8(ncpus)
	off := mpConfigHeaderSize
	entries := 0
	add := func(n int) []byte {
		e := mpc[off : off+n]
		off += n
		entries++
		return e
	}
	for i := range ncpus {
		e := add(mpProcessorSize)
		e[0] = mpEntryProcessor
		e[1] = uint8(i) // local APIC ID
		e[2] = mpLAPICVersion
		e[3] = mpCPUEnabled
		if i == 0 {
			e[3] |= mpCPUBSP
		}
		le.PutUint32(e[4:], mpCPUSignature)
		le.PutUint32(e[8:], mpCPUFeatures)
	}
	bus := add(mpBusSize)
	bus[0] = mpEntryBus
	bus[1] = mpISABusID
	copy(bus[2:], mpISABusType)

	io := add(mpIOAPICSize)
	io[0] = mpEntryIOAPIC
	io[1] = ioapicID
	io[2] = mpIOAPICVersion
	io[3] = mpIOAPICEnabled
	le.PutUint32(io[4:], IOAPICAddr)

	for irq := range mpIOAPICPins {
		e := add(mpIOIntSize)
		e[0] = mpEntryIOInt
		e[1] = mpIntINT
		le.PutUint16(e[2:], mpIntFlagsConforms)
		e[4] = mpISABusID
		e[5] = uint8(irq) // source bus IRQ
		e[6] = ioapicID
		e[7] = uint8(irq) // destination IOAPIC INTIN#
	}
	for lint, l := range [mpLocalInts]struct{ typ, dest uint8 }{
		{mpIntExtINT, mpBSPAPICID},  // LINT0
		{mpIntNMI, mpAllLocalAPICs}, // LINT1
	} {
		e := add(mpLocalIntSize)
		e[0] = mpEntryLocalInt
		e[1] = l.typ
		le.PutUint16(e[2:], mpIntFlagsConforms)
		e[4] = mpISABusID
		e[5] = 0 // source bus IRQ
		e[6] = l.dest
		e[7] = uint8(lint) // destination LINTIN#
	}

	copy(mpc[mpcSignature:], mpConfigSignature)
	le.PutUint16(mpc[mpcLength:], uint16(off))
	mpc[mpcSpecRev] = mpSpecRev
	copy(mpc[mpcOEMID:], mpOEMID)
	copy(mpc[mpcProductID:], mpProductID)
	le.PutUint16(mpc[mpcEntryCount:], uint16(entries))
	le.PutUint32(mpc[mpcLAPICAddr:], LAPICAddr)
	le.PutUint16(mpc[mpcExtLength:], 0)
	mpc[mpcExtChecksum] = 0
	mpc[mpcChecksum] = checksum(mpc[:off])
	mpf[mpfChecksum] = checksum(mpf)
	return t, nil
}

// WriteMPTable writes the MP table for ncpus vCPUs (see MPTable) at
// MPTableAddr.
func WriteMPTable(mem *memory.Guest, ncpus int) error {
	t, err := MPTable(ncpus)
	if err != nil {
		return err
	}
	if _, err := mem.WriteAt(t, MPTableAddr); err != nil {
		return fmt.Errorf("write MP table at %#x: %w", MPTableAddr, err)
	}
	return nil
}

// checksum returns the byte that makes b (whose checksum byte is still 0)
// sum to zero modulo 256, as MP spec 1.4 tables 4-1 and 4-2 require.
func checksum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return -s
}

package acpi

import (
	"encoding/binary"
)

// Identification common to every table.
const (
	// oemID is the OEM ID of the RSDP and of every table header, six
	// characters, blank-padded (ACPI 5.2.5.3, 5.2.6).
	oemID = "EMBER "
	// oemTableID is the OEM table ID of every table header, eight
	// characters, blank-padded (ACPI 5.2.6).
	oemTableID = "EMBERVM "
	// oemRevision is the OEM revision of every table header (ACPI 5.2.6).
	oemRevision = 1
	// creatorID is the vendor ID of the utility that created the tables
	// (ACPI 5.2.6): Ember itself.
	creatorID = "EMBR"
	// creatorRevision is the revision of that utility (ACPI 5.2.6).
	creatorRevision = 1
)

// System description table header (ACPI 5.2.6).
const (
	headerSize = 36

	hdrSignature       = 0  // char[4]
	hdrLength          = 4  // u32, whole table including the header
	hdrRevision        = 8  // u8
	hdrChecksum        = 9  // u8, whole table sums to 0
	hdrOEMID           = 10 // char[6]
	hdrOEMTableID      = 16 // char[8]
	hdrOEMRevision     = 24 // u32
	hdrCreatorID       = 28 // char[4]
	hdrCreatorRevision = 32 // u32
)

// Root System Description Pointer (ACPI 5.2.5.3).
const (
	rsdpSignature = "RSD PTR "
	// rsdpRevision 2 is the ACPI 2.0+ RSDP, with the XSDT address.
	rsdpRevision = 2
	// rsdpSize is the revision 2 RSDP's length.
	rsdpSize = 36
	// rsdpV1Size is the length the first checksum covers (the ACPI 1.0
	// RSDP).
	rsdpV1Size = 20
	// rsdpAlign: the RSDP must lie on a 16-byte boundary for OSPM's scan of
	// the BIOS area to find it (ACPI 5.2.5.1).
	rsdpAlign = 16

	rsdpSignatureOff = 0  // char[8]
	rsdpChecksumOff  = 8  // u8, first 20 bytes sum to 0
	rsdpOEMIDOff     = 9  // char[6]
	rsdpRevisionOff  = 15 // u8
	rsdpRSDTAddrOff  = 16 // u32, 0: there is no RSDT
	rsdpLengthOff    = 20 // u32
	rsdpXSDTAddrOff  = 24 // u64
	rsdpExtChecksum  = 32 // u8, all 36 bytes sum to 0
	// bytes 33-35 are reserved (0).
)

// Extended System Description Table (ACPI 5.2.8).
const (
	xsdtSignature = "XSDT"
	xsdtRevision  = 1
	// xsdtEntrySize is the size of one 64-bit table address.
	xsdtEntrySize = 8
)

// Fixed ACPI Description Table (ACPI 5.2.9), version 6.4.
const (
	fadtSignature = "FACP"
	fadtRevision  = 6
	// fadtMinorRevision is the FADT minor version: ACPI 6.4.
	fadtMinorRevision = 4
	fadtSize          = 276

	fadtFirmwareCtrl = 36  // u32 FACS address; none (hardware-reduced)
	fadtDSDT         = 40  // u32 DSDT address
	fadtPMProfile    = 45  // u8 Preferred_PM_Profile
	fadtSCIInt       = 46  // u16 SCI_INT
	fadtIAPCBootArch = 109 // u16 IAPC_BOOT_ARCH
	fadtFlags        = 112 // u32 fixed feature flags
	fadtMinorVersion = 131 // u8 FADT Minor Version
	fadtXFirmwareCtl = 132 // u64 X_FIRMWARE_CTRL; none
	fadtXDSDT        = 140 // u64 X_DSDT
	fadtHypervisorID = 268 // u64 Hypervisor Vendor Identity

	// fadtPMProfileUnspecified is Preferred_PM_Profile 0 (ACPI 5.2.9.1).
	fadtPMProfileUnspecified = 0
	// fadtNoSCI: a hardware-reduced platform with no GPIO-signaled events
	// has no SCI (ACPI 4.1); Linux ignores SCI_INT when HW_REDUCED_ACPI.
	fadtNoSCI = 0

	// Fixed feature flags (ACPI 5.2.9, "Fixed ACPI Description Table
	// Fixed Feature Flags").
	//
	// fadtFlagPwrButton set: the power button, if any, is a control-method
	// device, not a fixed feature; with no PNP0C0C device in the DSDT there
	// is none.
	fadtFlagPwrButton = 1 << 4
	// fadtFlagSlpButton set: likewise for the sleep button (PNP0C0E).
	fadtFlagSlpButton = 1 << 5
	// fadtFlagHWReducedACPI: no fixed hardware (PM1, PM timer, GPE blocks,
	// FACS); ACPI 4.1.
	fadtFlagHWReducedACPI = 1 << 20

	// IA-PC boot architecture flags (ACPI 5.2.9.3).
	//
	// bootArch8042: the motherboard has an 8042 (or equivalent) keyboard
	// controller. Linux marks the i8042 absent when a revision 2+ FADT
	// clears it.
	bootArch8042 = 1 << 1
	// bootArchVGANotPresent: do not probe VGA hardware.
	bootArchVGANotPresent = 1 << 2
	// bootArchCMOSRTCNotPresent: there is no CMOS RTC at ports 0x70/0x71.
	bootArchCMOSRTCNotPresent = 1 << 5

	// hypervisorID is the Hypervisor Vendor Identity (ACPI 5.2.9), eight
	// bytes.
	hypervisorID = "EMBERVM "
)

// Multiple APIC Description Table (ACPI 5.2.12).
const (
	madtSignature = "APIC"
	// madtRevision is the MADT revision of ACPI 6.3 and 6.4.
	madtRevision = 5

	madtLAPICAddr = 36 // u32 local interrupt controller address
	madtFlags     = 40 // u32 multiple APIC flags
	madtEntries   = 44 // first interrupt controller structure

	// madtPCATCompat: the system also has a PC-AT-compatible dual 8259
	// (ACPI 5.2.12); KVM emulates one.
	madtPCATCompat = 1 << 0

	// Interrupt controller structure types (ACPI 5.2.12).
	madtTypeLAPIC  = 0
	madtTypeIOAPIC = 1
	madtTypeISO    = 2

	// Processor Local APIC structure (ACPI 5.2.12.2): type,
	// length, ACPI processor UID, APIC ID, u32 flags.
	madtLAPICSize = 8
	// madtLAPICEnabled: the processor is ready for use (ACPI 5.2.12.2,
	// "Local APIC Flags").
	madtLAPICEnabled = 1 << 0

	// I/O APIC structure (ACPI 5.2.12.3): type, length, I/O
	// APIC ID, reserved, u32 address, u32 global system interrupt base.
	madtIOAPICSize = 12
	// ioapicGSIBase: the I/O APIC's input 0 is GSI 0.
	ioapicGSIBase = 0

	// Interrupt Source Override structure (ACPI 5.2.12.5):
	// type, length, bus, source, u32 GSI, u16 MPS INTI flags.
	madtISOSize = 10
	// isoBusISA is the bus of every override: 0, ISA.
	isoBusISA = 0
	// isoTimerIRQ and isoTimerGSI: ISA IRQ 0 (the PIT, with --pit)
	// arrives on I/O APIC input 0, stated explicitly. KVM's default GSI
	// routing wires GSI n to I/O APIC pin n, and Ember's MP table says the
	// same; the PC convention IRQ 0 -> pin 2 (ACPI 5.2.12.5) would need a
	// KVM routing table to match, as QEMU installs.
	isoTimerIRQ = 0
	isoTimerGSI = 0
	// isoFlagsConforms is MPS INTI flags 0: polarity and trigger mode
	// conform to the bus, edge-triggered and active-high for ISA
	// (ACPI 5.2.12.5).
	isoFlagsConforms = 0
)

// Differentiated System Description Table (ACPI 5.2.11.1).
const (
	dsdtSignature = "DSDT"
	// dsdtRevision 2: integers in the AML are 64 bits (ACPI 5.2.11.1).
	dsdtRevision = 2
)

// APIC addresses, the same as x86.LAPICAddr and x86.IOAPICAddr (the tests
// check they agree; this package does not import x86, which may import it).
const (
	// lapicAddr is the local APIC's MMIO base, the IA32_APIC_BASE reset
	// value.
	lapicAddr = 0xfee00000
	// ioapicAddr is the I/O APIC's MMIO base (IO_APIC_DEFAULT_PHYS_BASE).
	ioapicAddr = 0xfec00000
)

// checksum returns the byte that makes b (whose checksum byte is still 0)
// sum to zero modulo 256, as every ACPI table requires (ACPI 5.2.6).
func checksum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return -s
}

// newTable returns a table of size bytes whose header (ACPI 5.2.6) is
// filled in except for the checksum, which seal sets once the body is done.
func newTable(sig string, rev uint8, size int) []byte {
	le := binary.LittleEndian
	t := make([]byte, size)
	copy(t[hdrSignature:], sig)
	le.PutUint32(t[hdrLength:], uint32(size))
	t[hdrRevision] = rev
	copy(t[hdrOEMID:], oemID)
	copy(t[hdrOEMTableID:], oemTableID)
	le.PutUint32(t[hdrOEMRevision:], oemRevision)
	copy(t[hdrCreatorID:], creatorID)
	le.PutUint32(t[hdrCreatorRevision:], creatorRevision)
	return t
}

// seal sets the table's checksum so that the whole table sums to zero.
func seal(t []byte) []byte {
	t[hdrChecksum] = 0
	t[hdrChecksum] = checksum(t)
	return t
}

// rsdp builds the revision 2 RSDP pointing to the XSDT at xsdtAddr.
func rsdp(xsdtAddr uint64) []byte {
	le := binary.LittleEndian
	r := make([]byte, rsdpSize)
	copy(r[rsdpSignatureOff:], rsdpSignature)
	copy(r[rsdpOEMIDOff:], oemID)
	r[rsdpRevisionOff] = rsdpRevision
	le.PutUint32(r[rsdpRSDTAddrOff:], 0)
	le.PutUint32(r[rsdpLengthOff:], rsdpSize)
	le.PutUint64(r[rsdpXSDTAddrOff:], xsdtAddr)
	r[rsdpChecksumOff] = checksum(r[:rsdpV1Size])
	r[rsdpExtChecksum] = checksum(r)
	return r
}

// xsdtSize is the length of an XSDT listing n tables.
func xsdtSize(n int) int { return headerSize + xsdtEntrySize*n }

// xsdt builds the XSDT listing the tables at addrs.
func xsdt(addrs ...uint64) []byte {
	t := newTable(xsdtSignature, xsdtRevision, xsdtSize(len(addrs)))
	for i, a := range addrs {
		binary.LittleEndian.PutUint64(t[headerSize+xsdtEntrySize*i:], a)
	}
	return seal(t)
}

// fadt builds the hardware-reduced FADT pointing to the DSDT at dsdtAddr
// (which must be below 4 GiB: the DSDT field is 32 bits).
func fadt(dsdtAddr uint64, i8042 bool) []byte {
	le := binary.LittleEndian
	t := newTable(fadtSignature, fadtRevision, fadtSize)
	le.PutUint32(t[fadtFirmwareCtrl:], 0)
	le.PutUint32(t[fadtDSDT:], uint32(dsdtAddr))
	t[fadtPMProfile] = fadtPMProfileUnspecified
	le.PutUint16(t[fadtSCIInt:], fadtNoSCI)
	var boot uint16 = bootArchVGANotPresent | bootArchCMOSRTCNotPresent
	if i8042 {
		boot |= bootArch8042
	}
	le.PutUint16(t[fadtIAPCBootArch:], boot)
	le.PutUint32(t[fadtFlags:], fadtFlagHWReducedACPI|fadtFlagPwrButton|fadtFlagSlpButton)
	t[fadtMinorVersion] = fadtMinorRevision
	le.PutUint64(t[fadtXFirmwareCtl:], 0)
	le.PutUint64(t[fadtXDSDT:], dsdtAddr)
	copy(t[fadtHypervisorID:], hypervisorID)
	return seal(t)
}

// madtSize is the length of the MADT for cpus vCPUs.
func madtSize(cpus int) int {
	return madtEntries + cpus*madtLAPICSize + madtIOAPICSize + madtISOSize
}

// madt builds the MADT: a local APIC per vCPU (ACPI processor UID and APIC
// ID both the vCPU index, enabled), the I/O APIC (ID cpus, the first ID no
// local APIC uses, as in the MP table) and the ISA IRQ 0 override.
func madt(cpus int) []byte {
	le := binary.LittleEndian
	t := newTable(madtSignature, madtRevision, madtSize(cpus))
	le.PutUint32(t[madtLAPICAddr:], lapicAddr)
	le.PutUint32(t[madtFlags:], madtPCATCompat)
	off := madtEntries
	for i := range cpus {
		e := t[off : off+madtLAPICSize]
		e[0] = madtTypeLAPIC
		e[1] = madtLAPICSize
		e[2] = byte(i) // ACPI processor UID
		e[3] = byte(i) // APIC ID
		le.PutUint32(e[4:], madtLAPICEnabled)
		off += madtLAPICSize
	}
	io := t[off : off+madtIOAPICSize]
	io[0] = madtTypeIOAPIC
	io[1] = madtIOAPICSize
	io[2] = byte(cpus) // I/O APIC ID
	le.PutUint32(io[4:], ioapicAddr)
	le.PutUint32(io[8:], ioapicGSIBase)
	off += madtIOAPICSize

	iso := t[off : off+madtISOSize]
	iso[0] = madtTypeISO
	iso[1] = madtISOSize
	iso[2] = isoBusISA
	iso[3] = isoTimerIRQ
	le.PutUint32(iso[4:], isoTimerGSI)
	le.PutUint16(iso[8:], isoFlagsConforms)
	return seal(t)
}

// dsdt wraps the AML in a DSDT.
func dsdt(aml []byte) []byte {
	t := newTable(dsdtSignature, dsdtRevision, headerSize+len(aml))
	copy(t[headerSize:], aml)
	return seal(t)
}

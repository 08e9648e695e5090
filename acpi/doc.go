// Package acpi builds the ACPI tables Ember gives its x86-64 guests.
//
// Build lays out, from one base address (x86.RSDPAddr, in the BIOS area
// that OSPM scans for the RSDP):
//
//	RSDP -> XSDT -> FADT -> DSDT
//	             -> MADT
//
// that is:
//
//   - the RSDP (revision 2, with both checksums) pointing to the XSDT;
//   - the XSDT listing the FADT and the MADT;
//   - a hardware-reduced FADT (no PM registers, no FACS) whose DSDT and
//     X_DSDT fields point to the DSDT, and whose IA-PC boot flags say
//     whether an i8042 is present and that there is no VGA and no CMOS RTC;
//   - the MADT: one local APIC per vCPU, the I/O APIC and the ISA IRQ 0
//     override;
//   - the DSDT, whose hand-assembled AML describes COM1, the i8042 keyboard
//     controller and the virtio-mmio devices (_HID "LNRO0005", the way Linux
//     discovers virtio-mmio windows from ACPI) and, with Config.VMGenID, the
//     VM generation ID device (VGEN, _CID "VM_Gen_Counter", ADDR the ID's
//     address) and the Generic Event Device (GED_, ACPI0013) whose
//     interrupt's _EVT method runs Notify (VGEN, 0x80).
//
// Nothing here depends on an ACPI library: the tables follow the ACPI 6.4
// specification ("ACPI" in comments), chapter 5 for the tables, section 6.4
// for resource descriptors and chapter 20 for the AML encoding, and the tests
// check the result with iasl's disassembler.
package acpi

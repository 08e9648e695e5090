package acpi

import "fmt"

// MMIODevice is a virtio-mmio device: its register window [Addr, Addr+Size)
// and the GSI (I/O APIC input) of its interrupt.
type MMIODevice struct {
	Addr uint64
	Size uint64
	IRQ  uint32
}

// Config says what the tables describe.
type Config struct {
	// CPUs is the number of vCPUs, 1 to 32; their local APIC IDs are 0 to
	// CPUs-1.
	CPUs int
	// Serial adds COM1: I/O ports 0x3f8-0x3ff, IRQ 4.
	Serial bool
	// I8042 adds the PS/2 keyboard controller (I/O ports 0x60 and 0x64,
	// IRQ 1) and tells the guest, in the FADT, that there is an 8042.
	I8042 bool
	// VirtioMMIO are the virtio-mmio devices, named V000, V001, ... in
	// order. Windows must be non-empty, below 4 GiB and disjoint; IRQs must
	// be distinct GSIs from 5 to 23.
	VirtioMMIO []MMIODevice
	// VMGenID, if set, adds the Virtual Machine Generation ID device (VGEN)
	// and the Generic Event Device (GED_) that notifies it.
	VMGenID *VMGenID
}

// VMGenID places the Virtual Machine Generation ID (Microsoft's "Virtual
// Machine Generation ID" spec; Linux's drivers/virt/vmgenid.c): the 16-byte
// ID at guest-physical Addr, and the GSI whose edge makes the GED run
// Notify (VGEN, 0x80) so that the guest re-reads it.
type VMGenID struct {
	Addr uint64
	GSI  uint32
}

// VMGenIDSize is the size of the generation ID in guest memory.
const VMGenIDSize = 16

// vmgenidAlign is the alignment the spec asks of the ID's address.
const vmgenidAlign = 8

// VMGenIDGSIOK says whether gsi can be the VMGenID's: an I/O APIC input
// (0-23) that is not the timer's (0, 2), the i8042's (1) or COM1's (4).
func VMGenIDGSIOK(gsi uint32) bool {
	return gsi <= maxVirtioIRQ && gsi != 0 && gsi != 1 && gsi != 2 && gsi != com1IRQ
}

// Limits on a Config.
const (
	// maxCPUs is the most vCPUs, as x86.MaxVCPUs (and Firecracker).
	maxCPUs = 32
	// minVirtioIRQ and maxVirtioIRQ bound the GSIs of virtio-mmio devices:
	// the legacy I/O APIC inputs KVM emulates (KVM_IOAPIC_NUM_PINS = 24)
	// above the ones of the PC's ISA devices (0-4).
	minVirtioIRQ = 5
	maxVirtioIRQ = 23
	// addr32Limit is 4 GiB: a Memory32Fixed window and the FADT's 32-bit
	// DSDT address must lie below it.
	addr32Limit = 1 << 32
)

// xsdtEntries is the number of tables the XSDT lists: the FADT and the
// MADT (the DSDT is reached from the FADT, ACPI 5.2.9).
const xsdtEntries = 2

// tableAlign is the alignment of every table in the blob Build returns (the
// RSDP's 16-byte boundary, ACPI 5.2.5.1, suits them all).
const tableAlign = 16

// Build lays out the RSDP (at base) followed by the XSDT, FADT, MADT and
// DSDT, each 16-byte aligned, with every pointer an absolute guest-physical
// address, and returns the bytes to copy to guest memory at base. It fails
// if the config is invalid (CPUs out of range; a virtio-mmio window that is
// empty, reaches above 4 GiB or overlaps another; an IRQ outside 5-23 or
// used twice), if base is not 16-byte aligned, or if the tables would not
// fit in limit bytes or below 4 GiB.
func Build(cfg Config, base uint64, limit uint64) ([]byte, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("ACPI tables: invalid config: %w", err)
	}
	if base%rsdpAlign != 0 {
		return nil, fmt.Errorf("ACPI tables: RSDP address %#x is not %d-byte aligned", base, rsdpAlign)
	}
	aml, err := dsdtAML(cfg)
	if err != nil {
		return nil, fmt.Errorf("ACPI tables: %w", err)
	}
	dsdtT := dsdt(aml)
	madtT := madt(cfg.CPUs)

	size := 0
	place := func(n int) int {
		off := (size + tableAlign - 1) &^ (tableAlign - 1)
		size = off + n
		return off
	}
	rsdpOff := place(rsdpSize)
	xsdtOff := place(xsdtSize(xsdtEntries))
	fadtOff := place(fadtSize)
	madtOff := place(len(madtT))
	dsdtOff := place(len(dsdtT))

	total := uint64(size)
	if total > limit {
		return nil, fmt.Errorf("ACPI tables need %d bytes at %#x, more than the %d available", total, base, limit)
	}
	if base >= addr32Limit || total > addr32Limit-base {
		return nil, fmt.Errorf("ACPI tables at %#x (%d bytes) do not fit below 4 GiB, which the FADT's 32-bit DSDT field requires", base, total)
	}
	addr := func(off int) uint64 { return base + uint64(off) }

	out := make([]byte, total)
	copy(out[dsdtOff:], dsdtT)
	copy(out[madtOff:], madtT)
	copy(out[fadtOff:], fadt(addr(dsdtOff), cfg.I8042))
	copy(out[xsdtOff:], xsdt(addr(fadtOff), addr(madtOff)))
	copy(out[rsdpOff:], rsdp(addr(xsdtOff)))
	return out, nil
}

// validate checks the Config (see Build).
func (cfg *Config) validate() error {
	if cfg.CPUs < 1 || cfg.CPUs > maxCPUs {
		return fmt.Errorf("%d vCPUs: want 1 to %d", cfg.CPUs, maxCPUs)
	}
	if g := cfg.VMGenID; g != nil {
		if g.Addr%vmgenidAlign != 0 || g.Addr > ^uint64(0)-VMGenIDSize {
			return fmt.Errorf("VMGenID at %#x: want an %d-byte aligned address", g.Addr, vmgenidAlign)
		}
		if !VMGenIDGSIOK(g.GSI) {
			return fmt.Errorf("VMGenID GSI %d: want 3 or 5 to %d", g.GSI, maxVirtioIRQ)
		}
		for i, d := range cfg.VirtioMMIO {
			if d.IRQ == g.GSI {
				return fmt.Errorf("VMGenID and virtio-mmio device %d: both use IRQ %d", i, g.GSI)
			}
		}
	}
	for i, d := range cfg.VirtioMMIO {
		if err := d.validate(); err != nil {
			return fmt.Errorf("virtio-mmio device %d: %w", i, err)
		}
		for j, e := range cfg.VirtioMMIO[:i] {
			if d.IRQ == e.IRQ {
				return fmt.Errorf("virtio-mmio devices %d and %d: both use IRQ %d", j, i, d.IRQ)
			}
			if d.Addr < e.Addr+e.Size && e.Addr < d.Addr+d.Size {
				return fmt.Errorf("virtio-mmio devices %d and %d: windows [%#x, %#x) and [%#x, %#x) overlap",
					j, i, e.Addr, e.Addr+e.Size, d.Addr, d.Addr+d.Size)
			}
		}
	}
	return nil
}

// validate checks one virtio-mmio device. Once it passes, Addr+Size cannot
// overflow and both fit the 32-bit fields of Memory32Fixed.
func (d MMIODevice) validate() error {
	if d.Size == 0 {
		return fmt.Errorf("window at %#x has zero size", d.Addr)
	}
	if d.Addr >= addr32Limit || d.Size > addr32Limit-d.Addr || d.Size > addr32Limit-1 {
		return fmt.Errorf("window at %#x of %#x bytes does not fit below 4 GiB (Memory32Fixed)", d.Addr, d.Size)
	}
	if d.IRQ < minVirtioIRQ || d.IRQ > maxVirtioIRQ {
		return fmt.Errorf("IRQ %d: want %d to %d", d.IRQ, minVirtioIRQ, maxVirtioIRQ)
	}
	return nil
}

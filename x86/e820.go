package x86

import (
	"github.com/embervm/ember/memory"
)

// E820 address range types (ACPI 6.5 chapter 15, "System Address Map
// Interfaces", Address Range Types; E820_TYPE_* in
// arch/x86/include/asm/e820/types.h).
const (
	E820RAM      = 1 // usable RAM
	E820Reserved = 2 // reserved, not available to the OS
	E820ACPI     = 3 // ACPI tables, reclaimable after they are read
	E820NVS      = 4 // ACPI non-volatile storage
	E820Unusable = 5 // memory with detected errors
	E820PMEM     = 7 // persistent memory (E820_TYPE_PMEM)
)

// E820Entry is one range of the BIOS e820 memory map (struct boot_e820_entry
// in bootparam.h: u64 addr, u64 size, u32 type, packed to 20 bytes).
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// End is the first address after the entry.
func (e E820Entry) End() uint64 { return e.Addr + e.Size }

// E820Map returns the memory map of a guest, sorted by address:
//
//   - RAM [0, 0x9fc00): the 639 KiB of conventional memory below the
//     system area.
//   - reserved [0x9fc00, 0x100000): the system area (MP table, ACPI tables)
//     plus the legacy VGA and BIOS ranges, which hold the RSDP at 0xE0000.
//     Firecracker reserves only [0x9fc00, 0xe0000) and leaves the rest a
//     hole; reserving up to 1 MiB is what a PC BIOS reports, keeps the ACPI
//     tables and RSDP inside a reserved range, and matches what Linux
//     enforces anyway (trim_bios_range in arch/x86/kernel/setup.c turns any
//     RAM in 640 KiB-1 MiB into reserved).
//   - RAM from 1 MiB to the end of low memory (at most the 3 GiB start of the
//     32-bit MMIO hole, which is not RAM and not listed).
//   - RAM for every region beyond the hole (from 4 GiB up).
func E820Map(mem *memory.Guest) []E820Entry {
	var m []E820Entry
	for _, r := range mem.Regions() {
		if r.GuestAddr != 0 {
			if r.Size() > 0 {
				m = append(m, E820Entry{Addr: r.GuestAddr, Size: r.Size(), Type: E820RAM})
			}
			continue
		}
		end := r.End()
		if conv := min(end, SystemAreaStart); conv > 0 {
			m = append(m, E820Entry{Addr: 0, Size: conv, Type: E820RAM})
		}
		m = append(m, E820Entry{Addr: SystemAreaStart, Size: HighMemStart - SystemAreaStart, Type: E820Reserved})
		if end > HighMemStart {
			m = append(m, E820Entry{Addr: HighMemStart, Size: end - HighMemStart, Type: E820RAM})
		}
	}
	return m
}

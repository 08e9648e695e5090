package x86

import (
	"encoding/binary"
	"fmt"

	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/memory"
)

// Control register and EFER bits (Intel SDM Vol. 3A, "Control Registers"
// and "IA32_EFER MSR").
const (
	cr0PE     = 1 << 0  // protection enable
	cr0ET     = 1 << 4  // extension type, hardwired to 1 since the i486
	cr0PG     = 1 << 31 // paging
	cr4PAE    = 1 << 5  // physical address extension, required for long mode
	eferLME   = 1 << 8  // long mode enable
	eferLMA   = 1 << 10 // long mode active
	pageFlagP = 1 << 0  // page-table entry: present
	pageFlagW = 1 << 1  // page-table entry: read/write
	pageFlagS = 1 << 7  // page-directory entry: page size, a 2 MiB page
)

// Boot GDT layout: four 8-byte descriptors, in the order of Linux's
// GDT_ENTRY_BOOT_CS/DS/TSS (arch/x86/include/asm/segment.h).
const (
	gdtEntrySize = 8
	gdtEntries   = 4
	gdtNull      = 0
	gdtCode      = 1
	gdtData      = 2
	gdtTSS       = 3

	// Descriptor flags in Firecracker's gdt_entry encoding: bits 7:0 are the
	// access byte (type, S, DPL, P) and bits 15:12 the AVL, L, D/B and G
	// flags (Intel SDM Vol. 3A, "Segment Descriptors").
	gdtFlagsCode64 = 0xa09b // G, L; present, DPL 0, code execute/read accessed
	gdtFlagsCode32 = 0xc09b // G, D; present, DPL 0, code execute/read accessed
	gdtFlagsData   = 0xc093 // G, B; present, DPL 0, data read/write accessed
	gdtFlagsTSS64  = 0x808b // G; present, 64-bit busy TSS
	gdtFlagsTSS32  = 0x008b // present, 32-bit busy TSS
	// gdtFlatLimit is the largest 20-bit limit: with G set, 4 GiB.
	gdtFlatLimit = 0xfffff
	// tss32Limit is the limit of a minimal 32-bit TSS (104 bytes), used for
	// the PVH TR.
	tss32Limit = 0x67

	// idtLimit is the boot IDT's limit: one (empty) 8-byte entry.
	idtLimit = 8 - 1

	// pageTableEntries is the number of 8-byte entries in a 4 KiB table.
	pageTableEntries = 512
	// largePageSize is the size a page-directory entry with PS maps.
	largePageSize = 2 << 20
)

// gdtEntry encodes a segment descriptor (Intel SDM Vol. 3A, "Segment
// Descriptors") from flags (access byte in bits 7:0, AVL/L/DB/G in bits
// 15:12), a 32-bit base and a 20-bit limit.
func gdtEntry(flags uint16, base, limit uint32) uint64 {
	b, l := uint64(base), uint64(limit)
	return (b&0xff000000)<<(56-24) |
		(uint64(flags)&0xf0ff)<<40 |
		(l&0x000f0000)<<(48-16) |
		(b&0x00ffffff)<<16 |
		l&0x0000ffff
}

// segmentFromGDT returns the descriptor-cache form of GDT entry index.
func segmentFromGDT(entry uint64, index int) kvm.Segment {
	bit := func(n uint) uint8 { return uint8(entry>>n) & 1 }
	limit := uint32(entry>>32)&0x000f0000 | uint32(entry)&0x0000ffff
	if bit(55) == 1 { // G: limit counts 4 KiB units
		limit = limit<<12 | 0xfff
	}
	s := kvm.Segment{
		Base:     (entry>>32)&0xff000000 | (entry>>16)&0x00ffffff,
		Limit:    limit,
		Selector: uint16(index * gdtEntrySize),
		Type:     uint8(entry>>40) & 0xf,
		S:        bit(44),
		DPL:      uint8(entry>>45) & 0x3,
		Present:  bit(47),
		AVL:      bit(52),
		L:        bit(53),
		DB:       bit(54),
		G:        bit(55),
	}
	if s.Present == 0 {
		s.Unusable = 1
	}
	return s
}

// LongModeGDT returns the boot GDT for a 64-bit Linux boot: null, 64-bit
// code, data, 64-bit TSS.
func LongModeGDT() [gdtEntries]uint64 {
	return [gdtEntries]uint64{
		gdtNull: gdtEntry(0, 0, 0),
		gdtCode: gdtEntry(gdtFlagsCode64, 0, gdtFlatLimit),
		gdtData: gdtEntry(gdtFlagsData, 0, gdtFlatLimit),
		gdtTSS:  gdtEntry(gdtFlagsTSS64, 0, gdtFlatLimit),
	}
}

// ProtectedModeGDT returns the boot GDT for a PVH boot: null, flat 32-bit
// code, flat data, 32-bit TSS.
func ProtectedModeGDT() [gdtEntries]uint64 {
	return [gdtEntries]uint64{
		gdtNull: gdtEntry(0, 0, 0),
		gdtCode: gdtEntry(gdtFlagsCode32, 0, gdtFlatLimit),
		gdtData: gdtEntry(gdtFlagsData, 0, gdtFlatLimit),
		gdtTSS:  gdtEntry(gdtFlagsTSS32, 0, tss32Limit),
	}
}

// writeGDTAndIDT writes gdt at BootGDTAddr and an empty IDT at BootIDTAddr,
// and loads the segment registers, GDTR and IDTR in sregs from them: CS from
// the code entry, DS/ES/FS/GS/SS from the data entry, TR from the TSS entry.
func writeGDTAndIDT(mem *memory.Guest, sregs *kvm.Sregs, gdt [gdtEntries]uint64) error {
	b := make([]byte, gdtEntries*gdtEntrySize)
	for i, e := range gdt {
		binary.LittleEndian.PutUint64(b[i*gdtEntrySize:], e)
	}
	if _, err := mem.WriteAt(b, BootGDTAddr); err != nil {
		return fmt.Errorf("write boot GDT at %#x: %w", BootGDTAddr, err)
	}
	if _, err := mem.WriteAt(make([]byte, idtLimit+1), BootIDTAddr); err != nil {
		return fmt.Errorf("write boot IDT at %#x: %w", BootIDTAddr, err)
	}
	sregs.GDT = kvm.DTable{Base: BootGDTAddr, Limit: uint16(len(b) - 1)}
	sregs.IDT = kvm.DTable{Base: BootIDTAddr, Limit: idtLimit}
	sregs.CS = segmentFromGDT(gdt[gdtCode], gdtCode)
	data := segmentFromGDT(gdt[gdtData], gdtData)
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = data, data, data, data, data
	sregs.TR = segmentFromGDT(gdt[gdtTSS], gdtTSS)
	return nil
}

// writeIdentityMap writes page tables mapping the first 1 GiB to itself
// with 2 MiB pages: PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> i * 2 MiB.
func writeIdentityMap(mem *memory.Guest) error {
	tables := []struct {
		addr    uint64
		entries func(i int) uint64
	}{
		{PML4Addr, func(i int) uint64 { return ifZero(i, PDPTAddr|pageFlagP|pageFlagW) }},
		{PDPTAddr, func(i int) uint64 { return ifZero(i, PDAddr|pageFlagP|pageFlagW) }},
		{PDAddr, func(i int) uint64 { return uint64(i)*largePageSize | pageFlagP | pageFlagW | pageFlagS }},
	}
	page := make([]byte, pageTableEntries*8)
	for _, t := range tables {
		for i := range pageTableEntries {
			binary.LittleEndian.PutUint64(page[i*8:], t.entries(i))
		}
		if _, err := mem.WriteAt(page, int64(t.addr)); err != nil {
			return fmt.Errorf("write boot page table at %#x: %w", t.addr, err)
		}
	}
	return nil
}

func ifZero(i int, v uint64) uint64 {
	if i == 0 {
		return v
	}
	return 0
}

// SetupLongMode prepares a vCPU to enter a 64-bit kernel (boot.rst, "64-bit
// Boot Protocol": long mode, paging on with an identity map covering the
// kernel, zero page and command line, flat 4 GiB segments). It writes the
// boot GDT, IDT and the 1 GiB identity map into mem (so the kernel, initrd
// aside, must lie below 1 GiB) and sets, in sregs (read with KVM_GET_SREGS;
// other fields are kept): CS selector 0x8 (L=1), DS/ES/FS/GS/SS 0x10, TR
// 0x18, GDTR, IDTR, CR0 = PE|ET|PG, CR3 = PML4Addr, CR4 = PAE and
// EFER = LME|LMA. CR0's CD and NW end up clear, so caching is on.
//
// boot.rst names Linux's __BOOT_CS (0x10) and __BOOT_DS (0x18); like
// Firecracker this uses 0x8 and 0x10, which works because startup_64 loads
// its own GDT and reloads every segment register before depending on them.
func SetupLongMode(mem *memory.Guest, sregs *kvm.Sregs) error {
	if err := writeGDTAndIDT(mem, sregs, LongModeGDT()); err != nil {
		return err
	}
	if err := writeIdentityMap(mem); err != nil {
		return err
	}
	sregs.CR0 = cr0PE | cr0ET | cr0PG
	sregs.CR3 = PML4Addr
	sregs.CR4 = cr4PAE
	sregs.EFER = eferLME | eferLMA
	return nil
}

// SetupProtectedMode prepares a vCPU for a PVH entry (the Xen PVH ABI in
// start_info.h and docs/misc/pvh.pandoc: 32-bit protected mode, paging off,
// CS a flat 32-bit read/execute segment, DS/ES/SS flat read/write, TR a
// 32-bit TSS, CR4 and EFER clear). It writes the boot GDT and IDT into mem
// and sets sregs (other fields are kept): CR0 = PE|ET, CR3 = CR4 = EFER = 0.
func SetupProtectedMode(mem *memory.Guest, sregs *kvm.Sregs) error {
	if err := writeGDTAndIDT(mem, sregs, ProtectedModeGDT()); err != nil {
		return err
	}
	sregs.CR0 = cr0PE | cr0ET
	sregs.CR3 = 0
	sregs.CR4 = 0
	sregs.EFER = 0
	return nil
}

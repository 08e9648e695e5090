package x86

import (
	"testing"

	"github.com/embervm/ember/memory"
)

func TestLayoutValues(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"BootGDTAddr", BootGDTAddr, 0x500},
		{"BootIDTAddr", BootIDTAddr, 0x520},
		{"PVHInfoAddr", PVHInfoAddr, 0x6000},
		{"PVHModlistAddr", PVHModlistAddr, 0x6040},
		{"PVHMemmapAddr", PVHMemmapAddr, 0x7000},
		{"ZeroPageAddr", ZeroPageAddr, 0x7000},
		{"BootStackPointer", BootStackPointer, 0x8ff0},
		{"PML4Addr", PML4Addr, 0x9000},
		{"PDPTAddr", PDPTAddr, 0xa000},
		{"PDAddr", PDAddr, 0xb000},
		{"CmdlineAddr", CmdlineAddr, 0x20000},
		{"CmdlineMaxSize", CmdlineMaxSize, 2048},
		{"SystemAreaStart", SystemAreaStart, 0x9fc00},
		{"SystemAreaEnd", SystemAreaEnd, 0xe0000},
		{"RSDPAddr", RSDPAddr, 0xe0000},
		{"HighMemStart", HighMemStart, 0x100000},
		{"TSSAddr", TSSAddr, 0xfffbd000},
		{"IdentityMapAddr", IdentityMapAddr, 0xfffbc000},
		{"BootTimerAddr", BootTimerAddr, 0xc0000000},
		{"VirtioMMIOBase", VirtioMMIOBase, 0xc0001000},
		{"IOAPICAddr", IOAPICAddr, 0xfec00000},
		{"LAPICAddr", LAPICAddr, 0xfee00000},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// TestLayoutNoOverlap checks that the boot structures do not overlap one
// another, and that the MMIO addresses lie in the 32-bit MMIO hole.
func TestLayoutNoOverlap(t *testing.T) {
	type area struct {
		name       string
		start, end uint64
	}
	linux := []area{
		{"GDT", BootGDTAddr, BootGDTAddr + gdtEntries*gdtEntrySize},
		{"IDT", BootIDTAddr, BootIDTAddr + idtLimit + 1},
		{"zero page", ZeroPageAddr, ZeroPageAddr + ZeroPageSize},
		{"stack top", BootStackPointer, BootStackPointer + 16},
		{"PML4", PML4Addr, PML4Addr + 4096},
		{"PDPT", PDPTAddr, PDPTAddr + 4096},
		{"PD", PDAddr, PDAddr + 4096},
		{"cmdline", CmdlineAddr, CmdlineAddr + CmdlineMaxSize},
		{"MP table", MPTableAddr, MPTableAddr + MPTableSize(MaxVCPUs)},
		{"RSDP", RSDPAddr, RSDPAddr + 36},
	}
	pvh := []area{
		{"GDT", BootGDTAddr, BootGDTAddr + gdtEntries*gdtEntrySize},
		{"IDT", BootIDTAddr, BootIDTAddr + idtLimit + 1},
		{"start info", PVHInfoAddr, PVHInfoAddr + pvhStartInfoSize},
		{"modlist", PVHModlistAddr, PVHModlistAddr + pvhModlistEntrySize},
		{"memmap", PVHMemmapAddr, PVHMemmapAddr + PVHMaxMemmapEntries*pvhMemmapEntrySize},
		{"cmdline", CmdlineAddr, CmdlineAddr + CmdlineMaxSize},
		{"MP table", MPTableAddr, MPTableAddr + MPTableSize(MaxVCPUs)},
	}
	for _, as := range [][]area{linux, pvh} {
		for i, a := range as {
			if a.end > HighMemStart {
				t.Errorf("%s [%#x, %#x) reaches above 1 MiB", a.name, a.start, a.end)
			}
			for _, b := range as[i+1:] {
				if a.start < b.end && b.start < a.end {
					t.Errorf("%s [%#x, %#x) overlaps %s [%#x, %#x)", a.name, a.start, a.end, b.name, b.start, b.end)
				}
			}
		}
	}
	for _, a := range []uint64{BootTimerAddr, VirtioMMIOBase, MMIODevicesEnd, IOAPICAddr, LAPICAddr, TSSAddr, IdentityMapAddr} {
		if a < memory.MMIOHoleStart || a >= memory.MMIOHoleEnd {
			t.Errorf("%#x is outside the MMIO hole", a)
		}
	}
	if IdentityMapAddr+4096 != TSSAddr {
		t.Errorf("identity map page %#x does not sit just below the TSS %#x", uint64(IdentityMapAddr), uint64(TSSAddr))
	}
}

package x86

import (
	"testing"
)

func TestWritePVHStartInfo(t *testing.T) {
	mem := testGuest(2 << 20)
	e820 := []E820Entry{{0, 0x9fc00, E820RAM}, {0x9fc00, 0x60400, E820Reserved}, {0x100000, 0x100000, E820RAM}}
	cfg := PVHConfig{CmdlineAddr: 0x20000, InitrdAddr: 0x1f0000, InitrdSize: 0x8123, E820: e820, RSDPAddr: 0xe0000}
	if err := WritePVHStartInfo(mem, cfg); err != nil {
		t.Fatal(err)
	}
	si := read(t, mem, 0x6000, 56)
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"magic@0", uint64(u32(si, 0)), 0x336ec578},
		{"version@4", uint64(u32(si, 4)), 1},
		{"flags@8", uint64(u32(si, 8)), 0},
		{"nr_modules@12", uint64(u32(si, 12)), 1},
		{"modlist_paddr@16", u64(si, 16), 0x6040},
		{"cmdline_paddr@24", u64(si, 24), 0x20000},
		{"rsdp_paddr@32", u64(si, 32), 0xe0000},
		{"memmap_paddr@40", u64(si, 40), 0x7000},
		{"memmap_entries@48", uint64(u32(si, 48)), 3},
		{"reserved@52", uint64(u32(si, 52)), 0},
	} {
		if c.got != c.want {
			t.Errorf("hvm_start_info.%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	mod := read(t, mem, 0x6040, 32)
	if u64(mod, 0) != 0x1f0000 || u64(mod, 8) != 0x8123 || u64(mod, 16) != 0 || u64(mod, 24) != 0 {
		t.Errorf("hvm_modlist_entry = % x", mod)
	}
	mm := read(t, mem, 0x7000, 3*24)
	for i, e := range e820 {
		b := mm[24*i:]
		if got := (E820Entry{u64(b, 0), u64(b, 8), u32(b, 16)}); got != e || u32(b, 20) != 0 {
			t.Errorf("memmap[%d] = %+v reserved %#x, want %+v", i, got, u32(b, 20), e)
		}
	}
}

func TestWritePVHStartInfoNoInitrd(t *testing.T) {
	mem := testGuest(2 << 20)
	if err := WritePVHStartInfo(mem, PVHConfig{E820: E820Map(mem)}); err != nil {
		t.Fatal(err)
	}
	si := read(t, mem, 0x6000, 56)
	if u32(si, 12) != 0 || u64(si, 16) != 0 {
		t.Errorf("nr_modules %d modlist_paddr %#x without an initrd", u32(si, 12), u64(si, 16))
	}
	for _, b := range read(t, mem, 0x6040, 32) {
		if b != 0 {
			t.Fatal("module list written without an initrd")
		}
	}
}

func TestWritePVHStartInfoErrors(t *testing.T) {
	mem := testGuest(2 << 20)
	if err := WritePVHStartInfo(mem, PVHConfig{}); err == nil {
		t.Error("empty memory map accepted")
	}
	if err := WritePVHStartInfo(mem, PVHConfig{E820: make([]E820Entry, 129)}); err == nil {
		t.Error("129-entry memory map accepted")
	}
	if err := WritePVHStartInfo(testGuest(0x7000), PVHConfig{E820: make([]E820Entry, 1)}); err == nil {
		t.Error("memory map written past the end of memory")
	}
}

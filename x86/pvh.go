package x86

import (
	"encoding/binary"
	"fmt"

	"github.com/embervm/ember/memory"
)

// Xen PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h).
const (
	// PVHStartInfoMagic is XEN_HVM_START_MAGIC_VALUE, hvm_start_info.magic.
	PVHStartInfoMagic = 0x336ec578
	// pvhStartInfoVersion is version 1, which adds memmap_paddr and
	// memmap_entries.
	pvhStartInfoVersion = 1

	// pvhStartInfoSize is sizeof(struct hvm_start_info), version 1.
	pvhStartInfoSize = 56
	// pvhModlistEntrySize is sizeof(struct hvm_modlist_entry).
	pvhModlistEntrySize = 32
	// pvhMemmapEntrySize is sizeof(struct hvm_memmap_table_entry).
	pvhMemmapEntrySize = 24

	// PVHMaxMemmapEntries bounds the memory map written at PVHMemmapAddr.
	// Linux converts it into boot_params.e820_table (init_pvh_bootparams),
	// which holds E820_MAX_ENTRIES_ZEROPAGE entries; 128 entries also end
	// well below the boot stack and page tables.
	PVHMaxMemmapEntries = E820MaxZeroPageEntries
)

// Offsets of struct hvm_start_info fields.
const (
	pvhMagic         = 0  // u32 magic
	pvhVersion       = 4  // u32 version
	pvhFlags         = 8  // u32 flags (SIF_xxx)
	pvhNrModules     = 12 // u32 nr_modules
	pvhModlistPaddr  = 16 // u64 modlist_paddr
	pvhCmdlinePaddr  = 24 // u64 cmdline_paddr
	pvhRSDPPaddr     = 32 // u64 rsdp_paddr
	pvhMemmapPaddr   = 40 // u64 memmap_paddr (version 1)
	pvhMemmapEntries = 48 // u32 memmap_entries (version 1)
	// u32 reserved at 52.
)

// Offsets of struct hvm_modlist_entry and hvm_memmap_table_entry fields.
const (
	pvhModPaddr        = 0  // u64 paddr
	pvhModSize         = 8  // u64 size
	pvhModCmdlinePaddr = 16 // u64 cmdline_paddr; u64 reserved at 24
	pvhMemAddr         = 0  // u64 addr
	pvhMemSize         = 8  // u64 size
	pvhMemType         = 16 // u32 type (E820 types); u32 reserved at 20
)

// PVHConfig describes what the PVH start info tells the kernel.
type PVHConfig struct {
	// CmdlineAddr is the guest address of the NUL-terminated command line,
	// or 0 for none.
	CmdlineAddr uint64
	// InitrdAddr and InitrdSize locate the initrd, passed as the single
	// module; size 0 means none.
	InitrdAddr, InitrdSize uint64
	// E820 is the memory map (see E820Map).
	E820 []E820Entry
	// RSDPAddr is the ACPI RSDP's address, or 0 for none.
	RSDPAddr uint64
}

// WritePVHStartInfo writes struct hvm_start_info at PVHInfoAddr, the initrd
// module entry at PVHModlistAddr and the memory map at PVHMemmapAddr.
func WritePVHStartInfo(mem *memory.Guest, cfg PVHConfig) error {
	if len(cfg.E820) == 0 || len(cfg.E820) > PVHMaxMemmapEntries {
		return fmt.Errorf("PVH memory map of %d entries: want 1 to %d", len(cfg.E820), PVHMaxMemmapEntries)
	}
	le := binary.LittleEndian

	info := make([]byte, pvhStartInfoSize)
	le.PutUint32(info[pvhMagic:], PVHStartInfoMagic)
	le.PutUint32(info[pvhVersion:], pvhStartInfoVersion)
	le.PutUint32(info[pvhFlags:], 0)
	le.PutUint64(info[pvhCmdlinePaddr:], cfg.CmdlineAddr)
	le.PutUint64(info[pvhRSDPPaddr:], cfg.RSDPAddr)
	le.PutUint64(info[pvhMemmapPaddr:], PVHMemmapAddr)
	le.PutUint32(info[pvhMemmapEntries:], uint32(len(cfg.E820)))

	if cfg.InitrdSize > 0 {
		le.PutUint32(info[pvhNrModules:], 1)
		le.PutUint64(info[pvhModlistPaddr:], PVHModlistAddr)
		mod := make([]byte, pvhModlistEntrySize)
		le.PutUint64(mod[pvhModPaddr:], cfg.InitrdAddr)
		le.PutUint64(mod[pvhModSize:], cfg.InitrdSize)
		le.PutUint64(mod[pvhModCmdlinePaddr:], 0)
		if _, err := mem.WriteAt(mod, PVHModlistAddr); err != nil {
			return fmt.Errorf("write PVH module list at %#x: %w", PVHModlistAddr, err)
		}
	}

	mm := make([]byte, len(cfg.E820)*pvhMemmapEntrySize)
	for i, e := range cfg.E820 {
		b := mm[i*pvhMemmapEntrySize:]
		le.PutUint64(b[pvhMemAddr:], e.Addr)
		le.PutUint64(b[pvhMemSize:], e.Size)
		le.PutUint32(b[pvhMemType:], e.Type)
	}
	if _, err := mem.WriteAt(mm, PVHMemmapAddr); err != nil {
		return fmt.Errorf("write PVH memory map at %#x: %w", PVHMemmapAddr, err)
	}
	if _, err := mem.WriteAt(info, PVHInfoAddr); err != nil {
		return fmt.Errorf("write PVH start info at %#x: %w", PVHInfoAddr, err)
	}
	return nil
}

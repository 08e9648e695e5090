package x86

import (
	"encoding/binary"
	"fmt"

	"github.com/embervm/ember/memory"
)

// Offsets into struct boot_params (arch/x86/include/uapi/asm/bootparam.h,
// documented in Documentation/arch/x86/zero-page.rst and boot.rst).
const (
	bpACPIRSDPAddr     = 0x070 // u64 acpi_rsdp_addr
	bpExtRamdiskImage  = 0x0c0 // u32 ext_ramdisk_image: bits 63:32 of ramdisk_image
	bpExtRamdiskSize   = 0x0c4 // u32 ext_ramdisk_size: bits 63:32 of ramdisk_size
	bpExtCmdLinePtr    = 0x0c8 // u32 ext_cmd_line_ptr: bits 63:32 of cmd_line_ptr
	bpE820Entries      = 0x1e8 // u8 e820_entries
	bpSetupHeader      = 0x1f1 // struct setup_header hdr
	bpSetupHeaderLimit = 0x290 // u32 edd_mbr_sig_buffer[16]: first field after hdr
	bpE820Table        = 0x2d0 // struct boot_e820_entry e820_table[128]

	// e820EntrySize is sizeof(struct boot_e820_entry), packed.
	e820EntrySize = 20
	// E820MaxZeroPageEntries is E820_MAX_ENTRIES_ZEROPAGE, the capacity of
	// boot_params.e820_table.
	E820MaxZeroPageEntries = 128
)

// Offsets of setup_header fields, relative to the start of boot_params (and
// equally of a bzImage file), from the table in boot.rst "The Real-Mode
// Kernel Header".
const (
	hdrBootFlag        = 0x1fe // u16 boot_flag, 0xAA55
	hdrJump            = 0x200 // u16 jump; its high byte locates the header's end
	hdrHeader          = 0x202 // u32 header, "HdrS"
	hdrVersion         = 0x206 // u16 version (protocol 2.00+)
	hdrTypeOfLoader    = 0x210 // u8 type_of_loader (2.00+)
	hdrLoadflags       = 0x211 // u8 loadflags (2.00+)
	hdrRamdiskImage    = 0x218 // u32 ramdisk_image (2.00+)
	hdrRamdiskSize     = 0x21c // u32 ramdisk_size (2.00+)
	hdrHeapEndPtr      = 0x224 // u16 heap_end_ptr (2.01+)
	hdrCmdLinePtr      = 0x228 // u32 cmd_line_ptr (2.02+)
	hdrKernelAlignment = 0x230 // u32 kernel_alignment (2.05+)
	hdrCmdlineSize     = 0x238 // u32 cmdline_size (2.06+)
)

// Values written into the setup header.
const (
	// bootFlagMagic is boot_flag's required value.
	bootFlagMagic = 0xaa55
	// hdrSMagic is "HdrS" as a little-endian u32.
	hdrSMagic = 0x53726448
	// builtProtocolVersion is the version (2.15, the latest in boot.rst) put
	// into a header built for a kernel that has none (an ELF vmlinux).
	builtProtocolVersion = 0x020f
	// loaderTypeUndefined is type_of_loader 0xFF: "If your boot loader does
	// not have an assigned id ... enter 0xFF here".
	loaderTypeUndefined = 0xff
	// loadflagLoadedHigh is LOADED_HIGH (loadflags bit 0): protected-mode
	// code is loaded at 0x100000.
	loadflagLoadedHigh = 1 << 0
	// loadflagCanUseHeap is CAN_USE_HEAP (loadflags bit 7): heap_end_ptr is
	// valid.
	loadflagCanUseHeap = 1 << 7
	// heapEndPtr is boot.rst's sample configuration for protocol 2.02+:
	// heap_end = 0xe000, heap_end_ptr = heap_end - 0x200.
	heapEndPtr = 0xe000 - 0x200
	// builtKernelAlignment is Firecracker's KERNEL_MIN_ALIGNMENT_BYTES (16 MiB).
	builtKernelAlignment = 0x1000000
	// legacyCmdlineMax is the command line limit, NUL included, of protocol
	// 2.05 and older, which have no cmdline_size field (boot.rst: "the
	// maximum size was 255").
	legacyCmdlineMax = 256
	// cmdlineSizeVersion is the protocol version that added cmdline_size.
	cmdlineSizeVersion = 0x0206
)

// setupHeaderMinLen is how much of a kernel-supplied setup header must be
// present: up to and including cmd_line_ptr, the last field written here.
const setupHeaderMinLen = hdrCmdLinePtr + 4 - bpSetupHeader

// SetupHeader extracts the setup header of a bzImage: the bytes from 0x1f1
// to 0x202 plus the byte at 0x201, as boot.rst ("Loading The Rest Of The
// Kernel") tells a 64-bit boot loader to copy into boot_params. It checks
// the boot_flag and "HdrS" signatures.
func SetupHeader(image []byte) ([]byte, error) {
	if len(image) < hdrHeader+4 {
		return nil, fmt.Errorf("bzImage of %d bytes is too short for a setup header", len(image))
	}
	if f := binary.LittleEndian.Uint16(image[hdrBootFlag:]); f != bootFlagMagic {
		return nil, fmt.Errorf("bzImage boot_flag at %#x is %#04x, want %#04x", hdrBootFlag, f, bootFlagMagic)
	}
	if h := binary.LittleEndian.Uint32(image[hdrHeader:]); h != hdrSMagic {
		return nil, fmt.Errorf("bzImage header at %#x is %#08x, want %#08x (\"HdrS\")", hdrHeader, h, hdrSMagic)
	}
	end := hdrHeader + int(image[hdrJump+1])
	if end > bpSetupHeaderLimit {
		return nil, fmt.Errorf("bzImage setup header ends at %#x, beyond boot_params' %#x", end, bpSetupHeaderLimit)
	}
	if end > len(image) {
		return nil, fmt.Errorf("bzImage setup header ends at %#x, beyond the %d-byte image", end, len(image))
	}
	return append([]byte(nil), image[bpSetupHeader:end]...), nil
}

// ZeroPageConfig describes what the Linux zero page tells the kernel.
type ZeroPageConfig struct {
	// SetupHeader is the kernel's setup header (see SetupHeader), copied
	// into the zero page at 0x1f1. Nil builds one, as for an ELF vmlinux.
	SetupHeader []byte
	// CmdlineAddr is the guest address of the NUL-terminated command line.
	CmdlineAddr uint64
	// CmdlineSize is the command line's length including its NUL; it is
	// checked against the kernel's limit.
	CmdlineSize uint64
	// InitrdAddr and InitrdSize locate the initrd; size 0 means none.
	InitrdAddr, InitrdSize uint64
	// E820 is the memory map (see E820Map).
	E820 []E820Entry
	// RSDPAddr is the ACPI RSDP's address, or 0 for none.
	RSDPAddr uint64
}

// ZeroPage builds the 4096-byte Linux boot_params for a 64-bit boot
// (boot.rst, "64-bit Boot Protocol").
//
// Header fields the kernel provides (version, loadflags' LOADED_HIGH,
// kernel_alignment, cmdline_size) are kept from cfg.SetupHeader when one is
// given, and filled with fixed values otherwise. Fields a boot loader must
// write (type_of_loader, CAN_USE_HEAP and heap_end_ptr, ramdisk_*,
// cmd_line_ptr and their ext_* high halves) are always written.
func ZeroPage(cfg ZeroPageConfig) ([]byte, error) {
	zp := make([]byte, ZeroPageSize)
	le := binary.LittleEndian

	cmdlineMax := uint64(CmdlineMaxSize)
	if h := cfg.SetupHeader; h != nil {
		if len(h) < setupHeaderMinLen || len(h) > bpSetupHeaderLimit-bpSetupHeader {
			return nil, fmt.Errorf("setup header of %d bytes: want %d to %d", len(h), setupHeaderMinLen, bpSetupHeaderLimit-bpSetupHeader)
		}
		copy(zp[bpSetupHeader:], h)
		if m := le.Uint32(zp[hdrHeader:]); m != hdrSMagic {
			return nil, fmt.Errorf("setup header signature is %#08x, want %#08x (\"HdrS\")", m, hdrSMagic)
		}
		cmdlineMax = legacyCmdlineMax
		if le.Uint16(zp[hdrVersion:]) >= cmdlineSizeVersion && len(h) >= hdrCmdlineSize+4-bpSetupHeader {
			cmdlineMax = uint64(le.Uint32(zp[hdrCmdlineSize:])) + 1
		}
		zp[hdrLoadflags] |= loadflagCanUseHeap
	} else {
		le.PutUint16(zp[hdrBootFlag:], bootFlagMagic)
		le.PutUint32(zp[hdrHeader:], hdrSMagic)
		le.PutUint16(zp[hdrVersion:], builtProtocolVersion)
		zp[hdrLoadflags] = loadflagLoadedHigh | loadflagCanUseHeap
		le.PutUint32(zp[hdrKernelAlignment:], builtKernelAlignment)
		le.PutUint32(zp[hdrCmdlineSize:], CmdlineMaxSize-1) // excludes the NUL
	}
	if cfg.CmdlineSize > cmdlineMax {
		return nil, fmt.Errorf("command line of %d bytes (with NUL) exceeds the kernel's limit of %d", cfg.CmdlineSize, cmdlineMax)
	}
	if len(cfg.E820) > E820MaxZeroPageEntries {
		return nil, fmt.Errorf("e820 map of %d entries exceeds the zero page's %d", len(cfg.E820), E820MaxZeroPageEntries)
	}
	if cfg.InitrdSize == 0 {
		cfg.InitrdAddr = 0
	}

	zp[hdrTypeOfLoader] = loaderTypeUndefined
	le.PutUint16(zp[hdrHeapEndPtr:], heapEndPtr)
	putSplit64(zp, hdrCmdLinePtr, bpExtCmdLinePtr, cfg.CmdlineAddr)
	putSplit64(zp, hdrRamdiskImage, bpExtRamdiskImage, cfg.InitrdAddr)
	putSplit64(zp, hdrRamdiskSize, bpExtRamdiskSize, cfg.InitrdSize)
	le.PutUint64(zp[bpACPIRSDPAddr:], cfg.RSDPAddr)

	zp[bpE820Entries] = uint8(len(cfg.E820))
	for i, e := range cfg.E820 {
		b := zp[bpE820Table+i*e820EntrySize:]
		le.PutUint64(b[0:], e.Addr)
		le.PutUint64(b[8:], e.Size)
		le.PutUint32(b[16:], e.Type)
	}
	return zp, nil
}

// putSplit64 stores v's low 32 bits at lo and its high 32 bits at hi, the
// way boot_params extends 32-bit setup_header fields (ext_* fields).
func putSplit64(b []byte, lo, hi int, v uint64) {
	binary.LittleEndian.PutUint32(b[lo:], uint32(v))
	binary.LittleEndian.PutUint32(b[hi:], uint32(v>>32))
}

// WriteZeroPage builds the zero page (see ZeroPage) and writes it at
// ZeroPageAddr.
func WriteZeroPage(mem *memory.Guest, cfg ZeroPageConfig) error {
	zp, err := ZeroPage(cfg)
	if err != nil {
		return fmt.Errorf("build zero page: %w", err)
	}
	if _, err := mem.WriteAt(zp, ZeroPageAddr); err != nil {
		return fmt.Errorf("write zero page at %#x: %w", ZeroPageAddr, err)
	}
	return nil
}

package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/embervm/ember/memory"
)

// Setup header of a bzImage, at fixed file offsets (Linux
// Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header").
const (
	hdrSetupSects      = 0x1f1 // setup_sects: size of the setup code in 512-byte sectors
	hdrJumpOffset      = 0x201 // second byte of the jump at 0x200: header end - 0x202
	hdrMagic           = 0x202 // header: "HdrS"
	hdrVersion         = 0x206 // version: boot protocol version
	hdrLoadFlags       = 0x211 // loadflags
	hdrInitrdAddrMax   = 0x22c // initrd_addr_max (2.03+)
	hdrKernelAlignment = 0x230 // kernel_alignment (2.05+)
	hdrRelocatable     = 0x234 // relocatable_kernel (2.05+)
	hdrXLoadFlags      = 0x236 // xloadflags (2.12+)
	hdrCmdlineSize     = 0x238 // cmdline_size (2.06+)
	hdrPayloadOffset   = 0x248 // payload_offset (2.08+)
	hdrPayloadLength   = 0x24c // payload_length (2.08+)
	hdrPrefAddress     = 0x258 // pref_address (2.10+)
	hdrInitSize        = 0x260 // init_size (2.10+)
	hdrEnd212          = 0x268 // end of the last field of protocol 2.12 (handover_offset)

	// hdrAreaEnd is where struct boot_params stops having room for the
	// setup header (the header and its padding end at 0x290).
	hdrAreaEnd = 0x290

	// bzMagic is the header signature at hdrMagic.
	bzMagic = "HdrS"

	// defaultSetupSects replaces a setup_sects of 0 ("if this field is 0,
	// the real value is 4").
	defaultSetupSects = 4
	// sectorSize is the unit of setup_sects.
	sectorSize = 512

	// minProtocol is the oldest boot protocol Ember boots: 2.12 added
	// xloadflags and with it XLF_KERNEL_64, the 64-bit entry.
	minProtocol = 0x020c
	// minPayloadProtocol is the protocol that added payload_offset and
	// payload_length (2.08).
	minPayloadProtocol = 0x0208

	// loadedHigh is LOADED_HIGH in loadflags: the protected-mode code is
	// loaded at 0x100000 (a bzImage, not a zImage).
	loadedHigh = 1 << 0
	// xlfKernel64 is XLF_KERNEL_64 in xloadflags: the kernel has the
	// legacy 64-bit entry point at 0x200.
	xlfKernel64 = 1 << 0

	// bzLoadAddr is where the protected-mode kernel is loaded (boot.rst:
	// "loaded at 0x100000"; Firecracker loads it there too).
	bzLoadAddr = HimemStart
	// bzEntry64Offset is the 64-bit entry's offset in the protected-mode
	// kernel ("the 64-bit entry point is at offset 0x200").
	bzEntry64Offset = 0x200
)

// isBzImage reports whether head has the bzImage header signature.
func isBzImage(head []byte) bool {
	return len(head) >= hdrMagic+len(bzMagic) && string(head[hdrMagic:hdrMagic+len(bzMagic)]) == bzMagic
}

// protocolString renders a boot protocol version: 0x020f is "2.15".
func protocolString(v uint16) string { return fmt.Sprintf("%d.%02d", v>>8, v&0xff) }

// pmOffset is the file offset of the protected-mode kernel.
func pmOffset(head []byte) uint64 {
	n := uint64(head[hdrSetupSects])
	if n == 0 {
		n = defaultSetupSects
	}
	return (n + 1) * sectorSize
}

// loadBzImage validates a bzImage and copies its protected-mode kernel to
// 0x100000.
func loadBzImage(mem *memory.Guest, r io.ReaderAt, size int64, head []byte) (*Kernel, error) {
	le := binary.LittleEndian
	if len(head) < hdrEnd212 {
		return nil, fmt.Errorf("truncated: bzImage setup header needs %d bytes, file has %d", hdrEnd212, size)
	}
	k := &Kernel{
		Format:   FormatBzImage,
		Protocol: le.Uint16(head[hdrVersion:]),
	}
	if k.Protocol < minProtocol {
		return nil, fmt.Errorf("bzImage boot protocol %s is too old; Ember needs %s or newer (Linux 3.8+)",
			protocolString(k.Protocol), protocolString(minProtocol))
	}
	if head[hdrLoadFlags]&loadedHigh == 0 {
		return nil, errors.New("zImage (loadflags lacks LOADED_HIGH); Ember boots bzImages")
	}
	k.XLoadFlags = le.Uint16(head[hdrXLoadFlags:])
	if k.XLoadFlags&xlfKernel64 == 0 {
		return nil, fmt.Errorf("bzImage has no 64-bit entry point (xloadflags %#x lacks XLF_KERNEL_64)", k.XLoadFlags)
	}
	hdrEnd := min(hdrMagic+int(head[hdrJumpOffset]), hdrAreaEnd) // the jump at 0x200 skips the header
	if hdrEnd < hdrEnd212 {
		return nil, fmt.Errorf("bzImage setup header ends at %#x, before the end of the protocol 2.12 fields (%#x)", hdrEnd, hdrEnd212)
	}
	if len(head) < hdrEnd {
		return nil, fmt.Errorf("truncated: bzImage setup header needs %d bytes, file has %d", hdrEnd, size)
	}
	k.SetupHeader = append([]byte(nil), head[hdrSetupSects:hdrEnd]...)
	k.InitrdAddrMax = uint64(le.Uint32(head[hdrInitrdAddrMax:]))
	k.CmdlineMax = uint64(le.Uint32(head[hdrCmdlineSize:])) + 1
	k.KernelAlignment = le.Uint32(head[hdrKernelAlignment:])
	k.Relocatable = head[hdrRelocatable] != 0
	k.PrefAddress = le.Uint64(head[hdrPrefAddress:])
	k.InitSize = le.Uint32(head[hdrInitSize:])

	off := pmOffset(head)
	if off >= uint64(size) {
		return nil, fmt.Errorf("truncated: setup code (setup_sects=%d) needs %d bytes and a kernel after them, file has %d",
			head[hdrSetupSects], off, size)
	}
	pmSize := uint64(size) - off
	if pmSize <= bzEntry64Offset {
		return nil, fmt.Errorf("truncated: protected-mode kernel is %d bytes, too short to hold the 64-bit entry at %#x", pmSize, bzEntry64Offset)
	}

	// The decompressor runs at the load address rounded up to
	// kernel_alignment (relocatable) but never below pref_address
	// (LOAD_PHYSICAL_ADDR), where a non-relocatable kernel always runs, and
	// needs init_size bytes from there (boot.rst, init_size/pref_address;
	// arch/x86/boot/compressed/head_64.S).
	runAt := uint64(bzLoadAddr)
	if k.Relocatable {
		a := uint64(k.KernelAlignment)
		if a != 0 && bits.OnesCount64(a) == 1 {
			runAt = (runAt + a - 1) &^ (a - 1)
		}
	}
	runAt = max(runAt, k.PrefAddress)
	if runAt+uint64(k.InitSize) < runAt {
		return nil, fmt.Errorf("bzImage pref_address %#x + init_size %#x overflows", k.PrefAddress, k.InitSize)
	}
	if err := checkFits(mem, "kernel image", bzLoadAddr, bzLoadAddr+pmSize); err != nil {
		return nil, err
	}
	if err := checkFits(mem, fmt.Sprintf("kernel (init_size %s)", mib(uint64(k.InitSize))), runAt, runAt+uint64(k.InitSize)); err != nil {
		return nil, err
	}
	k.Start = bzLoadAddr
	k.End = max(bzLoadAddr+pmSize, runAt+uint64(k.InitSize))
	k.Entry = bzLoadAddr + bzEntry64Offset

	dst, err := mem.Slice(bzLoadAddr, pmSize)
	if err != nil {
		return nil, fmt.Errorf("kernel image: %w", err)
	}
	// Where the image lies and where it decompresses itself to.
	mem.AdviseHugeRange(k.Start, k.End-k.Start)
	if err := readFull(r, dst, int64(off)); err != nil {
		return nil, fmt.Errorf("read protected-mode kernel: %w", err)
	}
	return k, nil
}

package loader

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/embervm/ember/memory"
)

// Format is the on-disk format of a guest kernel.
type Format int

// Kernel formats Load recognises.
const (
	// FormatELF is an uncompressed ELF vmlinux.
	FormatELF Format = iota + 1
	// FormatBzImage is a Linux bzImage (boot protocol 2.12+).
	FormatBzImage
)

func (f Format) String() string {
	switch f {
	case FormatELF:
		return "ELF"
	case FormatBzImage:
		return "bzImage"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// Memory layout constants shared by both formats.
const (
	// HimemStart is the lowest address a kernel may be loaded at: 1 MiB, the
	// start of "high memory" in boot.rst's memory layout; everything below is
	// real-mode memory, the BIOS area and the VMM's boot structures.
	HimemStart = 0x100000

	// elfCmdlineMax is the size of the command line buffer, NUL included,
	// for kernels that carry no setup header: COMMAND_LINE_SIZE in Linux
	// arch/x86/include/asm/setup.h.
	elfCmdlineMax = 2048

	// headProbe is how much of the file is read to detect the format and
	// parse the ELF or bzImage header: more than the setup header needs.
	headProbe = 0x1000
)

// Kernel describes a kernel that Load put into guest memory.
type Kernel struct {
	// Format is the format the file was recognised as.
	Format Format

	// Entry is the guest-physical 64-bit entry point of the Linux boot
	// protocol (for an ELF vmlinux e_entry, for a bzImage 0x100000+0x200).
	// It is 0 for a 32-bit ELF, which can only be started through PVH.
	Entry uint64

	// HasPVH reports that the kernel has a PVH entry point
	// (XEN_ELFNOTE_PHYS32_ENTRY); PVHEntry is then its guest-physical
	// address, entered in 32-bit protected mode with paging off.
	HasPVH   bool
	PVHEntry uint64

	// Start is the lowest guest-physical address the kernel was loaded at.
	Start uint64
	// End is the first guest-physical address after all the memory the
	// kernel needs before it reads the memory map: for an ELF the end of the
	// highest segment (bss included); for a bzImage the end of the loaded
	// image or of the init_size bytes it decompresses into, whichever is
	// higher. Boot structures and the initrd must stay out of [Start, End).
	End uint64

	// SetupHeader is a copy of the bzImage setup header, file bytes from
	// 0x1f1 up to the header end (0x202 + the byte at 0x201), to be copied
	// to offset 0x1f1 of boot_params. Nil for an ELF.
	SetupHeader []byte
	// Protocol is the boot protocol version (0x020f is 2.15); 0 for an ELF.
	Protocol uint16
	// XLoadFlags is the bzImage xloadflags field (XLF_*); 0 for an ELF.
	XLoadFlags uint16

	// InitrdAddrMax is the highest guest-physical address the initrd may
	// occupy (inclusive). For a bzImage it is the header's initrd_addr_max;
	// an ELF has no header, so it is the top of low memory (below the
	// 32-bit MMIO hole), where Firecracker also puts the initrd.
	InitrdAddrMax uint64
	// CmdlineMax is the size of the command line buffer the kernel accepts,
	// terminating NUL included: the header's cmdline_size + 1 for a bzImage,
	// COMMAND_LINE_SIZE (2048) for an ELF.
	CmdlineMax uint64

	// InitSize, KernelAlignment, Relocatable and PrefAddress are the
	// bzImage header fields of those names (init_size, kernel_alignment,
	// relocatable_kernel, pref_address); zero for an ELF.
	InitSize        uint32
	KernelAlignment uint32
	Relocatable     bool
	PrefAddress     uint64
}

// Load detects the format of the kernel file at path, loads it into guest
// memory and describes it. Errors are one line naming the file.
func Load(mem *memory.Guest, path string) (*Kernel, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("kernel %s: is a directory", path)
	}
	return LoadFrom(mem, f, fi.Size(), path)
}

// LoadFrom is Load over the size bytes of r; name is used in errors.
func LoadFrom(mem *memory.Guest, r io.ReaderAt, size int64, name string) (*Kernel, error) {
	k, err := load(mem, r, size)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	return k, nil
}

func load(mem *memory.Guest, r io.ReaderAt, size int64) (*Kernel, error) {
	if size <= 0 {
		return nil, errors.New("file is empty")
	}
	head := make([]byte, min(size, headProbe))
	if err := readFull(r, head, 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return loadELF(mem, r, size, head)
	case isBzImage(head):
		return loadBzImage(mem, r, size, head)
	case len(head) < len(elf.ELFMAG) && bytes.HasPrefix([]byte(elf.ELFMAG), head):
		return nil, fmt.Errorf("truncated: ELF header needs %d bytes, file has %d", elf64HeaderSize, size)
	}
	return nil, fmt.Errorf("not a kernel: neither an ELF vmlinux nor a bzImage (starts with %s)", describeStart(head))
}

// describeStart renders the first bytes of a file for an error message:
// hex, plus the text when it is printable.
func describeStart(b []byte) string {
	b = b[:min(len(b), 4)]
	var sb strings.Builder
	printable := true
	for i, c := range b {
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%#02x", c)
		if c < 0x20 || c > 0x7e {
			printable = false
		}
	}
	if printable {
		fmt.Fprintf(&sb, " %q", b)
	}
	return sb.String()
}

// readFull reads len(p) bytes at off; a short file is an error.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// checkFits reports an error unless [start, end) is wholly inside one guest
// RAM region.
func checkFits(mem *memory.Guest, what string, start, end uint64) error {
	if end < start {
		return fmt.Errorf("%s: address range overflows", what)
	}
	if _, err := mem.Slice(start, end-start); err != nil {
		return fmt.Errorf("kernel too big for guest memory: %s needs [%#x, %#x), but guest RAM is %s (low memory ends at %#x)",
			what, start, end, mib(mem.Size()), mem.LowEnd())
	}
	return nil
}

func mib(n uint64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

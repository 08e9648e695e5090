// Package memory owns a VM's guest RAM: anonymous host mappings laid out in
// guest-physical address space around the 32-bit MMIO hole, and bounds-checked
// access to them. Every guest-controlled address goes through Slice, ReadAt or
// WriteAt, which refuse anything outside guest RAM.
package memory

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Layout of guest-physical address space (Firecracker's x86 layout):
// RAM from 0 up to the 32-bit MMIO hole, which spans [3 GiB, 4 GiB) and holds
// device MMIO, the IOAPIC and the LAPIC; RAM beyond the hole continues at 4 GiB.
const (
	// MMIOHoleStart is the first guest-physical address of the 32-bit MMIO hole.
	MMIOHoleStart = 0xC000_0000
	// MMIOHoleEnd is the first address after the 32-bit MMIO hole (4 GiB).
	MMIOHoleEnd = 1 << 32
	// PageSize is the x86 base page size.
	PageSize = 4096
	// HugePageSize is the x86-64 2 MiB page (a PMD entry, SDM vol. 3A
	// 4.5): the unit of transparent huge pages, and of the huge nested
	// page table entries KVM maps for them.
	HugePageSize = 2 << 20
)

// ErrOutOfRange reports an access that is not wholly inside one RAM region.
var ErrOutOfRange = errors.New("guest address range outside guest memory")

// Region is one contiguous range of guest RAM and its host mapping.
type Region struct {
	GuestAddr uint64 // first guest-physical address
	Host      []byte // host mapping; len(Host) is the region size
}

// Size is the region's length in bytes.
func (r Region) Size() uint64 { return uint64(len(r.Host)) }

// End is the first guest-physical address after the region.
func (r Region) End() uint64 { return r.GuestAddr + uint64(len(r.Host)) }

// Guest is a VM's RAM. It is safe for concurrent use: the mappings never move
// while the Guest is open.
type Guest struct {
	regions []Region
	size    uint64
	aligned bool // the regions are New's mapAligned mappings, not unix.Mmap's
}

// Layout returns the RAM regions (guest address and size) for a VM with
// size bytes of memory, leaving a hole for 32-bit MMIO.
func Layout(size uint64) [][2]uint64 {
	if size <= MMIOHoleStart {
		return [][2]uint64{{0, size}}
	}
	return [][2]uint64{{0, MMIOHoleStart}, {MMIOHoleEnd, size - MMIOHoleStart}}
}

// New maps size bytes of guest RAM (a multiple of PageSize) as anonymous,
// private, MAP_NORESERVE memory: pages cost host memory only once touched.
func New(size uint64) (*Guest, error) {
	if size == 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("guest memory size %d: must be a non-zero multiple of %d", size, PageSize)
	}
	g := &Guest{size: size, aligned: true}
	for _, l := range Layout(size) {
		b, err := mapAligned(l[1])
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("map %d MiB of guest memory at %#x: %w", l[1]>>20, l[0], err)
		}
		g.regions = append(g.regions, Region{GuestAddr: l[0], Host: b})
	}
	return g, nil
}

// mapAligned maps size bytes of anonymous memory at a host address aligned
// to HugePageSize. Guest regions start at 2 MiB multiples, so host and
// guest addresses then agree modulo 2 MiB, which KVM needs before it maps
// a transparent huge page with one huge nested page table entry; mmap
// alone aligns to 4 KiB only. The slack mapped for the alignment is
// unmapped at once.
func mapAligned(size uint64) ([]byte, error) {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size+HugePageSize), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	head := (HugePageSize - uintptr(p)%HugePageSize) % HugePageSize
	if head > 0 {
		if err := unix.MunmapPtr(p, head); err != nil {
			unix.MunmapPtr(p, uintptr(size+HugePageSize))
			return nil, err
		}
	}
	aligned := unsafe.Add(p, head)
	if tail := HugePageSize - head; tail > 0 {
		if err := unix.MunmapPtr(unsafe.Add(aligned, size), tail); err != nil {
			unix.MunmapPtr(aligned, uintptr(size))
			return nil, err
		}
	}
	return unsafe.Slice((*byte)(aligned), size), nil
}

// AdviseHugePages asks the kernel to back guest RAM with transparent huge
// pages (madvise MADV_HUGEPAGE; Firecracker's huge_pages "Transparent").
func (g *Guest) AdviseHugePages() error {
	for _, r := range g.regions {
		if err := unix.Madvise(r.Host, unix.MADV_HUGEPAGE); err != nil {
			return fmt.Errorf("madvise(MADV_HUGEPAGE) on guest memory at %#x: %w", r.GuestAddr, err)
		}
	}
	return nil
}

// AdviseHugeRange asks for transparent huge pages behind the 2 MiB pages
// that lie wholly inside [addr, addr+length), before anything is written
// there: the kernel and the initrd, which the VMM writes whole and the
// guest reads whole. One host fault and one nested fault per 2 MiB then
// stand for 512 of each. Only whole 2 MiB pages of the range: a page the
// range covers in part would cost the VM host memory it never touches (a
// tiny kernel, 2 MiB). A hint: with transparent huge pages off on the host
// it changes nothing, and its failure is not an error.
func (g *Guest) AdviseHugeRange(addr, length uint64) {
	start := addr + (HugePageSize-addr%HugePageSize)%HugePageSize
	end := addr + length
	if end < addr {
		return // overflow: not a range of guest memory
	}
	end -= end % HugePageSize
	for _, r := range g.regions {
		lo, hi := max(start, r.GuestAddr), min(end, r.End())
		if lo < hi {
			_ = unix.Madvise(r.Host[lo-r.GuestAddr:hi-r.GuestAddr], unix.MADV_HUGEPAGE)
		}
	}
}

// FromRegions wraps existing host buffers as guest memory (unit tests, and
// restored snapshots later). The regions must be sorted and must not overlap.
func FromRegions(regions []Region) *Guest {
	g := &Guest{regions: regions}
	for _, r := range regions {
		g.size += r.Size()
	}
	return g
}

// Close unmaps guest memory. The Guest must not be used afterwards.
func (g *Guest) Close() error {
	var first error
	for _, r := range g.regions {
		var err error
		if g.aligned {
			err = unix.MunmapPtr(unsafe.Pointer(&r.Host[0]), uintptr(len(r.Host)))
		} else {
			err = unix.Munmap(r.Host)
		}
		if err != nil && first == nil {
			first = err
		}
	}
	g.regions = nil
	return first
}

// Size is the total RAM in bytes.
func (g *Guest) Size() uint64 { return g.size }

// Regions lists the RAM regions in ascending guest address order.
func (g *Guest) Regions() []Region { return g.regions }

// LowEnd is the first address after the RAM region that starts at 0 (the
// top of "low memory", below the MMIO hole).
func (g *Guest) LowEnd() uint64 { return g.regions[0].End() }

// Slice returns the host bytes backing [addr, addr+length). The range must lie
// wholly inside one region; the check is overflow-safe, so any guest-supplied
// address and length can be passed.
func (g *Guest) Slice(addr, length uint64) ([]byte, error) {
	for i := range g.regions {
		r := &g.regions[i]
		if addr < r.GuestAddr {
			break
		}
		off := addr - r.GuestAddr
		if off <= uint64(len(r.Host)) && length <= uint64(len(r.Host))-off {
			return r.Host[off : off+length : off+length], nil
		}
	}
	return nil, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfRange, addr, length)
}

// ReadAt copies guest memory at guest address off into p (io.ReaderAt).
func (g *Guest) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, ErrOutOfRange
	}
	b, err := g.Slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, b), nil
}

// WriteAt copies p into guest memory at guest address off (io.WriterAt).
func (g *Guest) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, ErrOutOfRange
	}
	b, err := g.Slice(uint64(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(b, p), nil
}

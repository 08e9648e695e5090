// Package memory owns a VM's guest RAM: anonymous host mappings laid out in
// guest-physical address space around the 32-bit MMIO hole, and bounds-checked
// access to them. Every guest-controlled address goes through Slice, ReadAt or
// WriteAt, which refuse anything outside guest RAM.
package memory

import (
	"errors"
	"fmt"

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
	g := &Guest{size: size}
	for _, l := range Layout(size) {
		b, err := unix.Mmap(-1, 0, int(l[1]), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("map %d MiB of guest memory at %#x: %w", l[1]>>20, l[0], err)
		}
		g.regions = append(g.regions, Region{GuestAddr: l[0], Host: b})
	}
	return g, nil
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
		if err := unix.Munmap(r.Host); err != nil && first == nil {
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

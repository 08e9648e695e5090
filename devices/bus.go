package devices

import (
	"fmt"
	"sync/atomic"
)

// Device is anything that can sit on a Bus. Offsets are relative to the base
// the device was inserted at. data is the exit's own buffer (length 1, 2, 4
// or 8): Read fills it, Write consumes it. Neither may retain data after
// returning.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// emptyBusByte is what a read returns when no device decodes the address: the
// pulled-up data lines of an idle ISA bus read as all ones.
const emptyBusByte = 0xff

// busRange is one device mapping; last is inclusive so that a range may end
// at the very top of the 64-bit address space.
type busRange struct {
	base uint64
	last uint64
	dev  Device
}

func (r busRange) String() string {
	return fmt.Sprintf("[%#x, %#x]", r.base, r.last)
}

// UnhandledCounters counts accesses that hit no device.
type UnhandledCounters struct {
	Reads  atomic.Uint64
	Writes atomic.Uint64
}

// Bus maps address ranges to devices. The same type serves the port-I/O bus
// and the MMIO bus.
//
// Insert must only be called before the vCPUs start; after that the bus is
// read-only and Read and Write may be called concurrently from any number of
// vCPU threads without locking. Read and Write do not allocate.
//
// A Bus must not be copied after first use.
type Bus struct {
	ranges []busRange // sorted by base, non-overlapping

	// Unhandled counts reads and writes that found no device.
	Unhandled UnhandledCounters
}

// Insert maps dev at [base, base+length). It refuses a zero length, a range
// that wraps past the end of the 64-bit address space, and a range that
// overlaps one already inserted.
func (b *Bus) Insert(dev Device, base, length uint64) error {
	if dev == nil {
		return fmt.Errorf("bus insert at %#x: nil device", base)
	}
	if length == 0 {
		return fmt.Errorf("bus insert at %#x: zero length", base)
	}
	last := base + (length - 1)
	if last < base {
		return fmt.Errorf("bus insert at %#x: length %#x overflows the address space", base, length)
	}
	r := busRange{base: base, last: last, dev: dev}

	// i is the first existing range that starts after base.
	i := b.upperBound(base)
	if i > 0 && b.ranges[i-1].last >= base {
		return fmt.Errorf("bus insert: range %v overlaps existing range %v", r, b.ranges[i-1])
	}
	if i < len(b.ranges) && b.ranges[i].base <= last {
		return fmt.Errorf("bus insert: range %v overlaps existing range %v", r, b.ranges[i])
	}

	b.ranges = append(b.ranges, busRange{})
	copy(b.ranges[i+1:], b.ranges[i:])
	b.ranges[i] = r
	return nil
}

// upperBound returns the index of the first range whose base is greater than
// addr (len(b.ranges) if none). Hand-written rather than sort.Search so the
// hot path has no closure.
func (b *Bus) upperBound(addr uint64) int {
	lo, hi := 0, len(b.ranges)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if b.ranges[mid].base <= addr {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// find returns the range containing addr.
func (b *Bus) find(addr uint64) (busRange, bool) {
	i := b.upperBound(addr)
	if i == 0 {
		return busRange{}, false
	}
	r := b.ranges[i-1]
	if addr > r.last {
		return busRange{}, false
	}
	return r, true
}

// Read dispatches a read of len(data) bytes at addr to the device whose range
// contains addr. Only addr decides the device: an access that runs past the
// end of a range goes to that device whole, which checks its own offsets. It reports whether a device was found; if none was, it fills
// data with 0xff and counts the access in Unhandled.Reads.
func (b *Bus) Read(addr uint64, data []byte) bool {
	r, ok := b.find(addr)
	if !ok {
		b.Unhandled.Reads.Add(1)
		fill(data, emptyBusByte)
		return false
	}
	r.dev.Read(addr-r.base, data)
	return true
}

// Write dispatches a write of data at addr to the device whose range contains
// addr. It reports whether a device was found; if none was, the write is
// dropped and counted in Unhandled.Writes.
func (b *Bus) Write(addr uint64, data []byte) bool {
	r, ok := b.find(addr)
	if !ok {
		b.Unhandled.Writes.Add(1)
		return false
	}
	r.dev.Write(addr-r.base, data)
	return true
}

// fill sets every byte of data to v.
func fill(data []byte, v byte) {
	for i := range data {
		data[i] = v
	}
}

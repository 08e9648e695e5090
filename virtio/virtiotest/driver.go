// Package virtiotest is a Go-side virtio driver for unit tests: it builds
// split virtqueues in a test guest memory, offers buffers the way a guest
// driver would, and reads back what the device returned. It is a test helper,
// never part of a running VMM.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
)

// Descriptor flags (virtio 2.7.5).
const (
	FNext     = 1
	FWrite    = 2
	FIndirect = 4
)

// NewMemory returns size bytes of anonymous guest memory at guest address 0.
func NewMemory(size int) *memory.Guest {
	return memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: make([]byte, size)}})
}

// Buf is one buffer to offer: Data is device-readable; a WriteLen > 0 makes
// a device-writable buffer of that size instead.
type Buf struct {
	Data     []byte
	WriteLen int
}

// Driver drives one queue.
type Driver struct {
	Mem  *memory.Guest
	Q    *virtio.Queue
	size uint16

	desc, avail, used uint64
	nextDesc          uint16 // descriptors are handed out round-robin
	availIdx          uint16
	lastUsed          uint16
	heap              uint64 // bump allocator for buffers
	heapEnd           uint64

	// Buffers of each chain by head, for Written.
	writable map[uint16][]uint64
}

// New lays out a queue of size entries at base (the rings take less than
// 8 KiB for 256 entries), programs q as a driver would and activates it.
// Buffers are allocated from [base+0x3000, heapEnd).
func New(mem *memory.Guest, q *virtio.Queue, base uint64, size uint16, eventIdx bool, heapEnd uint64) (*Driver, error) {
	d := Layout(mem, base, size, heapEnd)
	d.Q = q
	q.Size, q.DescAddr, q.AvailAddr, q.UsedAddr, q.Ready, q.EventIdx = size, d.desc, d.avail, d.used, true, eventIdx
	if err := q.Activate(mem); err != nil {
		return nil, err
	}
	return d, nil
}

// Layout lays out a queue's rings at base without programming a device;
// see Rings and MMIODriver.
func Layout(mem *memory.Guest, base uint64, size uint16, heapEnd uint64) *Driver {
	d := &Driver{Mem: mem, size: size, desc: base, avail: base + 16*uint64(size),
		heap: base + 0x3000, heapEnd: heapEnd, writable: map[uint16][]uint64{}}
	d.used = (d.avail + 6 + 2*uint64(size) + 3) &^ 3
	return d
}

// Rings returns the guest addresses of the descriptor table, the available
// (driver) ring and the used (device) ring.
func (d *Driver) Rings() (desc, avail, used uint64) { return d.desc, d.avail, d.used }

// Size is the queue size.
func (d *Driver) Size() uint16 { return d.size }

// Alloc reserves n bytes of buffer space and returns its guest address.
func (d *Driver) Alloc(n int) uint64 {
	a := (d.heap + 15) &^ 15
	if a+uint64(n) > d.heapEnd {
		panic(fmt.Sprintf("virtiotest: out of buffer space (%d bytes wanted)", n))
	}
	d.heap = a + uint64(n)
	return a
}

func (d *Driver) put16(addr uint64, v uint16) {
	b, _ := d.Mem.Slice(addr, 2)
	binary.LittleEndian.PutUint16(b, v)
}

// word is the aligned 32-bit word of guest memory holding addr, for the
// ring indices the device accesses atomically (its idx loads and stores):
// the driver's side of them is atomic too, as a real driver's barriers
// make it, so the race detector sees the ordering.
func (d *Driver) word(addr uint64) *uint32 {
	b, _ := d.Mem.Slice(addr&^3, 4)
	return (*uint32)(unsafe.Pointer(&b[0]))
}

// load16 reads the 16-bit field at addr (2-aligned) atomically.
func (d *Driver) load16(addr uint64) uint16 {
	return uint16(atomic.LoadUint32(d.word(addr)) >> (8 * (addr & 3)))
}

// store16 writes the 16-bit field at addr (2-aligned) atomically.
func (d *Driver) store16(addr uint64, v uint16) {
	w, shift := d.word(addr), 8*(addr&3)
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, old&^(0xffff<<shift)|uint32(v)<<shift) {
			return
		}
	}
}

func (d *Driver) get32(addr uint64) uint32 {
	b, _ := d.Mem.Slice(addr, 4)
	return binary.LittleEndian.Uint32(b)
}

// WriteDesc writes raw descriptor i of the descriptor table at table.
func (d *Driver) WriteDesc(table uint64, i uint16, addr uint64, length uint32, flags, next uint16) {
	b, _ := d.Mem.Slice(table+16*uint64(i), 16)
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// Publish puts head in the available ring and bumps idx.
func (d *Driver) Publish(head uint16) {
	d.put16(d.avail+4+2*uint64(d.availIdx%d.size), head)
	d.availIdx++
	d.store16(d.avail+2, d.availIdx)
}

// SetAvailIdx overwrites avail->idx (for hostile-driver tests).
func (d *Driver) SetAvailIdx(v uint16) { d.availIdx = v; d.store16(d.avail+2, v) }

// SetUsedEvent writes used_event (EVENT_IDX).
func (d *Driver) SetUsedEvent(v uint16) { d.store16(d.avail+4+2*uint64(d.size), v) }

// SetNoInterrupt sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT.
func (d *Driver) SetNoInterrupt(on bool) {
	var f uint16
	if on {
		f = 1
	}
	d.store16(d.avail, f)
}

// AvailEvent reads avail_event, written by the device (EVENT_IDX).
func (d *Driver) AvailEvent() uint16 {
	return d.load16(d.used + 4 + 8*uint64(d.size))
}

func (d *Driver) buffer(b Buf) (addr uint64, length uint32, flags uint16) {
	if b.WriteLen > 0 {
		a := d.Alloc(b.WriteLen)
		return a, uint32(b.WriteLen), FWrite
	}
	a := d.Alloc(len(b.Data))
	m, _ := d.Mem.Slice(a, uint64(len(b.Data)))
	copy(m, b.Data)
	return a, uint32(len(b.Data)), 0
}

// Add offers a chain of direct descriptors and returns its head.
func (d *Driver) Add(bufs ...Buf) uint16 {
	head := d.nextDesc
	var wr []uint64
	for i, b := range bufs {
		idx := d.nextDesc
		d.nextDesc = (d.nextDesc + 1) % d.size
		addr, length, flags := d.buffer(b)
		if flags&FWrite != 0 {
			wr = append(wr, addr)
		}
		if i < len(bufs)-1 {
			flags |= FNext
		}
		d.WriteDesc(d.desc, idx, addr, length, flags, d.nextDesc)
	}
	d.writable[head] = wr
	d.Publish(head)
	return head
}

// AddIndirect offers the buffers through one indirect table.
func (d *Driver) AddIndirect(bufs ...Buf) uint16 {
	table := d.Alloc(16 * len(bufs))
	var wr []uint64
	for i, b := range bufs {
		addr, length, flags := d.buffer(b)
		if flags&FWrite != 0 {
			wr = append(wr, addr)
		}
		if i < len(bufs)-1 {
			flags |= FNext
		}
		d.WriteDesc(table, uint16(i), addr, length, flags, uint16(i+1))
	}
	head := d.nextDesc
	d.nextDesc = (d.nextDesc + 1) % d.size
	d.WriteDesc(d.desc, head, table, uint32(16*len(bufs)), FIndirect, 0)
	d.writable[head] = wr
	d.Publish(head)
	return head
}

// Used returns the next used element, if the device has pushed one.
func (d *Driver) Used() (head uint16, n uint32, ok bool) {
	idx := d.load16(d.used + 2)
	if idx == d.lastUsed {
		return 0, 0, false
	}
	e := d.used + 4 + 8*uint64(d.lastUsed%d.size)
	d.lastUsed++
	return uint16(d.get32(e)), d.get32(e + 4), true
}

// Written returns the i-th device-writable buffer of the chain at head.
func (d *Driver) Written(head uint16, i int, n int) []byte {
	b, _ := d.Mem.Slice(d.writable[head][i], uint64(n))
	return b
}

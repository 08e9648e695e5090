package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Memory is the view of guest memory that queues and devices need.
// *memory.Guest implements it. Slice must refuse (never panic on) any range
// that is not wholly inside guest RAM, whatever the address and length.
type Memory interface {
	Slice(addr, length uint64) ([]byte, error)
}

// DirtyMarker is implemented by a Memory that records the guest pages the
// devices write, which KVM's dirty log does not see (diff snapshots). A
// queue marks every device-writable buffer it hands out and its used ring.
type DirtyMarker interface {
	MarkDirty(addr, length uint64)
}

// Split virtqueue layout, virtio 2.7.
const (
	// MaxQueueSize is the largest queue Ember offers (Firecracker's too).
	MaxQueueSize = 256

	descSize       = 16 // struct virtq_desc: addr u64, len u32, flags u16, next u16 (2.7.5)
	descAlign      = 16 // 2.7.2 alignment of the descriptor table
	availAlign     = 2  // 2.7.2 alignment of the driver (available) ring
	usedAlign      = 4  // 2.7.2 alignment of the device (used) ring
	ringHeaderSize = 4  // flags u16, idx u16
	availElemSize  = 2  // ring[i] u16
	usedElemSize   = 8  // struct virtq_used_elem: id u32, len u32
	eventSize      = 2  // used_event / avail_event u16 after the ring (2.7.10)

	descFNext     = 1 // VIRTQ_DESC_F_NEXT
	descFWrite    = 2 // VIRTQ_DESC_F_WRITE
	descFIndirect = 4 // VIRTQ_DESC_F_INDIRECT

	availFNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT (2.7.7)

	// MaxChainLen bounds the descriptors of one chain, direct and indirect
	// together. virtio 2.7.5.3.1 lets an indirect table hold up to 2^16
	// entries; no Linux driver comes near that (virtio-blk's seg_max plus
	// two), and a bound keeps a chain's memory fixed.
	MaxChainLen = 1024
)

// Errors from Pop. ErrQueueBroken means the driver broke the ring itself (an
// available index running ahead by more than the queue size, a head index
// out of range): the device should ask for a reset (NEEDS_RESET).
// ErrBadChain means one chain is malformed: the device returns it unused.
var (
	ErrQueueBroken = errors.New("virtqueue broken by the driver")
	ErrBadChain    = errors.New("malformed descriptor chain")
)

// Desc is one buffer of a chain, resolved to the host bytes backing it.
type Desc struct {
	Buf   []byte // guest memory, len == the descriptor's length
	Addr  uint64 // guest address, for messages
	Write bool   // device-writable (VIRTQ_DESC_F_WRITE)
}

// Chain is one descriptor chain popped from a queue. Its backing array is
// reused by every Pop, so a device keeps one Chain per queue and the queue
// path does not allocate.
type Chain struct {
	Head  uint16 // head index, to return with PushUsed
	Descs []Desc
}

// NewChain returns a Chain with room for the longest chain.
func NewChain() *Chain { return &Chain{Descs: make([]Desc, 0, MaxChainLen)} }

// Queue is the device side of one split virtqueue. The transport fills the
// driver-programmed fields (Size, Ready, the ring addresses) from register
// writes; Activate checks them and maps the rings; from then on the device's
// worker goroutine alone calls Pop, PushUsed, NeedInterrupt and EnableNotify.
type Queue struct {
	MaxSize uint16 // offered in QueueNumMax

	// Programmed by the driver through the transport.
	Size      uint16
	Ready     bool
	DescAddr  uint64
	AvailAddr uint64
	UsedAddr  uint64

	// EventIdx is VIRTIO_F_RING_EVENT_IDX, negotiated.
	EventIdx bool

	// Device-side ring positions: the next available entry to read and the
	// next used entry to write. Exported for snapshots.
	NextAvail uint16
	NextUsed  uint16

	desc, avail, used []byte // the rings in guest memory, after Activate
	mem               Memory
	marker            DirtyMarker // mem's, if it tracks device writes

	signalled      uint16 // NextUsed when the guest was last interrupted
	signalledValid bool
	checked        uint16        // NextUsed at the last NeedInterrupt (or Activate)
	fence          atomic.Uint32 // target of full memory barriers
}

// NewQueue returns a queue offering up to max entries.
func NewQueue(max uint16) *Queue { return &Queue{MaxSize: max} }

// Activate checks what the driver programmed (virtio 2.7: a power-of-two
// size no larger than MaxSize, aligned rings inside guest RAM) and maps the
// rings. It is called when the driver sets DRIVER_OK.
func (q *Queue) Activate(mem Memory) error {
	if !q.Ready {
		return errors.New("queue not ready")
	}
	if q.Size == 0 || q.Size > q.MaxSize || q.Size&(q.Size-1) != 0 {
		return fmt.Errorf("queue size %d: want a power of two from 1 to %d", q.Size, q.MaxSize)
	}
	n := uint64(q.Size)
	var err error
	if q.desc, err = ringSlice(mem, "descriptor table", q.DescAddr, descAlign, descSize*n); err != nil {
		return err
	}
	if q.avail, err = ringSlice(mem, "available ring", q.AvailAddr, availAlign, ringHeaderSize+availElemSize*n+eventSize); err != nil {
		return err
	}
	if q.used, err = ringSlice(mem, "used ring", q.UsedAddr, usedAlign, ringHeaderSize+usedElemSize*n+eventSize); err != nil {
		return err
	}
	q.mem = mem
	q.marker, _ = mem.(DirtyMarker)
	q.signalledValid = false
	q.checked = q.NextUsed
	return nil
}

func ringSlice(mem Memory, name string, addr, align, size uint64) ([]byte, error) {
	if addr%align != 0 {
		return nil, fmt.Errorf("%s at %#x: not %d-byte aligned", name, addr, align)
	}
	b, err := mem.Slice(addr, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

// Reset returns the queue to its state before the driver programmed it.
func (q *Queue) Reset() {
	*q = Queue{MaxSize: q.MaxSize}
}

// Active reports whether Activate succeeded and the queue has not been reset.
func (q *Queue) Active() bool { return q.desc != nil }

// availIdx reads the driver's avail->idx with an atomic load, which orders
// the ring reads that follow it (the driver writes entries before idx).
// idx sits at AvailAddr+2, which is 2- but maybe not 4-aligned; the aligned
// 32-bit word holding it lies inside the ring either way.
func (q *Queue) availIdx() uint16 {
	if q.AvailAddr%4 == 0 {
		return uint16(atomic.LoadUint32(word(q.avail[0:4])) >> 16)
	}
	return uint16(atomic.LoadUint32(word(q.avail[2:6])))
}

// word views 4 bytes of guest memory as a uint32 for atomic access. The
// callers pass 4-byte-aligned guest addresses; mmap'd guest memory is page
// aligned, so the host address is aligned too.
func word(b []byte) *uint32 { return (*uint32)(unsafe.Pointer(&b[0])) }

// barrier is a full memory barrier (a locked instruction on amd64). It
// orders a store before a later load, as virtio's notification suppression
// requires (2.7.10: the device writes avail_event, then re-reads idx).
func (q *Queue) barrier() { q.fence.Add(1) }

// Pending reports whether the driver has made buffers available that Pop
// has not taken yet.
func (q *Queue) Pending() bool { return q.availIdx() != q.NextAvail }

// Pop takes the next available chain into c and reports whether there was
// one. On ErrBadChain, c.Head is valid and the device should return the
// chain with PushUsed(c.Head, 0); on ErrQueueBroken it must stop using the
// queue until the driver resets the device.
func (q *Queue) Pop(c *Chain) (bool, error) {
	idx := q.availIdx()
	if idx == q.NextAvail {
		return false, nil
	}
	if idx-q.NextAvail > q.Size {
		return false, fmt.Errorf("%w: available index %d is %d ahead of the device's %d (queue size %d)", ErrQueueBroken, idx, idx-q.NextAvail, q.NextAvail, q.Size)
	}
	off := ringHeaderSize + availElemSize*uint64(q.NextAvail%q.Size)
	head := binary.LittleEndian.Uint16(q.avail[off:])
	if head >= q.Size {
		return false, fmt.Errorf("%w: head descriptor %d outside a queue of %d", ErrQueueBroken, head, q.Size)
	}
	q.NextAvail++
	c.Head = head
	c.Descs = c.Descs[:0]
	return true, q.walk(c, head)
}

// Undo puts the last popped chain back, for a device that cannot serve it
// yet (a rate limiter ran dry): the next Pop returns it again.
func (q *Queue) Undo() { q.NextAvail-- }

// walk follows the chain from head, resolving every buffer. Each step is
// bounded: at most Size direct descriptors, one indirect table of at most
// MaxChainLen entries, and MaxChainLen in all.
func (q *Queue) walk(c *Chain, head uint16) error {
	table, tableLen := q.desc, uint64(q.Size)
	i := uint64(head)
	indirect := false
	for steps := uint64(0); ; steps++ {
		if steps >= tableLen {
			return fmt.Errorf("%w: chain at head %d is longer than its table of %d (a loop?)", ErrBadChain, head, tableLen)
		}
		d := table[i*descSize : i*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])

		if flags&descFIndirect != 0 {
			switch {
			case indirect:
				return fmt.Errorf("%w: indirect descriptor inside an indirect table (head %d)", ErrBadChain, head)
			case flags&descFNext != 0:
				return fmt.Errorf("%w: descriptor %d has both INDIRECT and NEXT", ErrBadChain, i)
			case length == 0 || length%descSize != 0 || uint64(length)/descSize > MaxChainLen:
				return fmt.Errorf("%w: indirect table of %d bytes (want a non-zero multiple of %d, at most %d entries)", ErrBadChain, length, descSize, MaxChainLen)
			}
			t, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return fmt.Errorf("%w: indirect table: %v", ErrBadChain, err)
			}
			table, tableLen, i, steps, indirect = t, uint64(length)/descSize, 0, ^uint64(0), true
			continue
		}
		if len(c.Descs) == cap(c.Descs) {
			return fmt.Errorf("%w: chain at head %d has more than %d descriptors", ErrBadChain, head, cap(c.Descs))
		}
		buf, err := q.mem.Slice(addr, uint64(length))
		if err != nil {
			return fmt.Errorf("%w: descriptor %d: %v", ErrBadChain, i, err)
		}
		c.Descs = append(c.Descs, Desc{Buf: buf, Addr: addr, Write: flags&descFWrite != 0})
		if flags&descFWrite != 0 && q.marker != nil {
			q.marker.MarkDirty(addr, uint64(length))
		}
		if flags&descFNext == 0 {
			return nil
		}
		if uint64(next) >= tableLen {
			return fmt.Errorf("%w: descriptor %d links to %d, outside its table of %d", ErrBadChain, i, next, tableLen)
		}
		i = uint64(next)
	}
}

// PushUsed returns the chain with head index head to the driver, with n
// bytes written into its device-writable buffers.
func (q *Queue) PushUsed(head uint16, n uint32) {
	off := ringHeaderSize + usedElemSize*uint64(q.NextUsed%q.Size)
	binary.LittleEndian.PutUint32(q.used[off:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[off+4:], n)
	q.NextUsed++
	if q.marker != nil {
		q.marker.MarkDirty(q.UsedAddr, uint64(len(q.used)))
	}
	// Publish idx after the element: the device owns used->flags (always
	// 0 here), so flags and idx are stored together, atomically. On amd64
	// this is XCHG, a full barrier, which NeedInterrupt relies on.
	atomic.StoreUint32(word(q.used[0:4]), uint32(q.NextUsed)<<16)
}

// NeedInterrupt reports whether the driver wants an interrupt for the used
// entries pushed since the last one (virtio 2.7.7 and 2.7.10). Call it after
// a batch of PushUsed. With nothing pushed since the previous call (a
// notification that found no new buffers) it is false: there is nothing to
// tell the driver.
func (q *Queue) NeedInterrupt() bool {
	if q.NextUsed == q.checked {
		return false
	}
	q.checked = q.NextUsed
	if !q.EventIdx {
		return binary.LittleEndian.Uint16(q.avail[0:])&availFNoInterrupt == 0
	}
	// PushUsed's atomic store ordered idx before this read of used_event.
	usedEvent := binary.LittleEndian.Uint16(q.avail[ringHeaderSize+availElemSize*uint64(q.Size):])
	now, old, valid := q.NextUsed, q.signalled, q.signalledValid
	q.signalled, q.signalledValid = now, true
	if !valid {
		return true
	}
	// vring_need_event(event, new, old): event lies in [old, new).
	return now-usedEvent-1 < now-old
}

// EnableNotify asks the driver to notify the device when it makes more
// buffers available and reports whether some arrived meanwhile, in which
// case the caller should keep popping instead of waiting. With EVENT_IDX
// it writes avail_event (2.7.10); without, the driver always notifies.
func (q *Queue) EnableNotify() bool {
	if q.EventIdx {
		binary.LittleEndian.PutUint16(q.used[ringHeaderSize+usedElemSize*uint64(q.Size):], q.NextAvail)
		if q.marker != nil {
			q.marker.MarkDirty(q.UsedAddr, uint64(len(q.used)))
		}
		q.barrier()
	}
	return q.Pending()
}

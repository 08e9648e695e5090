package virtio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

const (
	memSize   = 1 << 20
	queueBase = 0x1000
)

func newDriver(t testing.TB, size uint16, eventIdx bool) (*virtiotest.Driver, *virtio.Queue) {
	t.Helper()
	q := virtio.NewQueue(virtio.MaxQueueSize)
	d, err := virtiotest.New(virtiotest.NewMemory(memSize), q, queueBase, size, eventIdx, memSize)
	if err != nil {
		t.Fatal(err)
	}
	return d, q
}

func TestPopDirectAndIndirect(t *testing.T) {
	d, q := newDriver(t, 16, false)
	c := virtio.NewChain()
	h1 := d.Add(virtiotest.Buf{Data: []byte("hello")}, virtiotest.Buf{WriteLen: 8})
	h2 := d.AddIndirect(virtiotest.Buf{Data: []byte("a")}, virtiotest.Buf{Data: []byte("bc")}, virtiotest.Buf{WriteLen: 3})
	for _, want := range []struct {
		head   uint16
		n      int
		first  string
		writes []bool
	}{{h1, 2, "hello", []bool{false, true}}, {h2, 3, "a", []bool{false, false, true}}} {
		ok, err := q.Pop(c)
		if !ok || err != nil {
			t.Fatalf("Pop = %v, %v", ok, err)
		}
		if c.Head != want.head || len(c.Descs) != want.n || string(c.Descs[0].Buf) != want.first {
			t.Fatalf("chain head %d with %d descs (%q), want head %d with %d (%q)", c.Head, len(c.Descs), c.Descs[0].Buf, want.head, want.n, want.first)
		}
		for i, w := range want.writes {
			if c.Descs[i].Write != w {
				t.Errorf("desc %d write=%v, want %v", i, c.Descs[i].Write, w)
			}
		}
		copy(c.Descs[len(c.Descs)-1].Buf, "xyz")
		q.PushUsed(c.Head, 3)
	}
	if ok, _ := q.Pop(c); ok {
		t.Fatal("Pop on an empty queue returned a chain")
	}
	for _, h := range []uint16{h1, h2} {
		head, n, ok := d.Used()
		if !ok || head != h || n != 3 {
			t.Fatalf("used = %d,%d,%v; want %d,3", head, n, ok, h)
		}
	}
	if got := d.Written(h1, 0, 3); string(got) != "xyz" {
		t.Fatalf("device wrote %q", got)
	}
}

func TestActivateRejects(t *testing.T) {
	mem := virtiotest.NewMemory(memSize)
	for name, set := range map[string]func(q *virtio.Queue){
		"not ready":        func(q *virtio.Queue) { q.Ready = false },
		"size 0":           func(q *virtio.Queue) { q.Size = 0 },
		"size 3":           func(q *virtio.Queue) { q.Size = 3 },
		"size over max":    func(q *virtio.Queue) { q.Size = 512 },
		"desc misaligned":  func(q *virtio.Queue) { q.DescAddr = 0x1008 },
		"used misaligned":  func(q *virtio.Queue) { q.UsedAddr = 0x3002 },
		"avail misaligned": func(q *virtio.Queue) { q.AvailAddr = 0x2001 },
		"desc outside RAM": func(q *virtio.Queue) { q.DescAddr = memSize - 16 },
		"used wraps":       func(q *virtio.Queue) { q.UsedAddr = ^uint64(3) },
	} {
		q := virtio.NewQueue(virtio.MaxQueueSize)
		q.Size, q.Ready, q.DescAddr, q.AvailAddr, q.UsedAddr = 16, true, 0x1000, 0x2000, 0x3000
		set(q)
		if err := q.Activate(mem); err == nil {
			t.Errorf("%s: Activate accepted the queue", name)
		}
	}
}

// TestHostileChains feeds chains no honest driver writes.
func TestHostileChains(t *testing.T) {
	const table = queueBase
	for _, tc := range []struct {
		name  string
		write func(d *virtiotest.Driver)
		want  error
	}{
		{"loop", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, 0x8000, 4, virtiotest.FNext, 1)
			d.WriteDesc(table, 1, 0x8000, 4, virtiotest.FNext, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"self loop", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, 0x8000, 4, virtiotest.FNext, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"next out of range", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, 0x8000, 4, virtiotest.FNext, 200)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"buffer outside RAM", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, memSize-2, 4, 0, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"buffer wraps address space", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, ^uint64(0)-1, 0xffffffff, 0, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"indirect and next", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, 0x8000, 32, virtiotest.FIndirect|virtiotest.FNext, 1)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"indirect odd length", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, 0x8000, 20, virtiotest.FIndirect, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"indirect huge", func(d *virtiotest.Driver) {
			d.WriteDesc(table, 0, 0x8000, 16*(virtio.MaxChainLen+1), virtiotest.FIndirect, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"nested indirect", func(d *virtiotest.Driver) {
			d.WriteDesc(0x8000, 0, 0x9000, 16, virtiotest.FIndirect, 0)
			d.WriteDesc(table, 0, 0x8000, 16, virtiotest.FIndirect, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"indirect loop", func(d *virtiotest.Driver) {
			d.WriteDesc(0x8000, 0, 0x9000, 4, virtiotest.FNext, 1)
			d.WriteDesc(0x8000, 1, 0x9000, 4, virtiotest.FNext, 0)
			d.WriteDesc(table, 0, 0x8000, 32, virtiotest.FIndirect, 0)
			d.Publish(0)
		}, virtio.ErrBadChain},
		{"head out of range", func(d *virtiotest.Driver) { d.Publish(16) }, virtio.ErrQueueBroken},
		{"avail idx far ahead", func(d *virtiotest.Driver) { d.SetAvailIdx(17) }, virtio.ErrQueueBroken},
	} {
		d, q := newDriver(t, 16, false)
		tc.write(d)
		ok, err := q.Pop(virtio.NewChain())
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Pop = %v, %v; want %v", tc.name, ok, err, tc.want)
		}
	}
}

// TestNoInterruptWithoutUsed: with nothing pushed since the last check (a
// notification that found no buffers) NeedInterrupt is false, with or
// without EVENT_IDX, from activation on.
func TestNoInterruptWithoutUsed(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		d, q := newDriver(t, 16, eventIdx)
		c := virtio.NewChain()
		if q.NeedInterrupt() {
			t.Fatalf("event_idx=%v: interrupt before any used buffer", eventIdx)
		}
		d.Add(virtiotest.Buf{WriteLen: 1})
		q.Pop(c)
		q.PushUsed(c.Head, 1)
		if !q.NeedInterrupt() {
			t.Fatalf("event_idx=%v: no interrupt for a used buffer", eventIdx)
		}
		if q.NeedInterrupt() {
			t.Fatalf("event_idx=%v: a second interrupt for the same used buffer", eventIdx)
		}
	}
}

func TestInterruptSuppression(t *testing.T) {
	d, q := newDriver(t, 16, false)
	c := virtio.NewChain()
	d.Add(virtiotest.Buf{WriteLen: 1})
	q.Pop(c)
	q.PushUsed(c.Head, 1)
	if !q.NeedInterrupt() {
		t.Fatal("no interrupt without NO_INTERRUPT")
	}
	d.SetNoInterrupt(true)
	d.Add(virtiotest.Buf{WriteLen: 1})
	q.Pop(c)
	q.PushUsed(c.Head, 1)
	if q.NeedInterrupt() {
		t.Fatal("interrupt despite NO_INTERRUPT")
	}

	d, q = newDriver(t, 16, true)
	push := func() {
		d.Add(virtiotest.Buf{WriteLen: 1})
		if ok, err := q.Pop(c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		q.PushUsed(c.Head, 1)
	}
	push() // used idx 1
	if !q.NeedInterrupt() {
		t.Fatal("first used buffer: no interrupt")
	}
	d.SetUsedEvent(2) // interrupt when used idx passes 2
	push()            // idx 2
	if q.NeedInterrupt() {
		t.Fatal("EVENT_IDX: interrupt before used_event was passed")
	}
	push() // idx 3: crosses used_event 2
	if !q.NeedInterrupt() {
		t.Fatal("EVENT_IDX: no interrupt after used_event was passed")
	}
	if q.EnableNotify() {
		t.Fatal("EnableNotify saw buffers on an empty queue")
	}
	if got := d.AvailEvent(); got != 3 {
		t.Fatalf("avail_event = %d, want 3", got)
	}
	d.Add(virtiotest.Buf{WriteLen: 1})
	if !q.EnableNotify() {
		t.Fatal("EnableNotify missed a new buffer")
	}
}

func TestQueuePathDoesNotAllocate(t *testing.T) {
	d, q := newDriver(t, 256, true)
	c := virtio.NewChain()
	// The driver allocates; measure the device side alone.
	d.Add(virtiotest.Buf{Data: []byte{1}})
	n := testing.AllocsPerRun(100, func() {
		d.SetAvailIdx(q.NextAvail + 1)
		if ok, err := q.Pop(c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		q.PushUsed(c.Head, 0)
		q.NeedInterrupt()
		q.EnableNotify()
	})
	if n != 0 {
		t.Fatalf("device queue path allocates %v times per request", n)
	}
}

// FuzzChain walks arbitrary descriptor tables and rings: Pop must return a
// chain or an error, never panic, and every buffer it returns must lie in
// guest memory.
func FuzzChain(f *testing.F) {
	f.Add([]byte{0, 0x80, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 1, 0}, uint16(0), uint16(1), uint16(8))
	f.Fuzz(func(t *testing.T, table []byte, head, availIdx, size uint16) {
		if size == 0 || size > virtio.MaxQueueSize {
			size = 8
		}
		size = 1 << (15 - uint(bitsLeading(size))) // round down to a power of two
		const mem = 1 << 16
		m := virtiotest.NewMemory(mem)
		q := virtio.NewQueue(virtio.MaxQueueSize)
		q.Size, q.Ready, q.DescAddr, q.AvailAddr, q.UsedAddr = size, true, 0x1000, 0x2000, 0x3000
		if err := q.Activate(m); err != nil {
			t.Fatal(err)
		}
		b, _ := m.Slice(0x1000, 16*uint64(size))
		copy(b, table)
		// Indirect tables may point anywhere; fill some of RAM with the input too.
		r, _ := m.Slice(0x8000, 0x1000)
		copy(r, bytes.Repeat(table, 1+0x1000/(len(table)+1)))
		a, _ := m.Slice(0x2000, 4+2*uint64(size))
		binary.LittleEndian.PutUint16(a[2:], availIdx)
		for i := uint16(0); i < size; i++ {
			binary.LittleEndian.PutUint16(a[4+2*i:], head+i)
		}
		c := virtio.NewChain()
		for i := 0; i < int(size)+1; i++ {
			ok, err := q.Pop(c)
			if !ok {
				break
			}
			if err != nil {
				if errors.Is(err, virtio.ErrBadChain) {
					q.PushUsed(c.Head, 0)
					continue
				}
				break
			}
			if len(c.Descs) > virtio.MaxChainLen {
				t.Fatalf("chain of %d descriptors", len(c.Descs))
			}
			for _, d := range c.Descs {
				if d.Addr > mem || uint64(len(d.Buf)) > mem-d.Addr {
					t.Fatalf("buffer [%#x, +%#x) outside guest memory", d.Addr, len(d.Buf))
				}
			}
			q.PushUsed(c.Head, 0)
		}
	})
}

func bitsLeading(v uint16) int {
	n := 0
	for v&0x8000 == 0 {
		v <<= 1
		n++
	}
	return n
}

// markingMemory records MarkDirty calls.
type markingMemory struct {
	virtio.Memory
	marks [][2]uint64
}

func (m *markingMemory) MarkDirty(addr, length uint64) {
	m.marks = append(m.marks, [2]uint64{addr, length})
}

// TestDirtyMarker: with a Memory that tracks device writes, the queue marks
// each device-writable buffer it hands out and the used ring it writes.
func TestDirtyMarker(t *testing.T) {
	mem := &markingMemory{Memory: virtiotest.NewMemory(memSize)}
	q := virtio.NewQueue(virtio.MaxQueueSize)
	d, err := virtiotest.New(mem.Memory.(*memory.Guest), q, queueBase, 16, false, memSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Activate(mem); err != nil {
		t.Fatal(err)
	}
	d.Add(virtiotest.Buf{Data: []byte("ro")}, virtiotest.Buf{WriteLen: 8})
	c := virtio.NewChain()
	if ok, err := q.Pop(c); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if len(mem.marks) != 1 || mem.marks[0] != [2]uint64{c.Descs[1].Addr, 8} {
		t.Fatalf("marks after Pop %v, want the writable buffer at %#x", mem.marks, c.Descs[1].Addr)
	}
	q.PushUsed(c.Head, 8)
	if _, _, used := d.Rings(); len(mem.marks) != 2 || mem.marks[1][0] != used {
		t.Fatalf("marks after PushUsed %v, want the used ring at %#x", mem.marks, used)
	}
}

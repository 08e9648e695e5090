package devices

import (
	"strings"
	"sync/atomic"
	"testing"
)

// recorder is a Device that remembers its last access.
type recorder struct {
	fillByte  byte
	lastRead  uint64
	lastWrite uint64
	written   []byte
	reads     int
	writes    int
}

func (r *recorder) Read(offset uint64, data []byte) {
	r.reads++
	r.lastRead = offset
	fill(data, r.fillByte)
}

func (r *recorder) Write(offset uint64, data []byte) {
	r.writes++
	r.lastWrite = offset
	r.written = append(r.written[:0], data...)
}

// fakeIRQ counts triggers and can be told to fail.
type fakeIRQ struct {
	n   atomic.Int64
	err error
}

func (f *fakeIRQ) Trigger() error {
	f.n.Add(1)
	return f.err
}

func (f *fakeIRQ) count() int64 { return f.n.Load() }

func TestBusInsertErrors(t *testing.T) {
	var b Bus
	dev := &recorder{}
	if err := b.Insert(dev, 0x3f8, 8); err != nil {
		t.Fatalf("insert: %v", err)
	}
	tests := []struct {
		name         string
		base, length uint64
		want         []string
	}{
		{"zero length", 0x100, 0, []string{"zero length"}},
		{"overflow", ^uint64(0) - 1, 3, []string{"overflows"}},
		{"same range", 0x3f8, 8, []string{"[0x3f8, 0x3ff]", "overlaps existing range [0x3f8, 0x3ff]"}},
		{"overlap start", 0x3f0, 9, []string{"[0x3f0, 0x3f8]", "[0x3f8, 0x3ff]"}},
		{"overlap end", 0x3ff, 1, []string{"[0x3ff, 0x3ff]", "[0x3f8, 0x3ff]"}},
		{"inside", 0x3fa, 2, []string{"overlaps"}},
		{"covering", 0x300, 0x200, []string{"[0x300, 0x4ff]", "[0x3f8, 0x3ff]"}},
	}
	for _, tc := range tests {
		err := b.Insert(dev, tc.base, tc.length)
		if err == nil {
			t.Errorf("%s: insert [%#x,+%#x) succeeded", tc.name, tc.base, tc.length)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
	if err := b.Insert(nil, 0x10, 1); err == nil {
		t.Error("nil device accepted")
	}
	// Adjacent ranges on both sides and one ending at the top of the space.
	for _, r := range [][2]uint64{{0x3f0, 8}, {0x400, 1}, {^uint64(0) - 0xfff, 0x1000}, {0, 1}} {
		if err := b.Insert(dev, r[0], r[1]); err != nil {
			t.Errorf("insert [%#x,+%#x): %v", r[0], r[1], err)
		}
	}
}

func TestBusLookup(t *testing.T) {
	var b Bus
	devs := map[uint64]*recorder{}
	for i, base := range []uint64{0x3f8, 0x60, 0x64, 0xc000_0000, 0x2f8} {
		d := &recorder{fillByte: byte(i + 1)}
		devs[base] = d
		if err := b.Insert(d, base, map[uint64]uint64{0x3f8: 8, 0x2f8: 8, 0x60: 1, 0x64: 1, 0xc000_0000: 0x1000}[base]); err != nil {
			t.Fatal(err)
		}
	}
	data := make([]byte, 1)
	if !b.Read(0x3fd, data) || devs[0x3f8].lastRead != 5 || data[0] != devs[0x3f8].fillByte {
		t.Errorf("read 0x3fd: got offset %d data %#x", devs[0x3f8].lastRead, data[0])
	}
	if !b.Write(0x64, []byte{0xfe}) || devs[0x64].lastWrite != 0 || devs[0x64].written[0] != 0xfe {
		t.Errorf("write 0x64 not routed")
	}
	wide := make([]byte, 4)
	if !b.Read(0xc000_0ffc, wide) || devs[0xc000_0000].lastRead != 0xffc {
		t.Errorf("mmio read: offset %#x", devs[0xc000_0000].lastRead)
	}
	if !b.Write(0x2f8, []byte{1}) || devs[0x2f8].writes != 1 {
		t.Errorf("write 0x2f8 not routed")
	}
	for _, d := range devs {
		d.reads, d.writes = 0, 0
	}

	// Holes: before the first device, between devices, after the last one.
	for _, addr := range []uint64{0, 0x5f, 0x61, 0x63, 0x300, 0x400, 0xc000_1000, ^uint64(0)} {
		data := []byte{0, 0, 0, 0}
		if b.Read(addr, data) {
			t.Errorf("read %#x: handled", addr)
		}
		if string(data) != "\xff\xff\xff\xff" {
			t.Errorf("read %#x: data %x, want ff", addr, data)
		}
		if b.Write(addr, data) {
			t.Errorf("write %#x: handled", addr)
		}
	}
	if r, w := b.Unhandled.Reads.Load(), b.Unhandled.Writes.Load(); r != 8 || w != 8 {
		t.Errorf("unhandled = %d reads, %d writes; want 8, 8", r, w)
	}
	for base, d := range devs {
		if d.reads != 0 || d.writes != 0 {
			t.Errorf("device at %#x touched by an unhandled access", base)
		}
	}
}

func TestBusEmpty(t *testing.T) {
	var b Bus
	data := []byte{0}
	if b.Read(0x80, data) || data[0] != 0xff || b.Write(0x80, data) {
		t.Error("empty bus handled an access")
	}
}

// nopDevice is the cheapest possible device, for measuring the bus itself.
type nopDevice struct{}

func (nopDevice) Read(uint64, []byte)  {}
func (nopDevice) Write(uint64, []byte) {}

func newBenchBus(tb testing.TB) *Bus {
	b := &Bus{}
	for i := uint64(0); i < 32; i++ {
		if err := b.Insert(nopDevice{}, 0x1000*i, 0x100); err != nil {
			tb.Fatal(err)
		}
	}
	return b
}

func TestBusNoAllocs(t *testing.T) {
	b := newBenchBus(t)
	data := make([]byte, 4)
	allocs := testing.AllocsPerRun(1000, func() {
		b.Write(0x7010, data)
		b.Read(0x7010, data)
		b.Write(0x7200, data) // unhandled
		b.Read(0x7200, data)  // unhandled
	})
	if allocs != 0 {
		t.Errorf("bus access allocates %.1f times", allocs)
	}
}

func BenchmarkBusWrite(b *testing.B) {
	bus := newBenchBus(b)
	data := make([]byte, 1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		bus.Write(uint64(i&31)*0x1000+0x10, data)
	}
}

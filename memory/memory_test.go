package memory

import (
	"bytes"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"unsafe"
)

func TestLayoutSplitsAroundMMIOHole(t *testing.T) {
	if l := Layout(128 << 20); len(l) != 1 || l[0] != [2]uint64{0, 128 << 20} {
		t.Fatalf("128 MiB layout = %v", l)
	}
	if l := Layout(3 << 30); len(l) != 1 {
		t.Fatalf("3 GiB layout = %v, want one region", l)
	}
	l := Layout(4 << 30)
	want := [][2]uint64{{0, 3 << 30}, {4 << 30, 1 << 30}}
	if len(l) != 2 || l[0] != want[0] || l[1] != want[1] {
		t.Fatalf("4 GiB layout = %v, want %v", l, want)
	}
}

func TestSliceBounds(t *testing.T) {
	g := FromRegions([]Region{{GuestAddr: 0, Host: make([]byte, 0x1000)}, {GuestAddr: 0x10000, Host: make([]byte, 0x1000)}})
	ok := [][2]uint64{{0, 0x1000}, {0xfff, 1}, {0x1000, 0}, {0x10000, 0x1000}, {0x10800, 0x800}}
	for _, c := range ok {
		if b, err := g.Slice(c[0], c[1]); err != nil || uint64(len(b)) != c[1] {
			t.Errorf("Slice(%#x, %#x) = %d bytes, %v", c[0], c[1], len(b), err)
		}
	}
	bad := [][2]uint64{{0xfff, 2}, {0x1001, 0}, {0x2000, 1}, {0x10fff, 2}, {0x11000, 1},
		{math.MaxUint64, 1}, {1, math.MaxUint64}, {0x10001, math.MaxUint64 - 0x10}, {0x800, 0x10000}}
	for _, c := range bad {
		if _, err := g.Slice(c[0], c[1]); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Slice(%#x, %#x) err = %v, want ErrOutOfRange", c[0], c[1], err)
		}
	}
}

func TestNewReadWrite(t *testing.T) {
	g, err := New(2 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.WriteAt([]byte("hello"), 0x1ffffb); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := g.ReadAt(buf, 0x1ffffb); err != nil || string(buf) != "hello" {
		t.Fatalf("read back %q, %v", buf, err)
	}
	if _, err := g.WriteAt([]byte("hello"), 0x1ffffc); err == nil {
		t.Fatal("write across the end of memory succeeded")
	}
	if _, err := New(0); err == nil {
		t.Fatal("New(0) succeeded")
	}
}

// TestHugePageAlignment: every region's host mapping starts at a 2 MiB
// boundary, as its guest address does (KVM maps a transparent huge page
// with one nested entry only then), and a range advised before it is
// written reads back what was written. Whether the host gave huge pages
// is its policy (/sys/kernel/mm/transparent_hugepage/enabled): logged.
func TestHugePageAlignment(t *testing.T) {
	g, err := New(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, r := range g.Regions() {
		if a := uintptr(unsafe.Pointer(&r.Host[0])); a%HugePageSize != 0 {
			t.Errorf("region at %#x: host address %#x is not 2 MiB aligned", r.GuestAddr, a)
		}
	}
	g.AdviseHugeRange(0, 4<<20)     // two whole huge pages
	g.AdviseHugeRange(5<<20, 2<<20) // none whole: nothing
	g.AdviseHugeRange(6<<20, 8<<20) // past the end: clipped
	data := bytes.Repeat([]byte{0xa5}, 4<<20)
	if _, err := g.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := g.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if smaps, err := os.ReadFile("/proc/self/smaps_rollup"); err == nil {
		for _, l := range strings.Split(string(smaps), "\n") {
			if strings.HasPrefix(l, "AnonHugePages:") {
				t.Logf("this process's %s", l)
			}
		}
	}
}

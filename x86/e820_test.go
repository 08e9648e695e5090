package x86

import (
	"reflect"
	"testing"
)

func TestE820Map128MiB(t *testing.T) {
	mem := newGuest(t, 128<<20)
	want := []E820Entry{
		{0, 0x9fc00, E820RAM},
		{0x9fc00, 0x100000 - 0x9fc00, E820Reserved},
		{0x100000, 128<<20 - 0x100000, E820RAM},
	}
	if got := E820Map(mem); !reflect.DeepEqual(got, want) {
		t.Fatalf("E820Map(128 MiB) = %+v, want %+v", got, want)
	}
}

func TestE820Map4GiBSkipsHole(t *testing.T) {
	mem := newGuest(t, 4<<30)
	want := []E820Entry{
		{0, 0x9fc00, E820RAM},
		{0x9fc00, 0x100000 - 0x9fc00, E820Reserved},
		{0x100000, 3<<30 - 0x100000, E820RAM},
		{4 << 30, 1 << 30, E820RAM},
	}
	got := E820Map(mem)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("E820Map(4 GiB) = %+v, want %+v", got, want)
	}
	var ram uint64
	for i, e := range got {
		if e.Type == E820RAM {
			ram += e.Size
		}
		if e.Addr < 4<<30 && e.End() > 3<<30 {
			t.Errorf("entry %+v overlaps the MMIO hole", e)
		}
		if i > 0 && got[i-1].End() > e.Addr {
			t.Errorf("entries %d and %d overlap or are unsorted", i-1, i)
		}
	}
	// RAM is all memory except the 640 KiB-1 MiB window.
	if want := uint64(4<<30) - (0x100000 - 0x9fc00); ram != want {
		t.Errorf("total RAM %#x, want %#x", ram, want)
	}
}

func TestE820MapTinyGuest(t *testing.T) {
	// Below 1 MiB there is no high RAM entry, and the conventional range is
	// clipped to the memory size.
	got := E820Map(testGuest(0x80000))
	want := []E820Entry{{0, 0x80000, E820RAM}, {0x9fc00, 0x100000 - 0x9fc00, E820Reserved}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("E820Map(512 KiB) = %+v, want %+v", got, want)
	}
}

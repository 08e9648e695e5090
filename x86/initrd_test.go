package x86

import (
	"strings"
	"testing"
)

func TestInitrdAddr(t *testing.T) {
	mem128 := testGuest(128 << 20)
	for _, c := range []struct {
		name                     string
		size, kernelEnd, maxAddr uint64
		want                     uint64
	}{
		{"page-sized at the top", 0x1000, 0x2000000, 0, 128<<20 - 0x1000},
		{"rounded down to a page", 0x1801, 0x2000000, 0, 128<<20 - 0x2000},
		{"initrd_addr_max below memory end", 0x100000, 0x2000000, 0x3ffffff, 0x3f00000},
		{"fills the room exactly", 128<<20 - 0x2000000, 0x2000000, 0, 0x2000000},
	} {
		got, err := InitrdAddr(mem128, c.size, c.kernelEnd, c.maxAddr)
		if err != nil || got != c.want {
			t.Errorf("%s: InitrdAddr = %#x, %v; want %#x", c.name, got, err, c.want)
		}
		if err == nil && (got%4096 != 0 || got+c.size > 128<<20) {
			t.Errorf("%s: %#x misaligned or past memory", c.name, got)
		}
	}
}

func TestInitrdAddrBigGuest(t *testing.T) {
	// Low memory ends at the 3 GiB MMIO hole; the initrd stays below it.
	mem := newGuest(t, 5<<30)
	got, err := InitrdAddr(mem, 64<<20, 0x3000000, 0x7fffffff)
	if err != nil || got != 0x80000000-64<<20 {
		t.Errorf("with initrd_addr_max 2 GiB: %#x, %v", got, err)
	}
	got, err = InitrdAddr(mem, 64<<20, 0x3000000, 0)
	if err != nil || got != 3<<30-64<<20 {
		t.Errorf("default limit: %#x, %v", got, err)
	}
	got, err = InitrdAddr(mem, 64<<20, 0x3000000, 1<<64-1)
	if err != nil || got != 3<<30-64<<20 {
		t.Errorf("no limit: %#x, %v", got, err)
	}
}

func TestInitrdAddrDoesNotFit(t *testing.T) {
	mem := testGuest(64 << 20)
	_, err := InitrdAddr(mem, 80<<20, 0x2000000, 0)
	if err == nil || !strings.Contains(err.Error(), "initrd of 80 MiB does not fit in guest memory of 64 MiB") {
		t.Errorf("err = %v", err)
	}
	// Fits in memory, but not above the kernel.
	if _, err := InitrdAddr(mem, 40<<20, 30<<20, 0); err == nil {
		t.Error("initrd overlapping the kernel accepted")
	}
	// Never below 1 MiB, even with no kernel end given.
	if _, err := InitrdAddr(mem, 64<<20-0x80000, 0, 0); err == nil {
		t.Error("initrd placed below 1 MiB")
	}
	if _, err := InitrdAddr(mem, 0, 0x2000000, 0); err == nil {
		t.Error("empty initrd accepted")
	}
	_, err = InitrdAddr(mem, 1<<20+1, 63<<20, 0)
	if err == nil || !strings.Contains(err.Error(), "1.0 MiB") {
		t.Errorf("fractional size: err = %v", err)
	}
}

package x86

import (
	"testing"
)

func sum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return s
}

func TestWriteMPTable(t *testing.T) {
	for _, n := range []int{1, 2, 7, 32} {
		mem := testGuest(2 << 20)
		if err := WriteMPTable(mem, n); err != nil {
			t.Fatalf("%d vCPUs: %v", n, err)
		}
		size := MPTableSize(n)
		if 0x9fc00+size > 0xe0000 {
			t.Errorf("%d vCPUs: table of %d bytes overruns the system area", n, size)
		}
		mpf := read(t, mem, 0x9fc00, 16)
		if string(mpf[0:4]) != "_MP_" || mpf[8] != 1 || mpf[9] != 4 || sum(mpf) != 0 {
			t.Errorf("%d vCPUs: floating pointer % x", n, mpf)
		}
		ptr := uint64(u32(mpf, 4))
		if ptr != 0x9fc10 {
			t.Errorf("%d vCPUs: config table pointer %#x", n, ptr)
		}
		hdr := read(t, mem, ptr, 44)
		length := uint64(u16(hdr, 4))
		if string(hdr[0:4]) != "PCMP" || hdr[6] != 4 || length != size-16 {
			t.Errorf("%d vCPUs: header % x (length %d, want %d)", n, hdr, length, size-16)
		}
		if u32(hdr, 36) != 0xfee00000 || u16(hdr, 40) != 0 {
			t.Errorf("%d vCPUs: LAPIC address %#x, ext length %d", n, u32(hdr, 36), u16(hdr, 40))
		}
		mpc := read(t, mem, ptr, length)
		if sum(mpc) != 0 {
			t.Errorf("%d vCPUs: configuration table checksum is off by %d", n, sum(mpc))
		}

		// Walk the entries.
		count := map[byte]int{}
		off := 44
		for range int(u16(hdr, 34)) {
			e := mpc[off:]
			count[e[0]]++
			switch e[0] {
			case 0: // processor
				id := count[0] - 1
				flags := byte(1)
				if id == 0 {
					flags = 3
				}
				if e[1] != byte(id) || e[3] != flags || e[2] != 0x14 {
					t.Errorf("%d vCPUs: processor entry % x", n, e[:20])
				}
				off += 20
			case 1: // bus
				if e[1] != 0 || string(e[2:8]) != "ISA   " {
					t.Errorf("bus entry % x", e[:8])
				}
				off += 8
			case 2: // IOAPIC
				if e[1] != byte(n) || e[3] != 1 || u32(e, 4) != 0xfec00000 {
					t.Errorf("%d vCPUs: IOAPIC entry % x", n, e[:8])
				}
				off += 8
			case 3: // I/O interrupt
				irq := byte(count[3] - 1)
				if e[1] != 0 || e[4] != 0 || e[5] != irq || e[6] != byte(n) || e[7] != irq {
					t.Errorf("I/O interrupt entry % x", e[:8])
				}
				off += 8
			case 4: // local interrupt
				lint := byte(count[4] - 1)
				want := [8]byte{4, 3, 0, 0, 0, 0, 0, 0} // LINT0: ExtINT to the BSP
				if lint == 1 {
					want = [8]byte{4, 1, 0, 0, 0, 0, 0xff, 1} // LINT1: NMI to all
				}
				if [8]byte(e[:8]) != want {
					t.Errorf("local interrupt entry % x, want % x", e[:8], want)
				}
				off += 8
			default:
				t.Fatalf("unknown entry type %d at %#x", e[0], off)
			}
		}
		if uint64(off) != length {
			t.Errorf("%d vCPUs: entries end at %d, table length %d", n, off, length)
		}
		if count[0] != n || count[1] != 1 || count[2] != 1 || count[3] != 24 || count[4] != 2 {
			t.Errorf("%d vCPUs: entry counts %v", n, count)
		}
	}
}

func TestMPTableLimits(t *testing.T) {
	for _, n := range []int{0, -1, 33} {
		if err := WriteMPTable(testGuest(2<<20), n); err == nil {
			t.Errorf("MP table for %d vCPUs accepted", n)
		}
	}
	if 0x9fc00+MPTableSize(32) > 0xe0000 {
		t.Errorf("32-vCPU MP table of %d bytes does not fit", MPTableSize(32))
	}
	if err := WriteMPTable(testGuest(0x9fc00), 1); err == nil {
		t.Error("MP table written past the end of memory")
	}
}

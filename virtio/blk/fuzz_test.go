package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// The fuzzed guest: fuzzMem bytes of RAM between two guard areas, a queue
// of fuzzQueue entries, buffers from fuzzHeap on, a disk of fuzzSectors.
const (
	fuzzMem     = 256 << 10
	fuzzGuard   = 1 << 16
	fuzzQueue   = 16
	fuzzRings   = 0x1000
	fuzzHeap    = 0x4000
	fuzzSectors = 8
	fuzzMaxLen  = 8 << 10 // the longest buffer the shapes make in RAM
	descRecord  = 5       // bytes of shape per descriptor
)

// fuzzChain writes the descriptors shape describes, descRecord bytes each:
//
//	sel   where the buffer is: 0-3 a fresh buffer of len bytes in RAM;
//	      4 straddling the end of RAM; 5 far outside it; 6 at 0 (over the
//	      rings); 7 a fresh buffer with a length of 4 GiB-1
//	len   le16 (mod fuzzMaxLen for fresh buffers)
//	flags the descriptor's flags as they are (NEXT, WRITE, INDIRECT, junk)
//	next  the descriptor's next field as it is
//
// at the start of the descriptor table, or, if indirect, in an indirect
// table that descriptor 0 points to. The first fresh buffer (in order)
// starts with the request header (typ, sector) as far as it fits; every
// other fresh buffer is filled with fill. It returns the head to publish.
func fuzzChain(drv *virtiotest.Driver, mem *memory.Guest, shape []byte, indirect bool, typ uint32, sector uint64, fill byte) uint16 {
	desc, _, _ := drv.Rings()
	n := min(len(shape)/descRecord, fuzzQueue)
	table := desc
	if indirect {
		table = fuzzHeap
	}
	heap := uint64(fuzzHeap + 16*fuzzQueue)
	hdr := header(typ, sector)
	first := true
	for i := range n {
		r := shape[i*descRecord:]
		length := uint32(binary.LittleEndian.Uint16(r[1:]))
		var addr uint64
		fresh := false
		switch r[0] % 8 {
		case 4:
			addr = fuzzMem - uint64(length)/2 - 1
		case 5:
			addr = 1 << 40
		case 6:
			addr = 0
		case 7:
			addr, length = heap, ^uint32(0)
		default:
			length %= fuzzMaxLen
			addr, fresh = heap, true
			heap += uint64(length+15) &^ 15
		}
		if fresh {
			b, _ := mem.Slice(addr, uint64(length))
			if first {
				k := copy(b, hdr)
				b = b[k:]
				first = false
			}
			for j := range b {
				b[j] = fill + byte(j)
			}
		}
		drv.WriteDesc(table, uint16(i), addr, length, uint16(r[3]), uint16(r[4]))
	}
	if indirect {
		drv.WriteDesc(desc, 0, table, uint32(16*n), virtiotest.FIndirect, 0)
	}
	return 0
}

// flatten concatenates the chain's buffers.
func flatten(c *virtio.Chain) []byte {
	var b []byte
	for _, d := range c.Descs {
		b = append(b, d.Buf...)
	}
	return b
}

// overlapping reports whether two of the chain's buffers share bytes.
func overlapping(c *virtio.Chain) bool {
	for i, a := range c.Descs {
		for _, b := range c.Descs[i+1:] {
			if a.Addr < b.Addr+uint64(len(b.Buf)) && b.Addr < a.Addr+uint64(len(a.Buf)) {
				return true
			}
		}
	}
	return false
}

// FuzzRequest serves requests of arbitrary shape: descriptor counts,
// lengths, flags, links and addresses (out of RAM too), direct or
// indirect, with any header. Whatever the chain, the device must not panic
// or touch memory outside guest RAM (the guard areas around it stay
// intact); a status it writes is OK, IOERR or UNSUPP; the disk changes only
// for a write answered OK, by exactly its data at its sector; a read
// answered OK returns the disk's bytes.
func FuzzRequest(f *testing.F) {
	rec := func(sel byte, length uint16, flags, next byte) []byte {
		return []byte{sel, byte(length), byte(length >> 8), flags, next}
	}
	cat := func(rs ...[]byte) []byte { return bytes.Join(rs, nil) }
	const nx, wr = virtiotest.FNext, virtiotest.FWrite
	read := cat(rec(0, 16, nx, 1), rec(0, 1024, nx|wr, 2), rec(0, 1, wr, 0))
	write := cat(rec(0, 16, nx, 1), rec(0, 512, nx, 2), rec(0, 512, nx, 3), rec(0, 1, wr, 0))
	merged := cat(rec(0, 16+512, nx, 1), rec(0, 1, wr, 0))
	f.Add(uint32(typeIn), uint64(3), read, false, byte(0))
	f.Add(uint32(typeIn), uint64(3), read, true, byte(0))
	f.Add(uint32(typeOut), uint64(5), write, false, byte(7))
	f.Add(uint32(typeOut), uint64(7), merged, true, byte(9))
	f.Add(uint32(typeOut), uint64(7), cat(rec(0, 16, nx, 1), rec(0, 1024, nx, 2), rec(0, 1, wr, 0)), false, byte(1))
	f.Add(uint32(typeFlush), uint64(0), cat(rec(0, 16, nx, 1), rec(0, 1, wr, 0)), false, byte(0))
	f.Add(uint32(typeGetID), uint64(0), cat(rec(0, 16, nx, 1), rec(0, 20, nx|wr, 2), rec(0, 1, wr, 0)), false, byte(0))
	f.Add(uint32(typeIn), uint64(0), cat(rec(0, 16, nx, 1), rec(4, 512, nx|wr, 2), rec(0, 1, wr, 0)), false, byte(0))
	f.Add(uint32(typeIn), uint64(0), cat(rec(0, 16, nx, 1), rec(6, 512, nx|wr, 1), rec(0, 1, wr, 0)), false, byte(0))
	f.Add(uint32(typeIn), uint64(^uint64(0)>>9), cat(rec(7, 16, nx, 1), rec(0, 1, wr, 0)), true, byte(0))

	path := filepath.Join(f.TempDir(), "disk.img")
	pattern := make([]byte, fuzzSectors*SectorSize)
	for i := range pattern {
		pattern[i] = byte(i / SectorSize)
	}
	if err := os.WriteFile(path, pattern, 0o644); err != nil {
		f.Fatal(err)
	}
	d, err := New(Config{ID: "f", Path: path, CacheType: CacheWriteback}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.Close() })
	disk, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { disk.Close() })
	// Guest RAM sits between two guard areas of a larger allocation; a
	// device (or the kernel, for preadv) writing past RAM would hit them.
	backing := make([]byte, fuzzGuard+fuzzMem+fuzzGuard)
	ram := backing[fuzzGuard : fuzzGuard+fuzzMem : fuzzGuard+fuzzMem]
	mem := memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: ram}})
	const guardByte = 0xa5
	c := virtio.NewChain()
	got := make([]byte, len(pattern))

	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, shape []byte, indirect bool, fill byte) {
		if _, err := disk.WriteAt(pattern, 0); err != nil {
			t.Fatal(err)
		}
		clear(ram)
		for i := range fuzzGuard {
			backing[i], backing[len(backing)-1-i] = guardByte, guardByte
		}
		q := virtio.NewQueue(virtio.MaxQueueSize)
		drv, err := virtiotest.New(mem, q, fuzzRings, fuzzQueue, false, fuzzMem)
		if err != nil {
			t.Fatal(err)
		}
		drv.Publish(fuzzChain(drv, mem, shape, indirect, typ, sector, fill))

		ok, err := q.Pop(c)
		switch {
		case !ok && err == nil:
			t.Fatal("a published chain was not popped")
		case err != nil && !errors.Is(err, virtio.ErrBadChain) && !errors.Is(err, virtio.ErrQueueBroken):
			t.Fatalf("Pop: unexpected error %v", err)
		}
		if err == nil {
			for _, b := range c.Descs {
				if b.Addr > fuzzMem || uint64(len(b.Buf)) > fuzzMem-b.Addr {
					t.Fatalf("buffer [%#x, +%#x) outside guest RAM", b.Addr, len(b.Buf))
				}
			}
			before := flatten(c) // what a write sends: nothing is written to the guest first
			// The request as the device sees it: the header need not be
			// the fuzzer's (a buffer over the rings, say).
			if len(before) >= headerSize {
				typ = binary.LittleEndian.Uint32(before[0:])
				sector = binary.LittleEndian.Uint64(before[8:])
			}
			var writable uint64
			for _, b := range c.Descs {
				if b.Write {
					writable += uint64(len(b.Buf))
				}
			}
			n := d.serve(c)
			var status byte
			if n > 0 {
				if uint64(n) > writable {
					t.Fatalf("used length %d with %d writable bytes", n, writable)
				}
				last := c.Descs[len(c.Descs)-1].Buf
				status = last[len(last)-1]
				if status != statusOK && status != statusIOErr && status != statusUnsupp {
					t.Fatalf("status byte %d", status)
				}
			}
			if _, err := disk.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			want := pattern
			if n > 0 && status == statusOK && typ == typeOut {
				data := before[headerSize : len(before)-1]
				if off := sector * SectorSize; sector > fuzzSectors || uint64(len(data)) > uint64(len(pattern))-off {
					t.Fatalf("a write of %d bytes at sector %d answered OK on a disk of %d sectors", len(data), sector, fuzzSectors)
				}
				want = bytes.Clone(pattern)
				copy(want[sector*SectorSize:], data)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("disk contents changed by a request of type %d answered %d (used %d)", typ, status, n)
			}
			if n > 0 && status == statusOK && typ == typeIn && !overlapping(c) {
				after := flatten(c)
				data := after[headerSize : len(after)-1]
				if !bytes.Equal(data, pattern[sector*SectorSize:sector*SectorSize+uint64(len(data))]) {
					t.Fatalf("a read of sector %d returned other bytes than the disk's", sector)
				}
			}
		} else if _, err := disk.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern) {
			t.Fatal("disk changed by a chain that was not served")
		}
		for i := range fuzzGuard {
			if backing[i] != guardByte || backing[len(backing)-1-i] != guardByte {
				t.Fatal("memory outside guest RAM was written")
			}
		}
	})
}

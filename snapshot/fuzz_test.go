package snapshot

import (
	"bytes"
	"runtime"
	"testing"
)

// allocBound is the most decoding n bytes may allocate. The decoder checks
// every length against the bytes that remain, so what it allocates is
// proportional to its input; the constant covers encoding/json and
// encoding/binary bookkeeping.
func allocBound(n int) uint64 { return 32*uint64(n) + 4<<20 }

// decodeChecked decodes b and fails the test if Decode panics (the fuzzer
// reports that by itself) or allocates more than allocBound.
func decodeChecked(t *testing.T, b []byte) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s, err := Decode(b)
	runtime.ReadMemStats(&after)
	if used := after.TotalAlloc - before.TotalAlloc; used > allocBound(len(b)) {
		t.Fatalf("Decode of %d bytes allocated %d bytes (bound %d)", len(b), used, allocBound(len(b)))
	}
	if (s == nil) == (err == nil) {
		t.Fatalf("Decode = %v, %v: want exactly one of a state and an error", s != nil, err)
	}
	if err != nil {
		return
	}
	// Whatever decodes re-encodes, and the re-encoding is a fixed point:
	// it decodes and encodes to itself. (The input bytes themselves need
	// not be canonical: JSON spellings of the header and the kernel structs'
	// padding bytes vary.)
	again, err := Encode(s)
	if err != nil {
		t.Fatalf("decoded state does not re-encode: %v", err)
	}
	s2, err := Decode(again)
	if err != nil {
		t.Fatalf("re-encoded state does not decode: %v", err)
	}
	third, err := Encode(s2)
	if err != nil || !bytes.Equal(third, again) {
		t.Fatalf("encode(decode(x)) is not a fixed point (%v)", err)
	}
}

func FuzzRead(f *testing.F) {
	for _, n := range []int{1, 2} {
		s := testState(n)
		if n == 2 {
			s.VM.PIT = nil
			s.VCPUs[1].XSave = nil
			s.VCPUs[1].CPUID = nil
			s.Devices = nil
		}
		b, err := Encode(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte(Magic))
	f.Add([]byte("EMBERSNP\x01\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeChecked(t, b)
		// Most mutations break the CRC; also decode the input with its
		// length and CRC made consistent, so that the parser behind the
		// CRC check is fuzzed too.
		if len(b) >= preambleSize+crcSize && string(b[:len(Magic)]) == Magic {
			decodeChecked(t, refresh(b))
		}
	})
}

// FuzzParseUffdMappings: whatever a VMM sends, the handler's parser either
// refuses it or returns regions whose every page lies in the first total
// bytes of the memory file (what fill indexes), with no overlap.
func FuzzParseUffdMappings(f *testing.F) {
	f.Add([]byte(`[{"base_host_virt_addr":139637976727552,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4}]`))
	f.Add([]byte(`[{"base_host_virt_addr":4096,"size":8192,"offset":18446744073709547520,"page_size":4096}]`))
	f.Add([]byte(`[{"base_host_virt_addr":4096,"size":4096,"offset":0},{"base_host_virt_addr":8192,"size":4096,"offset":4096}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		maps, total, err := ParseUffdMappings(b)
		if err != nil {
			return
		}
		if len(maps) == 0 || total == 0 || total > uffdMaxRAM {
			t.Fatalf("%d regions, total %d", len(maps), total)
		}
		for i, m := range maps {
			last := m.BaseHostVirtAddr + m.Size - PageSize
			if m.Size == 0 || last < m.BaseHostVirtAddr {
				t.Fatalf("region %d %+v wraps", i, m)
			}
			if off := m.Offset + (last - m.BaseHostVirtAddr); off+PageSize > total || off < m.Offset {
				t.Fatalf("region %d %+v: last page at file offset %#x, past total %#x", i, m, off, total)
			}
			for _, o := range maps[:i] {
				if m.BaseHostVirtAddr <= o.BaseHostVirtAddr+o.Size-1 && o.BaseHostVirtAddr <= last+PageSize-1 {
					t.Fatalf("regions %+v and %+v overlap", o, m)
				}
			}
		}
	})
}

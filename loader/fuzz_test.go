package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"strings"
	"testing"
)

// FuzzLoad loads arbitrary bytes as a kernel into 4 MiB of guest memory:
// no panic, no write outside guest memory, and a consistent result.
func FuzzLoad(f *testing.F) {
	f.Add(testVmlinux(true))
	f.Add(buildELF(elf.ELFCLASS32, elf.EM_386, testText, []tseg{{typ: elf.PT_LOAD, paddr: testText, data: []byte{1}, memsz: 2}, {typ: elf.PT_NOTE, data: pvhNote(testText)}}))
	bz := testBzImage([]byte("payload"))
	bz[hdrRelocatable] = 0
	binary.LittleEndian.PutUint64(bz[hdrPrefAddress:], 0)
	binary.LittleEndian.PutUint32(bz[hdrInitSize:], 1<<20)
	f.Add(bz)
	f.Add([]byte("#!/bin/sh\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := newTestMem(4 << 20)
		k, err := loadBytes(t, m, b)
		if err != nil {
			if !m.untouched() {
				t.Fatal("failed load wrote to guest memory")
			}
			if s := err.Error(); strings.Contains(s, "\n") {
				t.Fatalf("multi-line error %q", s)
			}
			return
		}
		if k.Start < HimemStart || k.End > 4<<20 || k.Start >= k.End {
			t.Fatalf("kernel occupies [%#x, %#x)", k.Start, k.End)
		}
		if k.Entry == 0 && !k.HasPVH {
			t.Fatal("kernel without any entry point")
		}
	})
}

// FuzzExtractVmlinux extracts arbitrary bytes as a bzImage, and arbitrary
// payloads inside a valid bzImage header.
func FuzzExtractVmlinux(f *testing.F) {
	v := testVmlinux(true)
	f.Add(testBzImage(gzipped(f, v)), false)
	f.Add(lz4Legacy(f, v, 1024, true), true)
	f.Add(lz4Legacy(f, v, 1000, false), true)
	f.Fuzz(func(t *testing.T, b []byte, wrap bool) {
		if wrap {
			b = testBzImage(b)
		}
		out, err := extractVmlinux(b, 64<<20)
		if err == nil && !bytes.HasPrefix(out, []byte("\x7fELF")) {
			t.Fatal("extracted a non-ELF")
		}
	})
}

package loader

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"testing"

	"github.com/embervm/ember/memory"
	"github.com/pierrec/lz4/v4"
)

const (
	fill  = 0xaa // initial guest memory content, to see what a load wrote
	guard = 4096 // bytes after guest memory that must stay untouched
)

// testMem is guest memory of size bytes at address 0, filled with fill and
// followed by a guard area in the same allocation.
type testMem struct {
	*memory.Guest
	buf  []byte
	size int
}

func newTestMem(size int) *testMem {
	buf := bytes.Repeat([]byte{fill}, size+guard)
	return &testMem{
		Guest: memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: buf[:size:size]}}),
		buf:   buf,
		size:  size,
	}
}

// checkGuard fails t if anything wrote past the end of guest memory.
func (m *testMem) checkGuard(t testing.TB) {
	t.Helper()
	for i, b := range m.buf[m.size:] {
		if b != fill {
			t.Fatalf("byte %d past the end of guest memory was written (%#x)", i, b)
		}
	}
}

// untouched reports whether guest memory still holds only fill.
func (m *testMem) untouched() bool {
	return bytes.Count(m.buf[:m.size], []byte{fill}) == m.size
}

// tseg is a program header for buildELF; data is the file part.
type tseg struct {
	typ   elf.ProgType
	paddr uint64
	data  []byte
	memsz uint64
}

// buildELF lays out an executable ELF of the given class and machine with
// the program headers after the ELF header and segment data after them.
func buildELF(class elf.Class, machine elf.Machine, entry uint64, segs []tseg) []byte {
	le := binary.LittleEndian
	is64 := class == elf.ELFCLASS64
	hsz, psz := elf32HeaderSize, elf32PhdrSize
	if is64 {
		hsz, psz = elf64HeaderSize, elf64PhdrSize
	}
	off := hsz + psz*len(segs)
	b := make([]byte, off)
	copy(b, elf.ELFMAG)
	b[elf.EI_CLASS] = byte(class)
	b[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	b[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	le.PutUint16(b[ehTypeOff:], uint16(elf.ET_EXEC))
	le.PutUint16(b[ehMachineOff:], uint16(machine))
	if is64 {
		le.PutUint64(b[eh64EntryOff:], entry)
		le.PutUint64(b[eh64PhoffOff:], uint64(hsz))
		le.PutUint16(b[eh64PhentOff:], uint16(psz))
		le.PutUint16(b[eh64PhnumOff:], uint16(len(segs)))
	} else {
		le.PutUint32(b[eh32EntryOff:], uint32(entry))
		le.PutUint32(b[eh32PhoffOff:], uint32(hsz))
		le.PutUint16(b[eh32PhentOff:], uint16(psz))
		le.PutUint16(b[eh32PhnumOff:], uint16(len(segs)))
	}
	for i, s := range segs {
		for len(b)%8 != 0 {
			b = append(b, 0)
		}
		p := b[hsz+i*psz:]
		le.PutUint32(p, uint32(s.typ))
		if is64 {
			le.PutUint64(p[8:], uint64(len(b)))
			le.PutUint64(p[16:], s.paddr|0xffffffff80000000)
			le.PutUint64(p[24:], s.paddr)
			le.PutUint64(p[32:], uint64(len(s.data)))
			le.PutUint64(p[40:], s.memsz)
		} else {
			le.PutUint32(p[4:], uint32(len(b)))
			le.PutUint32(p[8:], uint32(s.paddr))
			le.PutUint32(p[12:], uint32(s.paddr))
			le.PutUint32(p[16:], uint32(len(s.data)))
			le.PutUint32(p[20:], uint32(s.memsz))
		}
		b = append(b, s.data...)
	}
	return b
}

// note encodes one ELF note with 4-byte alignment.
func note(name string, typ uint32, desc []byte) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, uint32(len(name)+1))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	b = append(b, name...)
	b = append(b, 0)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func pvhNote(entry uint32) []byte {
	return note(xenNoteName, xenElfnotePhys32Entry, binary.LittleEndian.AppendUint32(nil, entry))
}

// pattern is n deterministic, not very compressible bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1103515245 + 12345
		b[i] = byte(x >> 16)
	}
	return b
}

// Test vmlinux: text at 2 MiB (entry), data+bss at 3 MiB, PVH entry inside text.
const (
	testText     = 0x200000
	testData     = 0x300000
	testEntry    = testText + 0x40
	testPVHEntry = testText + 0x80
	testBss      = 0x3000
)

func testVmlinux(withPVH bool) []byte {
	segs := []tseg{
		{typ: elf.PT_LOAD, paddr: testText, data: pattern(0x1800, 1), memsz: 0x1800},
		{typ: elf.PT_LOAD, paddr: testData, data: pattern(0x800, 2), memsz: 0x800 + testBss},
	}
	notes := note("GNU", 3, pattern(20, 3))
	notes = append(notes, note(xenNoteName, 6, []byte("linux\x00"))...)
	if withPVH {
		notes = append(notes, pvhNote(testPVHEntry)...)
	}
	notes = append(notes, note("Linux", 256, []byte("6.1.0\x00"))...)
	segs = append(segs, tseg{typ: elf.PT_NOTE, paddr: testText + 0x1000, data: notes, memsz: uint64(len(notes))})
	return buildELF(elf.ELFCLASS64, elf.EM_X86_64, testEntry, segs)
}

// Test bzImage layout.
const (
	testSetupSects = 3
	testPMOffset   = (testSetupSects + 1) * sectorSize
	testInitSize   = 0x400000
	testHdrEnd     = 0x26c // 0x202 + 0x6a, as in Linux 6.x
)

// testBzImage builds a bzImage whose protected-mode part holds payload at
// payload_offset 0x300, padded with pattern bytes.
func testBzImage(payload []byte) []byte {
	le := binary.LittleEndian
	b := make([]byte, testPMOffset)
	b[hdrSetupSects] = testSetupSects
	le.PutUint16(b[0x1fe:], 0xaa55)
	b[0x200], b[hdrJumpOffset] = 0xeb, testHdrEnd-hdrMagic
	copy(b[hdrMagic:], bzMagic)
	le.PutUint16(b[hdrVersion:], 0x020f)
	b[hdrLoadFlags] = loadedHigh
	le.PutUint32(b[hdrInitrdAddrMax:], 0x7fffffff)
	le.PutUint32(b[hdrKernelAlignment:], 0x200000)
	b[hdrRelocatable] = 1
	le.PutUint16(b[hdrXLoadFlags:], 0x7f)
	le.PutUint32(b[hdrCmdlineSize:], 0x7ff)
	le.PutUint32(b[hdrPayloadOffset:], 0x300)
	le.PutUint32(b[hdrPayloadLength:], uint32(len(payload)))
	le.PutUint64(b[hdrPrefAddress:], 0x1000000)
	le.PutUint32(b[hdrInitSize:], testInitSize)
	copy(b[0x600:], pattern(0x100, 9)) // setup code stand-in
	b = append(b, pattern(0x300, 7)...)
	b = append(b, payload...)
	return append(b, pattern(0x123, 8)...)
}

func gzipped(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// lz4Legacy frames b as the kernel does: legacy magic, blocks of at most
// blockSize input bytes (LZ4-compressed when compress is set, literal-only
// blocks otherwise), then the 4-byte uncompressed size.
func lz4Legacy(t testing.TB, b []byte, blockSize int, compress bool) []byte {
	le := binary.LittleEndian
	total := len(b)
	out := le.AppendUint32(nil, lz4LegacyMagic)
	for len(b) > 0 {
		chunk := b[:min(blockSize, len(b))]
		b = b[len(chunk):]
		var blk []byte
		if compress {
			dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
			n, err := lz4.CompressBlock(chunk, dst, nil)
			if err != nil || n == 0 {
				t.Fatalf("CompressBlock = %d, %v", n, err)
			}
			blk = dst[:n]
		} else {
			blk = literalBlock(chunk)
		}
		out = le.AppendUint32(out, uint32(len(blk)))
		out = append(out, blk...)
	}
	return le.AppendUint32(out, uint32(total))
}

// literalBlock is an LZ4 block of one literal-only sequence.
func literalBlock(lit []byte) []byte {
	n := len(lit)
	if n < 15 {
		return append([]byte{byte(n << 4)}, lit...)
	}
	b := []byte{0xf0}
	for n -= 15; n >= 255; n -= 255 {
		b = append(b, 255)
	}
	b = append(b, byte(n))
	return append(b, lit...)
}

package loader

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/embervm/ember/memory"
)

// ELF layout (System V ABI, ELF-64 Object File Format; the ELF-32 header
// and program header follow the generic ABI). Field offsets are the ones of
// Elf64_Ehdr / Elf32_Ehdr and Elf64_Phdr / Elf32_Phdr.
const (
	elf64HeaderSize = 64 // sizeof(Elf64_Ehdr)
	elf32HeaderSize = 52 // sizeof(Elf32_Ehdr)
	elf64PhdrSize   = 56 // sizeof(Elf64_Phdr)
	elf32PhdrSize   = 32 // sizeof(Elf32_Phdr)

	ehTypeOff    = 16 // e_type (both classes)
	ehMachineOff = 18 // e_machine (both classes)
	eh64EntryOff = 24 // Elf64_Ehdr.e_entry
	eh64PhoffOff = 32 // Elf64_Ehdr.e_phoff
	eh64PhentOff = 54 // Elf64_Ehdr.e_phentsize
	eh64PhnumOff = 56 // Elf64_Ehdr.e_phnum
	eh32EntryOff = 24 // Elf32_Ehdr.e_entry
	eh32PhoffOff = 28 // Elf32_Ehdr.e_phoff
	eh32PhentOff = 42 // Elf32_Ehdr.e_phentsize
	eh32PhnumOff = 44 // Elf32_Ehdr.e_phnum

	ph64OffsetOff = 8  // Elf64_Phdr.p_offset
	ph64PaddrOff  = 24 // Elf64_Phdr.p_paddr
	ph64FileszOff = 32 // Elf64_Phdr.p_filesz
	ph64MemszOff  = 40 // Elf64_Phdr.p_memsz
	ph32OffsetOff = 4  // Elf32_Phdr.p_offset
	ph32PaddrOff  = 12 // Elf32_Phdr.p_paddr
	ph32FileszOff = 16 // Elf32_Phdr.p_filesz
	ph32MemszOff  = 20 // Elf32_Phdr.p_memsz

	// maxNoteSegment bounds how much of a PT_NOTE segment is read; kernel
	// note segments are a few hundred bytes.
	maxNoteSegment = 1 << 20
)

// Xen ELF notes (Xen include/public/elfnote.h).
const (
	// xenNoteName is the owner name of Xen notes.
	xenNoteName = "Xen"
	// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the physical
	// 32-bit entry point of a PVH kernel.
	xenElfnotePhys32Entry = 18
	// noteHeaderSize is sizeof(Elf_Nhdr): n_namesz, n_descsz, n_type, u32 each.
	noteHeaderSize = 12
	// maxPhys32 is the highest address a 32-bit (PHYS32) entry can have.
	maxPhys32 = 1<<32 - 1
)

// segment is one PT_LOAD program header.
type segment struct {
	index                        int
	offset, paddr, filesz, memsz uint64
}

// elfImage is what the loader needs from an ELF file.
type elfImage struct {
	class    elf.Class
	machine  elf.Machine
	entry    uint64
	loads    []segment
	hasPVH   bool
	pvhEntry uint64
}

// parseELF reads and validates the ELF header, program headers and notes
// of the size bytes of r; head is the start of the file.
func parseELF(r io.ReaderAt, size int64, head []byte) (*elfImage, error) {
	if len(head) <= elf.EI_DATA {
		return nil, fmt.Errorf("truncated: ELF header needs %d bytes, file has %d", elf64HeaderSize, size)
	}
	img := &elfImage{class: elf.Class(head[elf.EI_CLASS])}
	var hdrSize, phentWant int
	switch img.class {
	case elf.ELFCLASS64:
		hdrSize, phentWant = elf64HeaderSize, elf64PhdrSize
	case elf.ELFCLASS32:
		hdrSize, phentWant = elf32HeaderSize, elf32PhdrSize
	default:
		return nil, fmt.Errorf("ELF with invalid class %d", head[elf.EI_CLASS])
	}
	if d := elf.Data(head[elf.EI_DATA]); d != elf.ELFDATA2LSB {
		return nil, fmt.Errorf("ELF is %v, x86 kernels are little endian (%v)", d, elf.ELFDATA2LSB)
	}
	if len(head) < hdrSize {
		return nil, fmt.Errorf("truncated: ELF header needs %d bytes, file has %d", hdrSize, size)
	}
	le := binary.LittleEndian
	img.machine = elf.Machine(le.Uint16(head[ehMachineOff:]))
	is64 := img.class == elf.ELFCLASS64
	if is64 && img.machine != elf.EM_X86_64 || !is64 && img.machine != elf.EM_386 && img.machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("ELF for %s, Ember boots x86-64 kernels", machineName(img.machine))
	}
	if t := elf.Type(le.Uint16(head[ehTypeOff:])); t != elf.ET_EXEC {
		return nil, fmt.Errorf("ELF type %v, a kernel vmlinux is %v", t, elf.ET_EXEC)
	}
	var phoff uint64
	var phent, phnum int
	if is64 {
		img.entry = le.Uint64(head[eh64EntryOff:])
		phoff = le.Uint64(head[eh64PhoffOff:])
		phent, phnum = int(le.Uint16(head[eh64PhentOff:])), int(le.Uint16(head[eh64PhnumOff:]))
	} else {
		img.entry = uint64(le.Uint32(head[eh32EntryOff:]))
		phoff = uint64(le.Uint32(head[eh32PhoffOff:]))
		phent, phnum = int(le.Uint16(head[eh32PhentOff:])), int(le.Uint16(head[eh32PhnumOff:]))
	}
	if phnum == 0 {
		return nil, errors.New("ELF has no program headers")
	}
	if phent != phentWant {
		return nil, fmt.Errorf("ELF program header size %d, want %d", phent, phentWant)
	}
	phSize := uint64(phnum) * uint64(phent) // at most 65535*56: no overflow
	if phoff > uint64(size) || phSize > uint64(size)-phoff {
		return nil, fmt.Errorf("truncated: program headers need bytes up to %d, file has %d", sat(phoff, phSize), size)
	}
	ph := make([]byte, phSize)
	if err := readFull(r, ph, int64(phoff)); err != nil {
		return nil, fmt.Errorf("read program headers: %w", err)
	}

	for i := range phnum {
		p := ph[i*phent : (i+1)*phent]
		typ := elf.ProgType(le.Uint32(p)) // p_type is first in both classes
		s := segment{index: i}
		if is64 {
			s.offset, s.paddr = le.Uint64(p[ph64OffsetOff:]), le.Uint64(p[ph64PaddrOff:])
			s.filesz, s.memsz = le.Uint64(p[ph64FileszOff:]), le.Uint64(p[ph64MemszOff:])
		} else {
			s.offset, s.paddr = uint64(le.Uint32(p[ph32OffsetOff:])), uint64(le.Uint32(p[ph32PaddrOff:]))
			s.filesz, s.memsz = uint64(le.Uint32(p[ph32FileszOff:])), uint64(le.Uint32(p[ph32MemszOff:]))
		}
		if typ != elf.PT_LOAD && typ != elf.PT_NOTE {
			continue
		}
		if s.offset > uint64(size) || s.filesz > uint64(size)-s.offset {
			return nil, fmt.Errorf("truncated: segment %d needs bytes up to %d, file has %d", i, sat(s.offset, s.filesz), size)
		}
		if typ == elf.PT_NOTE {
			if err := img.readNotes(r, s, is64); err != nil {
				return nil, fmt.Errorf("segment %d: %w", i, err)
			}
			continue
		}
		if s.filesz > s.memsz {
			return nil, fmt.Errorf("segment %d: file size %#x exceeds memory size %#x", i, s.filesz, s.memsz)
		}
		if s.paddr < HimemStart {
			return nil, fmt.Errorf("segment %d loads at %#x, below the 1 MiB minimum (%#x)", i, s.paddr, HimemStart)
		}
		if s.paddr+s.memsz < s.paddr {
			return nil, fmt.Errorf("segment %d: address %#x + size %#x overflows", i, s.paddr, s.memsz)
		}
		img.loads = append(img.loads, s)
	}
	if len(img.loads) == 0 {
		return nil, errors.New("ELF has no PT_LOAD segment")
	}
	if !is64 {
		if !img.hasPVH {
			return nil, errors.New("32-bit ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); Ember boots 64-bit vmlinux or PVH kernels")
		}
	} else if !img.inSegment(img.entry) {
		return nil, fmt.Errorf("entry point %#x is outside every PT_LOAD segment", img.entry)
	}
	if img.hasPVH && !img.inSegment(img.pvhEntry) {
		return nil, fmt.Errorf("PVH entry point %#x is outside every PT_LOAD segment", img.pvhEntry)
	}
	return img, nil
}

// inSegment reports whether addr lies in a PT_LOAD segment's memory image.
func (img *elfImage) inSegment(addr uint64) bool {
	for _, s := range img.loads {
		if addr >= s.paddr && addr-s.paddr < s.memsz {
			return true
		}
	}
	return false
}

// readNotes scans the notes of PT_NOTE segment s for the PVH entry.
// Linux emits its notes with 4-byte alignment in both ELF classes.
func (img *elfImage) readNotes(r io.ReaderAt, s segment, is64 bool) error {
	if s.filesz > maxNoteSegment {
		return fmt.Errorf("note segment of %d bytes, more than the %d a kernel has", s.filesz, maxNoteSegment)
	}
	b := make([]byte, s.filesz)
	if err := readFull(r, b, int64(s.offset)); err != nil {
		return fmt.Errorf("read notes: %w", err)
	}
	le := binary.LittleEndian
	for len(b) >= noteHeaderSize {
		namesz, descsz, typ := uint64(le.Uint32(b[0:])), uint64(le.Uint32(b[4:])), le.Uint32(b[8:]) // Elf_Nhdr
		b = b[noteHeaderSize:]
		nameLen, descLen := align4(namesz), align4(descsz)
		if nameLen > uint64(len(b)) || descLen > uint64(len(b))-nameLen {
			return fmt.Errorf("note (name size %d, desc size %d) runs past the end of its segment", namesz, descsz)
		}
		name := strings.TrimRight(string(b[:namesz]), "\x00")
		desc := b[nameLen : nameLen+descsz]
		b = b[nameLen+descLen:]
		if name != xenNoteName || typ != xenElfnotePhys32Entry {
			continue
		}
		switch len(desc) {
		case 4:
			img.pvhEntry = uint64(le.Uint32(desc))
		case 8:
			img.pvhEntry = le.Uint64(desc)
		default:
			return fmt.Errorf("XEN_ELFNOTE_PHYS32_ENTRY note has a %d-byte value, want 4 or 8", len(desc))
		}
		if img.pvhEntry > maxPhys32 {
			return fmt.Errorf("PVH entry point %#x is above 4 GiB; it must be a 32-bit address", img.pvhEntry)
		}
		img.hasPVH = true
	}
	return nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 } // n < 2^32: no overflow

// sat is a+b, saturating at the largest uint64 (for error messages).
func sat(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

// machineName names an ELF machine for errors: "aarch64 (machine 183)".
func machineName(m elf.Machine) string {
	s := m.String() // "EM_AARCH64"; a number or "EM_X+offset" when unknown
	if _, err := strconv.Atoi(s); err == nil || strings.Contains(s, "+") {
		return fmt.Sprintf("machine %d", uint16(m))
	}
	return fmt.Sprintf("%s (machine %d)", strings.ToLower(strings.TrimPrefix(s, "EM_")), uint16(m))
}

// loadELF validates an ELF kernel, then copies its segments to guest memory.
func loadELF(mem *memory.Guest, r io.ReaderAt, size int64, head []byte) (*Kernel, error) {
	img, err := parseELF(r, size, head)
	if err != nil {
		return nil, err
	}
	k := &Kernel{
		Format:        FormatELF,
		HasPVH:        img.hasPVH,
		PVHEntry:      img.pvhEntry,
		Start:         ^uint64(0),
		InitrdAddrMax: mem.LowEnd() - 1,
		CmdlineMax:    elfCmdlineMax,
	}
	if img.class == elf.ELFCLASS64 {
		k.Entry = img.entry
	}
	// Check every segment before writing any, so a bad file leaves guest
	// memory untouched.
	for _, s := range img.loads {
		if err := checkFits(mem, fmt.Sprintf("segment %d", s.index), s.paddr, s.paddr+s.memsz); err != nil {
			return nil, err
		}
		k.Start = min(k.Start, s.paddr)
		k.End = max(k.End, s.paddr+s.memsz)
	}
	mem.AdviseHugeRange(k.Start, k.End-k.Start)
	for _, s := range img.loads {
		dst, err := mem.Slice(s.paddr, s.memsz)
		if err != nil {
			return nil, fmt.Errorf("segment %d: %w", s.index, err)
		}
		if err := readFull(r, dst[:s.filesz], int64(s.offset)); err != nil {
			return nil, fmt.Errorf("read segment %d: %w", s.index, err)
		}
		clear(dst[s.filesz:])
	}
	return k, nil
}

package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const testMemSize = 8 << 20

func loadBytes(t testing.TB, m *testMem, b []byte) (*Kernel, error) {
	t.Helper()
	k, err := LoadFrom(m.Guest, bytes.NewReader(b), int64(len(b)), "test")
	m.checkGuard(t)
	return k, err
}

func guestBytes(t *testing.T, m *testMem, addr, n uint64) []byte {
	t.Helper()
	b, err := m.Slice(addr, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadELF(t *testing.T) {
	for _, pvh := range []bool{true, false} {
		m := newTestMem(testMemSize)
		img := testVmlinux(pvh)
		k, err := loadBytes(t, m, img)
		if err != nil {
			t.Fatalf("pvh=%v: %v", pvh, err)
		}
		want := Kernel{
			Format: FormatELF, Entry: testEntry, HasPVH: pvh,
			Start: testText, End: testData + 0x800 + testBss,
			InitrdAddrMax: testMemSize - 1, CmdlineMax: 2048,
		}
		if pvh {
			want.PVHEntry = testPVHEntry
		}
		if k.SetupHeader != nil {
			t.Errorf("SetupHeader = %x, want nil for an ELF", k.SetupHeader)
		}
		k.SetupHeader = nil
		if !reflect.DeepEqual(*k, want) {
			t.Errorf("pvh=%v: kernel = %+v\nwant %+v", pvh, *k, want)
		}
		if got := guestBytes(t, m, testText, 0x1800); !bytes.Equal(got, pattern(0x1800, 1)) {
			t.Error("text segment not at its p_paddr")
		}
		if got := guestBytes(t, m, testData, 0x800); !bytes.Equal(got, pattern(0x800, 2)) {
			t.Error("data segment not at its p_paddr")
		}
		if got := guestBytes(t, m, testData+0x800, testBss); !bytes.Equal(got, make([]byte, testBss)) {
			t.Error("bss not zeroed")
		}
		if got := guestBytes(t, m, testData+0x800+testBss, 1)[0]; got != fill {
			t.Error("load wrote past the end of the bss")
		}
		if got := guestBytes(t, m, testText-1, 1)[0]; got != fill {
			t.Error("load wrote below the first segment")
		}
	}
}

func TestLoadELFPVHNoteForms(t *testing.T) {
	le := binary.LittleEndian
	text := tseg{typ: elf.PT_LOAD, paddr: testText, data: pattern(0x100, 1), memsz: 0x1000}
	for _, desc := range [][]byte{le.AppendUint32(nil, testText+4), le.AppendUint64(nil, testText+4)} {
		n := note(xenNoteName, xenElfnotePhys32Entry, desc)
		// Another owner's note of the same type must be ignored.
		n = append(note("Linux", xenElfnotePhys32Entry, le.AppendUint32(nil, 1)), n...)
		img := buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{text, {typ: elf.PT_NOTE, data: n}})
		k, err := loadBytes(t, newTestMem(testMemSize), img)
		if err != nil {
			t.Fatalf("%d-byte desc: %v", len(desc), err)
		}
		if !k.HasPVH || k.PVHEntry != testText+4 {
			t.Errorf("%d-byte desc: HasPVH %v PVHEntry %#x", len(desc), k.HasPVH, k.PVHEntry)
		}
	}
}

func TestLoadELF32WithPVH(t *testing.T) {
	segs := []tseg{
		{typ: elf.PT_LOAD, paddr: testText, data: pattern(0x100, 1), memsz: 0x200},
		{typ: elf.PT_NOTE, data: pvhNote(testText + 0x10)},
	}
	m := newTestMem(testMemSize)
	k, err := loadBytes(t, m, buildELF(elf.ELFCLASS32, elf.EM_386, testText, segs))
	if err != nil {
		t.Fatal(err)
	}
	if k.Entry != 0 || !k.HasPVH || k.PVHEntry != testText+0x10 || k.End != testText+0x200 {
		t.Errorf("kernel = %+v", *k)
	}
	if got := guestBytes(t, m, testText, 0x200); !bytes.Equal(got[:0x100], pattern(0x100, 1)) || !bytes.Equal(got[0x100:], make([]byte, 0x100)) {
		t.Error("ELF32 segment not loaded")
	}
}

func TestLoadELFErrors(t *testing.T) {
	text := tseg{typ: elf.PT_LOAD, paddr: testText, data: pattern(0x100, 1), memsz: 0x1000}
	valid := testVmlinux(true)
	bigEndian := bytes.Clone(valid)
	bigEndian[elf.EI_DATA] = byte(elf.ELFDATA2MSB)
	dyn := bytes.Clone(valid)
	binary.LittleEndian.PutUint16(dyn[ehTypeOff:], uint16(elf.ET_DYN))
	badPhent := bytes.Clone(valid)
	binary.LittleEndian.PutUint16(badPhent[eh64PhentOff:], 40)
	farPh := bytes.Clone(valid)
	binary.LittleEndian.PutUint64(farPh[eh64PhoffOff:], 1<<62)
	hugeOffset := buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{text})
	binary.LittleEndian.PutUint64(hugeOffset[elf64HeaderSize+8:], ^uint64(0)-4)

	cases := []struct {
		name string
		img  []byte
		want string
	}{
		{"below 1 MiB", buildELF(elf.ELFCLASS64, elf.EM_X86_64, 0x80000, []tseg{{typ: elf.PT_LOAD, paddr: 0x80000, data: []byte{1}, memsz: 1}}),
			"segment 0 loads at 0x80000, below the 1 MiB minimum (0x100000)"},
		{"truncated segment", testVmlinux(true)[:0x1000],
			"truncated: segment 0 needs bytes up to 6376, file has 4096"},
		{"truncated header", valid[:40], "truncated: ELF header needs 64 bytes, file has 40"},
		{"truncated ident", valid[:3], "truncated: ELF header needs 64 bytes, file has 3"},
		{"truncated program headers", valid[:100], "truncated: program headers need bytes up to 232, file has 100"},
		{"aarch64", buildELF(elf.ELFCLASS64, elf.EM_AARCH64, testText, []tseg{text}),
			"ELF for aarch64 (machine 183), Ember boots x86-64 kernels"},
		{"unknown machine", buildELF(elf.ELFCLASS64, 0x7777, testText, []tseg{text}),
			"ELF for machine 30583, Ember boots x86-64 kernels"},
		{"ELF32 without PVH", buildELF(elf.ELFCLASS32, elf.EM_386, testText, []tseg{text}),
			"32-bit ELF without a PVH entry note"},
		{"ELF32 arm", buildELF(elf.ELFCLASS32, elf.EM_ARM, testText, []tseg{text}), "ELF for arm (machine 40)"},
		{"big endian", bigEndian, "ELF is ELFDATA2MSB, x86 kernels are little endian"},
		{"ET_DYN", dyn, "ELF type ET_DYN, a kernel vmlinux is ET_EXEC"},
		{"bad phentsize", badPhent, "ELF program header size 40, want 56"},
		{"phoff overflow", farPh, "truncated: program headers need bytes up to"},
		{"offset overflow", hugeOffset, "truncated: segment 0 needs bytes up to 18446744073709551615"},
		{"no program headers", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, nil), "ELF has no program headers"},
		{"no PT_LOAD", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{{typ: elf.PT_NOTE, data: pvhNote(testText)}}),
			"ELF has no PT_LOAD segment"},
		{"filesz > memsz", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{{typ: elf.PT_LOAD, paddr: testText, data: []byte{1, 2}, memsz: 1}}),
			"segment 0: file size 0x2 exceeds memory size 0x1"},
		{"too big", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{text, {typ: elf.PT_LOAD, paddr: testMemSize - 0x100, data: []byte{1}, memsz: 0x200}}),
			"kernel too big for guest memory: segment 1 needs [0x7fff00, 0x800100), but guest RAM is 8 MiB"},
		{"address overflow", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{text, {typ: elf.PT_LOAD, paddr: ^uint64(0) - 0x10, data: []byte{1}, memsz: 0x20}}),
			"segment 1: address 0xffffffffffffffef + size 0x20 overflows"},
		{"entry outside", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText+0x1000, []tseg{text}),
			"entry point 0x201000 is outside every PT_LOAD segment"},
		{"PVH entry outside", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{text, {typ: elf.PT_NOTE, data: pvhNote(0x5000)}}),
			"PVH entry point 0x5000 is outside every PT_LOAD segment"},
		{"bad PVH desc", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{text, {typ: elf.PT_NOTE, data: note(xenNoteName, xenElfnotePhys32Entry, []byte{1, 2})}}),
			"segment 1: XEN_ELFNOTE_PHYS32_ENTRY note has a 2-byte value, want 4 or 8"},
		{"note overrun", buildELF(elf.ELFCLASS64, elf.EM_X86_64, testText, []tseg{text, {typ: elf.PT_NOTE, data: pvhNote(testText)[:14]}}),
			"segment 1: note (name size 4, desc size 4) runs past the end of its segment"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newTestMem(testMemSize)
			k, err := loadBytes(t, m, c.img)
			if err == nil {
				t.Fatalf("loaded %+v, want error %q", k, c.want)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "kernel test: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line containing %q", err, c.want)
			}
			if !m.untouched() {
				t.Error("a failed load wrote to guest memory")
			}
		})
	}
}

func TestLoadBzImage(t *testing.T) {
	img := testBzImage([]byte("payload"))
	m := newTestMem(0x1000000 + testInitSize)
	k, err := loadBytes(t, m, img)
	if err != nil {
		t.Fatal(err)
	}
	want := Kernel{
		Format: FormatBzImage, Entry: 0x100200, Start: 0x100000, End: 0x1000000 + testInitSize,
		Protocol: 0x020f, XLoadFlags: 0x7f, InitrdAddrMax: 0x7fffffff, CmdlineMax: 0x800,
		InitSize: testInitSize, KernelAlignment: 0x200000, Relocatable: true, PrefAddress: 0x1000000,
	}
	if !bytes.Equal(k.SetupHeader, img[0x1f1:testHdrEnd]) {
		t.Errorf("SetupHeader = %x\nwant %x", k.SetupHeader, img[0x1f1:testHdrEnd])
	}
	k.SetupHeader = nil
	if !reflect.DeepEqual(*k, want) {
		t.Errorf("kernel = %+v\nwant %+v", *k, want)
	}
	pm := img[testPMOffset:]
	if got := guestBytes(t, m, 0x100000, uint64(len(pm))); !bytes.Equal(got, pm) {
		t.Error("protected-mode kernel not at 0x100000")
	}
	if got := guestBytes(t, m, 0x100000+uint64(len(pm)), 1)[0]; got != fill {
		t.Error("load wrote past the protected-mode kernel")
	}
	if got := guestBytes(t, m, 0xfffff, 1)[0]; got != fill {
		t.Error("load wrote below 0x100000")
	}

	// A non-relocatable kernel without pref_address runs where it is loaded.
	img2 := bytes.Clone(img)
	img2[hdrRelocatable] = 0
	binary.LittleEndian.PutUint64(img2[hdrPrefAddress:], 0)
	k, err = loadBytes(t, newTestMem(testMemSize), img2)
	if err != nil {
		t.Fatal(err)
	}
	if k.End != 0x100000+testInitSize {
		t.Errorf("End = %#x, want %#x", k.End, 0x100000+testInitSize)
	}
}

func TestLoadBzImageErrors(t *testing.T) {
	le := binary.LittleEndian
	valid := testBzImage([]byte("payload"))
	mod := func(f func(b []byte)) []byte {
		b := bytes.Clone(valid)
		f(b)
		return b
	}
	cases := []struct {
		name string
		img  []byte
		mem  int
		want string
	}{
		{"old protocol", mod(func(b []byte) { le.PutUint16(b[hdrVersion:], 0x020a) }), 0,
			"bzImage boot protocol 2.10 is too old; Ember needs 2.12 or newer"},
		{"no 64-bit entry", mod(func(b []byte) { le.PutUint16(b[hdrXLoadFlags:], 0x7e) }), 0,
			"bzImage has no 64-bit entry point (xloadflags 0x7e lacks XLF_KERNEL_64)"},
		{"zImage", mod(func(b []byte) { b[hdrLoadFlags] = 0 }), 0, "zImage (loadflags lacks LOADED_HIGH)"},
		{"short header", mod(func(b []byte) { b[hdrJumpOffset] = 0x20 }), 0,
			"bzImage setup header ends at 0x222, before the end of the protocol 2.12 fields (0x268)"},
		{"truncated header", valid[:0x250], 0, "truncated: bzImage setup header needs 616 bytes, file has 592"},
		{"truncated setup", valid[:testPMOffset], 0, "truncated: setup code (setup_sects=3) needs 2048 bytes and a kernel after them, file has 2048"},
		{"truncated kernel", valid[:testPMOffset+0x100], 0, "truncated: protected-mode kernel is 256 bytes"},
		{"init_size too big", mod(func(b []byte) { le.PutUint32(b[hdrInitSize:], 0x800000) }), 0x1000000 + testInitSize,
			"kernel too big for guest memory: kernel (init_size 8 MiB) needs [0x1000000, 0x1800000), but guest RAM is 20 MiB"},
		{"pref_address overflow", mod(func(b []byte) { le.PutUint64(b[hdrPrefAddress:], ^uint64(0)-10) }), 0,
			"bzImage pref_address 0xfffffffffffffff5 + init_size 0x400000 overflows"},
		{"image too big", valid, 0x100000 + 0x100, "kernel too big for guest memory: kernel image needs [0x100000, 0x10042a)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			size := c.mem
			if size == 0 {
				size = 0x2000000
			}
			m := newTestMem(size)
			k, err := loadBytes(t, m, c.img)
			if err == nil {
				t.Fatalf("loaded %+v, want error %q", k, c.want)
			}
			if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line containing %q", err, c.want)
			}
			if !m.untouched() {
				t.Error("a failed load wrote to guest memory")
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	text := filepath.Join(dir, "text")
	vmlinux := filepath.Join(dir, "vmlinux")
	os.WriteFile(empty, nil, 0o644)
	os.WriteFile(text, []byte("#!/bin/sh\necho hi\n"), 0o644)
	os.WriteFile(vmlinux, testVmlinux(true), 0o644)
	cases := map[string]string{
		filepath.Join(dir, "missing"): "kernel " + dir + "/missing: no such file or directory",
		empty:                         "kernel " + empty + ": file is empty",
		dir:                           "kernel " + dir + ": is a directory",
		text:                          "kernel " + text + `: not a kernel: neither an ELF vmlinux nor a bzImage (starts with 0x23 0x21 0x2f 0x62 "#!/b")`,
	}
	for path, want := range cases {
		m := newTestMem(testMemSize)
		if _, err := Load(m.Guest, path); err == nil || err.Error() != want {
			t.Errorf("Load(%s) error %v\nwant %s", path, err, want)
		}
	}
	m := newTestMem(testMemSize)
	k, err := Load(m.Guest, vmlinux)
	if err != nil || k.Entry != testEntry {
		t.Fatalf("Load(vmlinux) = %+v, %v", k, err)
	}
}

func TestFormatString(t *testing.T) {
	if FormatELF.String() != "ELF" || FormatBzImage.String() != "bzImage" || Format(9).String() != "Format(9)" {
		t.Error("Format.String")
	}
}

// TestFuzzSeedsLoad makes sure FuzzLoad starts from inputs that load.
func TestFuzzSeedsLoad(t *testing.T) {
	bz := testBzImage([]byte("payload"))
	bz[hdrRelocatable] = 0
	binary.LittleEndian.PutUint64(bz[hdrPrefAddress:], 0)
	binary.LittleEndian.PutUint32(bz[hdrInitSize:], 1<<20)
	for _, b := range [][]byte{testVmlinux(true), bz} {
		if _, err := loadBytes(t, newTestMem(4<<20), b); err != nil {
			t.Error(err)
		}
	}
}

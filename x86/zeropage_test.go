package x86

import (
	"encoding/binary"
	"strings"
	"testing"
)

// fakeBzImage returns the first 0x1000 bytes of a bzImage whose setup header
// reports protocol version, loadflags, kernel_alignment and cmdline_size.
func fakeBzImage(version uint16, cmdlineSize uint32) []byte {
	img := make([]byte, 0x1000)
	le := binary.LittleEndian
	img[0x1f1] = 27 // setup_sects
	le.PutUint16(img[0x1fe:], 0xaa55)
	img[0x200] = 0xeb         // jmp short
	img[0x201] = 0x6a         // header ends at 0x202+0x6a = 0x26c (protocol 2.15)
	copy(img[0x202:], "HdrS") // header
	le.PutUint16(img[0x206:], version)
	img[0x211] = 0x01                     // loadflags: LOADED_HIGH
	le.PutUint32(img[0x22c:], 0x7fffffff) // initrd_addr_max
	le.PutUint32(img[0x230:], 0x200000)   // kernel_alignment
	img[0x234] = 1                        // relocatable_kernel
	le.PutUint16(img[0x236:], 0x7f)       // xloadflags
	le.PutUint32(img[0x238:], cmdlineSize)
	le.PutUint64(img[0x258:], 0x1000000) // pref_address
	le.PutUint32(img[0x260:], 0x2000000) // init_size
	img[0x270] = 0xcc                    // beyond the header: must not be copied
	return img
}

func TestZeroPageBuiltHeader(t *testing.T) {
	e820 := []E820Entry{{0, 0x9fc00, E820RAM}, {0x9fc00, 0x60400, E820Reserved}, {0x100000, 0x7f00000, E820RAM}}
	zp, err := ZeroPage(ZeroPageConfig{
		CmdlineAddr: 0x20000, CmdlineSize: 100,
		InitrdAddr: 0x7b00000, InitrdSize: 0x400123,
		E820: e820, RSDPAddr: 0xe0000,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(zp) != 4096 {
		t.Fatalf("zero page is %d bytes", len(zp))
	}
	checks := []struct {
		name string
		got  uint64
		want uint64
	}{
		{"acpi_rsdp_addr@0x070", u64(zp, 0x070), 0xe0000},
		{"ext_ramdisk_image@0x0c0", uint64(u32(zp, 0x0c0)), 0},
		{"ext_ramdisk_size@0x0c4", uint64(u32(zp, 0x0c4)), 0},
		{"ext_cmd_line_ptr@0x0c8", uint64(u32(zp, 0x0c8)), 0},
		{"e820_entries@0x1e8", uint64(zp[0x1e8]), 3},
		{"boot_flag@0x1fe", uint64(u16(zp, 0x1fe)), 0xaa55},
		{"header@0x202", uint64(u32(zp, 0x202)), 0x53726448},
		{"version@0x206", uint64(u16(zp, 0x206)), 0x020f},
		{"type_of_loader@0x210", uint64(zp[0x210]), 0xff},
		{"loadflags@0x211", uint64(zp[0x211]), 0x81},
		{"ramdisk_image@0x218", uint64(u32(zp, 0x218)), 0x7b00000},
		{"ramdisk_size@0x21c", uint64(u32(zp, 0x21c)), 0x400123},
		{"heap_end_ptr@0x224", uint64(u16(zp, 0x224)), 0xde00},
		{"cmd_line_ptr@0x228", uint64(u32(zp, 0x228)), 0x20000},
		{"kernel_alignment@0x230", uint64(u32(zp, 0x230)), 0x1000000},
		{"cmdline_size@0x238", uint64(u32(zp, 0x238)), 2047},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if string(zp[0x202:0x206]) != "HdrS" {
		t.Errorf("header bytes %q", zp[0x202:0x206])
	}
	for i, e := range e820 {
		b := zp[0x2d0+20*i:]
		if got := (E820Entry{u64(b, 0), u64(b, 8), u32(b, 16)}); got != e {
			t.Errorf("e820_table[%d] = %+v, want %+v", i, got, e)
		}
	}
	// Nothing beyond the written fields: the rest of the page is zero.
	written := map[int]bool{}
	for _, r := range [][2]int{{0x070, 8}, {0x1e8, 1}, {0x1fe, 2}, {0x202, 6}, {0x210, 2}, {0x218, 8},
		{0x224, 2}, {0x228, 4}, {0x230, 4}, {0x238, 4}, {0x2d0, 3 * 20}} {
		for i := r[0]; i < r[0]+r[1]; i++ {
			written[i] = true
		}
	}
	for i, b := range zp {
		if b != 0 && !written[i] {
			t.Errorf("unexpected byte %#x at offset %#x", b, i)
		}
	}
}

func TestZeroPageHighAddressesUseExtFields(t *testing.T) {
	zp, err := ZeroPage(ZeroPageConfig{CmdlineAddr: 0x1_2345_6000, CmdlineSize: 10,
		InitrdAddr: 0x2_0000_1000, InitrdSize: 0x3_0000_0000 + 0x55})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"cmd_line_ptr", u32(zp, 0x228), 0x2345_6000}, {"ext_cmd_line_ptr", u32(zp, 0x0c8), 1},
		{"ramdisk_image", u32(zp, 0x218), 0x1000}, {"ext_ramdisk_image", u32(zp, 0x0c0), 2},
		{"ramdisk_size", u32(zp, 0x21c), 0x55}, {"ext_ramdisk_size", u32(zp, 0x0c4), 3},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestZeroPageCopiedHeader(t *testing.T) {
	img := fakeBzImage(0x020f, 4095)
	hdr, err := SetupHeader(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(hdr) != 0x26c-0x1f1 {
		t.Fatalf("setup header is %d bytes, want %d", len(hdr), 0x26c-0x1f1)
	}
	zp, err := ZeroPage(ZeroPageConfig{SetupHeader: hdr, CmdlineAddr: 0x20000, CmdlineSize: 3000})
	if err != nil {
		t.Fatal(err)
	}
	// Kernel-provided fields are kept.
	for _, off := range []int{0x1f1, 0x1fe, 0x1ff, 0x202, 0x206, 0x207, 0x22c, 0x230, 0x234, 0x236, 0x238, 0x239, 0x258, 0x260} {
		if zp[off] != img[off] {
			t.Errorf("byte at %#x = %#x, want the image's %#x", off, zp[off], img[off])
		}
	}
	if zp[0x270] != 0 {
		t.Errorf("byte %#x beyond the header was copied", 0x270)
	}
	if zp[0x211] != 0x81 {
		t.Errorf("loadflags = %#x, want LOADED_HIGH|CAN_USE_HEAP", zp[0x211])
	}
	if zp[0x210] != 0xff || u32(zp, 0x228) != 0x20000 || u16(zp, 0x224) != 0xde00 {
		t.Errorf("loader fields not written: type %#x cmd_line_ptr %#x heap_end_ptr %#x", zp[0x210], u32(zp, 0x228), u16(zp, 0x224))
	}
	if u32(zp, 0x218) != 0 || u32(zp, 0x21c) != 0 {
		t.Errorf("ramdisk fields set without an initrd")
	}

	// The kernel's cmdline_size (4095 + NUL) is the limit.
	if _, err := ZeroPage(ZeroPageConfig{SetupHeader: hdr, CmdlineSize: 4097}); err == nil || !strings.Contains(err.Error(), "4096") {
		t.Errorf("cmdline over the kernel's limit: err = %v", err)
	}
	// Protocol 2.05 has no cmdline_size: 255 + NUL.
	old, err := SetupHeader(fakeBzImage(0x0205, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ZeroPage(ZeroPageConfig{SetupHeader: old, CmdlineSize: 256}); err != nil {
		t.Errorf("256-byte cmdline on protocol 2.05: %v", err)
	}
	if _, err := ZeroPage(ZeroPageConfig{SetupHeader: old, CmdlineSize: 257}); err == nil {
		t.Errorf("257-byte cmdline on protocol 2.05 accepted")
	}
}

func TestZeroPageErrors(t *testing.T) {
	if _, err := ZeroPage(ZeroPageConfig{CmdlineSize: 2049}); err == nil {
		t.Error("2049-byte cmdline accepted")
	}
	if _, err := ZeroPage(ZeroPageConfig{CmdlineSize: 2048, E820: make([]E820Entry, 128)}); err != nil {
		t.Errorf("128 e820 entries, 2048-byte cmdline: %v", err)
	}
	if _, err := ZeroPage(ZeroPageConfig{E820: make([]E820Entry, 129)}); err == nil {
		t.Error("129 e820 entries accepted")
	}
	if _, err := ZeroPage(ZeroPageConfig{SetupHeader: make([]byte, 0x40)}); err == nil {
		t.Error("setup header without HdrS accepted")
	}
	if _, err := ZeroPage(ZeroPageConfig{SetupHeader: []byte{1, 2, 3}}); err == nil {
		t.Error("short setup header accepted")
	}
}

func TestSetupHeaderErrors(t *testing.T) {
	bad := func(mut func([]byte) []byte) []byte { return mut(fakeBzImage(0x020f, 2047)) }
	for name, img := range map[string][]byte{
		"short":     make([]byte, 0x100),
		"boot_flag": bad(func(b []byte) []byte { b[0x1fe] = 0; return b }),
		"HdrS":      bad(func(b []byte) []byte { b[0x203] = 'x'; return b }),
		"too long":  bad(func(b []byte) []byte { b[0x201] = 0x90; return b }),
		"truncated": bad(func(b []byte) []byte { return b[:0x250] }),
	} {
		if _, err := SetupHeader(img); err == nil {
			t.Errorf("%s: SetupHeader accepted a bad image", name)
		}
	}
}

func TestWriteZeroPage(t *testing.T) {
	mem := testGuest(2 << 20)
	e820 := E820Map(mem)
	if err := WriteZeroPage(mem, ZeroPageConfig{CmdlineAddr: CmdlineAddr, CmdlineSize: 5, E820: e820, RSDPAddr: RSDPAddr}); err != nil {
		t.Fatal(err)
	}
	zp := read(t, mem, 0x7000, 4096)
	if zp[0x1e8] != uint8(len(e820)) || u32(zp, 0x228) != 0x20000 || u64(zp, 0x070) != 0xe0000 {
		t.Errorf("zero page at 0x7000 not written as expected")
	}
	if err := WriteZeroPage(testGuest(0x7800), ZeroPageConfig{}); err == nil {
		t.Error("zero page written past the end of memory")
	}
}

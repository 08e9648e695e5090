package acpi

import (
	"bytes"
	"strings"
	"testing"
)

// The expected byte sequences below are worked out by hand from ACPI
// chapter 20 and section 6.4; the device encodings were also cross-checked
// against iasl compiling the equivalent ASL (iasl writes 0 where we write
// the End Tag checksum, and _SB_ where we write \_SB_).

func TestPkgLength(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x01}},
		{5, []byte{0x06}},
		{62, []byte{0x3f}},                        // largest one-byte encoding: 63
		{63, []byte{0x41, 0x04}},                  // 63+2 = 0x041
		{0xffd, []byte{0x4f, 0xff}},               // 0xffd+2 = 0xfff, largest two-byte
		{0xffe, []byte{0x81, 0x00, 0x01}},         // 0xffe+3 = 0x1001
		{0xffffc, []byte{0x8f, 0xff, 0xff}},       // 0xffffc+3 = 0xfffff
		{0xffffd, []byte{0xc1, 0x00, 0x00, 0x01}}, // 0xffffd+4 = 0x100001
		{pkgLen4Max - 4, []byte{0xcf, 0xff, 0xff, 0xff}},
	} {
		got, err := pkgLength(tc.n)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("pkgLength(%#x) = % x, %v; want % x", tc.n, got, err, tc.want)
		}
	}
	for _, n := range []int{-1, pkgLen4Max - 3, 1 << 30} {
		if got, err := pkgLength(n); err == nil {
			t.Errorf("pkgLength(%#x) = % x, want an error", n, got)
		}
	}
}

func TestNameString(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []byte
	}{
		{"_HID", []byte("_HID")},
		{"_SB", []byte("_SB_")},
		{"V000", []byte("V000")},
		{"A", []byte("A___")},
		{`\_SB_`, []byte(`\_SB_`)},
		{`\_SB`, []byte(`\_SB_`)},
		{"^^COM1", []byte("^^COM1")},
		{"_SB.COM1", append([]byte{0x2e}, "_SB_COM1"...)},
		{`\_SB.PCI0.ISA`, append([]byte{'\\', 0x2f, 3}, "_SB_PCI0ISA_"...)},
	} {
		got, err := nameString(tc.in)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("nameString(%q) = % x, %v; want % x", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", `\`, "^", "V1000", "1ABC", "_sb", "A-B", "_SB..X", "_SB.", `\^_SB`,
		strings.Repeat("A.", 255) + "A"} {
		if got, err := nameString(bad); err == nil {
			t.Errorf("nameString(%q) = % x, want an error", bad, got)
		}
	}
}

func TestAMLInteger(t *testing.T) {
	for _, tc := range []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{2, []byte{0x0a, 0x02}},
		{0xff, []byte{0x0a, 0xff}},
		{0x100, []byte{0x0b, 0x00, 0x01}},
		{0xffff, []byte{0x0b, 0xff, 0xff}},
		{0x10000, []byte{0x0c, 0x00, 0x00, 0x01, 0x00}},
		{0xc0001000, []byte{0x0c, 0x00, 0x10, 0x00, 0xc0}},
		{0xffffffff, []byte{0x0c, 0xff, 0xff, 0xff, 0xff}},
		{1 << 32, []byte{0x0e, 0, 0, 0, 0, 1, 0, 0, 0}},
		{0x0123456789abcdef, []byte{0x0e, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01}},
		{^uint64(0) - 1, []byte{0x0e, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{^uint64(0), []byte{0xff}},
	} {
		if got := amlInteger(tc.v); !bytes.Equal(got, tc.want) {
			t.Errorf("amlInteger(%#x) = % x, want % x", tc.v, got, tc.want)
		}
	}
}

func TestAMLString(t *testing.T) {
	got, err := amlString("LNRO0005")
	want := []byte{0x0d, 'L', 'N', 'R', 'O', '0', '0', '0', '5', 0x00}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf(`amlString("LNRO0005") = % x, %v; want % x`, got, err, want)
	}
	if got, err := amlString(""); err != nil || !bytes.Equal(got, []byte{0x0d, 0x00}) {
		t.Errorf(`amlString("") = % x, %v`, got, err)
	}
	for _, bad := range []string{"a\x00b", "caf\xc3\xa9"} {
		if got, err := amlString(bad); err == nil {
			t.Errorf("amlString(%q) = % x, want an error", bad, got)
		}
	}
}

func TestEISAID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want uint32
		enc  []byte
	}{
		// P=0x10 N=0x0e P=0x10: byte 0 = 0x10<<2 | 0x0e>>3 = 0x41,
		// byte 1 = (0x0e&7)<<5 | 0x10 = 0xd0, then 0x05 0x01.
		{"PNP0501", 0x0105d041, []byte{0x0c, 0x41, 0xd0, 0x05, 0x01}},
		{"PNP0303", 0x0303d041, []byte{0x0c, 0x41, 0xd0, 0x03, 0x03}},
		{"PNP0A03", 0x030ad041, []byte{0x0c, 0x41, 0xd0, 0x0a, 0x03}},
		// A=1 B=2 C=3: 0x04 | 0 = 0x04, 2<<5 | 3 = 0x43.
		{"ABC1234", 0x34124304, []byte{0x0c, 0x04, 0x43, 0x12, 0x34}},
		// Always a DWord, even when it would fit a Word.
		{"PNP0000", 0x0000d041, []byte{0x0c, 0x41, 0xd0, 0x00, 0x00}},
	} {
		got, err := eisaID(tc.id)
		if err != nil || got != tc.want {
			t.Errorf("eisaID(%q) = %#x, %v; want %#x", tc.id, got, err, tc.want)
		}
		enc, err := amlEISAID(tc.id)
		if err != nil || !bytes.Equal(enc, tc.enc) {
			t.Errorf("amlEISAID(%q) = % x, %v; want % x", tc.id, enc, err, tc.enc)
		}
	}
	for _, bad := range []string{"", "PNP050", "PNP05011", "pnp0501", "PNP050g", "P1P0501", "PNP05G1"} {
		if got, err := amlEISAID(bad); err == nil {
			t.Errorf("amlEISAID(%q) = % x, want an error", bad, got)
		}
	}
}

func TestAMLNamedObjects(t *testing.T) {
	name, err := amlName("_UID", amlInteger(0))
	if want := []byte{0x08, '_', 'U', 'I', 'D', 0x00}; err != nil || !bytes.Equal(name, want) {
		t.Errorf("Name(_UID, Zero) = % x, %v; want % x", name, err, want)
	}
	scope, err := amlScope(`\_SB_`)
	if want := []byte{0x10, 0x06, '\\', '_', 'S', 'B', '_'}; err != nil || !bytes.Equal(scope, want) {
		t.Errorf(`Scope(\_SB) {} = % x, %v; want % x`, scope, err, want)
	}
	dev, err := amlDevice("COM1", name)
	if want := []byte{0x5b, 0x82, 0x0b, 'C', 'O', 'M', '1', 0x08, '_', 'U', 'I', 'D', 0x00}; err != nil || !bytes.Equal(dev, want) {
		t.Errorf("Device(COM1) { Name(_UID, Zero) } = % x, %v; want % x", dev, err, want)
	}
	buf, err := amlBuffer([]byte{0xaa, 0xbb})
	if want := []byte{0x11, 0x05, 0x0a, 0x02, 0xaa, 0xbb}; err != nil || !bytes.Equal(buf, want) {
		t.Errorf("Buffer() {0xaa, 0xbb} = % x, %v; want % x", buf, err, want)
	}
	// A 300-byte buffer: BufferSize is a Word, the PkgLength two bytes
	// (1+2+300 = 303 = 0x12f plus itself: 0x131).
	big, err := amlBuffer(make([]byte, 300))
	if err != nil || !bytes.Equal(big[:6], []byte{0x11, 0x41, 0x13, 0x0b, 0x2c, 0x01}) || len(big) != 306 {
		t.Errorf("Buffer of 300 bytes starts % x (length %d), %v", big[:6], len(big), err)
	}
	for _, bad := range []string{"", "TOOLONG", "1BAD"} {
		if _, err := amlName(bad, amlInteger(0)); err == nil {
			t.Errorf("Name(%q) succeeded", bad)
		}
		if _, err := amlDevice(bad); err == nil {
			t.Errorf("Device(%q) succeeded", bad)
		}
		if _, err := amlScope(bad); err == nil {
			t.Errorf("Scope(%q) succeeded", bad)
		}
	}
}

func TestResourceDescriptors(t *testing.T) {
	if got, want := ioPort16(0x3f8, 0x3f8, 0, 8), []byte{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08}; !bytes.Equal(got, want) {
		t.Errorf("IO(Decode16, 0x3F8, 0x3F8, 0, 8) = % x, want % x", got, want)
	}
	if got, err := irqNoFlags(4); err != nil || !bytes.Equal(got, []byte{0x22, 0x10, 0x00}) {
		t.Errorf("IRQNoFlags(){4} = % x, %v", got, err)
	}
	if got, err := irqNoFlags(1, 12, 15); err != nil || !bytes.Equal(got, []byte{0x22, 0x02, 0x90}) {
		t.Errorf("IRQNoFlags(){1, 12, 15} = % x, %v", got, err)
	}
	if got, err := irqNoFlags(16); err == nil {
		t.Errorf("IRQNoFlags(){16} = % x, want an error", got)
	}
	mem := memory32Fixed(true, 0xc0001000, 0x1000)
	if want := []byte{0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xc0, 0x00, 0x10, 0x00, 0x00}; !bytes.Equal(mem, want) {
		t.Errorf("Memory32Fixed(ReadWrite, 0xC0001000, 0x1000) = % x, want % x", mem, want)
	}
	if got := memory32Fixed(false, 0xfed00000, 0x400); got[3] != 0 {
		t.Errorf("Memory32Fixed(ReadOnly, ...) = % x", got)
	}
	irq, err := extendedInterrupt(extIRQConsumer|extIRQEdge, 5)
	if want := []byte{0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00}; err != nil || !bytes.Equal(irq, want) {
		t.Errorf("Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive){5} = % x, %v; want % x", irq, err, want)
	}
	two, err := extendedInterrupt(extIRQConsumer|extIRQActiveLow|extIRQShared, 0x20, 0x12345678)
	if want := []byte{0x89, 0x0a, 0x00, 0x0d, 0x02, 0x20, 0, 0, 0, 0x78, 0x56, 0x34, 0x12}; err != nil || !bytes.Equal(two, want) {
		t.Errorf("Interrupt(ResourceConsumer, Level, ActiveLow, Shared){0x20, 0x12345678} = % x, %v; want % x", two, err, want)
	}
	if got, err := extendedInterrupt(extIRQConsumer); err == nil {
		t.Errorf("Interrupt(){} = % x, want an error", got)
	}
}

func TestResourceTemplate(t *testing.T) {
	// The End Tag's checksum makes the descriptors and the tag sum to 0:
	// 47+01+f8+03+f8+03+00+08+22+10+00+79 = 0x2f1, so 0x0f.
	irq, _ := irqNoFlags(4)
	got, err := resourceTemplate(ioPort16(0x3f8, 0x3f8, 0, 8), irq)
	want := []byte{
		0x11, 0x10, 0x0a, 0x0d, // Buffer, PkgLength 16, BufferSize 13
		0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08,
		0x22, 0x10, 0x00,
		0x79, 0x0f,
	}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("ResourceTemplate() {IO, IRQNoFlags} = % x, %v; want % x", got, err, want)
	}
	empty, err := resourceTemplate()
	if want := []byte{0x11, 0x05, 0x0a, 0x02, 0x79, 0x87}; err != nil || !bytes.Equal(empty, want) {
		t.Errorf("ResourceTemplate() {} = % x, %v; want % x", empty, err, want)
	}
}

func TestCOM1Device(t *testing.T) {
	got, err := com1Device()
	want := []byte{
		0x5b, 0x82, 0x2b, 'C', 'O', 'M', '1', // Device, PkgLength 43
		0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01, // EisaId ("PNP0501")
		0x08, '_', 'U', 'I', 'D', 0x00,
		0x08, '_', 'C', 'R', 'S',
		0x11, 0x10, 0x0a, 0x0d,
		0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08,
		0x22, 0x10, 0x00,
		0x79, 0x0f,
	}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("COM1 device:\n got % x, %v\nwant % x", got, err, want)
	}
}

func TestPS2Device(t *testing.T) {
	got, err := ps2Device()
	want := []byte{
		0x5b, 0x82, 0x2d, 'P', 'S', '2', '_', // Device, PkgLength 45
		0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x03, 0x03, // EisaId ("PNP0303")
		0x08, '_', 'C', 'R', 'S',
		0x11, 0x18, 0x0a, 0x15,
		0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01,
		0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01,
		0x22, 0x02, 0x00,
		0x79, 0x47,
	}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("PS/2 device:\n got % x, %v\nwant % x", got, err, want)
	}
}

func TestVirtioDevice(t *testing.T) {
	got, err := virtioDevice(0, MMIODevice{Addr: 0xc0001000, Size: 0x1000, IRQ: 5})
	want := []byte{
		// Device, PkgLength 4+59 = 63 needs two bytes: 65 = 0x041.
		0x5b, 0x82, 0x41, 0x04, 'V', '0', '0', '0',
		0x08, '_', 'H', 'I', 'D', 0x0d, 'L', 'N', 'R', 'O', '0', '0', '0', '5', 0x00,
		0x08, '_', 'U', 'I', 'D', 0x00,
		0x08, '_', 'C', 'C', 'A', 0x01,
		0x08, '_', 'C', 'R', 'S',
		0x11, 0x1a, 0x0a, 0x17,
		0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xc0, 0x00, 0x10, 0x00, 0x00,
		0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00,
		0x79, 0x7f,
	}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("virtio device 0:\n got % x, %v\nwant % x", got, err, want)
	}
	d12, err := virtioDevice(12, MMIODevice{Addr: 0xc000d000, Size: 0x1000, IRQ: 17})
	if err != nil || !bytes.HasPrefix(d12, []byte{0x5b, 0x82, 0x42, 0x04, 'V', '0', '1', '2'}) ||
		!bytes.Contains(d12, []byte{'_', 'U', 'I', 'D', 0x0a, 12}) {
		t.Errorf("virtio device 12: % x, %v", d12, err)
	}
	if _, err := virtioDevice(1000, MMIODevice{Addr: 0xc0001000, Size: 0x1000, IRQ: 5}); err == nil {
		t.Error("virtio device 1000 (name V1000) succeeded")
	}
}

func TestDSDTAML(t *testing.T) {
	empty, err := dsdtAML(Config{CPUs: 1})
	if want := []byte{0x10, 0x06, '\\', '_', 'S', 'B', '_'}; err != nil || !bytes.Equal(empty, want) {
		t.Errorf("DSDT with no devices = % x, %v; want % x", empty, err, want)
	}
	cfg := Config{CPUs: 1, Serial: true, I8042: true, VirtioMMIO: []MMIODevice{{0xc0001000, 0x1000, 5}}}
	got, err := dsdtAML(cfg)
	if err != nil {
		t.Fatal(err)
	}
	com1, _ := com1Device()
	ps2, _ := ps2Device()
	v0, _ := virtioDevice(0, cfg.VirtioMMIO[0])
	body := append(append(append([]byte(`\_SB_`), com1...), ps2...), v0...)
	pl, _ := pkgLength(len(body))
	want := append(append([]byte{0x10}, pl...), body...)
	if !bytes.Equal(got, want) {
		t.Errorf("DSDT AML:\n got % x\nwant % x", got, want)
	}
}

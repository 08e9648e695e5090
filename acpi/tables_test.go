package acpi

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// testBase and testLimit are what Ember passes (x86.RSDPAddr, and up to
// 1 MiB).
const (
	testBase  = 0xe0000
	testLimit = 0x20000
)

func sum8(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return s
}

func u16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func u32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func u64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

// tableSet is a Build result split into its tables by walking the pointers
// from the RSDP, the way OSPM finds them.
type tableSet struct {
	base uint64
	blob []byte
	rsdp []byte
	// tables by signature: XSDT, FACP, APIC, DSDT.
	tables map[string][]byte
	// addr is each table's guest-physical address, by signature (and
	// "RSD PTR " for the RSDP).
	addr map[string]uint64
}

// parseTables walks blob (placed at base) from the RSDP at its start:
// RSDP -> XSDT -> each table it lists, and FACP -> DSDT. It checks every
// signature, length, bound and checksum on the way, and that the tables
// are aligned and do not overlap.
func parseTables(blob []byte, base uint64) (*tableSet, error) {
	ts := &tableSet{base: base, blob: blob, tables: map[string][]byte{}, addr: map[string]uint64{}}
	if len(blob) < rsdpSize {
		return nil, fmt.Errorf("blob of %d bytes is shorter than the RSDP", len(blob))
	}
	r := blob[:rsdpSize]
	if string(r[0:8]) != "RSD PTR " || r[15] != 2 || u32(r, 20) != 36 || u32(r, 16) != 0 {
		return nil, fmt.Errorf("bad RSDP % x", r)
	}
	if s := sum8(r[:20]); s != 0 {
		return nil, fmt.Errorf("RSDP checksum (first 20 bytes) sums to %#x", s)
	}
	if s := sum8(r); s != 0 {
		return nil, fmt.Errorf("RSDP extended checksum sums to %#x", s)
	}
	if string(r[9:15]) != "EMBER " {
		return nil, fmt.Errorf("RSDP OEM ID %q", r[9:15])
	}
	ts.rsdp = r
	ts.addr["RSD PTR "] = base

	table := func(addr uint64, sig string) ([]byte, error) {
		if addr < base || addr-base > uint64(len(blob)) || uint64(len(blob))-(addr-base) < headerSize {
			return nil, fmt.Errorf("%s at %#x is outside the blob [%#x, %#x)", sig, addr, base, base+uint64(len(blob)))
		}
		off := addr - base
		n := uint64(u32(blob, int(off)+4))
		if n < headerSize || n > uint64(len(blob))-off {
			return nil, fmt.Errorf("%s at %#x: length %d runs outside the blob", sig, addr, n)
		}
		t := blob[off : off+n]
		if string(t[0:4]) != sig {
			return nil, fmt.Errorf("table at %#x is %q, want %q", addr, t[0:4], sig)
		}
		if s := sum8(t); s != 0 {
			return nil, fmt.Errorf("%s checksum: table sums to %#x", sig, s)
		}
		if string(t[10:16]) != "EMBER " || string(t[16:24]) != "EMBERVM " {
			return nil, fmt.Errorf("%s OEM ID %q, table ID %q", sig, t[10:16], t[16:24])
		}
		if _, dup := ts.tables[sig]; dup {
			return nil, fmt.Errorf("two %s tables", sig)
		}
		ts.tables[sig] = t
		ts.addr[sig] = addr
		return t, nil
	}

	x, err := table(u64(r, 24), "XSDT")
	if err != nil {
		return nil, err
	}
	if (len(x)-headerSize)%8 != 0 {
		return nil, fmt.Errorf("XSDT length %d is not a header plus 8-byte entries", len(x))
	}
	for off := headerSize; off < len(x); off += 8 {
		a := u64(x, off)
		if a < base || a-base+4 > uint64(len(blob)) {
			return nil, fmt.Errorf("XSDT entry %#x is outside the blob", a)
		}
		sig := string(blob[a-base : a-base+4])
		if sig != "FACP" && sig != "APIC" {
			return nil, fmt.Errorf("XSDT lists %q at %#x", sig, a)
		}
		if _, err := table(a, sig); err != nil {
			return nil, err
		}
	}
	f, ok := ts.tables["FACP"]
	if !ok {
		return nil, fmt.Errorf("XSDT lists no FADT")
	}
	if _, ok := ts.tables["APIC"]; !ok {
		return nil, fmt.Errorf("XSDT lists no MADT")
	}
	if len(f) != fadtSize {
		return nil, fmt.Errorf("FADT length %d, want %d", len(f), fadtSize)
	}
	xdsdt := u64(f, 140)
	if uint64(u32(f, 40)) != xdsdt {
		return nil, fmt.Errorf("FADT DSDT %#x != X_DSDT %#x", u32(f, 40), xdsdt)
	}
	if _, err := table(xdsdt, "DSDT"); err != nil {
		return nil, err
	}

	// Aligned, in order, not overlapping, nothing past the end.
	type span struct {
		sig      string
		off, end uint64
	}
	var spans []span
	for sig, a := range ts.addr {
		n := uint64(rsdpSize)
		if t, ok := ts.tables[sig]; ok {
			n = uint64(len(t))
		}
		if a%8 != 0 {
			return nil, fmt.Errorf("%s at %#x is not 8-byte aligned", sig, a)
		}
		spans = append(spans, span{sig, a - base, a - base + n})
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].off < spans[j].off })
	for i := 1; i < len(spans); i++ {
		if spans[i].off < spans[i-1].end {
			return nil, fmt.Errorf("%s and %s overlap", spans[i-1].sig, spans[i].sig)
		}
	}
	if last := spans[len(spans)-1]; last.end != uint64(len(blob)) {
		return nil, fmt.Errorf("blob is %d bytes, its last table (%s) ends at %d", len(blob), last.sig, last.end)
	}
	return ts, nil
}

// mustBuild builds and parses the tables, failing the test on any error.
func mustBuild(t *testing.T, cfg Config) *tableSet {
	t.Helper()
	blob, err := Build(cfg, testBase, testLimit)
	if err != nil {
		t.Fatalf("Build(%+v): %v", cfg, err)
	}
	ts, err := parseTables(blob, testBase)
	if err != nil {
		t.Fatalf("Build(%+v): %v", cfg, err)
	}
	return ts
}

// virtioDevices returns n devices laid out as Ember does: 4 KiB windows from
// 0xc0001000 (x86.VirtioMMIOBase), GSIs from 5.
func virtioDevices(n int) []MMIODevice {
	var d []MMIODevice
	for i := range n {
		d = append(d, MMIODevice{Addr: 0xc0001000 + 0x1000*uint64(i), Size: 0x1000, IRQ: 5 + uint32(i)})
	}
	return d
}

func TestChecksum(t *testing.T) {
	for _, b := range [][]byte{nil, {0}, {1}, {0xff, 0xff}, []byte("RSD PTR "), bytes.Repeat([]byte{0x80}, 257)} {
		c := checksum(b)
		if sum8(append(append([]byte{}, b...), c)) != 0 {
			t.Errorf("checksum(% x) = %#x does not zero the sum", b, c)
		}
	}
	if c := checksum([]byte{0x79}); c != 0x87 {
		t.Errorf("checksum(79) = %#x, want 0x87", c)
	}
}

func TestLayout(t *testing.T) {
	ts := mustBuild(t, Config{CPUs: 2, Serial: true, I8042: true, VirtioMMIO: virtioDevices(3)})
	// RSDP at base; then XSDT, FADT, MADT, DSDT in that order, each at the
	// next 16-byte boundary.
	want := []struct {
		sig  string
		size int
	}{{"RSD PTR ", 36}, {"XSDT", 36 + 2*8}, {"FACP", 276}, {"APIC", 44 + 2*8 + 12 + 10}, {"DSDT", -1}}
	next := uint64(testBase)
	for _, w := range want {
		if got := ts.addr[w.sig]; got != next {
			t.Errorf("%s at %#x, want %#x", w.sig, got, next)
		}
		size := len(ts.rsdp)
		if w.sig != "RSD PTR " {
			size = len(ts.tables[w.sig])
		}
		if w.size >= 0 && size != w.size {
			t.Errorf("%s is %d bytes, want %d", w.sig, size, w.size)
		}
		next = (next + uint64(size) + 15) &^ 15
	}
	if ts.addr["RSD PTR "] != 0xe0000 || ts.addr["XSDT"] != 0xe0030 || ts.addr["FACP"] != 0xe0070 || ts.addr["APIC"] != 0xe0190 {
		t.Errorf("addresses %#x", ts.addr)
	}
}

func TestRSDP(t *testing.T) {
	ts := mustBuild(t, Config{CPUs: 1})
	r := ts.rsdp
	want := []byte("RSD PTR \x00EMBER \x02\x00\x00\x00\x00\x24\x00\x00\x00\x30\x00\x0e\x00\x00\x00\x00\x00\x00\x00\x00\x00")
	// Compare with the checksums (bytes 8 and 32) masked.
	got := append([]byte{}, r...)
	got[8], got[32] = 0, 0
	if !bytes.Equal(got, want) {
		t.Errorf("RSDP\n got % x\nwant % x", got, want)
	}
	if u64(r, 24) != ts.addr["XSDT"] {
		t.Errorf("RSDP XSDT address %#x, XSDT at %#x", u64(r, 24), ts.addr["XSDT"])
	}
}

func TestXSDT(t *testing.T) {
	ts := mustBuild(t, Config{CPUs: 4, VirtioMMIO: virtioDevices(1)})
	x := ts.tables["XSDT"]
	if len(x) != 52 || x[8] != 1 {
		t.Errorf("XSDT length %d revision %d", len(x), x[8])
	}
	if u64(x, 36) != ts.addr["FACP"] || u64(x, 44) != ts.addr["APIC"] {
		t.Errorf("XSDT entries %#x %#x; FADT at %#x, MADT at %#x", u64(x, 36), u64(x, 44), ts.addr["FACP"], ts.addr["APIC"])
	}
	if string(x[28:32]) != "EMBR" || u32(x, 24) != 1 || u32(x, 32) != 1 {
		t.Errorf("XSDT header % x", x[:36])
	}
}

func TestFADT(t *testing.T) {
	for _, i8042 := range []bool{false, true} {
		ts := mustBuild(t, Config{CPUs: 1, I8042: i8042})
		f := ts.tables["FACP"]
		if len(f) != 276 || f[8] != 6 || f[131] != 4 {
			t.Errorf("i8042 %v: FADT length %d revision %d.%d", i8042, len(f), f[8], f[131])
		}
		if u32(f, 40) != uint32(ts.addr["DSDT"]) || u64(f, 140) != ts.addr["DSDT"] {
			t.Errorf("i8042 %v: FADT DSDT %#x X_DSDT %#x, DSDT at %#x", i8042, u32(f, 40), u64(f, 140), ts.addr["DSDT"])
		}
		if u32(f, 36) != 0 || u64(f, 132) != 0 {
			t.Errorf("i8042 %v: FACS pointers %#x %#x, want none", i8042, u32(f, 36), u64(f, 132))
		}
		if flags := u32(f, 112); flags != 1<<20|1<<4|1<<5 {
			t.Errorf("i8042 %v: FADT flags %#x, want HW_REDUCED_ACPI|PWR_BUTTON|SLP_BUTTON", i8042, flags)
		}
		want := uint16(1<<2 | 1<<5) // VGA not present, CMOS RTC not present
		if i8042 {
			want |= 1 << 1
		}
		if boot := u16(f, 109); boot != want {
			t.Errorf("i8042 %v: IAPC_BOOT_ARCH %#x, want %#x", i8042, boot, want)
		}
		if string(f[268:276]) != "EMBERVM " {
			t.Errorf("i8042 %v: hypervisor ID %q", i8042, f[268:276])
		}
		// No PM registers: everything between SCI_INT and the boot flags,
		// and every GAS from X_PM1a_EVT_BLK to SLEEP_STATUS_REG, is zero.
		if !allZero(f[46:109]) || !allZero(f[116:131]) || !allZero(f[148:268]) {
			t.Errorf("i8042 %v: PM fields not zero:\n% x", i8042, f)
		}
	}
}

func allZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

func TestMADT(t *testing.T) {
	for _, cpus := range []int{1, 2, 32} {
		ts := mustBuild(t, Config{CPUs: cpus})
		m := ts.tables["APIC"]
		if len(m) != 44+8*cpus+12+10 || m[8] != 5 {
			t.Errorf("%d CPUs: MADT length %d revision %d", cpus, len(m), m[8])
		}
		if u32(m, 36) != 0xfee00000 || u32(m, 40) != 1 {
			t.Errorf("%d CPUs: local APIC address %#x flags %#x", cpus, u32(m, 36), u32(m, 40))
		}
		off := 44
		for i := range cpus {
			e := m[off : off+8]
			if want := []byte{0, 8, byte(i), byte(i), 1, 0, 0, 0}; !bytes.Equal(e, want) {
				t.Errorf("%d CPUs: local APIC entry %d = % x, want % x", cpus, i, e, want)
			}
			off += 8
		}
		io := m[off : off+12]
		if want := []byte{1, 12, byte(cpus), 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0}; !bytes.Equal(io, want) {
			t.Errorf("%d CPUs: I/O APIC entry % x, want % x", cpus, io, want)
		}
		off += 12
		iso := m[off:]
		if want := []byte{2, 10, 0, 0, 0, 0, 0, 0, 0, 0}; !bytes.Equal(iso, want) {
			t.Errorf("%d CPUs: interrupt source override % x, want % x", cpus, iso, want)
		}
	}
}

func TestDSDT(t *testing.T) {
	cfg := Config{CPUs: 1, Serial: true, I8042: true, VirtioMMIO: virtioDevices(2)}
	ts := mustBuild(t, cfg)
	d := ts.tables["DSDT"]
	aml, err := dsdtAML(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if d[8] != 2 || !bytes.Equal(d[36:], aml) {
		t.Errorf("DSDT revision %d, body\n% x\nwant\n% x", d[8], d[36:], aml)
	}
	if n := bytes.Count(d, []byte("LNRO0005")); n != 2 {
		t.Errorf("DSDT has %d LNRO0005 devices, want 2", n)
	}
}

// TestDSDTVMGenID: the DSDT holds the VMGenID device, whose ADDR package
// is the ID's address (low and high 32 bits), and the GED on its GSI.
func TestDSDTVMGenID(t *testing.T) {
	for _, g := range []VMGenID{{Addr: 0xef000, GSI: 3}, {Addr: 0x1_0000_0008, GSI: 23}} {
		cfg := Config{CPUs: 1, Serial: true, VirtioMMIO: virtioDevices(2), VMGenID: &g}
		d := mustBuild(t, cfg).tables["DSDT"]
		addr, err := amlPackageOf(amlInteger(g.Addr&0xffffffff), amlInteger(g.Addr>>32))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(d, append([]byte{amlNameOp, 'A', 'D', 'D', 'R'}, addr...)) {
			t.Errorf("%#x: DSDT has no Name (ADDR, Package { %#x, %#x }):\n% x", g.Addr, g.Addr&0xffffffff, g.Addr>>32, d)
		}
		for _, s := range []string{"VGEN", "VM_Gen_Counter\x00", "ACPI0013\x00", "_EVT", "GED_"} {
			if !bytes.Contains(d, []byte(s)) {
				t.Errorf("%#x: DSDT lacks %q", g.Addr, s)
			}
		}
		irq, err := extendedInterrupt(gedIRQFlags, g.GSI)
		if err != nil || !bytes.Contains(d, irq) {
			t.Errorf("DSDT lacks the GED interrupt on GSI %d (%v)", g.GSI, err)
		}
	}
	d := mustBuild(t, Config{CPUs: 1}).tables["DSDT"]
	if bytes.Contains(d, []byte("VGEN")) || bytes.Contains(d, []byte("ACPI0013")) {
		t.Error("DSDT without VMGenID has the device")
	}
}

func TestBuildDeterministic(t *testing.T) {
	cfg := Config{CPUs: 3, Serial: true, VirtioMMIO: virtioDevices(4)}
	a, err1 := Build(cfg, testBase, testLimit)
	b, err2 := Build(cfg, testBase, testLimit)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Errorf("two builds differ (%v, %v)", err1, err2)
	}
}

func TestBuildBase(t *testing.T) {
	// Pointers are absolute: the same config at another base moves them all.
	const base = 0x7ff000
	blob, err := Build(Config{CPUs: 1, VirtioMMIO: virtioDevices(1)}, base, 0x1000)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := parseTables(blob, base)
	if err != nil {
		t.Fatal(err)
	}
	if u64(ts.rsdp, 24) != base+0x30 || ts.addr["DSDT"] != u64(ts.tables["FACP"], 140) {
		t.Errorf("tables at %#x", ts.addr)
	}
}

func TestBuildErrors(t *testing.T) {
	ok := MMIODevice{Addr: 0xc0001000, Size: 0x1000, IRQ: 5}
	for _, tc := range []struct {
		name  string
		cfg   Config
		base  uint64
		limit uint64
		want  string
	}{
		{"0 CPUs", Config{CPUs: 0}, testBase, testLimit, "0 vCPUs"},
		{"negative CPUs", Config{CPUs: -1}, testBase, testLimit, "-1 vCPUs"},
		{"33 CPUs", Config{CPUs: 33}, testBase, testLimit, "33 vCPUs"},
		{"IRQ 4", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{0xc0001000, 0x1000, 4}}}, testBase, testLimit, "IRQ 4"},
		{"IRQ 0", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{0xc0001000, 0x1000, 0}}}, testBase, testLimit, "IRQ 0"},
		{"IRQ 24", Config{CPUs: 1, VirtioMMIO: []MMIODevice{ok, {0xc0002000, 0x1000, 24}}}, testBase, testLimit, "device 1: IRQ 24"},
		{"zero size", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{0xc0001000, 0, 5}}}, testBase, testLimit, "zero size"},
		{"above 4 GiB", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{1 << 32, 0x1000, 5}}}, testBase, testLimit, "4 GiB"},
		{"crosses 4 GiB", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{0xfffff000, 0x2000, 5}}}, testBase, testLimit, "4 GiB"},
		{"4 GiB window", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{0, 1 << 32, 5}}}, testBase, testLimit, "4 GiB"},
		{"huge size", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{0x1000, ^uint64(0), 5}}}, testBase, testLimit, "4 GiB"},
		{"huge addr", Config{CPUs: 1, VirtioMMIO: []MMIODevice{{^uint64(0), 1, 5}}}, testBase, testLimit, "4 GiB"},
		{"same IRQ", Config{CPUs: 1, VirtioMMIO: []MMIODevice{ok, {0xc0002000, 0x1000, 5}}}, testBase, testLimit, "both use IRQ 5"},
		{"overlap", Config{CPUs: 1, VirtioMMIO: []MMIODevice{ok, {0xc0001800, 0x1000, 6}}}, testBase, testLimit, "overlap"},
		{"same window", Config{CPUs: 1, VirtioMMIO: []MMIODevice{ok, {0xc0001000, 0x1000, 6}}}, testBase, testLimit, "overlap"},
		{"unaligned base", Config{CPUs: 1}, testBase + 8, testLimit, "aligned"},
		{"limit 0", Config{CPUs: 1}, testBase, 0, "available"},
		{"limit small", Config{CPUs: 32, VirtioMMIO: virtioDevices(19)}, testBase, 1024, "available"},
		{"base at 4 GiB", Config{CPUs: 1}, 1 << 32, testLimit, "4 GiB"},
		{"base below 4 GiB", Config{CPUs: 1}, 1<<32 - 0x100, testLimit, "4 GiB"},
		{"VMGenID unaligned", Config{CPUs: 1, VMGenID: &VMGenID{Addr: 0xef004, GSI: 3}}, testBase, testLimit, "VMGenID at 0xef004"},
		{"VMGenID at the top", Config{CPUs: 1, VMGenID: &VMGenID{Addr: ^uint64(0) &^ 7, GSI: 3}}, testBase, testLimit, "VMGenID at"},
		{"VMGenID GSI 4", Config{CPUs: 1, VMGenID: &VMGenID{Addr: 0xef000, GSI: 4}}, testBase, testLimit, "VMGenID GSI 4"},
		{"VMGenID GSI 24", Config{CPUs: 1, VMGenID: &VMGenID{Addr: 0xef000, GSI: 24}}, testBase, testLimit, "VMGenID GSI 24"},
		{"VMGenID GSI of a virtio device", Config{CPUs: 1, VirtioMMIO: []MMIODevice{ok}, VMGenID: &VMGenID{Addr: 0xef000, GSI: 5}}, testBase, testLimit, "both use IRQ 5"},
	} {
		blob, err := Build(tc.cfg, tc.base, tc.limit)
		if err == nil {
			t.Errorf("%s: Build succeeded (%d bytes)", tc.name, len(blob))
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "ACPI tables") {
			t.Errorf("%s: error %q, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func TestBuildLimitExact(t *testing.T) {
	cfg := Config{CPUs: 32, Serial: true, I8042: true, VirtioMMIO: virtioDevices(19)}
	blob, err := Build(cfg, testBase, testLimit)
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(len(blob))
	if _, err := Build(cfg, testBase, n); err != nil {
		t.Errorf("limit = size %d: %v", n, err)
	}
	if _, err := Build(cfg, testBase, n-1); err == nil {
		t.Errorf("limit = size-1 %d: succeeded", n-1)
	}
	// Adjacent windows and the edges of the range are fine.
	edge := Config{CPUs: 1, VirtioMMIO: []MMIODevice{
		{Addr: 0xfffff000, Size: 0x1000, IRQ: 23},
		{Addr: 0, Size: 1, IRQ: 5},
		{Addr: 1, Size: 0xffffefff, IRQ: 6},
	}}
	if _, err := Build(edge, testBase, testLimit); err != nil {
		t.Errorf("edge windows: %v", err)
	}
}

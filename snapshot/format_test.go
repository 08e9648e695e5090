package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/kvm"
)

// testState returns a State with every field set to something recognisable.
func testState(vcpus int) *State {
	s := &State{
		Header: Header{
			EmberVersion: "0.1.0-test",
			Created:      time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC),
			HostKernel:   "6.1.0-test",
			CPUVendor:    "GenuineIntel",
			VCPUCount:    vcpus,
			MemorySize:   3<<30 + 1<<30,
			MemoryKind:   MemoryFull,
			Regions:      []Region{{0, 3 << 30}, {1 << 32, 1 << 30}},
			Devices: []DeviceInfo{
				{Name: "rootfs", Kind: "virtio-block", Backend: "/srv/rootfs.ext4"},
				{Name: "eth0", Kind: "virtio-net", Backend: "tap0"},
				{Name: "serial", Kind: "serial"},
			},
		},
		VM: kvm.VMState{
			PICMaster: kvm.IRQChip{ChipID: kvm.IRQChipPICMaster},
			PICSlave:  kvm.IRQChip{ChipID: kvm.IRQChipPICSlave},
			IOAPIC:    kvm.IRQChip{ChipID: kvm.IRQChipIOAPIC},
			PIT:       &kvm.PITState2{Flags: kvm.PITFlagsHPETLegacy},
			Clock:     kvm.ClockData{Clock: 123456789, Flags: kvm.ClockRealtime, Realtime: 1741064767000000000},
		},
		Devices: []Device{
			{Name: "rootfs", Data: []byte("virtio-block queue state")},
			{Name: "eth0", Data: bytes.Repeat([]byte{0xee}, 300)},
			{Name: "serial", Data: []byte{}},
		},
	}
	s.VM.IOAPIC.Chip[0], s.VM.IOAPIC.Chip[511] = 0xfe, 0x11
	s.VM.PIT.Channels[0] = kvm.PITChannelState{Count: 65536, Mode: 2, Gate: 1, CountLoadTime: -5}
	for i := range vcpus {
		v := kvm.VCPUState{
			CPUID: []kvm.CPUIDEntry{
				{Function: 0, EAX: 0xd, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69},
				{Function: 1, EAX: 0x906ea, EBX: uint32(i) << 24, Flags: 0},
				{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: 0x29c67af},
			},
			MPState:   kvm.MPState{State: kvm.MPStateHalted},
			Regs:      kvm.Regs{RAX: 1, RIP: 0xffffffff81000000 + uint64(i), RFLAGS: 0x246, R15: 0xf15},
			Sregs:     kvm.Sregs{CR0: 0x80050033, CR3: 0x1000, CR4: 0x3606f0, EFER: 0xd01, APICBase: 0xfee00900},
			FPU:       kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80},
			XSave:     bytes.Repeat([]byte{byte(i + 1), 0, 0x55, 0}, 1024+16),
			XCRS:      kvm.XCRS{NrXCRs: 1, XCRs: [kvm.MaxXCRs]kvm.XCR{{XCR: 0, Value: 7}}},
			DebugRegs: kvm.DebugRegs{DR6: 0xffff0ff0, DR7: 0x400},
			MSRs: []kvm.MSREntry{
				{Index: kvm.MSRIA32TSC, Data: 1 << 40},
				{Index: kvm.MSRKVMSystemTimeNew, Data: 0x1234001},
				{Index: kvm.MSRIA32TSCDeadline, Data: 1<<40 + 5},
			},
			Events: kvm.VCPUEvents{NMIMasked: 1, Flags: kvm.VCPUEventValidNMIPending | kvm.VCPUEventValidShadow, ExceptionPayload: 0xabc},
			TSCKHz: 2_600_000,
		}
		v.Sregs.CS = kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: 0x10, Type: 11, Present: 1, S: 1, L: 1, G: 1}
		v.Sregs.GDT = kvm.DTable{Base: 0x500, Limit: 0x1f}
		v.LAPIC.Regs[0x20], v.LAPIC.Regs[0x3ff] = byte(i), 0x99
		v.FPU.XMM[15][15] = 0x7f
		s.VCPUs = append(s.VCPUs, v)
	}
	return s
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	s := testState(3)
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := *s
	want.Version = FormatVersion
	if !reflect.DeepEqual(got, &want) {
		t.Fatalf("round trip differs:\n got %+v\nwant %+v", got.Header, want.Header)
	}
	// Deterministic: the same state encodes to the same bytes, and
	// re-encoding what was decoded reproduces the file.
	b2, _ := Encode(s)
	b3, err := Encode(got)
	if err != nil || !bytes.Equal(b, b2) || !bytes.Equal(b, b3) {
		t.Fatalf("encoding is not deterministic (err %v)", err)
	}
}

// TestFormatV1Pinned pins the version 1 encoding: if this fails, the file
// format changed and FormatVersion must be bumped (and the old version kept
// readable or rejected on purpose).
func TestFormatV1Pinned(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  int
		want int
	}{
		{"MPState", sizeMPState, 4},
		{"Regs", sizeRegs, 144},
		{"Sregs", sizeSregs, 312},
		{"FPU", sizeFPU, 416},
		{"XCRS", sizeXCRS, 392},
		{"DebugRegs", sizeDebugRegs, 128},
		{"LAPICState", sizeLAPIC, 1024},
		{"VCPUEvents", sizeEvents, 64},
		{"CPUIDEntry", sizeCPUID, 40},
		{"MSREntry", sizeMSR, 16},
		{"IRQChip", sizeIRQChip, 520},
		{"PITState2", sizePIT, 112},
		{"ClockData", sizeClock, 48},
	} {
		if tc.got != tc.want {
			t.Errorf("encoded size of kvm.%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	b, err := Encode(testState(2))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	const want = "6f50aa3fb3f4368d49b3d07dc7eb36c36ba24cafb7227d913bae7cfb111bd208"
	if got := hex.EncodeToString(sum[:]); got != want {
		t.Errorf("format v1 encoding of the test state changed: sha256 %s, want %s", got, want)
	}
}

func TestEncodeFillsAndChecks(t *testing.T) {
	s := testState(1)
	s.Header.VCPUCount, s.Header.MemorySize, s.Header.CPUVendor = 0, 0, ""
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if h := got.Header; h.VCPUCount != 1 || h.MemorySize != 4<<30 || h.CPUVendor != "GenuineIntel" {
		t.Errorf("filled header: %d vCPUs, %d bytes, vendor %q", h.VCPUCount, h.MemorySize, h.CPUVendor)
	}
	if s.Header.VCPUCount != 0 {
		t.Error("Encode modified its argument")
	}

	for name, mod := range map[string]func(*State){
		"vcpu count":       func(s *State) { s.Header.VCPUCount = 5 },
		"no vcpus":         func(s *State) { s.VCPUs = nil; s.Header.VCPUCount = 0 },
		"memory kind":      func(s *State) { s.Header.MemoryKind = "Partial" },
		"memory size":      func(s *State) { s.Header.MemorySize = 12345 },
		"unaligned region": func(s *State) { s.Header.Regions[0].Size = 4097 },
		"overlap":          func(s *State) { s.Header.Regions[1].GuestAddr = 4096 },
		"no regions":       func(s *State) { s.Header.Regions = nil },
		"device twice":     func(s *State) { s.Devices = append(s.Devices, Device{Name: "eth0"}) },
		"device no name":   func(s *State) { s.Devices = append(s.Devices, Device{}) },
		"long name":        func(s *State) { s.Devices = append(s.Devices, Device{Name: strings.Repeat("x", 256)}) },
		"listed twice":     func(s *State) { s.Header.Devices = append(s.Header.Devices, DeviceInfo{Name: "eth0"}) },
		"big device":       func(s *State) { s.Devices[0].Data = make([]byte, MaxSectionSize+1) },
		"short xsave":      func(s *State) { s.VCPUs[0].XSave = make([]byte, 100) },
	} {
		s := testState(1)
		mod(s)
		if _, err := Encode(s); err == nil {
			t.Errorf("%s: Encode succeeded", name)
		}
	}
	if _, err := Encode(nil); err == nil {
		t.Error("Encode(nil) succeeded")
	}
}

// refresh rewrites the declared length and the CRC of a hand-modified file,
// so that the parser behind the CRC check sees the change.
func refresh(b []byte) []byte {
	b = bytes.Clone(b)
	if len(b) < preambleSize+crcSize {
		return b
	}
	binary.LittleEndian.PutUint64(b[16:], uint64(len(b)))
	body := b[:len(b)-crcSize]
	binary.LittleEndian.PutUint64(b[len(body):], crc64.Checksum(body, crcTable()))
	return b
}

// sectionsOffset returns the offset of the section count in an encoded file.
func sectionsOffset(b []byte) int {
	hlen := binary.LittleEndian.Uint32(b[preambleSize:])
	return preambleSize + 4 + int(hlen)
}

func TestDecodeErrors(t *testing.T) {
	good, err := Encode(testState(2))
	if err != nil {
		t.Fatal(err)
	}
	sec := sectionsOffset(good)
	firstSection := sec + 4
	// First vCPU section: kind, name length 1, "0", data length.
	vcpuData := firstSection + 3 + 4
	vcpuLen := binary.LittleEndian.Uint32(good[firstSection+3:])
	// Offsets inside the vCPU section of the three counted lists.
	cpuidCount := vcpuData + vcpuFixedSize - 12
	msrCount := cpuidCount + 4 + 3*sizeCPUID
	xsaveCount := msrCount + 4 + 3*sizeMSR

	put32 := func(b []byte, off int, v uint32) []byte {
		b = bytes.Clone(b)
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want error
		text string
	}{
		{"empty", nil, ErrTruncated, ""},
		{"magic prefix", []byte("EMBER"), ErrTruncated, ""},
		{"bad magic", append([]byte("FCSNAPSH"), good[8:]...), ErrBadMagic, `"FCSNAPSH"`},
		{"short junk", []byte("hi"), ErrBadMagic, ""},
		{"no version", good[:9], ErrTruncated, ""},
		{"version 2", func() []byte { b := bytes.Clone(good); b[8] = 2; return b }(), ErrUnsupportedVersion, "format 2"},
		{"version 0", func() []byte { b := bytes.Clone(good); b[8] = 0; return b }(), ErrUnsupportedVersion, ""},
		{"truncated preamble", good[:20], ErrTruncated, ""},
		{"truncated", good[:len(good)-100], ErrTruncated, "header says"},
		{"trailing", append(bytes.Clone(good), 0), ErrCorrupt, "after the declared end"},
		{"too long", func() []byte { b := bytes.Clone(good); binary.LittleEndian.PutUint64(b[16:], 1<<40); return b }(), ErrTooLarge, ""},
		{"crc", func() []byte { b := bytes.Clone(good); b[len(b)/2] ^= 1; return b }(), ErrCRCMismatch, "computed"},
		{"reserved", refresh(func() []byte { b := bytes.Clone(good); b[12] = 1; return b }()), ErrCorrupt, "reserved"},
		{"header too large", refresh(put32(good, preambleSize, MaxHeaderSize+1)), ErrTooLarge, "header"},
		{"header past end", refresh(put32(good, preambleSize, uint32(len(good)))), ErrTruncated, "header"},
		{"header json", refresh(func() []byte { b := bytes.Clone(good); b[preambleSize+4] = '['; return b }()), ErrCorrupt, "header"},
		{"section count", refresh(put32(good, sec, 0xffffffff)), ErrTooLarge, "sections"},
		{"too few sections", refresh(put32(good, sec, 1)), ErrCorrupt, "need 3"},
		{"many sections", refresh(put32(good, sec, 9)), ErrTruncated, "section 6"},
		{"section kind", refresh(func() []byte { b := bytes.Clone(good); b[firstSection] = 9; return b }()), ErrCorrupt, "kind 9"},
		{"section name", refresh(func() []byte { b := bytes.Clone(good); b[firstSection+2] = '7'; return b }()), ErrCorrupt, "out of order"},
		{"section too large", refresh(put32(good, firstSection+3, MaxSectionSize+1)), ErrTooLarge, "limit"},
		{"section past end", refresh(put32(good, firstSection+3, uint32(len(good)))), ErrTruncated, "section 0"},
		{"vcpu short", refresh(put32(good, firstSection+3, 10)), ErrTruncated, "vCPU 0"},
		{"vcpu cut", refresh(put32(good, firstSection+3, vcpuLen-1)), ErrTruncated, "XSAVE"},
		{"cpuid count", refresh(put32(good, cpuidCount, 0xffffffff)), ErrTooLarge, "CPUID"},
		{"cpuid past end", refresh(put32(good, cpuidCount, 4000)), ErrTruncated, "CPUID"},
		{"msr count", refresh(put32(good, msrCount, 1<<20)), ErrTooLarge, "MSRs"},
		{"xsave count", refresh(put32(good, xsaveCount, 1<<30)), ErrTooLarge, "XSAVE"},
		{"xsave small", refresh(put32(good, xsaveCount, 8)), ErrCorrupt, "XSAVE"},
	} {
		s, err := Decode(tc.b)
		if err == nil || s != nil {
			t.Errorf("%s: Decode = %v, %v; want an error", tc.name, s != nil, err)
			continue
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: error %q is not %q", tc.name, err, tc.want)
		}
		if !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.text)
		}
	}
}

func TestDecodeVMErrors(t *testing.T) {
	s := testState(1)
	v, err := encodeVCPU(&s.VCPUs[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeVCPU(append(v, 0), "vCPU 0"); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "trailing") {
		t.Errorf("vCPU section with a trailing byte: %v", err)
	}
	s.VCPUs[0].XCRS.NrXCRs = 17
	v, _ = encodeVCPU(&s.VCPUs[0])
	if _, err := decodeVCPU(v, "vCPU 0"); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "XCRs") {
		t.Errorf("17 XCRs: %v", err)
	}

	s.VM.PICSlave.ChipID = 7
	vm, err := encodeVM(&s.VM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeVM(vm); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "irqchip id 7") {
		t.Errorf("bad chip id: %v", err)
	}
	s.VM.PICSlave.ChipID = kvm.IRQChipPICSlave
	vm, _ = encodeVM(&s.VM)
	vm[3*sizeIRQChip] = 2
	if _, err := decodeVM(vm); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "PIT flag") {
		t.Errorf("bad PIT flag: %v", err)
	}
	s.VM.PIT = nil
	vm, _ = encodeVM(&s.VM)
	if got, err := decodeVM(vm); err != nil || got.PIT != nil {
		t.Errorf("no PIT: %v, %v", got.PIT, err)
	}
}

func TestWriteRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.snap")
	s := testState(2)
	if err := Write(path, s); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.VCPUs, s.VCPUs) || !reflect.DeepEqual(got.Devices, s.Devices) || got.Header.Created != s.Header.Created {
		t.Fatal("Read(Write(s)) differs from s")
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}

	// A failed Write leaves the existing file alone and no temporary file.
	bad := testState(2)
	bad.Header.MemoryKind = "?"
	if err := Write(path, bad); err == nil {
		t.Fatal("Write of a bad state succeeded")
	}
	if again, err := Read(path); err != nil || again.Header.MemoryKind != MemoryFull {
		t.Fatalf("existing state file damaged: %v", err)
	}
	if err := Write(filepath.Join(dir, "missing", "x.snap"), s); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only vm.snap", len(entries))
	}

	// Read names the file and the problem.
	b, _ := os.ReadFile(path)
	os.WriteFile(path, b[:len(b)-1], 0o600)
	if _, err := Read(path); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), path) {
		t.Errorf("Read of a truncated file: %v", err)
	}
	// Huge files are refused before being read.
	big := filepath.Join(dir, "big.snap")
	f, _ := os.Create(big)
	f.Truncate(MaxStateFileSize + 1)
	f.Close()
	if _, err := Read(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Read of a huge file: %v", err)
	}
	if _, err := Read(dir); err == nil {
		t.Error("Read of a directory succeeded")
	}
}

func TestDescribe(t *testing.T) {
	s := testState(2)
	s.Devices = append(s.Devices, Device{Name: "balloon", Data: []byte{1, 2}})
	var out strings.Builder
	if err := Describe(&out, s); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	t.Logf("\n%s", got)
	for _, want := range []string{
		"Format version:", "0.1.0-test", "2025-03-04T05:06:07Z", "GenuineIntel", "vCPUs:",
		"4 GiB, Full memory file", "guest 0x0-0xc0000000 (3 GiB), file offset 0x0",
		"guest 0x100000000-0x140000000 (1 GiB), file offset 0xc0000000",
		"rootfs", "virtio-block", "/srv/rootfs.ext4", "(state 24 bytes)", "balloon", "(state only)",
		"wall clock", "In-kernel PIT:", "vCPU 1:", "RIP 0xffffffff81000001", "halted", "TSC 2600000 kHz", "3 MSRs", "XSAVE 4160 bytes",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Describe output lacks %q", want)
		}
	}
}

func TestVendorFromCPUID(t *testing.T) {
	s := testState(1)
	if v := VendorFromCPUID(s.VCPUs[0].CPUID); v != "GenuineIntel" {
		t.Errorf("vendor %q", v)
	}
	if v := VendorFromCPUID(nil); v != "" {
		t.Errorf("vendor of nothing %q", v)
	}
}

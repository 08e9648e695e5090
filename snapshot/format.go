package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/kvm"
)

var (
	le = binary.LittleEndian
	// crcTable is made at the first snapshot or restore, not at every
	// ember start (it costs 34 KB and a loop at package init).
	crcTable = sync.OnceValue(func() *crc64.Table { return crc64.MakeTable(crc64.ECMA) })
)

const (
	preambleSize = 8 + 2 + 6 + 8 // magic, version, reserved, length
	crcSize      = 8
	// minSectionSize is a section's framing without name or data.
	minSectionSize = 1 + 1 + 4

	// MaxDevices bounds the device state sections.
	MaxDevices = 4096

	maxCPUIDEntries = 4096
	maxMSRs         = 1 << 16
)

// Encoded sizes of the fixed-size kvm structs (encoding/binary packs them
// without alignment padding but keeps blank fields).
var (
	sizeMPState   = binary.Size(kvm.MPState{})
	sizeRegs      = binary.Size(kvm.Regs{})
	sizeSregs     = binary.Size(kvm.Sregs{})
	sizeFPU       = binary.Size(kvm.FPU{})
	sizeXCRS      = binary.Size(kvm.XCRS{})
	sizeDebugRegs = binary.Size(kvm.DebugRegs{})
	sizeLAPIC     = binary.Size(kvm.LAPICState{})
	sizeEvents    = binary.Size(kvm.VCPUEvents{})
	sizeCPUID     = binary.Size(kvm.CPUIDEntry{})
	sizeMSR       = binary.Size(kvm.MSREntry{})
	sizeIRQChip   = binary.Size(kvm.IRQChip{})
	sizePIT       = binary.Size(kvm.PITState2{})
	sizeClock     = binary.Size(kvm.ClockData{})

	// vcpuFixedSize is the least a vCPU section can hold.
	vcpuFixedSize = sizeMPState + sizeRegs + sizeSregs + sizeFPU + sizeXCRS +
		sizeDebugRegs + sizeLAPIC + sizeEvents + 4 + 3*4
)

// Encode returns the state file bytes for s. It checks s as Decode would
// and fills two header fields when they are zero: VCPUCount (from
// len(s.VCPUs)) and MemorySize (from the regions); CPUVendor, when empty,
// comes from vCPU 0's CPUID. s itself is not modified.
func Encode(s *State) ([]byte, error) {
	if s == nil {
		return nil, errors.New("encode snapshot: nil state")
	}
	h := s.Header
	if h.VCPUCount == 0 {
		h.VCPUCount = len(s.VCPUs)
	}
	if h.MemorySize == 0 {
		for _, r := range h.Regions {
			h.MemorySize += r.Size
		}
	}
	if h.CPUVendor == "" && len(s.VCPUs) > 0 {
		h.CPUVendor = VendorFromCPUID(s.VCPUs[0].CPUID)
	}
	if h.Devices == nil {
		h.Devices = []DeviceInfo{}
	}
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("encode snapshot: %w", err)
	}
	if h.VCPUCount != len(s.VCPUs) {
		return nil, fmt.Errorf("encode snapshot: header says %d vCPUs, state has %d", h.VCPUCount, len(s.VCPUs))
	}
	hdr, err := json.Marshal(&h)
	if err != nil {
		return nil, fmt.Errorf("encode snapshot header: %w", err)
	}
	if len(hdr) > MaxHeaderSize {
		return nil, fmt.Errorf("encode snapshot: %w: header is %d bytes, limit %d", ErrTooLarge, len(hdr), MaxHeaderSize)
	}

	b := make([]byte, 0, 64<<10)
	b = append(b, Magic...)
	b = le.AppendUint16(b, FormatVersion)
	b = append(b, make([]byte, 6)...)
	b = le.AppendUint64(b, 0) // length, patched below
	b = le.AppendUint32(b, uint32(len(hdr)))
	b = append(b, hdr...)
	b = le.AppendUint32(b, uint32(len(s.VCPUs)+1+len(s.Devices)))

	for i := range s.VCPUs {
		data, err := encodeVCPU(&s.VCPUs[i])
		if err != nil {
			return nil, fmt.Errorf("encode vCPU %d: %w", i, err)
		}
		if b, err = appendSection(b, SectionVCPU, strconv.Itoa(i), data); err != nil {
			return nil, err
		}
	}
	data, err := encodeVM(&s.VM)
	if err != nil {
		return nil, fmt.Errorf("encode VM state: %w", err)
	}
	if b, err = appendSection(b, SectionVM, "vm", data); err != nil {
		return nil, err
	}
	if len(s.Devices) > MaxDevices {
		return nil, fmt.Errorf("encode snapshot: %w: %d device states, limit %d", ErrTooLarge, len(s.Devices), MaxDevices)
	}
	seen := make(map[string]bool, len(s.Devices))
	for _, d := range s.Devices {
		if err := checkName(d.Name); err != nil {
			return nil, fmt.Errorf("encode device state: %w", err)
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("encode device state: %w: device %q saved twice", ErrCorrupt, d.Name)
		}
		seen[d.Name] = true
		if b, err = appendSection(b, SectionDevice, d.Name, d.Data); err != nil {
			return nil, err
		}
	}
	total := len(b) + crcSize
	if total > MaxStateFileSize {
		return nil, fmt.Errorf("encode snapshot: %w: %d bytes, limit %d", ErrTooLarge, total, MaxStateFileSize)
	}
	le.PutUint64(b[16:], uint64(total))
	return le.AppendUint64(b, crc64.Checksum(b, crcTable())), nil
}

func appendSection(b []byte, kind uint8, name string, data []byte) ([]byte, error) {
	if len(name) == 0 || len(name) > MaxNameLen {
		return nil, fmt.Errorf("encode section %q: %w: bad name length", name, ErrCorrupt)
	}
	if len(data) > MaxSectionSize {
		return nil, fmt.Errorf("encode section %q: %w: %d bytes, limit %d", name, ErrTooLarge, len(data), MaxSectionSize)
	}
	b = append(b, kind, byte(len(name)))
	b = append(b, name...)
	b = le.AppendUint32(b, uint32(len(data)))
	return append(b, data...), nil
}

func encodeVCPU(v *kvm.VCPUState) ([]byte, error) {
	if len(v.CPUID) > maxCPUIDEntries || len(v.MSRs) > maxMSRs {
		return nil, fmt.Errorf("%w: %d CPUID entries, %d MSRs", ErrTooLarge, len(v.CPUID), len(v.MSRs))
	}
	if n := len(v.XSave); n != 0 && (n < kvm.XSaveMinSize || n > kvm.XSaveMaxSize) {
		return nil, fmt.Errorf("%w: XSAVE area of %d bytes", ErrCorrupt, n)
	}
	b := make([]byte, 0, vcpuFixedSize+len(v.CPUID)*sizeCPUID+len(v.MSRs)*sizeMSR+len(v.XSave))
	var err error
	for _, x := range []any{&v.MPState, &v.Regs, &v.Sregs, &v.FPU, &v.XCRS, &v.DebugRegs, &v.LAPIC, &v.Events} {
		if b, err = binary.Append(b, le, x); err != nil {
			return nil, err
		}
	}
	b = le.AppendUint32(b, v.TSCKHz)
	b = le.AppendUint32(b, uint32(len(v.CPUID)))
	if b, err = binary.Append(b, le, v.CPUID); err != nil {
		return nil, err
	}
	b = le.AppendUint32(b, uint32(len(v.MSRs)))
	if b, err = binary.Append(b, le, v.MSRs); err != nil {
		return nil, err
	}
	b = le.AppendUint32(b, uint32(len(v.XSave)))
	return append(b, v.XSave...), nil
}

func encodeVM(s *kvm.VMState) ([]byte, error) {
	b := make([]byte, 0, 3*sizeIRQChip+1+sizePIT+sizeClock)
	var err error
	for _, c := range []*kvm.IRQChip{&s.PICMaster, &s.PICSlave, &s.IOAPIC} {
		if b, err = binary.Append(b, le, c); err != nil {
			return nil, err
		}
	}
	if s.PIT != nil {
		b = append(b, 1)
		if b, err = binary.Append(b, le, s.PIT); err != nil {
			return nil, err
		}
	} else {
		b = append(b, 0)
	}
	return binary.Append(b, le, &s.Clock)
}

// decoder reads a byte slice with bounds checks. The first failure sticks.
type decoder struct {
	b    []byte
	off  int
	what string // what is being decoded, for errors
	err  error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: "+format, append([]any{d.what}, args...)...)
	}
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

// take returns the next n bytes, or nil (and a truncation error) if fewer
// remain.
func (d *decoder) take(n int, field string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > d.remaining() {
		d.fail("%w: %s needs %d bytes, %d remain", ErrTruncated, field, n, d.remaining())
		return nil
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u8(field string) uint8 {
	if p := d.take(1, field); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u32(field string) uint32 {
	if p := d.take(4, field); p != nil {
		return le.Uint32(p)
	}
	return 0
}

// count reads a uint32 element count and checks that count elements of
// elemSize bytes fit in what remains and in limit.
func (d *decoder) count(field string, elemSize, limit int) int {
	n := d.u32(field + " count")
	if d.err != nil {
		return 0
	}
	if uint64(n) > uint64(limit) {
		d.fail("%w: %d %s, limit %d", ErrTooLarge, n, field, limit)
		return 0
	}
	if uint64(n)*uint64(elemSize) > uint64(d.remaining()) {
		d.fail("%w: %d %s need %d bytes, %d remain", ErrTruncated, n, field, uint64(n)*uint64(elemSize), d.remaining())
		return 0
	}
	return int(n)
}

// fixed decodes a fixed-size struct.
func (d *decoder) fixed(x any, size int, field string) {
	p := d.take(size, field)
	if p == nil {
		return
	}
	if _, err := binary.Decode(p, le, x); err != nil {
		d.fail("%w: %s: %v", ErrCorrupt, field, err)
	}
}

func (d *decoder) end() {
	if d.err == nil && d.remaining() != 0 {
		d.fail("%w: %d unexpected trailing bytes", ErrCorrupt, d.remaining())
	}
}

func decodeVCPU(p []byte, what string) (kvm.VCPUState, error) {
	var v kvm.VCPUState
	d := &decoder{b: p, what: what}
	if len(p) < vcpuFixedSize {
		return v, fmt.Errorf("%s: %w: %d bytes, a vCPU state needs at least %d", what, ErrTruncated, len(p), vcpuFixedSize)
	}
	d.fixed(&v.MPState, sizeMPState, "MP state")
	d.fixed(&v.Regs, sizeRegs, "regs")
	d.fixed(&v.Sregs, sizeSregs, "sregs")
	d.fixed(&v.FPU, sizeFPU, "FPU")
	d.fixed(&v.XCRS, sizeXCRS, "XCRs")
	d.fixed(&v.DebugRegs, sizeDebugRegs, "debug registers")
	d.fixed(&v.LAPIC, sizeLAPIC, "LAPIC")
	d.fixed(&v.Events, sizeEvents, "vCPU events")
	v.TSCKHz = d.u32("TSC kHz")
	if n := d.count("CPUID entries", sizeCPUID, maxCPUIDEntries); n > 0 {
		v.CPUID = make([]kvm.CPUIDEntry, n)
		d.fixed(v.CPUID, n*sizeCPUID, "CPUID entries")
	}
	if n := d.count("MSRs", sizeMSR, maxMSRs); n > 0 {
		v.MSRs = make([]kvm.MSREntry, n)
		d.fixed(v.MSRs, n*sizeMSR, "MSRs")
	}
	if n := d.count("XSAVE bytes", 1, kvm.XSaveMaxSize); n > 0 {
		if n < kvm.XSaveMinSize {
			d.fail("%w: XSAVE area of %d bytes, want 0 or at least %d", ErrCorrupt, n, kvm.XSaveMinSize)
		}
		v.XSave = bytes.Clone(d.take(n, "XSAVE area"))
	}
	if d.err == nil && v.XCRS.NrXCRs > kvm.MaxXCRs {
		d.fail("%w: %d XCRs, at most %d", ErrCorrupt, v.XCRS.NrXCRs, kvm.MaxXCRs)
	}
	d.end()
	return v, d.err
}

func decodeVM(p []byte) (kvm.VMState, error) {
	var s kvm.VMState
	d := &decoder{b: p, what: "VM state"}
	d.fixed(&s.PICMaster, sizeIRQChip, "PIC master")
	d.fixed(&s.PICSlave, sizeIRQChip, "PIC slave")
	d.fixed(&s.IOAPIC, sizeIRQChip, "IOAPIC")
	switch hasPIT := d.u8("PIT flag"); {
	case d.err != nil:
	case hasPIT == 1:
		s.PIT = new(kvm.PITState2)
		d.fixed(s.PIT, sizePIT, "PIT")
	case hasPIT != 0:
		d.fail("%w: PIT flag %d, want 0 or 1", ErrCorrupt, hasPIT)
	}
	d.fixed(&s.Clock, sizeClock, "kvmclock")
	d.end()
	if d.err == nil {
		for _, c := range []struct {
			chip *kvm.IRQChip
			id   uint32
		}{{&s.PICMaster, kvm.IRQChipPICMaster}, {&s.PICSlave, kvm.IRQChipPICSlave}, {&s.IOAPIC, kvm.IRQChipIOAPIC}} {
			if c.chip.ChipID != c.id {
				d.fail("%w: irqchip id %d where %d belongs", ErrCorrupt, c.chip.ChipID, c.id)
			}
		}
	}
	return s, d.err
}

// Decode parses state file bytes. It checks, in order: magic, format
// version, declared length, CRC, then the header and every section.
func Decode(b []byte) (*State, error) {
	if len(b) < len(Magic) {
		if bytes.HasPrefix([]byte(Magic), b) {
			return nil, fmt.Errorf("%w: %d bytes", ErrTruncated, len(b))
		}
		return nil, fmt.Errorf("%w: file starts with %q", ErrBadMagic, b)
	}
	if string(b[:8]) != Magic {
		return nil, fmt.Errorf("%w: file starts with %q, want %q", ErrBadMagic, b[:8], Magic)
	}
	if len(b) < 10 {
		return nil, fmt.Errorf("%w: %d bytes, no format version", ErrTruncated, len(b))
	}
	version := le.Uint16(b[8:])
	if version == 0 || version > FormatVersion {
		return nil, fmt.Errorf("%w: file has format %d; this Ember reads formats 1 to %d", ErrUnsupportedVersion, version, FormatVersion)
	}
	if len(b) < preambleSize+crcSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the fixed header", ErrTruncated, len(b))
	}
	length := le.Uint64(b[16:])
	switch {
	case length > MaxStateFileSize:
		return nil, fmt.Errorf("%w: file declares %d bytes, limit %d", ErrTooLarge, length, MaxStateFileSize)
	case length > uint64(len(b)):
		return nil, fmt.Errorf("%w: file has %d bytes, its header says %d", ErrTruncated, len(b), length)
	case length < uint64(len(b)):
		return nil, fmt.Errorf("%w: %d bytes after the declared end (%d)", ErrCorrupt, uint64(len(b))-length, length)
	}
	body := b[:len(b)-crcSize]
	if want, got := le.Uint64(b[len(body):]), crc64.Checksum(body, crcTable()); want != got {
		return nil, fmt.Errorf("%w: stored %016x, computed %016x", ErrCRCMismatch, want, got)
	}
	for _, r := range b[10:16] {
		if r != 0 {
			return nil, fmt.Errorf("%w: reserved header bytes are not zero", ErrCorrupt)
		}
	}
	s, err := decodeBody(body[preambleSize:])
	if err != nil {
		return nil, err
	}
	s.Version = version
	return s, nil
}

// decodeBody parses what follows the preamble, up to the CRC.
func decodeBody(b []byte) (*State, error) {
	d := &decoder{b: b, what: "snapshot"}
	hlen := d.u32("header length")
	if d.err == nil && hlen > MaxHeaderSize {
		return nil, fmt.Errorf("header: %w: %d bytes, limit %d", ErrTooLarge, hlen, MaxHeaderSize)
	}
	hdr := d.take(int(hlen), "header")
	if d.err != nil {
		return nil, d.err
	}
	s := &State{}
	if err := json.Unmarshal(hdr, &s.Header); err != nil {
		return nil, fmt.Errorf("header: %w: %v", ErrCorrupt, err)
	}
	if err := s.Header.Validate(); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	n := d.count("sections", minSectionSize, MaxVCPUs+1+MaxDevices)
	if d.err != nil {
		return nil, d.err
	}
	vcpus := s.Header.VCPUCount
	if n < vcpus+1 {
		return nil, fmt.Errorf("%w: %d sections, but %d vCPUs and the VM need %d", ErrCorrupt, n, vcpus, vcpus+1)
	}
	s.VCPUs = make([]kvm.VCPUState, 0, min(vcpus, d.remaining()/vcpuFixedSize+1))
	seen := make(map[string]bool)
	for i := range n {
		kind := d.u8("section kind")
		name := string(d.take(int(d.u8("section name length")), "section name"))
		size := d.u32("section length")
		if d.err != nil {
			return nil, fmt.Errorf("section %d: %w", i, d.err)
		}
		what := fmt.Sprintf("section %d (%q)", i, name)
		if size > MaxSectionSize {
			return nil, fmt.Errorf("%s: %w: %d bytes, limit %d", what, ErrTooLarge, size, MaxSectionSize)
		}
		data := d.take(int(size), what)
		if d.err != nil {
			return nil, d.err
		}
		var want uint8
		switch {
		case i < vcpus:
			want = SectionVCPU
		case i == vcpus:
			want = SectionVM
		default:
			want = SectionDevice
		}
		if kind != want {
			return nil, fmt.Errorf("%s: %w: kind %d, want %d (vCPUs, then the VM, then devices)", what, ErrCorrupt, kind, want)
		}
		switch kind {
		case SectionVCPU:
			if name != strconv.Itoa(i) {
				return nil, fmt.Errorf("%s: %w: vCPU section out of order, want name %q", what, ErrCorrupt, strconv.Itoa(i))
			}
			v, err := decodeVCPU(data, "vCPU "+name)
			if err != nil {
				return nil, err
			}
			s.VCPUs = append(s.VCPUs, v)
		case SectionVM:
			if name != "vm" {
				return nil, fmt.Errorf("%s: %w: VM section must be named \"vm\"", what, ErrCorrupt)
			}
			vm, err := decodeVM(data)
			if err != nil {
				return nil, err
			}
			s.VM = vm
		case SectionDevice:
			if err := checkName(name); err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			if seen[name] {
				return nil, fmt.Errorf("%s: %w: device state saved twice", what, ErrCorrupt)
			}
			seen[name] = true
			s.Devices = append(s.Devices, Device{Name: name, Data: bytes.Clone(data)})
		}
	}
	d.end()
	if d.err != nil {
		return nil, d.err
	}
	return s, nil
}

// Write encodes s and writes it to path atomically: into a temporary file
// in the same directory, synced, then renamed over path. On error nothing
// is left behind and an existing file at path is untouched.
func Write(path string, s *State) error {
	b, err := Encode(s)
	if err != nil {
		return err
	}
	return writeAtomic(path, func(f *os.File) error {
		_, err := f.Write(b)
		return err
	})
}

// writeAtomic creates a temporary file beside path, fills it with fill,
// syncs it and renames it to path, then syncs the directory.
func writeAtomic(path string, fill func(*os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = fill(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	// The rename is durable once the directory is synced; the caller
	// (vmm's snapshot) syncs it again and reports a failure.
	_ = SyncDir(dir)
	return nil
}

// SyncDir fsyncs directory dir, making the renames in it durable. It opens
// dir with O_DIRECTORY: the running VM's seccomp filter allows a read-only
// open only of a directory (which yields no file's data).
func SyncDir(dir string) error {
	d, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// Read reads and decodes the state file at path. Files larger than
// MaxStateFileSize are refused before they are read.
func Read(path string) (*State, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > MaxStateFileSize {
		return nil, fmt.Errorf("%s: %w: %d bytes, limit %d", path, ErrTooLarge, fi.Size(), MaxStateFileSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxStateFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > MaxStateFileSize {
		return nil, fmt.Errorf("%s: %w: grew past %d bytes while read", path, ErrTooLarge, MaxStateFileSize)
	}
	s, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

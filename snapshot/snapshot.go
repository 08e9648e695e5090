// Package snapshot defines Ember's snapshot files: the versioned state file
// (vCPU, VM and device state plus a self-describing header) and the guest
// memory files (full dumps, sparse diffs, applying a diff onto its base,
// and mapping a memory file for restore).
//
// # State file format
//
// All integers are little-endian. Version 1:
//
//	magic         [8]byte  "EMBERSNP"
//	version       uint16   format version, FormatVersion
//	reserved      [6]byte  zero
//	length        uint64   total file length, CRC included
//	header_len    uint32   at most MaxHeaderSize
//	header        JSON     Header
//	section_count uint32
//	sections      section_count times:
//	    kind      uint8    SectionVCPU, SectionVM or SectionDevice
//	    name_len  uint8
//	    name      [name_len]byte  vCPU index in decimal, "vm", or device name
//	    data_len  uint32   at most MaxSectionSize
//	    data      [data_len]byte
//	crc           uint64   CRC-64/ECMA over every byte before it
//
// A vCPU section holds, in order, kvm.MPState, kvm.Regs, kvm.Sregs,
// kvm.FPU, kvm.XCRS, kvm.DebugRegs, kvm.LAPICState, kvm.VCPUEvents (each
// encoded field by field with encoding/binary, blank padding fields as
// zeros), the TSC frequency in kHz (uint32), then three counted lists:
// CPUID entries (uint32 count, kvm.CPUIDEntry each), MSRs (uint32 count,
// kvm.MSREntry each) and the XSAVE area (uint32 byte count, bytes). The VM
// section holds the PIC master, PIC slave and IOAPIC kvm.IRQChip, a uint8
// PIT presence flag and the kvm.PITState2 if present, then kvm.ClockData.
// Device sections are opaque bytes owned by the VMM. Sections appear in
// that order: vCPUs by index, the VM, devices.
//
// The encoding is deterministic: the same State always gives the same
// bytes. Any change to it bumps FormatVersion; Read accepts versions 1 to
// FormatVersion.
//
// The decoder treats its input as hostile: every length is checked against
// the bytes that remain before anything is allocated, so decoding allocates
// at most a small multiple of the file's size, and each failure names what
// is wrong (ErrBadMagic, ErrUnsupportedVersion, ErrCRCMismatch,
// ErrTruncated, ErrTooLarge, ErrCorrupt).
package snapshot

import (
	"errors"
	"fmt"
	"time"

	"github.com/embervm/ember/kvm"
)

const (
	// Magic opens every state file.
	Magic = "EMBERSNP"
	// FormatVersion is the state-file format this package writes.
	FormatVersion uint16 = 1

	// MaxStateFileSize bounds the state files Read accepts.
	MaxStateFileSize = 256 << 20
	// MaxSectionSize bounds one section (e.g. one device's state).
	MaxSectionSize = 64 << 20
	// MaxHeaderSize bounds the JSON header.
	MaxHeaderSize = 1 << 20

	// MaxVCPUs bounds the vCPU count a state file may declare.
	MaxVCPUs = 1024
	// MaxRegions bounds the RAM regions a state file may declare.
	MaxRegions = 64
	// MaxNameLen bounds section and device names.
	MaxNameLen = 255

	// PageSize is the granularity of memory files and dirty bitmaps.
	PageSize = 4096
)

// Section kinds.
const (
	SectionVCPU   = 1
	SectionVM     = 2
	SectionDevice = 3
)

// Errors, for errors.Is; the returned errors wrap them with details.
var (
	ErrBadMagic           = errors.New("not an Ember snapshot state file (bad magic)")
	ErrUnsupportedVersion = errors.New("unsupported snapshot format version")
	ErrCRCMismatch        = errors.New("snapshot CRC64 mismatch (corrupt file)")
	ErrTruncated          = errors.New("truncated snapshot file")
	ErrTooLarge           = errors.New("snapshot file or section too large")
	ErrCorrupt            = errors.New("malformed snapshot file")
)

// MemoryKind says what the memory file beside a state file holds.
type MemoryKind string

const (
	// MemoryFull: every page of guest RAM (zero pages as holes).
	MemoryFull MemoryKind = "Full"
	// MemoryDiff: only the pages dirtied since the previous snapshot, at
	// their offsets in a sparse file; apply it onto its base with ApplyDiff.
	MemoryDiff MemoryKind = "Diff"
)

// Region is one guest RAM region. In a memory file the regions lie back to
// back in this order.
type Region struct {
	GuestAddr uint64 `json:"guest_addr"`
	Size      uint64 `json:"size"`
}

// DeviceInfo describes one device of the snapshotted VM.
type DeviceInfo struct {
	Name string `json:"name"` // the device's id, e.g. "rootfs", "eth0", "vsock"
	Kind string `json:"kind"` // e.g. "virtio-block", "virtio-net", "serial"
	// Backend is the host resource a restore must re-open (disk path, tap
	// name, vsock UDS path); restore may override it.
	Backend string `json:"backend,omitempty"`
}

// Header is the state file's self-description: what `ember snapshot
// describe` prints and what a restore checks before loading.
type Header struct {
	EmberVersion string       `json:"ember_version"`
	Created      time.Time    `json:"created"`
	HostKernel   string       `json:"host_kernel,omitempty"`
	CPUVendor    string       `json:"cpu_vendor"` // CPUID leaf 0 vendor, e.g. "GenuineIntel"
	VCPUCount    int          `json:"vcpu_count"`
	MemorySize   uint64       `json:"memory_size"` // bytes, the sum of Regions
	MemoryKind   MemoryKind   `json:"memory_kind"`
	Regions      []Region     `json:"regions"`
	Devices      []DeviceInfo `json:"devices"`
}

// Device is one device's saved state, opaque to this package.
type Device struct {
	Name string
	Data []byte
}

// State is the content of a state file.
type State struct {
	// Version is the format version the file was read with; Write always
	// writes FormatVersion.
	Version uint16
	Header  Header
	VCPUs   []kvm.VCPUState // by vCPU index
	VM      kvm.VMState
	Devices []Device
}

// RegionSizes returns the sizes of the header's RAM regions, as MapPrivate
// takes them.
func (h *Header) RegionSizes() []uint64 {
	out := make([]uint64, len(h.Regions))
	for i, r := range h.Regions {
		out[i] = r.Size
	}
	return out
}

// Validate checks the header's internal consistency.
func (h *Header) Validate() error {
	if h.VCPUCount < 1 || h.VCPUCount > MaxVCPUs {
		return fmt.Errorf("%w: vCPU count %d outside [1, %d]", ErrCorrupt, h.VCPUCount, MaxVCPUs)
	}
	if h.MemoryKind != MemoryFull && h.MemoryKind != MemoryDiff {
		return fmt.Errorf("%w: memory kind %q, want %q or %q", ErrCorrupt, h.MemoryKind, MemoryFull, MemoryDiff)
	}
	if len(h.Regions) == 0 || len(h.Regions) > MaxRegions {
		return fmt.Errorf("%w: %d RAM regions, want 1 to %d", ErrCorrupt, len(h.Regions), MaxRegions)
	}
	var total, end uint64
	for i, r := range h.Regions {
		if r.Size == 0 || r.Size%PageSize != 0 || r.GuestAddr%PageSize != 0 {
			return fmt.Errorf("%w: RAM region %d (guest %#x, %#x bytes) is empty or not page-aligned", ErrCorrupt, i, r.GuestAddr, r.Size)
		}
		if r.GuestAddr+r.Size < r.GuestAddr || (i > 0 && r.GuestAddr < end) {
			return fmt.Errorf("%w: RAM region %d (guest %#x, %#x bytes) overlaps or is out of order", ErrCorrupt, i, r.GuestAddr, r.Size)
		}
		end = r.GuestAddr + r.Size
		if total+r.Size < total {
			return fmt.Errorf("%w: RAM size overflows", ErrCorrupt)
		}
		total += r.Size
	}
	if total != h.MemorySize {
		return fmt.Errorf("%w: memory size %d, but the regions add up to %d", ErrCorrupt, h.MemorySize, total)
	}
	seen := make(map[string]bool, len(h.Devices))
	for _, d := range h.Devices {
		if err := checkName(d.Name); err != nil {
			return fmt.Errorf("device list: %w", err)
		}
		if seen[d.Name] {
			return fmt.Errorf("%w: device %q listed twice", ErrCorrupt, d.Name)
		}
		seen[d.Name] = true
	}
	return nil
}

func checkName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: name %q is empty or longer than %d bytes", ErrCorrupt, name, MaxNameLen)
	}
	return nil
}

// VendorFromCPUID returns the vendor string of CPUID leaf 0 (EBX, EDX,
// ECX), e.g. "GenuineIntel", or "" without leaf 0. Bytes outside
// printable ASCII become '?'.
func VendorFromCPUID(entries []kvm.CPUIDEntry) string {
	for _, e := range entries {
		if e.Function == 0 && e.Index == 0 {
			b := make([]byte, 0, 12)
			for _, r := range []uint32{e.EBX, e.EDX, e.ECX} {
				for _, c := range []byte{byte(r), byte(r >> 8), byte(r >> 16), byte(r >> 24)} {
					if c < 0x20 || c > 0x7e {
						c = '?' // vendor strings are printable ASCII
					}
					b = append(b, c)
				}
			}
			return string(b)
		}
	}
	return ""
}

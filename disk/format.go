package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// The overlay file (format version 1), all integers little-endian:
//
//	[0, HeaderSize)                 header: the fields below, CRC-32C in the last 4 bytes
//	[MapOffset, +MapLength)         durable map: bit c (byte c/8, bit c%8) set = cluster c is in the overlay
//	[VolatileOffset, +bootIDSize)   the boot the volatile map was written in (random(4)'s boot_id)
//	[VolatileOffset+bootIDSize, +8) write generation: counts the writes that followed a snapshot's mark
//	[VolatileOffset+mapPage, +MapLength)  volatile map, same layout
//	[DataOffset, +VirtualSize)      data: guest byte x lives at DataOffset + x, holes where never written
//
// The header is written once, when the overlay is made, and never again.
// The durable map gains bits only at a flush, after their clusters' data
// is synced; the volatile map with every write that allocates, in the page
// cache, and is believed only in the boot that wrote it (when the page
// cache holds the data too). Maps only ever gain bits, so any mix of an
// old and a new version of a map page (a torn write) is a valid map. See
// doc.go for why not qcow2.
const (
	// Magic opens every overlay file.
	Magic = "EMBERCOW"
	// Version is the format version Ember writes and reads.
	Version = 1
	// HeaderSize is the header's length: one page, so the map and the
	// data start page-aligned.
	HeaderSize = 4096
	// DefaultClusterSize is the allocation unit: 4 KiB, the guest's page
	// and file-system block, so a typical guest write covers whole
	// clusters and needs no copy from the base (see doc.go for figures).
	DefaultClusterSize = 4096
	// MinClusterSize and MaxClusterSize bound the cluster size (a power
	// of two): at least a page, at most 1 MiB.
	MinClusterSize = 4096
	MaxClusterSize = 1 << 20
	// MaxMapLength bounds the allocation map held in memory: 256 MiB, an
	// 8 TiB disk at 4 KiB clusters.
	MaxMapLength = 256 << 20
	// mapPage is the unit in which the map is written back: one page.
	mapPage = 4096
	// dataAlign aligns the data area (1 MiB, as partitions are), so that
	// clusters line up with the host file system's blocks and extents.
	dataAlign = 1 << 20
	// MaxBasePath bounds the base path stored in the header: what fits
	// before the CRC.
	MaxBasePath = HeaderSize - offBasePath - crcSize

	// FlagBaseIsOverlay says the base is itself an overlay (a snapshot's
	// frozen layer), to be opened as one, read-only.
	FlagBaseIsOverlay = 1 << 0
	knownFlags        = FlagBaseIsOverlay
)

// Header field offsets.
const (
	offMagic       = 0
	offVersion     = 8
	offClusterSize = 12
	offFlags       = 16
	offReserved    = 20
	offVirtualSize = 24
	offMapOffset   = 32
	offMapLength   = 40
	offDataOffset  = 48
	offVolatile    = 56
	offBaseSize    = 64
	offBaseMtime   = 72
	offBaseSample  = 80
	offBasePathLen = 112
	offBasePath    = 114
	offCRC         = HeaderSize - crcSize
	crcSize        = 4
)

// castagnoli is made at the first overlay header, not at every ember
// start (0.26 ms at package init).
var castagnoli = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

// Identity tells whether a base file is the one an overlay was made on: its
// size, its modification time and a hash of samples of its content. Any
// write through the file system changes the modification time; a file
// copied with its time kept (cp -p, rsync -t) keeps its identity.
type Identity struct {
	Size    int64    `json:"size"`
	MtimeNs int64    `json:"mtime_ns"`
	Sample  [32]byte `json:"sample"` // SHA-256 of the samples (sampleCount blocks of sampleSize)
	// Generation is an overlay's write generation (COW.Mark), 0 for
	// other files.
	Generation uint64 `json:"generation,omitempty"`
}

// Content sampling of Identity.
const (
	sampleCount = 16   // blocks hashed, evenly spaced from the first to the last
	sampleSize  = 4096 // bytes per block
)

// IdentityOf computes the identity of the file at path.
func IdentityOf(path string) (Identity, error) { return identityOfPath(path, 0) }

// identityOfPath is IdentityOf opening path with extra flags.
func identityOfPath(path string, extra int) (Identity, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|extra, 0)
	if err != nil {
		return Identity{}, err
	}
	defer f.Close()
	return identityOf(f)
}

func identityOf(f *os.File) (Identity, error) {
	size, err := fileSize(f)
	if err != nil {
		return Identity{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Identity{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	id := Identity{Size: size, MtimeNs: st.Mtim.Nano()}
	h := sha256.New()
	buf := make([]byte, sampleSize)
	for i := range int64(sampleCount) {
		off := int64(0)
		if size > sampleSize {
			off = (size - sampleSize) * i / (sampleCount - 1)
		}
		n, err := f.ReadAt(buf, off)
		if want := min(size-off, sampleSize); int64(n) < want {
			return Identity{}, fmt.Errorf("reading %s at %d: %w", f.Name(), off, err)
		}
		h.Write(buf[:n])
	}
	h.Sum(id.Sample[:0])
	return id, nil
}

// header is an overlay's header, decoded.
type header struct {
	ClusterSize uint32
	Flags       uint32
	VirtualSize int64
	MapOffset   int64
	MapLength   int64
	// VolatileOffset is the volatile map's boot-ID page; its map follows.
	VolatileOffset int64
	DataOffset     int64
	Base           Identity
	BasePath       string
}

// layout fills the map and data placement for a disk of h.VirtualSize
// bytes at h.ClusterSize.
func (h *header) layout() {
	h.MapOffset = HeaderSize
	h.MapLength = mapLength(h.VirtualSize, h.ClusterSize)
	h.VolatileOffset = h.MapOffset + h.MapLength
	h.DataOffset = roundUp(h.volatileMap()+h.MapLength, dataAlign)
}

// volatileMap is where the volatile map starts.
func (h *header) volatileMap() int64 { return h.VolatileOffset + mapPage }

// clusters is how many clusters the virtual disk has (the last may be
// partial).
func (h *header) clusters() int64 {
	return (h.VirtualSize + int64(h.ClusterSize) - 1) / int64(h.ClusterSize)
}

// mapLength is the map's length on disk: one bit per cluster, in whole
// pages.
func mapLength(size int64, cluster uint32) int64 {
	clusters := (size + int64(cluster) - 1) / int64(cluster)
	return roundUp((clusters+7)/8, mapPage)
}

func roundUp(x, to int64) int64 { return (x + to - 1) / to * to }

// encode lays h out as a header page.
func (h *header) encode() []byte {
	b := make([]byte, HeaderSize)
	copy(b[offMagic:], Magic)
	le := binary.LittleEndian
	le.PutUint32(b[offVersion:], Version)
	le.PutUint32(b[offClusterSize:], h.ClusterSize)
	le.PutUint32(b[offFlags:], h.Flags)
	le.PutUint64(b[offVirtualSize:], uint64(h.VirtualSize))
	le.PutUint64(b[offMapOffset:], uint64(h.MapOffset))
	le.PutUint64(b[offMapLength:], uint64(h.MapLength))
	le.PutUint64(b[offDataOffset:], uint64(h.DataOffset))
	le.PutUint64(b[offVolatile:], uint64(h.VolatileOffset))
	le.PutUint64(b[offBaseSize:], uint64(h.Base.Size))
	le.PutUint64(b[offBaseMtime:], uint64(h.Base.MtimeNs))
	copy(b[offBaseSample:], h.Base.Sample[:])
	le.PutUint16(b[offBasePathLen:], uint16(len(h.BasePath)))
	copy(b[offBasePath:], h.BasePath)
	le.PutUint32(b[offCRC:], crc32.Checksum(b[:offCRC], castagnoli()))
	return b
}

// ErrNotOverlay: the file does not start with an overlay header.
var ErrNotOverlay = errors.New("not an Ember overlay (no " + Magic + " magic)")

// decodeHeader parses and checks a header page. Every field is checked
// against the others, so that a header that passes describes a map and a
// data area that fit in memory and do not overlap.
func decodeHeader(b []byte) (*header, error) {
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("header: %d bytes, want %d", len(b), HeaderSize)
	}
	b = b[:HeaderSize]
	if string(b[offMagic:offMagic+len(Magic)]) != Magic {
		return nil, ErrNotOverlay
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[offVersion:]); v != Version {
		return nil, fmt.Errorf("header: format version %d; this Ember reads version %d", v, Version)
	}
	if got, want := le.Uint32(b[offCRC:]), crc32.Checksum(b[:offCRC], castagnoli()); got != want {
		return nil, fmt.Errorf("header: CRC %#08x, computed %#08x: the header is corrupt", got, want)
	}
	h := &header{
		ClusterSize:    le.Uint32(b[offClusterSize:]),
		Flags:          le.Uint32(b[offFlags:]),
		VirtualSize:    int64(le.Uint64(b[offVirtualSize:])),
		MapOffset:      int64(le.Uint64(b[offMapOffset:])),
		MapLength:      int64(le.Uint64(b[offMapLength:])),
		DataOffset:     int64(le.Uint64(b[offDataOffset:])),
		VolatileOffset: int64(le.Uint64(b[offVolatile:])),
		Base: Identity{
			Size:    int64(le.Uint64(b[offBaseSize:])),
			MtimeNs: int64(le.Uint64(b[offBaseMtime:])),
		},
	}
	copy(h.Base.Sample[:], b[offBaseSample:])
	switch c := h.ClusterSize; {
	case bits.OnesCount32(c) != 1 || c < MinClusterSize || c > MaxClusterSize:
		return nil, fmt.Errorf("header: cluster size %d: want a power of two from %d to %d", c, MinClusterSize, MaxClusterSize)
	case h.Flags&^knownFlags != 0:
		return nil, fmt.Errorf("header: unknown flags %#x", h.Flags&^knownFlags)
	case le.Uint32(b[offReserved:]) != 0:
		return nil, errors.New("header: reserved field is not zero")
	case h.VirtualSize <= 0:
		return nil, fmt.Errorf("header: virtual size %d", h.VirtualSize)
	case h.Flags&FlagBaseIsOverlay == 0 && h.VirtualSize != h.Base.Size:
		return nil, fmt.Errorf("header: virtual size %d is not the raw base's %d bytes", h.VirtualSize, h.Base.Size)
	case h.Flags&FlagBaseIsOverlay != 0 && h.Base.Size < h.VirtualSize:
		return nil, fmt.Errorf("header: virtual size %d is more than the base overlay's %d bytes", h.VirtualSize, h.Base.Size)
	}
	// The map length bound also bounds the size (and keeps the arithmetic
	// below far from overflow): check it before computing the layout.
	if h.VirtualSize/int64(h.ClusterSize) > MaxMapLength*8 {
		return nil, fmt.Errorf("header: virtual size %d at %d-byte clusters needs a map over %d bytes", h.VirtualSize, h.ClusterSize, MaxMapLength)
	}
	want := *h
	want.layout()
	if h.MapOffset != want.MapOffset || h.MapLength != want.MapLength || h.VolatileOffset != want.VolatileOffset || h.DataOffset != want.DataOffset {
		return nil, fmt.Errorf("header: maps at %d and %d (+%d), data at %d; want %d and %d (+%d), %d",
			h.MapOffset, h.VolatileOffset, h.MapLength, h.DataOffset, want.MapOffset, want.VolatileOffset, want.MapLength, want.DataOffset)
	}
	n := int(le.Uint16(b[offBasePathLen:]))
	if n == 0 || n > MaxBasePath {
		return nil, fmt.Errorf("header: base path of %d bytes: want 1 to %d", n, MaxBasePath)
	}
	p := b[offBasePath : offBasePath+n]
	if !utf8.Valid(p) || bytes.IndexByte(p, 0) >= 0 {
		return nil, errors.New("header: base path is not valid UTF-8 without NULs")
	}
	if rest := b[offBasePath+n : offCRC]; bytes.ContainsFunc(rest, func(r rune) bool { return r != 0 }) {
		return nil, errors.New("header: bytes after the base path are not zero")
	}
	h.BasePath = string(p)
	return h, nil
}

// decodeMap loads an on-disk map of h into words (len = map words). Bits
// past the last cluster must be clear.
func decodeMap(h *header, b []byte, words []uint64) error {
	if int64(len(b)) != h.MapLength || len(words)*8 != len(b) {
		return fmt.Errorf("map: %d bytes, want %d", len(b), h.MapLength)
	}
	for i := range words {
		words[i] = binary.LittleEndian.Uint64(b[i*8:])
	}
	return checkTail(h, words)
}

// checkTail fails if a map of h has bits set past the last cluster.
func checkTail(h *header, words []uint64) error {
	clusters := h.clusters()
	if r := clusters % 64; r != 0 && words[clusters/64]>>r != 0 {
		return fmt.Errorf("map: bits set past the last cluster (%d)", clusters-1)
	}
	for _, w := range words[(clusters+63)/64:] {
		if w != 0 {
			return fmt.Errorf("map: bits set past the last cluster (%d)", clusters-1)
		}
	}
	return nil
}

// bootIDPath holds the kernel's random ID of the current boot (random(4)).
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// bootIDSize is the length of a boot ID (a UUID).
const bootIDSize = 16

// genOffset is where the write generation (a uint64) lies in the boot-ID
// page.
const genOffset = bootIDSize

// currentBoot is the ID of the running boot, or zeros if it cannot be read
// (no /proc): then no volatile map is ever believed. extra flags are added
// to the open (Options.OpenFlags).
func currentBoot(extra int) [bootIDSize]byte {
	var id [bootIDSize]byte
	f, err := os.OpenFile(bootIDPath, os.O_RDONLY|unix.O_CLOEXEC|extra, 0)
	if err != nil {
		return id
	}
	defer f.Close()
	b := make([]byte, 64)
	n, err := f.Read(b)
	if err != nil {
		return id
	}
	b = b[:n]
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(b)), "-", ""))
	if err != nil || len(h) != bootIDSize {
		return id
	}
	copy(id[:], h)
	return id
}

package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxChain bounds how many overlays deep a chain of bases may go (an
// overlay on a snapshot's overlay on ... on a raw base): each level costs a
// file and an identity check at open. It also stops a loop of bases.
const MaxChain = 16

// ErrBaseChanged: an overlay's base is not the file the overlay was made
// on. Reading through would mix the overlay's clusters with other data.
var ErrBaseChanged = errors.New("the base changed since the overlay was made")

// errTooDeep ends a chain of bases deeper than MaxChain.
var errTooDeep = fmt.Errorf("more than %d overlays deep (a loop of bases?): merge it into a new base with `ember disk commit`", MaxChain)

// layer is what an overlay reads its unwritten clusters from: a Raw base,
// or another overlay opened read-only.
type layer interface {
	readRange(c cursor, n, off int64) error
	Size() int64
	Close() error
}

// COW is a copy-on-write store: reads of clusters never written come from
// a read-only base, writes go to a sparse overlay file with an allocation
// map (format.go).
//
// Reads take no lock: the map is in memory, read with atomic loads, and a
// cluster's bit is set only once its data is in the overlay. Writes,
// Flush and Close hold mu.
type COW struct {
	f     *os.File
	fd    int
	ro    bool
	h     *header
	shift uint  // log2 of the cluster size
	mask  int64 // cluster size - 1
	base  layer
	// words is the allocation map in memory, one bit per cluster, read
	// and set with atomic operations: the durable map's bits and, in the
	// boot that wrote them, the volatile map's. In a writable overlay it
	// is vol, the volatile map mapped shared from the file.
	words []uint64
	// vol maps the boot-ID page and the volatile map (writable overlays);
	// gen points at the write generation in it.
	vol []byte
	gen *uint64
	// flags are added to every open (Options.OpenFlags).
	flags int

	mu sync.Mutex
	// dirty has a bit per map page whose bits are not all in the durable
	// map yet; ndirty counts them.
	dirty  []uint64
	ndirty int
	// scratch holds one cluster copied up from the base; page one map
	// page on its way to the file.
	scratch    []byte
	scratchVec [1][]byte
	page       []byte
	closed     bool
	// marked: Mark recorded the overlay, and no write has followed.
	marked bool
}

// OpenCOW opens the overlay o.Path over the base o.BasePath (the path in
// the overlay's header if empty). The base must be the file the overlay
// was made on (ErrBaseChanged otherwise); it is opened read-only, as an
// overlay itself if the header says so.
//
// Clusters written in this boot by a process that was killed before it
// flushed are in the volatile map: they are kept, and a writable open
// flushes them into the durable map at once.
func OpenCOW(o Options) (*COW, error) {
	return openCOW(o.Path, o.BasePath, o.ReadOnly, o.OpenFlags, 0)
}

func openCOW(path, basePath string, ro bool, flags, depth int) (_ *COW, err error) {
	if depth >= MaxChain {
		return nil, errTooDeep
	}
	f, err := openFile(path, ro, flags)
	if err != nil {
		return nil, err
	}
	s := &COW{f: f, fd: int(f.Fd()), ro: ro, flags: flags}
	defer func() {
		if err != nil {
			if s.base != nil {
				s.base.Close()
			}
			s.unmap()
			f.Close()
		}
	}()
	if s.h, err = readHeader(f); err != nil {
		return nil, err
	}
	h := s.h
	size, err := fileSize(f)
	if err != nil {
		return nil, err
	}
	if want := h.DataOffset + h.VirtualSize; size < want {
		return nil, fmt.Errorf("overlay %s: %d bytes, want %d: the file is truncated", path, size, want)
	}
	s.shift = uint(bits.TrailingZeros32(h.ClusterSize))
	s.mask = int64(h.ClusterSize) - 1
	s.dirty = make([]uint64, (h.MapLength/mapPage+63)/64)
	s.scratch = make([]byte, h.ClusterSize)
	s.page = make([]byte, mapPage)
	if basePath == "" {
		basePath = h.BasePath
	}
	if err := checkBase(path, basePath, h, flags); err != nil {
		return nil, err
	}
	s.base, err = openLayer(basePath, h.Flags&FlagBaseIsOverlay != 0, flags, depth+1)
	switch {
	case errors.Is(err, errTooDeep) && depth > 0:
		return nil, err
	case errors.Is(err, errTooDeep):
		return nil, fmt.Errorf("overlay %s: its chain of bases is %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("overlay %s: base: %w", path, err)
	}
	if s.base.Size() != h.VirtualSize {
		return nil, fmt.Errorf("overlay %s: base %s: %d bytes, want %d: %w", path, basePath, s.base.Size(), h.VirtualSize, ErrBaseChanged)
	}
	if err := s.loadMaps(); err != nil {
		return nil, fmt.Errorf("overlay %s: %w", path, err)
	}
	if !ro && s.ndirty > 0 {
		// A killed writer's clusters: make them durable before anything
		// else can lose them.
		if err := s.flush(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// loadMaps loads the allocation map. A read-only overlay reads the
// durable map, and the volatile map if it was written in this boot, into
// memory. A writable one maps its volatile map (shared, so that setting a
// bit is a store into the page cache) and uses it as the in-memory map:
// as it is, with the durable map's bits, if written in this boot, else
// reset to the durable map and claimed for this boot. Pages whose bits the
// durable map lacks are marked dirty.
func (s *COW) loadMaps() error {
	h := s.h
	m := make([]byte, h.MapLength)
	if err := pread(s.fd, m, h.MapOffset); err != nil {
		return fmt.Errorf("reading the map: %w", err)
	}
	durable := make([]uint64, h.MapLength/8)
	if err := decodeMap(h, m, durable); err != nil {
		return err
	}
	boot := currentBoot(s.flags)
	var written [bootIDSize]byte
	if err := pread(s.fd, written[:], h.VolatileOffset); err != nil {
		return fmt.Errorf("reading the volatile map's boot: %w", err)
	}
	thisBoot := boot != ([bootIDSize]byte{}) && written == boot

	if s.ro {
		s.words = durable
		if !thisBoot {
			return nil
		}
		if err := pread(s.fd, m, h.volatileMap()); err != nil {
			return fmt.Errorf("reading the volatile map: %w", err)
		}
		vol := make([]uint64, len(durable))
		if err := decodeMap(h, m, vol); err != nil {
			return fmt.Errorf("volatile %w", err)
		}
		s.merge(vol, durable)
		return nil
	}

	// Give the volatile map its blocks now, so that a store into the
	// mapping never needs the file system to allocate (which, on a full
	// disk, would be SIGBUS). Not every file system can; then it is left
	// to chance.
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		// The mapped map is used as little-endian words in place.
		return errors.New("a writable overlay needs a little-endian host")
	}
	_ = unix.Fallocate(s.fd, unix.FALLOC_FL_KEEP_SIZE, h.VolatileOffset, mapPage+h.MapLength)
	vol, err := unix.Mmap(s.fd, h.VolatileOffset, int(mapPage+h.MapLength), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping the volatile map: %w", err)
	}
	s.vol = vol
	s.gen = (*uint64)(unsafe.Pointer(&vol[genOffset]))
	s.words = unsafe.Slice((*uint64)(unsafe.Pointer(&vol[mapPage])), h.MapLength/8)
	if thisBoot {
		if err := checkTail(h, s.words); err != nil {
			return fmt.Errorf("volatile %w", err)
		}
		s.merge(s.words, durable)
		return nil
	}
	// Another boot's volatile map may claim clusters whose data never
	// reached the disk: start it again from the durable map before
	// claiming it for this boot.
	copy(s.words, durable)
	copy(vol, boot[:])
	return nil
}

// merge makes s.words the union of vol (this boot's volatile map) and
// durable, marking dirty the pages where durable lacks bits.
func (s *COW) merge(vol, durable []uint64) {
	for i := range durable {
		if vol[i]&^durable[i] != 0 {
			s.markDirty(int64(i) / wordsPerPage)
		}
		s.words[i] = vol[i] | durable[i]
	}
}

// markDirty notes that map page p has bits the durable map lacks.
func (s *COW) markDirty(p int64) {
	if s.dirty[p>>6]&(1<<(p&63)) == 0 {
		s.dirty[p>>6] |= 1 << (p & 63)
		s.ndirty++
	}
}

// openLayer opens a base read-only: an overlay at the given depth of a
// chain, or a raw file. It returns a nil interface on error.
func openLayer(path string, overlay bool, flags, depth int) (layer, error) {
	if overlay {
		s, err := openCOW(path, "", true, flags, depth)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	r, err := openRaw(path, true, flags)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// readHeader reads and checks the header of the overlay f.
func readHeader(f *os.File) (*header, error) {
	b := make([]byte, HeaderSize)
	if n, err := f.ReadAt(b, 0); n < HeaderSize {
		return nil, fmt.Errorf("overlay %s: %d bytes, too short for an overlay header: %w", f.Name(), n, err)
	}
	h, err := decodeHeader(b)
	if err != nil {
		return nil, fmt.Errorf("overlay %s: %w", f.Name(), err)
	}
	return h, nil
}

// checkBase fails with ErrBaseChanged, saying what differs, unless the file
// at basePath has the identity overlay's header recorded.
func checkBase(overlay, basePath string, h *header, flags int) error {
	got, err := identityOfPath(basePath, flags)
	if err != nil {
		return fmt.Errorf("overlay %s: base: %w", overlay, err)
	}
	want := h.Base
	if got == want {
		return nil
	}
	var what string
	switch {
	case got.Size != want.Size:
		what = fmt.Sprintf("its size is %d bytes, was %d", got.Size, want.Size)
	case got.MtimeNs != want.MtimeNs:
		what = fmt.Sprintf("it was modified at %s; the overlay was made on the version modified at %s",
			time.Unix(0, got.MtimeNs).UTC().Format(time.RFC3339Nano), time.Unix(0, want.MtimeNs).UTC().Format(time.RFC3339Nano))
	default:
		what = "its content differs (same size and time)"
	}
	return fmt.Errorf("overlay %s: base %s: %w: %s; use the base it was made on, and merge an overlay into a new base (`ember disk commit`) before changing its base", overlay, basePath, ErrBaseChanged, what)
}

// Size is the virtual disk's size: the base's.
func (s *COW) Size() int64 { return s.h.VirtualSize }

// ClusterSize is the allocation unit.
func (s *COW) ClusterSize() int { return int(s.h.ClusterSize) }

// allocated reports whether cluster c is in the overlay.
func (s *COW) allocated(c int64) bool {
	return atomic.LoadUint64(&s.words[c>>6])&(1<<(c&63)) != 0
}

// Allocated counts the clusters in the overlay.
func (s *COW) Allocated() int64 {
	var n int
	for i := range s.words {
		n += bits.OnesCount64(atomic.LoadUint64(&s.words[i]))
	}
	return int64(n)
}

func (s *COW) ReadVec(bufs [][]byte, off int64) error {
	n := vecLen(bufs)
	if err := checkRange(off, n, s.h.VirtualSize); err != nil {
		return err
	}
	return s.readRange(at(bufs, 0), n, off)
}

// readRange reads [off, off+n) into the vector at c: each run of clusters
// in the overlay with one preadv, each run of the others from the base.
func (s *COW) readRange(c cursor, n, off int64) error {
	for n > 0 {
		in := s.allocated(off >> s.shift)
		end := (off | s.mask) + 1
		for end < off+n && s.allocated(end>>s.shift) == in {
			end += s.mask + 1
		}
		run := min(end, off+n) - off
		var err error
		if in {
			err = vecIO(s.fd, opRead, c, run, s.h.DataOffset+off)
		} else {
			err = s.base.readRange(c, run, off)
		}
		if err != nil {
			return err
		}
		c.advance(run)
		off += run
		n -= run
	}
	return nil
}

// WriteVec writes bufs at off into the overlay. A cluster it covers only in
// part and that is not yet in the overlay is first copied up from the
// base. The clusters' bits then go into the volatile map (after the data,
// so a killed process leaves no bit without its data) and wait for Flush
// to reach the durable one.
func (s *COW) WriteVec(bufs [][]byte, off int64) error {
	if s.ro {
		return errReadOnly
	}
	n := vecLen(bufs)
	if err := checkRange(off, n, s.h.VirtualSize); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return os.ErrClosed
	}
	if s.marked {
		// The first write since a snapshot recorded the overlay: the
		// new generation shows the snapshot's record is out of date.
		atomic.AddUint64(s.gen, 1)
		s.marked = false
	}
	end := off + n
	first, last := off>>s.shift, (end-1)>>s.shift
	headPart := off&s.mask != 0
	if headPart && !s.allocated(first) {
		if err := s.copyUp(first); err != nil {
			return err
		}
	}
	// A tail short of the cluster's end needs a copy, unless the cluster
	// was the head's (copied whole) or the disk ends there.
	if end&s.mask != 0 && end < s.h.VirtualSize && !s.allocated(last) && (last != first || !headPart) {
		if err := s.copyUp(last); err != nil {
			return err
		}
	}
	if err := vecIO(s.fd, opWrite, at(bufs, 0), n, s.h.DataOffset+off); err != nil {
		return err
	}
	return s.mark(first, last)
}

// copyUp copies cluster c (its part inside the disk) from the base into
// the overlay, for a write that covers only part of it.
func (s *COW) copyUp(c int64) error {
	start := c << s.shift
	n := min(int64(len(s.scratch)), s.h.VirtualSize-start)
	s.scratchVec[0] = s.scratch[:n]
	if err := s.base.readRange(cursor{bufs: s.scratchVec[:]}, n, start); err != nil {
		return fmt.Errorf("copying cluster %d from the base: %w", c, err)
	}
	if err := pwrite(s.fd, s.scratch[:n], s.h.DataOffset+start); err != nil {
		return fmt.Errorf("copying cluster %d from the base: %w", c, err)
	}
	return nil
}

// mark sets the map bits of clusters first..last, whose data is in the
// overlay file: in the volatile map, which is the in-memory map (mapped
// from the file), and, through the dirty pages, later in the durable one.
func (s *COW) mark(first, last int64) error {
	w0, w1 := first>>6, last>>6
	changed0, changed1 := int64(-1), int64(-1)
	for w := w0; w <= w1; w++ {
		m := ^uint64(0)
		if w == w0 {
			m &^= 1<<(first&63) - 1
		}
		if w == w1 && last&63 != 63 {
			m &= 1<<(last&63+1) - 1
		}
		if atomic.LoadUint64(&s.words[w])&m == m {
			continue
		}
		atomic.OrUint64(&s.words[w], m)
		if changed0 < 0 {
			changed0 = w
		}
		changed1 = w
	}
	if changed0 < 0 {
		return nil
	}
	for p := changed0 / wordsPerPage; p <= changed1/wordsPerPage; p++ {
		s.markDirty(p)
	}
	return nil
}

// wordsPerPage is how many map words a map page holds.
const wordsPerPage = mapPage / 8

// writeMap writes map words [a, b) (within one page) into the map at
// offset at of the file.
func (s *COW) writeMap(at, a, b int64) error {
	buf := s.page[:(b-a)*8]
	for i := a; i < b; i++ {
		putUint64(buf[(i-a)*8:], atomic.LoadUint64(&s.words[i]))
	}
	if err := pwrite(s.fd, buf, at+a*8); err != nil {
		return fmt.Errorf("writing the allocation map: %w", err)
	}
	return nil
}

func putUint64(b []byte, v uint64) {
	_ = b[7]
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// Flush makes the overlay durable: its data first (fdatasync), then the
// durable map's pages that lack bits, then those (fdatasync again). A
// crash at any point leaves a durable map whose every bit has its data on
// disk.
func (s *COW) Flush() error {
	if s.ro {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return os.ErrClosed
	}
	return s.flush()
}

func (s *COW) flush() error {
	if err := unix.Fdatasync(s.fd); err != nil {
		return fmt.Errorf("fdatasync %s: %w", s.f.Name(), err)
	}
	if s.ndirty == 0 {
		return nil
	}
	for i, d := range s.dirty {
		for d != 0 {
			p := int64(i*64 + bits.TrailingZeros64(d))
			d &= d - 1
			if err := s.writeMap(s.h.MapOffset, p*wordsPerPage, (p+1)*wordsPerPage); err != nil {
				return err
			}
		}
	}
	if err := unix.Fdatasync(s.fd); err != nil {
		return fmt.Errorf("fdatasync %s: %w", s.f.Name(), err)
	}
	clear(s.dirty)
	s.ndirty = 0
	return nil
}

// Mark makes the overlay durable (Flush) and returns its Identity with its
// write generation, for a snapshot to record: the next write raises the
// generation, so OverlayIdentity differs from then on, however soon it
// comes. It uses only the open file (no path is opened).
func (s *COW) Mark() (Identity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Identity{}, os.ErrClosed
	}
	if !s.ro {
		if err := s.flush(); err != nil {
			return Identity{}, err
		}
	}
	id, err := identityOf(s.f)
	if err != nil {
		return Identity{}, err
	}
	if id.Generation, err = s.generation(); err != nil {
		return Identity{}, err
	}
	s.marked = !s.ro
	return id, nil
}

// generation reads the write generation.
func (s *COW) generation() (uint64, error) {
	if s.gen != nil {
		return atomic.LoadUint64(s.gen), nil
	}
	return readGeneration(s.fd, s.h)
}

// readGeneration reads the write generation of the overlay open as fd.
func readGeneration(fd int, h *header) (uint64, error) {
	var b [8]byte
	if err := pread(fd, b[:], h.VolatileOffset+genOffset); err != nil {
		return 0, fmt.Errorf("reading the write generation: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Close closes the overlay and its bases. Clusters not yet in the durable
// map are flushed first: a volatile map is not believed after a reboot,
// so a clean close must leave nothing in it alone.
func (s *COW) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return os.ErrClosed
	}
	s.closed = true
	var err error
	if !s.ro && s.ndirty > 0 {
		err = s.flush()
	}
	s.unmap()
	return errors.Join(err, s.base.Close(), s.f.Close())
}

// unmap releases the volatile map's mapping.
func (s *COW) unmap() {
	if s.vol != nil {
		unix.Munmap(s.vol)
		s.vol, s.words = nil, nil
	}
}

package disk

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Overlay management: making one, merging one into a new base, describing
// one, and marking one that a snapshot records.

// CreateOptions tune CreateOverlay.
type CreateOptions struct {
	// ClusterSize is the allocation unit; 0 means DefaultClusterSize.
	ClusterSize int
	// BaseIsOverlay says the base is itself an overlay (a snapshot's
	// layer), read through its own base.
	BaseIsOverlay bool
}

// CreateOverlay makes an empty overlay at path over the base at basePath
// (recorded as an absolute path, with the base's Identity). It takes
// constant time whatever the base's size: a header, and a sparse file of
// the data area's length. The overlay appears whole or not at all, and an
// existing file at path is never replaced.
func CreateOverlay(path, basePath string, o CreateOptions) error {
	cluster := o.ClusterSize
	if cluster == 0 {
		cluster = DefaultClusterSize
	}
	if bits.OnesCount(uint(cluster)) != 1 || cluster < MinClusterSize || cluster > MaxClusterSize {
		return fmt.Errorf("cluster size %d: want a power of two from %d to %d", cluster, MinClusterSize, MaxClusterSize)
	}
	abs, err := filepath.Abs(basePath)
	if err != nil {
		return err
	}
	if len(abs) > MaxBasePath {
		return fmt.Errorf("base path %s: %d bytes; an overlay records at most %d", abs, len(abs), MaxBasePath)
	}
	var base layer
	if o.BaseIsOverlay {
		var s *COW
		if s, err = openFrozen(abs); err == nil {
			base = s
		}
	} else {
		base, err = openLayer(abs, false, 0, 0)
	}
	switch {
	case errors.Is(err, errTooDeep):
		return fmt.Errorf("base %s: its chain of bases is %w", abs, err)
	case err != nil:
		return fmt.Errorf("base: %w", err)
	}
	size := base.Size()
	base.Close()
	if size <= 0 {
		return fmt.Errorf("base %s is empty", abs)
	}
	id, err := IdentityOf(abs)
	if err != nil {
		return fmt.Errorf("base: %w", err)
	}
	h := header{ClusterSize: uint32(cluster), VirtualSize: size, Base: id, BasePath: abs}
	if o.BaseIsOverlay {
		h.Flags |= FlagBaseIsOverlay
	}
	h.layout()
	if h.MapLength > MaxMapLength {
		return fmt.Errorf("base %s: %d bytes at %d-byte clusters need a map of %d bytes, over the %d Ember holds: use larger clusters",
			abs, size, cluster, h.MapLength, MaxMapLength)
	}
	b := h.encode()
	if _, err := decodeHeader(b); err != nil {
		return fmt.Errorf("internal error: the new header does not check: %w", err)
	}
	return writeNew(path, func(f *os.File) error {
		if _, err := f.WriteAt(b, 0); err != nil {
			return err
		}
		return f.Truncate(h.DataOffset + h.VirtualSize)
	})
}

// openFrozen opens the overlay at path read-only, as the base of another,
// after making durable any clusters that a killed writer left in its
// volatile map only (which a reboot would take away from under the new
// overlay).
func openFrozen(path string) (*COW, error) {
	s, err := openCOW(path, "", true, 0, 1)
	if err != nil || s.ndirty == 0 {
		return s, err
	}
	s.Close()
	w, err := openCOW(path, "", false, 0, 1) // flushes at open
	if err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return openCOW(path, "", true, 0, 1)
}

// writeNew makes the file at path, which must not exist: it reserves the
// name (O_EXCL, so nothing is ever replaced), has fill write the content
// under a temporary name beside it, syncs that, renames it onto the
// reservation and syncs the directory. On error nothing is left behind; a
// crash part-way leaves at worst an empty file at path, which no open
// takes for an overlay or a base. (renameat2's RENAME_NOREPLACE would
// spare the reservation, but Ember's seccomp filters allow renameat only.)
func writeNew(path string, fill func(*os.File) error) (err error) {
	r, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	r.Close()
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".new-*")
	if err != nil {
		os.Remove(path)
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			os.Remove(path)
		}
	}()
	if err = fill(f); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		err = d.Sync()
		d.Close()
	}
	return err
}

// commitChunk is how much Commit reads at a time.
const commitChunk = 1 << 20

// Commit merges the overlay at path and its bases into a new raw base at
// newBase, which must not exist: what a guest would read, with holes where
// that is zeros. newBase appears whole (synced) or not at all.
func Commit(path, newBase string) error {
	s, err := OpenCOW(Options{Path: path, ReadOnly: true})
	if err != nil {
		return err
	}
	defer s.Close()
	size := s.Size()
	return writeNew(newBase, func(f *os.File) error {
		if err := f.Truncate(size); err != nil {
			return err
		}
		buf := make([]byte, commitChunk)
		vec := [][]byte{nil}
		for off := int64(0); off < size; off += commitChunk {
			vec[0] = buf[:min(commitChunk, size-off)]
			if err := s.ReadVec(vec, off); err != nil {
				return fmt.Errorf("reading %s at %d: %w", path, off, err)
			}
			if allZero(vec[0]) {
				continue
			}
			if _, err := f.WriteAt(vec[0], off); err != nil {
				return err
			}
		}
		return nil
	})
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Info describes an overlay (`ember disk info`).
type Info struct {
	Path          string
	ClusterSize   int
	VirtualSize   int64
	BasePath      string
	BaseIsOverlay bool
	Base          Identity
	// AllocatedClusters are the clusters written into the overlay.
	AllocatedClusters int64
	// FileBytes is the space the overlay file takes on the host.
	FileBytes int64
	// BaseErr is why the base cannot be used (nil if it can).
	BaseErr error
}

// Inspect reads the overlay at path and checks its base.
func Inspect(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := readHeader(f)
	if err != nil {
		return nil, err
	}
	m := make([]byte, h.MapLength)
	if err := pread(int(f.Fd()), m, h.MapOffset); err != nil {
		return nil, fmt.Errorf("overlay %s: reading the map: %w", path, err)
	}
	words := make([]uint64, h.MapLength/8)
	if err := decodeMap(h, m, words); err != nil {
		return nil, fmt.Errorf("overlay %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, err
	}
	in := &Info{Path: path, ClusterSize: int(h.ClusterSize), VirtualSize: h.VirtualSize, BasePath: h.BasePath,
		BaseIsOverlay: h.Flags&FlagBaseIsOverlay != 0, Base: h.Base, FileBytes: st.Blocks * 512}
	for _, w := range words {
		in.AllocatedClusters += int64(bits.OnesCount64(w))
	}
	if s, err := OpenCOW(Options{Path: path, ReadOnly: true}); err != nil {
		in.BaseErr = err
	} else {
		s.Close()
	}
	return in, nil
}

// OverlayIdentity is the Identity of the overlay at path, with its write
// generation: what COW.Mark returned if nothing has written it since.
func OverlayIdentity(path string) (Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return Identity{}, err
	}
	defer f.Close()
	h, err := readHeader(f)
	if err != nil {
		return Identity{}, err
	}
	id, err := identityOf(f)
	if err != nil {
		return Identity{}, err
	}
	if id.Generation, err = readGeneration(int(f.Fd()), h); err != nil {
		return Identity{}, fmt.Errorf("overlay %s: %w", path, err)
	}
	return id, nil
}

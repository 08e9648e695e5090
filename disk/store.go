package disk

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Store is the backing store of one virtio-blk drive: a byte array of Size
// bytes read and written in vectors (the data segments of one request).
//
// ReadVec and WriteVec move exactly the vector's length or fail; a range
// outside the store fails without touching it. Reads may run concurrently
// with anything; writes, Flush and Close are the caller's to serialise (a
// virtio-blk device serves its queue on one goroutine).
type Store interface {
	// ReadVec fills bufs, in order, from the bytes at off.
	ReadVec(bufs [][]byte, off int64) error
	// WriteVec writes bufs, in order, at off.
	WriteVec(bufs [][]byte, off int64) error
	// Flush makes every completed write durable on the host's storage.
	Flush() error
	// Size is the store's length in bytes.
	Size() int64
	// Close releases the store's files; a COW store first flushes what
	// its durable map lacks.
	Close() error
}

// Options say how to open a drive's store.
type Options struct {
	// Path is the drive's file: a raw image, or with BasePath an overlay.
	Path string
	// BasePath, if set, makes Path a copy-on-write overlay (made by
	// CreateOverlay) over this read-only base, which must be the file the
	// overlay was made on.
	BasePath string
	// ReadOnly opens Path for reading only.
	ReadOnly bool
	// OpenFlags are added to every open(2) the store makes (of Path, the
	// base, the boot ID): seccomp.OpenAfterBoot for a store opened while
	// the guest runs, which the running VM's filter lets through.
	OpenFlags int
}

// Open opens the store o describes: a Raw file, or a COW overlay when
// o.BasePath is set. Errors name the file and what is wrong with it.
func Open(o Options) (Store, error) {
	if o.BasePath != "" {
		return OpenCOW(o)
	}
	return openRaw(o.Path, o.ReadOnly, o.OpenFlags)
}

// errReadOnly refuses writes to a store opened read-only.
var errReadOnly = errors.New("the store is read-only")

// checkRange fails unless [off, off+n) lies inside a store of size bytes.
func checkRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("range [%d, +%d) is outside the store's %d bytes", off, n, size)
	}
	return nil
}

// Raw is a store that is one file (or block device): what the guest reads
// at offset x is the file's bytes at x.
type Raw struct {
	f    *os.File
	fd   int
	size int64
	ro   bool
}

// OpenRaw opens path, read-write or read-only.
func OpenRaw(path string, readOnly bool) (*Raw, error) { return openRaw(path, readOnly, 0) }

func openRaw(path string, readOnly bool, flags int) (*Raw, error) {
	f, err := openFile(path, readOnly, flags)
	if err != nil {
		return nil, err
	}
	size, err := fileSize(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Raw{f: f, fd: int(f.Fd()), size: size, ro: readOnly}, nil
}

// openFile opens path for reading, or reading and writing, with extra
// flags (Options.OpenFlags).
func openFile(path string, readOnly bool, extra int) (*os.File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	return os.OpenFile(path, flags|unix.O_CLOEXEC|extra, 0)
}

// fileSize is the length of a regular file or block device; other files
// are refused.
func fileSize(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	switch {
	case st.Mode().IsRegular():
		return st.Size(), nil
	case st.Mode()&os.ModeDevice != 0:
		end, err := f.Seek(0, 2)
		if err != nil {
			return 0, fmt.Errorf("size of %s: %w", f.Name(), err)
		}
		return end, nil
	}
	return 0, fmt.Errorf("%s: not a regular file or block device", f.Name())
}

func (r *Raw) ReadVec(bufs [][]byte, off int64) error {
	return r.readRange(at(bufs, 0), vecLen(bufs), off)
}

func (r *Raw) readRange(c cursor, n, off int64) error {
	if err := checkRange(off, n, r.size); err != nil {
		return err
	}
	return vecIO(r.fd, opRead, c, n, off)
}

func (r *Raw) WriteVec(bufs [][]byte, off int64) error {
	if r.ro {
		return errReadOnly
	}
	n := vecLen(bufs)
	if err := checkRange(off, n, r.size); err != nil {
		return err
	}
	return vecIO(r.fd, opWrite, at(bufs, 0), n, off)
}

// Flush is fsync.
func (r *Raw) Flush() error {
	if err := unix.Fsync(r.fd); err != nil {
		return fmt.Errorf("fsync %s: %w", r.f.Name(), err)
	}
	return nil
}

func (r *Raw) Size() int64  { return r.size }
func (r *Raw) Close() error { return r.f.Close() }

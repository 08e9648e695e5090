package disk

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// iovBatch is how many iovecs one preadv or pwritev carries. They live in
// an array on the caller's stack, so vectored I/O allocates nothing and
// needs no lock; a vector of more segments takes more system calls. 64
// covers a 256 KiB request of 4 KiB guest pages in one call.
const iovBatch = 64

// vecLen is the total length of bufs.
func vecLen(bufs [][]byte) int64 {
	var n int64
	for _, b := range bufs {
		n += int64(len(b))
	}
	return n
}

// cursor is a position in a vector: byte skip of bufs[i].
type cursor struct {
	bufs [][]byte
	i    int
	skip int
}

// at returns a cursor at byte pos of the concatenation of bufs.
func at(bufs [][]byte, pos int64) cursor {
	c := cursor{bufs: bufs}
	c.advance(pos)
	return c
}

// advance moves the cursor n bytes on.
func (c *cursor) advance(n int64) {
	for n > 0 && c.i < len(c.bufs) {
		rest := int64(len(c.bufs[c.i]) - c.skip)
		if n < rest {
			c.skip += int(n)
			return
		}
		n -= rest
		c.i++
		c.skip = 0
	}
}

// fill puts up to len(iov) segments covering at most n bytes from the
// cursor into iov and returns them with their byte count. It does not move
// the cursor.
func (c cursor) fill(iov []unix.Iovec, n int64) ([]unix.Iovec, int64) {
	iov = iov[:0]
	var total int64
	for i, skip := c.i, c.skip; i < len(c.bufs) && len(iov) < cap(iov) && total < n; i, skip = i+1, 0 {
		b := c.bufs[i][skip:]
		if int64(len(b)) > n-total {
			b = b[:n-total]
		}
		if len(b) == 0 {
			continue
		}
		iov = append(iov, unix.Iovec{Base: unsafe.SliceData(b), Len: uint64(len(b))})
		total += int64(len(b))
	}
	return iov, total
}

// Vectored I/O system calls.
const (
	opRead  = unix.SYS_PREADV
	opWrite = unix.SYS_PWRITEV
)

// vecIO moves n bytes between file fd at offset off and the vector at c
// (op is opRead or opWrite): preadv or pwritev, repeated after a short
// transfer or an interruption. It does not allocate.
func vecIO(fd int, op uintptr, c cursor, n int64, off int64) error {
	var arr [iovBatch]unix.Iovec
	for n > 0 {
		iov, want := c.fill(arr[:], n)
		if want == 0 {
			return fmt.Errorf("vector ends %d bytes short", n)
		}
		// x86-64 preadv/pwritev: fd, iov, iovcnt, pos_l, pos_h (unused).
		r, _, e := unix.Syscall6(op, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), uintptr(off), 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return fmt.Errorf("at offset %d: %w", off, e)
		case r == 0:
			return fmt.Errorf("short transfer at offset %d (file truncated?)", off)
		}
		c.advance(int64(r))
		off += int64(r)
		n -= int64(r)
	}
	return nil
}

// pread reads len(b) bytes of fd at off, or fails.
func pread(fd int, b []byte, off int64) error {
	one := [1][]byte{b}
	return vecIO(fd, opRead, cursor{bufs: one[:]}, int64(len(b)), off)
}

// pwrite writes b to fd at off, or fails.
func pwrite(fd int, b []byte, off int64) error {
	one := [1][]byte{b}
	return vecIO(fd, opWrite, cursor{bufs: one[:]}, int64(len(b)), off)
}

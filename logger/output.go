package logger

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrDropped is returned (wrapped) by the writers Open returns when a write
// was not done because it would have blocked: the pipe is full, or has no
// room for the whole line.
var ErrDropped = errors.New("write dropped: output would block")

const (
	// fileMode is the mode of a log or metrics file Open creates. Firecracker
	// creates missing files with the default 0666 less the umask
	// (open_file_nonblock in src/utils/src/lib.rs); Ember keeps its logs
	// private to the user it runs as.
	fileMode = 0o600
	// pipeBuf is PIPE_BUF on Linux: writes of at most this many bytes to a
	// pipe are atomic, so a non-blocking one either writes the whole line
	// or fails with EAGAIN.
	pipeBuf = 4096
)

// Open opens a log or metrics destination the way Firecracker does
// (open_file_nonblock): read-write and non-blocking, so that opening a
// named pipe never waits for a reader and a full pipe makes writes fail
// instead of blocking. A missing path is created as a regular file, as
// Firecracker creates missing metrics files; a named pipe is never created
// here and must exist beforehand, as Firecracker's docs/logger.md and
// docs/metrics.md require ("mkfifo logs.fifo"). A regular file is appended
// to.
//
// An empty path means the process's standard output, which is not closed by
// Close and whose blocking mode is left alone (it is shared with other
// processes); writes to it are dropped when it is a pipe without room for
// the line or a terminal or socket that is not ready.
//
// Every Write of the returned writer is one write(2) of the whole buffer:
// a write that fails, would block, or would be partial (to a pipe) writes
// nothing and returns an error wrapping ErrDropped or the system error. The
// writer is safe for concurrent use.
func Open(path string) (io.WriteCloser, error) {
	if path == "" {
		return newFDWriter(unix.Stdout, false)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_APPEND|unix.O_NONBLOCK|unix.O_CLOEXEC, fileMode)
	if err != nil {
		return nil, fmt.Errorf("logger: open %s: %w", path, err)
	}
	w, err := newFDWriter(fd, true)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("logger: open %s: %w", path, err)
	}
	return w, nil
}

// fdKind is what a writer's file descriptor refers to.
type fdKind int

const (
	kindOther   fdKind = iota // terminal, socket, character device
	kindRegular               // regular file: writes never block
	kindPipe                  // pipe or FIFO
)

// fdWriter writes to a file descriptor with raw write(2) calls. It does not
// use os.File, whose Write waits in the runtime's poller when a
// non-blocking pipe is full: the point here is to drop the line instead.
type fdWriter struct {
	mu       sync.Mutex
	fd       int
	kind     fdKind
	nonblock bool
	owned    bool // Close closes fd
	closed   bool
}

func newFDWriter(fd int, owned bool) (*fdWriter, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat: %w", err)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("fcntl F_GETFL: %w", err)
	}
	w := &fdWriter{fd: fd, owned: owned, nonblock: flags&unix.O_NONBLOCK != 0}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		w.kind = kindRegular
	case unix.S_IFIFO:
		w.kind = kindPipe
	case unix.S_IFDIR:
		return nil, errors.New("is a directory")
	default:
		w.kind = kindOther
	}
	return w, nil
}

// Write writes p with one write(2), or not at all.
func (w *fdWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("logger: write: %w", unix.EBADF)
	}
	if err := w.ready(len(p)); err != nil {
		return 0, err
	}
	for {
		n, err := unix.Write(w.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, fmt.Errorf("logger: write: %w", ErrDropped)
		case err != nil:
			return 0, fmt.Errorf("logger: write: %w", err)
		case n < len(p):
			return n, fmt.Errorf("logger: write: %w", io.ErrShortWrite)
		}
		return n, nil
	}
}

// ready returns an error wrapping ErrDropped unless n bytes can be written
// without blocking and, to a pipe, without being split.
func (w *fdWriter) ready(n int) error {
	switch w.kind {
	case kindRegular:
		return nil
	case kindPipe:
		if w.nonblock && n <= pipeBuf {
			return nil // atomic: all or EAGAIN
		}
		size, err := unix.FcntlInt(uintptr(w.fd), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			return nil // cannot tell; let write(2) decide
		}
		used, err := unix.IoctlGetInt(w.fd, unix.TIOCINQ) // FIONREAD: bytes in the pipe
		if err != nil {
			return nil
		}
		if !pipeHasRoom(size, used, n, unix.Getpagesize()) {
			return fmt.Errorf("logger: write: %w", ErrDropped)
		}
		return nil
	default:
		if w.nonblock {
			return nil
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLOUT}}
		for {
			k, err := unix.Poll(fds, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil || k == 0 || fds[0].Revents&unix.POLLOUT == 0 {
				return fmt.Errorf("logger: write: %w", ErrDropped)
			}
			return nil
		}
	}
}

// Close closes the file descriptor if Open opened it.
func (w *fdWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if !w.owned {
		return nil
	}
	if err := unix.Close(w.fd); err != nil {
		return fmt.Errorf("logger: close: %w", err)
	}
	return nil
}

// pipeHasRoom reports whether a write of n bytes surely fits whole in a
// pipe of size bytes holding used bytes. The kernel keeps a pipe as a ring
// of size/page buffers of one page each and starts a new buffer whenever
// the tail of a write does not fit in the last one, so the bytes in the
// pipe tell the buffers in use only within bounds: two neighbouring
// buffers hold more than a page between them (only the head buffer, which
// the reader may have partly consumed, and the last one can hold less), so
// at most 2*ceil(used/page)+2 buffers are in use, and a write needs at
// most ceil(n/page)+1 new ones (one for its tail).
func pipeHasRoom(size, used, n, page int) bool {
	slots := size / page
	if used == 0 {
		return ceilDiv(n, page) <= slots
	}
	return 2*ceilDiv(used, page)+2+ceilDiv(n, page)+1 <= slots
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

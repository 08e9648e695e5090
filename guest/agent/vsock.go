package agent

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// vsockBacklog is the listen(2) backlog: the host connects a few times at
// most (emberd, a gateway, a reconnect).
const vsockBacklog = 16

// vsockListener accepts AF_VSOCK stream connections. The sockets are
// non-blocking files in Go's poller, so Accept and every connection's
// reads park goroutines rather than threads, and Close interrupts them
// (the net package does not know AF_VSOCK, and linking it would cost
// ember-init its size for nothing else).
type vsockListener struct {
	f *os.File
}

// ListenVsock listens on the guest's AF_VSOCK port (proto.Port), any CID.
func ListenVsock(port uint32) (Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w (no virtio-vsock device? the VM needs one for its agent)", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind to port %d: %w", port, err)
	}
	if err := unix.Listen(fd, vsockBacklog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen: %w", err)
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d", port))}, nil
}

// Accept waits for a connection.
func (l *vsockListener) Accept() (io.ReadWriteCloser, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var acceptErr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, acceptErr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return !errors.Is(acceptErr, unix.EAGAIN)
	})
	if err != nil {
		return nil, err
	}
	if acceptErr != nil {
		return nil, acceptErr
	}
	return os.NewFile(uintptr(nfd), "vsock-conn"), nil
}

// Close stops the listener; a waiting Accept returns an error.
func (l *vsockListener) Close() error { return l.f.Close() }

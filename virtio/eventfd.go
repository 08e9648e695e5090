package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// EventFD is a Linux eventfd: the doorbell KVM rings when the driver writes
// QueueNotify (ioeventfd), and the one Ember rings to interrupt the guest
// (irqfd) or to stop a worker. It is non-blocking; waiters poll it.
type EventFD struct{ fd int }

// NewEventFD creates a non-blocking, close-on-exec eventfd.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{fd: fd}, nil
}

// FD is the file descriptor, for KVM_IOEVENTFD, KVM_IRQFD and epoll.
func (e *EventFD) FD() int { return e.fd }

// Signal adds 1 to the counter, waking its waiter.
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	for {
		_, err := unix.Write(e.fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil && err != unix.EAGAIN { // EAGAIN: the counter is saturated, still signalled
			return fmt.Errorf("eventfd write: %w", err)
		}
		return nil
	}
}

// Clear reads and resets the counter; it reports whether it was signalled.
func (e *EventFD) Clear() (bool, error) {
	var b [8]byte
	for {
		_, err := unix.Read(e.fd, b[:])
		switch {
		case err == nil:
			return true, nil
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false, nil
		default:
			return false, fmt.Errorf("eventfd read: %w", err)
		}
	}
}

// Close closes the eventfd.
func (e *EventFD) Close() error {
	if e == nil || e.fd < 0 {
		return nil
	}
	err := unix.Close(e.fd)
	e.fd = -1
	return err
}

// Poller waits on several file descriptors at once (epoll). A device worker
// owns one; Wait does not allocate.
type Poller struct {
	epfd   int
	events [8]unix.EpollEvent
}

// NewPoller creates an epoll instance.
func NewPoller() (*Poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &Poller{epfd: fd}, nil
}

// Add watches fd for readability, reporting it as token.
func (p *Poller) Add(fd int, token uint32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(token)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add fd %d: %w", fd, err)
	}
	return nil
}

// AddEdge watches fd for readability and writability, edge-triggered (a tap
// or socket whose buffers the worker drains until EAGAIN).
func (p *Poller) AddEdge(fd int, token uint32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLET | unix.EPOLLRDHUP, Fd: int32(token)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add fd %d: %w", fd, err)
	}
	return nil
}

// Remove stops watching fd.
func (p *Poller) Remove(fd int) error {
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("epoll_ctl del fd %d: %w", fd, err)
	}
	return nil
}

// Wait blocks until some fd is ready (or timeoutMs passes; -1 waits
// forever) and returns the ready tokens' events. The slice is reused by the
// next Wait.
func (p *Poller) Wait(timeoutMs int) ([]unix.EpollEvent, error) {
	for {
		n, err := unix.EpollWait(p.epfd, p.events[:], timeoutMs)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("epoll_wait: %w", err)
		}
		return p.events[:n], nil
	}
}

// Close closes the epoll instance.
func (p *Poller) Close() error { return unix.Close(p.epfd) }

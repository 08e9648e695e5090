package net

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	tunPath = "/dev/net/tun"
	// ifNameSize is IFNAMSIZ: a name has at most 15 bytes and a NUL.
	ifNameSize = 16

	tunFCsum = unix.TUN_F_CSUM
	tunFTSO4 = unix.TUN_F_TSO4
	tunFTSO6 = unix.TUN_F_TSO6
	tunFUFO  = unix.TUN_F_UFO

	// maxIov is UIO_MAXIOV, the most buffers one readv or writev takes.
	maxIov = 1024
)

// tap is a Linux tap attached through /dev/net/tun, non-blocking, with a
// HdrLen-byte vnet header in front of every frame.
type tap struct {
	name string
	fd   int
}

// checkIfName refuses names the kernel would (dev_valid_name), with a
// message that says why.
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("host_dev_name is empty")
	case len(name) >= ifNameSize:
		return fmt.Errorf("tap name %q is %d bytes long; at most %d fit (IFNAMSIZ %d)", name, len(name), ifNameSize-1, ifNameSize)
	case name == "." || name == "..":
		return fmt.Errorf("tap name %q is not valid", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r\x00"):
		return fmt.Errorf("tap name %q: a network interface name cannot contain '/', ':', blanks or NUL", name)
	}
	return nil
}

// openTap attaches to the tap name, creating it if there is none.
func openTap(name string) (*tap, error) {
	if err := checkIfName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
			return nil, fmt.Errorf("tap %q: %s: %w (is the tun module loaded, or the device node made in the jail?)", name, tunPath, err)
		default:
			return nil, fmt.Errorf("tap %q: open %s: %w", name, tunPath, err)
		}
	}
	t := &tap{name: name, fd: fd}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.close()
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		t.close()
		switch {
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("tap %q is busy: another process (or device) has it open: %w", name, err)
		case errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("tap %q: not permitted: creating a tap needs CAP_NET_ADMIN, attaching to one needs that or to be its owner or group: %w", name, err)
		case errors.Is(err, unix.EINVAL):
			return nil, fmt.Errorf("tap %q: an interface of that name exists and is not a single-queue tap: %w", name, err)
		default:
			return nil, fmt.Errorf("tap %q: TUNSETIFF: %w", name, err)
		}
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, HdrLen); err != nil {
		t.close()
		return nil, fmt.Errorf("tap %q: TUNSETVNETHDRSZ %d: %w", name, HdrLen, err)
	}
	if err := t.setOffload(0); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// setOffload sets the offloads (TUN_F_*) the tap may use on frames it
// hands over.
func (t *tap) setOffload(flags uint) error {
	if err := unix.IoctlSetInt(t.fd, unix.TUNSETOFFLOAD, int(flags)); err != nil {
		return fmt.Errorf("tap %q: TUNSETOFFLOAD %#x: %w", t.name, flags, err)
	}
	return nil
}

// mtu reads the tap's MTU.
func (t *tap) mtu() (int, error) {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(t.name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, err
	}
	return int(int32(ifr.Uint32())), nil
}

func (t *tap) close() error {
	if t == nil || t.fd < 0 {
		return nil
	}
	err := unix.Close(t.fd)
	t.fd = -1
	return err
}

// readv reads one frame (vnet header first) into iov. It returns the
// frame's whole length, which is more than iov holds if the frame was cut.
// It does not allocate.
func (t *tap) readv(iov []unix.Iovec) (int, error) {
	return iovSyscall(unix.SYS_READV, t.fd, iov)
}

// writev writes one frame (vnet header first) from iov.
func (t *tap) writev(iov []unix.Iovec) (int, error) {
	return iovSyscall(unix.SYS_WRITEV, t.fd, iov)
}

func iovSyscall(trap uintptr, fd int, iov []unix.Iovec) (int, error) {
	var p unsafe.Pointer
	if len(iov) > 0 {
		p = unsafe.Pointer(&iov[0])
	}
	for {
		n, _, e := unix.Syscall(trap, uintptr(fd), uintptr(p), uintptr(len(iov)))
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// setIov points v at b (which may be empty).
func setIov(v *unix.Iovec, b []byte) {
	v.Base = unsafe.SliceData(b)
	v.SetLen(len(b))
}

// iovBytes is the memory v points at.
func iovBytes(v *unix.Iovec) []byte {
	return unsafe.Slice(v.Base, int(v.Len))
}

package snapshot

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Firecracker's Uffd memory backend: the VMM maps guest RAM anonymously,
// registers it with a userfaultfd, and hands the userfaultfd and a
// description of the regions to a page-fault handler process over a unix
// socket; the handler fills each page on first touch (UFFDIO_COPY). The
// message is Firecracker's: a JSON array of UffdMapping with the
// userfaultfd as SCM_RIGHTS ancillary data.

// userfaultfd ABI (linux/userfaultfd.h).
const (
	uffdAPI                 = 0xAA
	uffdioAPI               = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	uffdioRegister          = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	uffdioCopy              = 0xc028aa03 // _IOWR(0xAA, 0x03, struct uffdio_copy)
	uffdRegisterModeMissing = 1
	uffdFeatureEventRemove  = 1 << 3
	uffdEventPagefault      = 0x12
	uffdEventRemove         = 0x15
	uffdMsgSize             = 32
	// userfaultfdIOCNew is USERFAULTFD_IOC_NEW, _IO(0xAA, 0x00) on
	// /dev/userfaultfd (Linux 6.1): a userfaultfd for whoever may open the
	// device, where the system call needs CAP_SYS_PTRACE (or
	// vm.unprivileged_userfaultfd) to catch the kernel's own faults, as
	// KVM's are. A jailed VMM has no capabilities but gets the device.
	userfaultfdIOCNew = 0xaa00
	userfaultfdDev    = "/dev/userfaultfd"
)

// Limits on the mapping message from a VMM (the handler's peer, which it
// does not trust: a bad message is refused, never a reason to panic or to
// copy from outside the memory file).
const (
	// uffdMsgMax is the largest mapping message read: far more than the
	// JSON of uffdMaxMappings regions.
	uffdMsgMax = 64 << 10
	// uffdMaxMappings bounds the regions of one VM (Ember has at most two,
	// below and above the 32-bit PCI hole; Firecracker adds hot-plug slots).
	uffdMaxMappings = 1024
	// uffdMaxRAM bounds one VM's guest RAM: 2^48 bytes, the x86-64 physical
	// (and user virtual) address space, so no offset or size sum overflows.
	uffdMaxRAM = 1 << 48
)

// newUserfaultfd makes a userfaultfd through the system call or, where that
// is not permitted, through /dev/userfaultfd (as Firecracker does).
func newUserfaultfd() (int, error) {
	const flags = unix.O_CLOEXEC | unix.O_NONBLOCK
	r1, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if errno == 0 {
		return int(r1), nil
	}
	if errno != unix.EPERM {
		return -1, fmt.Errorf("userfaultfd: %w", errno)
	}
	dev, err := unix.Open(userfaultfdDev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("userfaultfd: %w, and %s: %w", errno, userfaultfdDev, err)
	}
	defer unix.Close(dev)
	r1, _, errno2 := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), userfaultfdIOCNew, flags)
	if errno2 != 0 {
		return -1, fmt.Errorf("userfaultfd: %w, and USERFAULTFD_IOC_NEW on %s: %w", errno, userfaultfdDev, errno2)
	}
	return int(r1), nil
}

// UffdMapping describes one guest RAM region to a page-fault handler
// (Firecracker's GuestRegionUffdMapping).
type UffdMapping struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"` // in the memory file
	PageSize         uint64 `json:"page_size"`
	// PageSizeKiB is the older form of PageSize, for older handlers.
	PageSizeKiB uint64 `json:"page_size_kib"`
}

// MapUffd maps guest RAM of the given region sizes anonymously, registers
// it with a new userfaultfd (missing-page mode, with remove events) and
// returns the mappings and the userfaultfd. Nothing can touch the memory
// until a handler serves its faults (SendUffd).
func MapUffd(sizes []uint64) (regions [][]byte, uffd int, err error) {
	if uffd, err = newUserfaultfd(); err != nil {
		return nil, -1, err
	}
	defer func() {
		if err != nil {
			Unmap(regions)
			unix.Close(uffd)
		}
	}()
	api := [3]uint64{uffdAPI, uffdFeatureEventRemove, 0}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(uffd), uffdioAPI, uintptr(unsafe.Pointer(&api))); errno != 0 {
		return nil, -1, fmt.Errorf("UFFDIO_API: %w", errno)
	}
	for i, s := range sizes {
		if s == 0 || s%PageSize != 0 {
			return nil, -1, fmt.Errorf("RAM region %d size %d is not a positive multiple of %d", i, s, PageSize)
		}
		m, err := unix.Mmap(-1, 0, int(s), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return regions, -1, fmt.Errorf("map RAM region %d: %w", i, err)
		}
		regions = append(regions, m)
		reg := [4]uint64{uint64(uintptr(unsafe.Pointer(&m[0]))), s, uffdRegisterModeMissing, 0}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(uffd), uffdioRegister, uintptr(unsafe.Pointer(&reg))); errno != 0 {
			return regions, -1, fmt.Errorf("UFFDIO_REGISTER region %d: %w", i, errno)
		}
	}
	return regions, uffd, nil
}

// SendUffd connects to the handler's socket and sends it the mappings of
// regions (laid out back to back in the memory file) and the userfaultfd.
func SendUffd(socketPath string, regions [][]byte, uffd int) error {
	var maps []UffdMapping
	var off uint64
	for _, r := range regions {
		maps = append(maps, UffdMapping{BaseHostVirtAddr: uint64(uintptr(unsafe.Pointer(&r[0]))), Size: uint64(len(r)),
			Offset: off, PageSize: PageSize, PageSizeKiB: PageSize / 1024})
		off += uint64(len(r))
	}
	body, err := json.Marshal(maps)
	if err != nil {
		return err
	}
	c, err := net.Dial("unix", socketPath)
	if err != nil {
		return fmt.Errorf("connect to the page-fault handler: %w", err)
	}
	defer c.Close()
	n, oobn, err := c.(*net.UnixConn).WriteMsgUnix(body, unix.UnixRights(uffd), nil)
	if err != nil {
		return fmt.Errorf("send to the page-fault handler: %w", err)
	}
	if n != len(body) || oobn == 0 {
		return errors.New("send to the page-fault handler: short write")
	}
	return nil
}

// UffdHandler serves one VM's page faults from a memory file: the
// page-fault handler a Uffd restore needs, built in (`ember snapshot
// serve-uffd`).
type UffdHandler struct {
	uffd int
	maps []UffdMapping
	file []byte // the memory file, mapped read-only
	pid  int    // the VMM's process id, from the connection
	// Faults counts pages served.
	Faults uint64
}

// AcceptUffd accepts one VMM's connection on ln, receives its mappings and
// userfaultfd, and maps the memory file at memPath. Serve then serves.
func AcceptUffd(ln *net.UnixListener, memPath string) (*UffdHandler, error) {
	c, err := ln.AcceptUnix()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	buf, oob := make([]byte, uffdMsgMax), make([]byte, unix.CmsgSpace(4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("receive from the VMM: %w", err)
	}
	uffd, err := receivedFD(oob[:oobn], flags)
	if err != nil {
		return nil, fmt.Errorf("receive from the VMM: %w", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		unix.Close(uffd)
		return nil, fmt.Errorf("mappings from the VMM: the message is longer than %d bytes", uffdMsgMax)
	}
	h := &UffdHandler{uffd: uffd}
	if raw, err := c.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				h.pid = int(cred.Pid)
			}
		})
	}
	var total uint64
	if h.maps, total, err = ParseUffdMappings(buf[:n]); err != nil {
		unix.Close(h.uffd)
		return nil, fmt.Errorf("mappings from the VMM: %w", err)
	}
	f, err := os.Open(memPath)
	if err != nil {
		unix.Close(h.uffd)
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || uint64(fi.Size()) < total {
		unix.Close(h.uffd)
		return nil, fmt.Errorf("memory file %s: %w: shorter than the %d bytes of guest RAM", memPath, ErrMemoryFile, total)
	}
	if h.file, err = unix.Mmap(int(f.Fd()), 0, int(total), unix.PROT_READ, unix.MAP_PRIVATE); err != nil {
		unix.Close(h.uffd)
		return nil, err
	}
	return h, nil
}

// receivedFD returns the one file descriptor of a message's ancillary
// data. Any other descriptors received are closed.
func receivedFD(oob []byte, flags int) (int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1, fmt.Errorf("no userfaultfd: %w", err)
	}
	var fds []int
	for i := range msgs {
		if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 1 || flags&unix.MSG_CTRUNC != 0 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("want exactly one file descriptor, the userfaultfd; got %d", len(fds))
	}
	return fds[0], nil
}

// ParseUffdMappings decodes and checks a VMM's mapping message (a JSON
// array of UffdMapping) and returns the mappings and the length of memory
// file they need. Every region must be a positive whole number of 4 KiB
// pages at page-aligned host and file offsets, with no sum overflowing and
// no two regions overlapping in the VMM's address space, so that every
// fault in a region names a page inside the first total bytes of the file.
func ParseUffdMappings(body []byte) (maps []UffdMapping, total uint64, err error) {
	if err := json.Unmarshal(body, &maps); err != nil {
		return nil, 0, err
	}
	if len(maps) == 0 || len(maps) > uffdMaxMappings {
		return nil, 0, fmt.Errorf("%d regions: want 1 to %d", len(maps), uffdMaxMappings)
	}
	var ram uint64
	for i, m := range maps {
		switch {
		case m.PageSize != 0 && m.PageSize != PageSize, m.PageSize == 0 && m.PageSizeKiB != 0 && m.PageSizeKiB != PageSize/1024:
			return nil, 0, fmt.Errorf("region %d: page size %d (%d KiB): only %d-byte pages are served", i, m.PageSize, m.PageSizeKiB, PageSize)
		case m.Size == 0 || m.Size%PageSize != 0 || m.Size > uffdMaxRAM:
			return nil, 0, fmt.Errorf("region %d: size %d is not a positive multiple of %d up to %d", i, m.Size, PageSize, uint64(uffdMaxRAM))
		case m.Offset%PageSize != 0 || m.Offset > uffdMaxRAM-m.Size:
			return nil, 0, fmt.Errorf("region %d: file offset %#x: not page-aligned, or the region ends past %#x", i, m.Offset, uint64(uffdMaxRAM))
		case m.BaseHostVirtAddr%PageSize != 0 || m.BaseHostVirtAddr > ^uint64(0)-m.Size:
			return nil, 0, fmt.Errorf("region %d: host address %#x: not page-aligned, or the region wraps around", i, m.BaseHostVirtAddr)
		}
		for j, o := range maps[:i] {
			if m.BaseHostVirtAddr < o.BaseHostVirtAddr+o.Size && o.BaseHostVirtAddr < m.BaseHostVirtAddr+m.Size {
				return nil, 0, fmt.Errorf("regions %d and %d overlap", j, i)
			}
		}
		if ram += m.Size; ram > uffdMaxRAM {
			return nil, 0, fmt.Errorf("the regions add up to more than %d bytes", uint64(uffdMaxRAM))
		}
		total = max(total, m.Offset+m.Size)
	}
	return maps, total, nil
}

// Serve handles faults until stop is closed or the VMM process is gone.
func (h *UffdHandler) Serve(stop <-chan struct{}) error {
	msg := make([]byte, uffdMsgSize*16)
	fds := []unix.PollFd{{Fd: int32(h.uffd), Events: unix.POLLIN}}
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		if n == 0 {
			if h.pid > 0 && unix.Kill(h.pid, 0) == unix.ESRCH {
				return nil // the VMM exited
			}
			continue
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			return nil
		}
		n, err = unix.Read(h.uffd, msg)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for m := msg[:n]; len(m) >= uffdMsgSize; m = m[uffdMsgSize:] {
			if m[0] == uffdEventPagefault {
				if err := h.fill(binary.LittleEndian.Uint64(m[16:])); err != nil {
					return err
				}
			}
			// uffdEventRemove: the balloon released a range; its next
			// fault is served from the file again, which is fine for
			// pages whose contents the guest gave up.
		}
	}
}

// fill copies the page holding addr from the memory file.
func (h *UffdHandler) fill(addr uint64) error {
	page := addr &^ (PageSize - 1)
	for _, m := range h.maps {
		if page < m.BaseHostVirtAddr || page-m.BaseHostVirtAddr >= m.Size {
			continue
		}
		off := m.Offset + page - m.BaseHostVirtAddr
		cp := [5]uint64{page, uint64(uintptr(unsafe.Pointer(&h.file[off]))), PageSize, 0, 0}
		for {
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(h.uffd), uffdioCopy, uintptr(unsafe.Pointer(&cp)))
			switch errno {
			case 0:
				h.Faults++
				return nil
			case unix.EEXIST: // another fault filled it
				return nil
			case unix.EAGAIN:
				cp[4] = 0
				continue
			}
			return fmt.Errorf("UFFDIO_COPY at %#x: %w", page, errno)
		}
	}
	return fmt.Errorf("page fault at %#x outside guest RAM", addr)
}

// Close releases the handler, after Serve has returned.
func (h *UffdHandler) Close() error {
	unix.Munmap(h.file)
	return unix.Close(h.uffd)
}

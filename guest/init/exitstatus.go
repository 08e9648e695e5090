package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// exitStatusAddr is Ember's exit-status register: a 32-bit value at
	// the start of this guest-physical page (devices.ExitStatusBase; a
	// test checks the two agree).
	exitStatusAddr = 0xEEBF_F000
	// memNode is a /dev/mem node of the init's own in the initramfs, so
	// that the register stays reachable whatever becomes of /dev.
	memNode = "/ember/mem"
	// memMajor and memMinor are /dev/mem's device number
	// (Documentation/admin-guide/devices.txt: char 1, minor 1).
	memMajor, memMinor = 1, 1
)

// statusRegister is the exit-status register mapped into the init.
type statusRegister struct {
	page []byte
}

// openStatusRegister maps the page at addr of the memory device at path
// (creating the node first when it is memNode). Guest RAM is refused by
// STRICT_DEVMEM, but this page is device memory, not RAM, and /dev/mem
// maps it uncached: the store below reaches Ember as one MMIO write.
func openStatusRegister(path string, addr int64) (*statusRegister, error) {
	if path == memNode {
		err := unix.Mknod(memNode, unix.S_IFCHR|0o600, int(unix.Mkdev(memMajor, memMinor)))
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("mknod %s: %w", memNode, err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_SYNC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mapping outlives the descriptor
	page, err := unix.Mmap(int(f.Fd()), addr, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s at %#x: %w", path, addr, err)
	}
	return &statusRegister{page: page}, nil
}

// write stores status in the register with one 32-bit store (a MOV, which
// the hypervisor turns into one MMIO write of 4 bytes; an atomic store
// would be an XCHG, a read and a write).
func (r *statusRegister) write(status int) {
	*(*uint32)(unsafe.Pointer(&r.page[0])) = uint32(status)
}

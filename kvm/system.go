package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// devKVM is the KVM character device.
	devKVM = "/dev/kvm"

	// APIVersion is KVM_API_VERSION (include/uapi/linux/kvm.h), the only
	// value of KVM_GET_API_VERSION this package works with.
	APIVersion = 12

	// maxCPUIDEntries bounds the KVM_GET_SUPPORTED_CPUID/KVM_GET_CPUID2
	// buffer growth. The kernel's KVM_MAX_CPUID_ENTRIES
	// (arch/x86/include/asm/kvm_host.h) is 256; allow headroom.
	maxCPUIDEntries = 4096
	// initialCPUIDEntries is the first buffer size tried.
	initialCPUIDEntries = 256
	// maxMSRIndices bounds the KVM_GET_MSR_INDEX_LIST buffer.
	maxMSRIndices = 1 << 16
)

// System is an open /dev/kvm.
type System struct {
	fd int
}

// Open opens /dev/kvm and checks that the kernel speaks KVM API version 12.
func Open() (*System, error) {
	fd, err := unix.Open(devKVM, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", devKVM, err)
	}
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: KVM API version %d, want %d", devKVM, v, APIVersion)
	}
	return &System{fd: fd}, nil
}

// Fd returns the /dev/kvm file descriptor.
func (s *System) Fd() int { return s.fd }

// Close closes /dev/kvm. VMs created from it stay usable.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		return fmt.Errorf("close %s: %w", devKVM, err)
	}
	return nil
}

// CheckExtension returns the KVM_CHECK_EXTENSION value of capability cap
// (one of the Cap* constants): 0 if unsupported, otherwise 1 or a
// capability-specific number.
func (s *System) CheckExtension(cap int) (int, error) {
	r, err := ioctl(s.fd, kvmCheckExtension, uintptr(cap))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%d): %w", cap, err)
	}
	return int(r), nil
}

// VCPUMmapSize returns the size of the per-vCPU mmap area (struct kvm_run
// plus the pages that follow it).
func (s *System) VCPUMmapSize() (int, error) {
	r, err := ioctl(s.fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

// SupportedCPUID returns the CPUID leaves KVM can expose to a guest
// (KVM_GET_SUPPORTED_CPUID).
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := initialCPUIDEntries; n <= maxCPUIDEntries; n *= 2 {
		buf := newCPUID2(n)
		_, err := ioctlPtr(s.fd, kvmGetSupportedCPUID, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return cpuid2Entries(buf), nil
	}
	return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: more than %d entries: %w", maxCPUIDEntries, unix.E2BIG)
}

// MSRIndexList returns the indices of the MSRs KVM saves and restores for a
// vCPU (KVM_GET_MSR_INDEX_LIST).
func (s *System) MSRIndexList() ([]uint32, error) {
	// The first call, with nmsrs = 0, fails with E2BIG and reports the count.
	n := uint32(0)
	for {
		buf := make([]uint32, 1+n)
		buf[0] = n
		_, err := ioctlPtr(s.fd, kvmGetMSRIndexList, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) && buf[0] > n && buf[0] <= maxMSRIndices {
			n = buf[0]
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
		}
		got := min(buf[0], n)
		return buf[1 : 1+got : 1+got], nil
	}
}

// CreateVM creates a VM (KVM_CREATE_VM, default machine type). The VM
// records the vCPU mmap size, so it does not need s to stay open.
func (s *System) CreateVM() (*VM, error) {
	mmapSize, err := s.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	var fd uintptr
	for {
		// KVM_CREATE_VM can fail with EINTR while the kernel sets up the
		// MMU notifier; retrying is what other VMMs do.
		fd, err = ioctl(s.fd, kvmCreateVM, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(fd), mmapSize: mmapSize}, nil
}

// newCPUID2 returns a zeroed, 8-byte-aligned struct kvm_cpuid2 with room for
// n entries and nent = n.
func newCPUID2(n int) []uint64 {
	const words = int(unsafe.Sizeof(CPUIDEntry{})) / 8
	buf := make([]uint64, sizeofCPUID2/8+n*words)
	*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(n)
	return buf
}

// cpuid2Entries copies the entries out of a struct kvm_cpuid2 buffer.
func cpuid2Entries(buf []uint64) []CPUIDEntry {
	const words = int(unsafe.Sizeof(CPUIDEntry{})) / 8
	nent := int(*(*uint32)(unsafe.Pointer(&buf[0])))
	nent = min(nent, (len(buf)-sizeofCPUID2/8)/words)
	out := make([]CPUIDEntry, nent)
	if nent > 0 {
		copy(out, unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[sizeofCPUID2/8])), nent))
	}
	return out
}

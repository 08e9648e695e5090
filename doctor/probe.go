package doctor

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/kvm"
)

// LocalHost is this machine, checked for the process that started
// `ember doctor` (its parent, usually a shell): its limits are the ones
// the VMs it starts will inherit.
func LocalHost() *Host {
	return &Host{Root: "/", PID: os.Getppid(), EUID: os.Geteuid(), Probe: &LiveProbe{}}
}

// requiredCaps are the KVM capabilities Ember's VMM uses unconditionally.
var requiredCaps = []struct {
	cap  int
	name string
}{
	{kvm.CapUserMemory, "KVM_CAP_USER_MEMORY"},
	{kvm.CapIRQChip, "KVM_CAP_IRQCHIP"},
	{kvm.CapIOEventFD, "KVM_CAP_IOEVENTFD"},
	{kvm.CapIRQFD, "KVM_CAP_IRQFD"},
	{kvm.CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
}

// probePages is the size of the scratch VM's memory slot (one bitmap word).
const probePages = 64

// LiveProbe runs the probes on this machine with real system calls. The
// KVM probe runs once and is remembered.
type LiveProbe struct {
	once sync.Once
	kvm  KVMInfo
	err  error
}

// KVM opens /dev/kvm, checks the capabilities Ember needs, and creates a
// scratch VM with a dirty-logged memory slot and reads its clock.
func (p *LiveProbe) KVM() (KVMInfo, error) {
	p.once.Do(func() { p.kvm, p.err = probeKVM() })
	return p.kvm, p.err
}

func probeKVM() (KVMInfo, error) {
	var info KVMInfo
	sys, err := kvm.Open()
	if err != nil {
		return info, err
	}
	defer sys.Close()
	for _, c := range requiredCaps {
		if v, err := sys.CheckExtension(c.cap); err != nil || v == 0 {
			info.MissingCaps = append(info.MissingCaps, c.name)
		}
	}
	info.AdjustClock, _ = sys.CheckExtension(kvm.CapAdjustClock)
	vm, err := sys.CreateVM()
	if err != nil {
		return info, err
	}
	defer vm.Close()
	if c, err := vm.GetClock(); err == nil {
		info.ClockRealtime = c.Flags&kvm.ClockRealtime != 0
	}
	info.DirtyLog = tryDirtyLog(vm)
	return info, nil
}

// tryDirtyLog registers a small slot with KVM_MEM_LOG_DIRTY_PAGES and
// reads its dirty log.
func tryDirtyLog(vm *kvm.VM) error {
	size := probePages * os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	defer unix.Munmap(mem)
	err = vm.SetUserMemoryRegion(kvm.UserspaceMemoryRegion{Flags: kvm.MemLogDirtyPages,
		MemorySize: uint64(size), UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))})
	if err != nil {
		return err
	}
	_, err = vm.DirtyBitmap(0, probePages)
	return err
}

// Userfaultfd creates a userfaultfd with the flags Ember's Uffd backend
// uses and closes it.
func (p *LiveProbe) Userfaultfd() error {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno != 0 {
		return fmt.Errorf("userfaultfd: %w", errno)
	}
	return unix.Close(int(fd))
}

// OpenTun opens /dev/net/tun read-write and closes it.
func (p *LiveProbe) OpenTun() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// SetNofile sets process pid's RLIMIT_NOFILE (prlimit(2): allowed for
// one's own processes up to the hard limit, and beyond it for root).
func (p *LiveProbe) SetNofile(pid int, soft, hard uint64) error {
	return prlimit(pid, unix.RLIMIT_NOFILE, soft, hard)
}

// SetNproc sets process pid's RLIMIT_NPROC.
func (p *LiveProbe) SetNproc(pid int, soft, hard uint64) error {
	return prlimit(pid, unix.RLIMIT_NPROC, soft, hard)
}

func prlimit(pid, resource int, soft, hard uint64) error {
	if soft > hard {
		return errors.New("soft limit above hard limit")
	}
	err := unix.Prlimit(pid, resource, &unix.Rlimit{Cur: soft, Max: hard}, nil)
	if err != nil {
		return fmt.Errorf("prlimit(%d): %w", pid, err)
	}
	return nil
}

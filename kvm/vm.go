package kvm

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine file descriptor.
type VM struct {
	fd       int
	mmapSize int // KVM_GET_VCPU_MMAP_SIZE, for CreateVCPU
}

// Fd returns the VM file descriptor.
func (vm *VM) Fd() int { return vm.fd }

// Close closes the VM file descriptor. The kernel destroys the VM once its
// vCPUs are closed too.
func (vm *VM) Close() error {
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	if err != nil {
		return fmt.Errorf("close VM: %w", err)
	}
	return nil
}

// CheckExtension is KVM_CHECK_EXTENSION on the VM (KVM_CAP_CHECK_EXTENSION_VM):
// the answer may differ from the system-wide one.
func (vm *VM) CheckExtension(cap int) (int, error) {
	r, err := ioctl(vm.fd, kvmCheckExtension, uintptr(cap))
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%d) on VM: %w", cap, err)
	}
	return int(r), nil
}

// EnableCap enables capability cap on the VM with up to four arguments
// (KVM_ENABLE_CAP, needs KVM_CAP_ENABLE_CAP_VM).
func (vm *VM) EnableCap(cap uint32, args ...uint64) error {
	c, err := newEnableCap(cap, args)
	if err != nil {
		return err
	}
	if _, err := ioctlPtr(vm.fd, kvmEnableCap, unsafe.Pointer(&c)); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP(%d): %w", cap, err)
	}
	return nil
}

func newEnableCap(cap uint32, args []uint64) (enableCap, error) {
	var c enableCap
	if len(args) > len(c.Args) {
		return c, fmt.Errorf("KVM_ENABLE_CAP(%d): %d arguments, at most %d", cap, len(args), len(c.Args))
	}
	c.Cap = cap
	copy(c.Args[:], args)
	return c, nil
}

// SetUserMemoryRegion creates, moves or (with MemorySize 0) deletes a guest
// memory slot backed by user memory at r.UserspaceAddr
// (KVM_SET_USER_MEMORY_REGION). The caller keeps that memory mapped for as
// long as the slot exists.
func (vm *VM) SetUserMemoryRegion(r UserspaceMemoryRegion) error {
	if _, err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION(slot %d, gpa %#x, size %#x): %w",
			r.Slot, r.GuestPhysAddr, r.MemorySize, err)
	}
	return nil
}

// SetTSSAddr sets the guest-physical address of the three pages Intel VMX
// needs for real-mode emulation (KVM_SET_TSS_ADDR). It must lie below 4 GiB
// and outside guest RAM and MMIO.
func (vm *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctl(vm.fd, kvmSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR(%#x): %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr sets the guest-physical address of the identity-map
// page Intel VMX uses for real mode without unrestricted guest
// (KVM_SET_IDENTITY_MAP_ADDR). Call it before creating vCPUs.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(vm.fd, kvmSetIdentityMapAddr, unsafe.Pointer(&addr)); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR(%#x): %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PICs, IOAPIC and local APICs
// (KVM_CREATE_IRQCHIP). Call it before creating vCPUs.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 PIT (KVM_CREATE_PIT2). It needs
// the in-kernel irqchip.
func (vm *VM) CreatePIT2(cfg PITConfig) error {
	if _, err := ioctlPtr(vm.fd, kvmCreatePIT2, unsafe.Pointer(&cfg)); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// SetPITReinject turns the PIT's catch-up of lost ticks on or off
// (KVM_REINJECT_CONTROL; on after KVM_CREATE_PIT2). Off, the kernel holds no
// interrupt-ack and mask notifiers for the PIT, each of which costs an SRCU
// grace period to remove when the VM is destroyed.
func (vm *VM) SetPITReinject(on bool) error {
	var c reinjectControl
	if on {
		c.PITReinject = 1
	}
	if _, err := ioctlPtr(vm.fd, kvmReinjectControl, unsafe.Pointer(&c)); err != nil {
		return fmt.Errorf("KVM_REINJECT_CONTROL: %w", err)
	}
	return nil
}

// IRQLine sets the level of an input pin of the in-kernel irqchip
// (KVM_IRQ_LINE): GSIs 0-15 reach the PICs and the IOAPIC, 16-23 the IOAPIC.
// An edge-triggered interrupt is level 1 then level 0. IRQLine does not
// allocate unless it fails.
func (vm *VM) IRQLine(irq uint32, level uint32) error {
	l := IRQLevel{IRQ: irq, Level: level}
	if _, err := ioctlPtr(vm.fd, kvmIRQLine, unsafe.Pointer(&l)); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE(%d, %d): %w", irq, level, err)
	}
	return nil
}

// IOEventFD registers (or, with IOEventFDFlagDeassign, removes) an ioeventfd
// (KVM_IOEVENTFD): guest writes matching cfg signal cfg.FD in the kernel
// without a vCPU exit.
func (vm *VM) IOEventFD(cfg IOEventFDConfig) error {
	if _, err := ioctlPtr(vm.fd, kvmIOEventFD, unsafe.Pointer(&cfg)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD(addr %#x, len %d, flags %#x): %w", cfg.Addr, cfg.Len, cfg.Flags, err)
	}
	return nil
}

// IRQFD registers (or, with IRQFDFlagDeassign, removes) an irqfd (KVM_IRQFD):
// writing to cfg.FD raises GSI cfg.GSI on the in-kernel irqchip.
func (vm *VM) IRQFD(cfg IRQFDConfig) error {
	if _, err := ioctlPtr(vm.fd, kvmIRQFD, unsafe.Pointer(&cfg)); err != nil {
		return fmt.Errorf("KVM_IRQFD(fd %d, gsi %d, flags %#x): %w", cfg.FD, cfg.GSI, cfg.Flags, err)
	}
	return nil
}

// GetIRQChip reads the state of the in-kernel interrupt controller chipID
// (IRQChipPICMaster, IRQChipPICSlave, IRQChipIOAPIC) with KVM_GET_IRQCHIP.
func (vm *VM) GetIRQChip(chipID uint32) (IRQChip, error) {
	c := IRQChip{ChipID: chipID}
	if _, err := ioctlPtr(vm.fd, kvmGetIRQChip, unsafe.Pointer(&c)); err != nil {
		return IRQChip{}, fmt.Errorf("KVM_GET_IRQCHIP(%d): %w", chipID, err)
	}
	return c, nil
}

// SetIRQChip restores the state of the interrupt controller c.ChipID
// (KVM_SET_IRQCHIP).
func (vm *VM) SetIRQChip(c *IRQChip) error {
	if _, err := ioctlPtr(vm.fd, kvmSetIRQChip, unsafe.Pointer(c)); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP(%d): %w", c.ChipID, err)
	}
	return nil
}

// GetPIT2 reads the in-kernel PIT state (KVM_GET_PIT2).
func (vm *VM) GetPIT2() (PITState2, error) {
	var s PITState2
	if _, err := ioctlPtr(vm.fd, kvmGetPIT2, unsafe.Pointer(&s)); err != nil {
		return PITState2{}, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return s, nil
}

// SetPIT2 restores the in-kernel PIT state (KVM_SET_PIT2).
func (vm *VM) SetPIT2(s *PITState2) error {
	if _, err := ioctlPtr(vm.fd, kvmSetPIT2, unsafe.Pointer(s)); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// GetClock reads the VM's kvmclock (KVM_GET_CLOCK).
func (vm *VM) GetClock() (ClockData, error) {
	var c ClockData
	if _, err := ioctlPtr(vm.fd, kvmGetClock, unsafe.Pointer(&c)); err != nil {
		return ClockData{}, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets the VM's kvmclock (KVM_SET_CLOCK). Only c.Clock and, with
// ClockRealtime in c.Flags, c.Realtime are used by the kernel.
func (vm *VM) SetClock(c *ClockData) error {
	if _, err := ioctlPtr(vm.fd, kvmSetClock, unsafe.Pointer(c)); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}

// GetDirtyLog fetches and clears the dirty-page bitmap of memory slot slot,
// which must have been registered with MemLogDirtyPages (KVM_GET_DIRTY_LOG).
// Bit i of bitmap (bitmap[i/64] bit i%64) is page i of the slot. bitmap must
// hold at least one bit per page of the slot, rounded up to 64 bits; the
// kernel writes that many bits.
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	if len(bitmap) == 0 {
		return fmt.Errorf("KVM_GET_DIRTY_LOG(slot %d): empty bitmap", slot)
	}
	d := dirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	_, err := ioctlPtr(vm.fd, kvmGetDirtyLog, unsafe.Pointer(&d))
	runtime.KeepAlive(bitmap)
	if err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG(slot %d): %w", slot, err)
	}
	return nil
}

// CreateVCPU creates vCPU id (its initial APIC id) with KVM_CREATE_VCPU and
// maps its struct kvm_run.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU(%d): %w", id, err)
	}
	if vm.mmapSize < runMinSize {
		unix.Close(int(fd))
		return nil, fmt.Errorf("vCPU %d: kvm_run mmap size %d is below %d bytes", id, vm.mmapSize, runMinSize)
	}
	run, err := unix.Mmap(int(fd), 0, vm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{fd: int(fd), id: id, run: run}, nil
}

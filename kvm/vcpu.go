package kvm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VCPU is a KVM virtual CPU: its file descriptor and its mmapped struct
// kvm_run.
type VCPU struct {
	fd  int
	id  int
	run []byte // the kvm_run mapping, KVM_GET_VCPU_MMAP_SIZE bytes
}

// ID returns the id the vCPU was created with.
func (v *VCPU) ID() int { return v.id }

// Fd returns the vCPU file descriptor.
func (v *VCPU) Fd() int { return v.fd }

// Close unmaps kvm_run and closes the vCPU file descriptor.
func (v *VCPU) Close() error {
	var errs []error
	if v.run != nil {
		if err := unix.Munmap(v.run); err != nil {
			errs = append(errs, fmt.Errorf("munmap kvm_run of vCPU %d: %w", v.id, err))
		}
		v.run = nil
	}
	if v.fd >= 0 {
		if err := unix.Close(v.fd); err != nil {
			errs = append(errs, fmt.Errorf("close vCPU %d: %w", v.id, err))
		}
		v.fd = -1
	}
	return errors.Join(errs...)
}

// Run enters the guest (KVM_RUN) until the next exit to user space; then
// ExitReason and the other kvm_run accessors describe the exit.
//
// Run returns unix.EINTR (a signal arrived, or immediate_exit was set) and
// unix.EAGAIN as the bare errno, without wrapping or allocating, so a run
// loop can test them with errors.Is or ==; other failures are wrapped.
func (v *VCPU) Run() error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), kvmRun, 0)
	switch errno {
	case 0:
		return nil
	case unix.EINTR, unix.EAGAIN:
		return errno
	}
	return fmt.Errorf("KVM_RUN on vCPU %d: %w", v.id, errno)
}

// Interrupt queues external interrupt vector irq when there is no in-kernel
// irqchip (KVM_INTERRUPT).
func (v *VCPU) Interrupt(irq uint32) error {
	if _, err := ioctlPtr(v.fd, kvmInterrupt, unsafe.Pointer(&irq)); err != nil {
		return fmt.Errorf("KVM_INTERRUPT(%d): %w", irq, err)
	}
	return nil
}

// NMI queues an NMI on the vCPU (KVM_NMI).
func (v *VCPU) NMI() error {
	if _, err := ioctl(v.fd, kvmNMI, 0); err != nil {
		return fmt.Errorf("KVM_NMI: %w", err)
	}
	return nil
}

// EnableCap enables a per-vCPU capability with up to four arguments
// (KVM_ENABLE_CAP on the vCPU).
func (v *VCPU) EnableCap(cap uint32, args ...uint64) error {
	c, err := newEnableCap(cap, args)
	if err != nil {
		return err
	}
	if _, err := ioctlPtr(v.fd, kvmEnableCap, unsafe.Pointer(&c)); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP(%d) on vCPU %d: %w", cap, v.id, err)
	}
	return nil
}

// GetRegs reads the general-purpose registers (KVM_GET_REGS).
func (v *VCPU) GetRegs() (Regs, error) {
	var r Regs
	if _, err := ioctlPtr(v.fd, kvmGetRegs, unsafe.Pointer(&r)); err != nil {
		return Regs{}, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	return r, nil
}

// SetRegs writes the general-purpose registers (KVM_SET_REGS).
func (v *VCPU) SetRegs(r *Regs) error {
	if _, err := ioctlPtr(v.fd, kvmSetRegs, unsafe.Pointer(r)); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// GetSregs reads the segment and control registers (KVM_GET_SREGS).
func (v *VCPU) GetSregs() (Sregs, error) {
	var s Sregs
	if _, err := ioctlPtr(v.fd, kvmGetSregs, unsafe.Pointer(&s)); err != nil {
		return Sregs{}, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	return s, nil
}

// SetSregs writes the segment and control registers (KVM_SET_SREGS).
func (v *VCPU) SetSregs(s *Sregs) error {
	if _, err := ioctlPtr(v.fd, kvmSetSregs, unsafe.Pointer(s)); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	return nil
}

// GetFPU reads the x87/SSE state (KVM_GET_FPU).
func (v *VCPU) GetFPU() (FPU, error) {
	var f FPU
	if _, err := ioctlPtr(v.fd, kvmGetFPU, unsafe.Pointer(&f)); err != nil {
		return FPU{}, fmt.Errorf("KVM_GET_FPU: %w", err)
	}
	return f, nil
}

// SetFPU writes the x87/SSE state (KVM_SET_FPU).
func (v *VCPU) SetFPU(f *FPU) error {
	if _, err := ioctlPtr(v.fd, kvmSetFPU, unsafe.Pointer(f)); err != nil {
		return fmt.Errorf("KVM_SET_FPU: %w", err)
	}
	return nil
}

// GetMSRs reads the MSRs whose Index is set in entries into their Data
// fields (KVM_GET_MSRS). It returns how many the kernel read: entries
// [0, n) are valid, and entries[n] (if n < len(entries)) is the first MSR the
// kernel refused.
func (v *VCPU) GetMSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	buf := newMSRs(entries)
	n, err := ioctlPtr(v.fd, kvmGetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_MSRS: %w", err)
	}
	copy(entries, msrsEntries(buf, len(entries))[:min(int(n), len(entries))])
	return int(n), nil
}

// SetMSRs writes MSRs (KVM_SET_MSRS). It returns how many the kernel
// accepted: entries[n] (if n < len(entries)) is the first one it refused.
func (v *VCPU) SetMSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	buf := newMSRs(entries)
	n, err := ioctlPtr(v.fd, kvmSetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return 0, fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	return int(n), nil
}

// newMSRs builds a struct kvm_msrs holding a copy of entries.
func newMSRs(entries []MSREntry) []uint64 {
	const words = int(unsafe.Sizeof(MSREntry{})) / 8
	buf := make([]uint64, sizeofMSRs/8+len(entries)*words)
	*(*uint32)(unsafe.Pointer(&buf[0])) = uint32(len(entries))
	copy(msrsEntries(buf, len(entries)), entries)
	return buf
}

// msrsEntries returns the n entries of a struct kvm_msrs buffer.
func msrsEntries(buf []uint64, n int) []MSREntry {
	return unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[sizeofMSRs/8])), n)
}

// SetCPUID2 sets the CPUID leaves the guest sees (KVM_SET_CPUID2). Call it
// before the first Run.
func (v *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	buf := newCPUID2(len(entries))
	if len(entries) > 0 {
		copy(unsafe.Slice((*CPUIDEntry)(unsafe.Pointer(&buf[sizeofCPUID2/8])), len(entries)), entries)
	}
	if _, err := ioctlPtr(v.fd, kvmSetCPUID2, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2(%d entries): %w", len(entries), err)
	}
	return nil
}

// GetCPUID2 returns the CPUID leaves set on the vCPU (KVM_GET_CPUID2).
func (v *VCPU) GetCPUID2() ([]CPUIDEntry, error) {
	n := initialCPUIDEntries
	for {
		buf := newCPUID2(n)
		_, err := ioctlPtr(v.fd, kvmGetCPUID2, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			// The kernel reports the needed count in nent.
			need := int(*(*uint32)(unsafe.Pointer(&buf[0])))
			if need <= n {
				need = 2 * n
			}
			if need > maxCPUIDEntries {
				return nil, fmt.Errorf("KVM_GET_CPUID2: more than %d entries: %w", maxCPUIDEntries, err)
			}
			n = need
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_CPUID2: %w", err)
		}
		return cpuid2Entries(buf), nil
	}
}

// GetLAPIC reads the local APIC register page (KVM_GET_LAPIC); needs the
// in-kernel irqchip.
func (v *VCPU) GetLAPIC() (LAPICState, error) {
	var l LAPICState
	if _, err := ioctlPtr(v.fd, kvmGetLAPIC, unsafe.Pointer(&l)); err != nil {
		return LAPICState{}, fmt.Errorf("KVM_GET_LAPIC: %w", err)
	}
	return l, nil
}

// SetLAPIC writes the local APIC register page (KVM_SET_LAPIC).
func (v *VCPU) SetLAPIC(l *LAPICState) error {
	if _, err := ioctlPtr(v.fd, kvmSetLAPIC, unsafe.Pointer(l)); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC: %w", err)
	}
	return nil
}

// GetMPState reads the multiprocessing state (KVM_GET_MP_STATE).
func (v *VCPU) GetMPState() (MPState, error) {
	var s MPState
	if _, err := ioctlPtr(v.fd, kvmGetMPState, unsafe.Pointer(&s)); err != nil {
		return MPState{}, fmt.Errorf("KVM_GET_MP_STATE: %w", err)
	}
	return s, nil
}

// SetMPState writes the multiprocessing state (KVM_SET_MP_STATE).
func (v *VCPU) SetMPState(s *MPState) error {
	if _, err := ioctlPtr(v.fd, kvmSetMPState, unsafe.Pointer(s)); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE(%d): %w", s.State, err)
	}
	return nil
}

// GetVCPUEvents reads pending exceptions, interrupts, NMIs and SMIs
// (KVM_GET_VCPU_EVENTS).
func (v *VCPU) GetVCPUEvents() (VCPUEvents, error) {
	var e VCPUEvents
	if _, err := ioctlPtr(v.fd, kvmGetVCPUEvents, unsafe.Pointer(&e)); err != nil {
		return VCPUEvents{}, fmt.Errorf("KVM_GET_VCPU_EVENTS: %w", err)
	}
	return e, nil
}

// SetVCPUEvents writes pending events (KVM_SET_VCPU_EVENTS); e.Flags says
// which optional fields are valid.
func (v *VCPU) SetVCPUEvents(e *VCPUEvents) error {
	if _, err := ioctlPtr(v.fd, kvmSetVCPUEvents, unsafe.Pointer(e)); err != nil {
		return fmt.Errorf("KVM_SET_VCPU_EVENTS: %w", err)
	}
	return nil
}

// GetDebugRegs reads DR0-3, DR6 and DR7 (KVM_GET_DEBUGREGS).
func (v *VCPU) GetDebugRegs() (DebugRegs, error) {
	var d DebugRegs
	if _, err := ioctlPtr(v.fd, kvmGetDebugRegs, unsafe.Pointer(&d)); err != nil {
		return DebugRegs{}, fmt.Errorf("KVM_GET_DEBUGREGS: %w", err)
	}
	return d, nil
}

// SetDebugRegs writes DR0-3, DR6 and DR7 (KVM_SET_DEBUGREGS).
func (v *VCPU) SetDebugRegs(d *DebugRegs) error {
	if _, err := ioctlPtr(v.fd, kvmSetDebugRegs, unsafe.Pointer(d)); err != nil {
		return fmt.Errorf("KVM_SET_DEBUGREGS: %w", err)
	}
	return nil
}

// GetXSave reads the first 4 KiB of the XSAVE area (KVM_GET_XSAVE). With
// KVM_CAP_XSAVE2 reporting more than 4096 bytes (AMX), state beyond 4 KiB
// is not captured.
func (v *VCPU) GetXSave() (XSave, error) {
	var x XSave
	if _, err := ioctlPtr(v.fd, kvmGetXSave, unsafe.Pointer(&x)); err != nil {
		return XSave{}, fmt.Errorf("KVM_GET_XSAVE: %w", err)
	}
	return x, nil
}

// SetXSave writes the XSAVE area (KVM_SET_XSAVE). Since Linux 5.17 the
// kernel reads the vCPU's whole uabi XSAVE size, which exceeds 4 KiB once
// the process has AMX guest permission, so x is passed through SetXSave2's
// zero-padded, guarded buffer rather than directly.
func (v *VCPU) SetXSave(x *XSave) error {
	return v.SetXSave2(unsafe.Slice((*byte)(unsafe.Pointer(x)), XSaveMinSize))
}

// GetXCRS reads the extended control registers (KVM_GET_XCRS).
func (v *VCPU) GetXCRS() (XCRS, error) {
	var x XCRS
	if _, err := ioctlPtr(v.fd, kvmGetXCRS, unsafe.Pointer(&x)); err != nil {
		return XCRS{}, fmt.Errorf("KVM_GET_XCRS: %w", err)
	}
	return x, nil
}

// SetXCRS writes the extended control registers (KVM_SET_XCRS).
func (v *VCPU) SetXCRS(x *XCRS) error {
	if _, err := ioctlPtr(v.fd, kvmSetXCRS, unsafe.Pointer(x)); err != nil {
		return fmt.Errorf("KVM_SET_XCRS: %w", err)
	}
	return nil
}

// KVMClockCtrl tells the guest, through its kvmclock page, that it was
// paused by the host so its watchdogs do not fire (KVM_KVMCLOCK_CTRL). It
// fails with EINVAL if the guest has not enabled kvmclock.
func (v *VCPU) KVMClockCtrl() error {
	if _, err := ioctl(v.fd, kvmKVMClockCtrl, 0); err != nil {
		return fmt.Errorf("KVM_KVMCLOCK_CTRL: %w", err)
	}
	return nil
}

// SetTSCKHz sets the guest TSC frequency (KVM_SET_TSC_KHZ, needs
// KVM_CAP_TSC_CONTROL).
func (v *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctl(v.fd, kvmSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ(%d): %w", khz, err)
	}
	return nil
}

// GetTSCKHz returns the guest TSC frequency (KVM_GET_TSC_KHZ, needs
// KVM_CAP_GET_TSC_KHZ).
func (v *VCPU) GetTSCKHz() (uint32, error) {
	r, err := ioctl(v.fd, kvmGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ: %w", err)
	}
	return uint32(r), nil
}

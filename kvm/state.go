package kvm

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVM_GET_XSAVE2 = _IOR(KVMIO, 0xcf, struct kvm_xsave). The size field says
// 4096, but the kernel writes the vCPU's whole uabi XSAVE size, which is
// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) and can exceed 4 KiB (AMX).
const kvmGetXSave2 = iocRead<<iocDirShift | unsafe.Sizeof(XSave{})<<iocSizeShift | kvmio<<iocTypeShift | 0xcf<<iocNRShift

const (
	// XSaveMinSize is sizeof(struct kvm_xsave): the legacy XSAVE area size,
	// and the least KVM_CAP_XSAVE2 reports.
	XSaveMinSize = int(unsafe.Sizeof(XSave{}))

	// XSaveMaxSize bounds the XSAVE areas this package passes to the kernel.
	// KVM_GET_XSAVE2 writes, and KVM_SET_XSAVE reads, the vCPU's uabi XSAVE
	// size, which user space cannot query per vCPU. Buffers are this big
	// (current CPUs need at most about 11 KiB, with AMX) and end in an
	// inaccessible guard page, so a kernel that wants more gets EFAULT
	// instead of reading or writing past Go memory.
	XSaveMaxSize = 64 << 10

	// msrChunk is the number of MSRs per KVM_GET/SET_MSRS call; the kernel
	// rejects nmsrs >= MAX_IO_MSRS (256) with E2BIG.
	msrChunk = 128

	// tscTolerancePPM is how far the host TSC frequency may differ from the
	// snapshot's before RestoreState scales the guest TSC (250 ppm, as
	// Firecracker and QEMU).
	tscTolerancePPM = 250
)

// guardedBuf maps n bytes (rounded up to pages) of zeroed memory followed by
// a PROT_NONE guard page. free unmaps it.
func guardedBuf(n int) (buf []byte, free func(), err error) {
	page := unix.Getpagesize()
	n = (n + page - 1) / page * page
	m, err := unix.Mmap(-1, 0, n+page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("map XSAVE buffer: %w", err)
	}
	if err := unix.Mprotect(m[n:], unix.PROT_NONE); err != nil {
		unix.Munmap(m)
		return nil, nil, fmt.Errorf("guard XSAVE buffer: %w", err)
	}
	return m[:n:n], func() { unix.Munmap(m) }, nil
}

// XSaveSize returns the size of the vCPUs' XSAVE area:
// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM (kernel 5.17+), or
// XSaveMinSize when the kernel does not have the capability.
func (vm *VM) XSaveSize() (int, error) {
	n, err := vm.CheckExtension(CapXSave2)
	if err != nil {
		return 0, err
	}
	return max(n, XSaveMinSize), nil
}

// GetXSave2 reads the vCPU's whole XSAVE area, size bytes (VM.XSaveSize),
// with KVM_GET_XSAVE2 (kernel 5.17+). It fails if the kernel wrote more than
// size bytes, rather than dropping state.
func (v *VCPU) GetXSave2(size int) ([]byte, error) {
	if size < XSaveMinSize || size > XSaveMaxSize || size%4 != 0 {
		return nil, fmt.Errorf("KVM_GET_XSAVE2: size %d outside [%d, %d] or not a multiple of 4", size, XSaveMinSize, XSaveMaxSize)
	}
	b, err := v.getXSave2()
	if err != nil {
		return nil, err
	}
	if len(b) > size {
		return nil, fmt.Errorf("KVM_GET_XSAVE2: the XSAVE area holds data beyond %d bytes (up to byte %d)", size, len(b))
	}
	return append(b, make([]byte, size-len(b))...), nil
}

// getXSave2 issues KVM_GET_XSAVE2 into an XSaveMaxSize guarded buffer and
// returns a copy of it without its trailing zero bytes, but at least
// XSaveMinSize bytes and a multiple of 4. SetXSave2 pads with zeros, so
// nothing is lost, and a guest that never used AMX does not carry 8 KiB of
// zero tile data.
func (v *VCPU) getXSave2() ([]byte, error) {
	buf, free, err := guardedBuf(XSaveMaxSize)
	if err != nil {
		return nil, err
	}
	defer free()
	if _, err := ioctlPtr(v.fd, kvmGetXSave2, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("KVM_GET_XSAVE2: %w", err)
	}
	n := max(XSaveMinSize, (lastNonZero(buf[:XSaveMaxSize])+1+3)&^3)
	return slices.Clone(buf[:n]), nil
}

// SetXSave2 writes an XSAVE area of any size from XSaveMinSize to
// XSaveMaxSize (KVM_SET_XSAVE, which reads the vCPU's uabi XSAVE size). The
// area is copied into a zero-padded buffer, so one shorter than the kernel
// expects restores the components it holds; the header's XSTATE_BV says
// which.
func (v *VCPU) SetXSave2(b []byte) error {
	if len(b) < XSaveMinSize || len(b) > XSaveMaxSize {
		return fmt.Errorf("KVM_SET_XSAVE: %d bytes, want %d to %d", len(b), XSaveMinSize, XSaveMaxSize)
	}
	buf, free, err := guardedBuf(XSaveMaxSize)
	if err != nil {
		return err
	}
	defer free()
	copy(buf, b)
	if _, err := ioctlPtr(v.fd, kvmSetXSave, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE: %w", err)
	}
	return nil
}

func lastNonZero(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] != 0 {
			return i
		}
	}
	return -1
}

// DirtyBitmap fetches and clears the dirty log of memory slot slot, which
// holds pages 4 KiB pages and was registered with MemLogDirtyPages
// (KVM_GET_DIRTY_LOG). Bit i (word i/64, bit i%64) is page i of the slot.
func (vm *VM) DirtyBitmap(slot uint32, pages uint64) ([]uint64, error) {
	if pages == 0 || pages > 1<<40 {
		return nil, fmt.Errorf("KVM_GET_DIRTY_LOG(slot %d): bad page count %d", slot, pages)
	}
	bitmap := make([]uint64, (pages+63)/64)
	if err := vm.GetDirtyLog(slot, bitmap); err != nil {
		return nil, err
	}
	return bitmap, nil
}

// VCPUState is everything KVM holds for one x86 vCPU, as a snapshot needs
// it (Firecracker's VcpuState). Fixed-size members are the kernel's own
// structs.
type VCPUState struct {
	CPUID     []CPUIDEntry // KVM_GET_CPUID2
	MPState   MPState
	Regs      Regs
	Sregs     Sregs
	FPU       FPU    // restored only when XSave is empty
	XSave     []byte // XSAVE area, XSaveMinSize or more bytes; empty if KVM has none
	XCRS      XCRS   // NrXCRs 0: the host has no XCRs and none are restored
	DebugRegs DebugRegs
	LAPIC     LAPICState
	MSRs      []MSREntry
	Events    VCPUEvents
	TSCKHz    uint32 // guest TSC frequency; 0 if KVM_GET_TSC_KHZ is unavailable
}

// isUnsupported reports an ioctl the kernel does not have.
func isUnsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

// SaveState captures the vCPU's state. msrIndices is the list of MSRs to
// save (System.MSRsToSave, usually narrowed once with ReadableMSRs); any
// MSR in it that KVM refuses is an error. Every vCPU of the VM must be out
// of KVM_RUN (paused) while any of them is saved.
//
// The order is Firecracker's: KVM_GET_MP_STATE first, because it lets the
// local APIC accept pending INIT/SIPI events and so changes other state;
// KVM_GET_VCPU_EVENTS last. If IA32_TSC_DEADLINE reads 0 it is saved as the
// current TSC (Firecracker's fix_zero_tsc_deadline_msr): a timer armed but
// not yet delivered is then delivered after restore instead of being lost.
// A 0 deadline is ignored by KVM unless the LAPIC timer is in TSC-deadline
// mode.
func (v *VCPU) SaveState(msrIndices []uint32) (*VCPUState, error) {
	s := &VCPUState{}
	var err error
	if s.MPState, err = v.GetMPState(); err != nil {
		return nil, err
	}
	if s.Regs, err = v.GetRegs(); err != nil {
		return nil, err
	}
	if s.Sregs, err = v.GetSregs(); err != nil {
		return nil, err
	}
	if s.XSave, err = v.saveXSave(); err != nil {
		return nil, err
	}
	if s.FPU, err = v.GetFPU(); err != nil {
		return nil, err
	}
	if s.XCRS, err = v.GetXCRS(); err != nil {
		if !isUnsupported(err) {
			return nil, err
		}
		s.XCRS = XCRS{}
	}
	if s.DebugRegs, err = v.GetDebugRegs(); err != nil {
		return nil, err
	}
	if s.LAPIC, err = v.GetLAPIC(); err != nil {
		return nil, err
	}
	if khz, err := v.GetTSCKHz(); err == nil {
		s.TSCKHz = khz
	}
	if s.CPUID, err = v.GetCPUID2(); err != nil {
		return nil, err
	}
	if s.MSRs, err = v.saveMSRs(msrIndices); err != nil {
		return nil, err
	}
	if s.Events, err = v.GetVCPUEvents(); err != nil {
		return nil, err
	}
	return s, nil
}

// saveXSave reads the XSAVE area with KVM_GET_XSAVE2 (trimmed of trailing
// zeros, see getXSave2), or KVM_GET_XSAVE on kernels without it.
func (v *VCPU) saveXSave() ([]byte, error) {
	b, err := v.getXSave2()
	if err == nil {
		return b, nil
	}
	if !isUnsupported(err) {
		return nil, err
	}
	x, err := v.GetXSave()
	if err != nil {
		if isUnsupported(err) {
			return nil, nil // no XSAVE: the FPU state is used
		}
		return nil, err
	}
	return slices.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&x)), XSaveMinSize)), nil
}

func (v *VCPU) saveMSRs(indices []uint32) ([]MSREntry, error) {
	out := make([]MSREntry, len(indices))
	for i, idx := range indices {
		out[i].Index = idx
	}
	for off := 0; off < len(out); off += msrChunk {
		chunk := out[off:min(off+msrChunk, len(out))]
		n, err := v.GetMSRs(chunk)
		if err != nil {
			return nil, err
		}
		if n < len(chunk) {
			return nil, fmt.Errorf("KVM_GET_MSRS: vCPU %d refused MSR %#x (drop it with ReadableMSRs)", v.id, chunk[n].Index)
		}
	}
	var tsc uint64
	for _, e := range out {
		if e.Index == MSRIA32TSC {
			tsc = max(tsc, e.Data)
		}
	}
	if tsc != 0 {
		for i := range out {
			if out[i].Index == MSRIA32TSCDeadline && out[i].Data == 0 {
				out[i].Data = tsc
			}
		}
	}
	return out, nil
}

// deferredMSR reports MSRs restored after all others: IA32_TSC_DEADLINE
// must follow IA32_TSC, or KVM primes the deadline timer against the wrong
// TSC and the guest's next timer interrupt can be lost (Firecracker's
// DEFERRED_MSRS).
func deferredMSR(index uint32) bool { return index == MSRIA32TSCDeadline }

// RestoreState loads s into the vCPU, which must be freshly created on a
// VM whose irqchip exists and, for every vCPU, before the first Run. Restore
// the VM's state (VM.RestoreState) first, as Firecracker does.
//
// The order is Firecracker's: the TSC frequency (scaled when the host's
// differs by more than 250 ppm), CPUID (later ioctls check against it), MP
// state, regs, sregs (which restore APIC_BASE, so before the LAPIC), XSAVE
// (or the FPU), XCRs, debug registers, LAPIC (before the MSRs: the
// TSC-deadline MSR only restores onto a configured LAPIC), the MSRs (the
// TSC deadline last), and vCPU events last, because KVM_SET_REGS clears
// pending exceptions. Finally KVM_KVMCLOCK_CTRL tells a kvmclock guest it
// was stopped so its watchdogs do not fire; its failure (guest without
// kvmclock) is ignored.
//
// Events carry the flags KVM_GET_VCPU_EVENTS returned; the restoring VM
// must have the same optional capabilities enabled (e.g.
// KVM_CAP_EXCEPTION_PAYLOAD) or KVM_SET_VCPU_EVENTS fails with EINVAL.
func (v *VCPU) RestoreState(s *VCPUState) error {
	if s == nil {
		return errors.New("restore vCPU state: nil state")
	}
	if s.TSCKHz != 0 {
		if err := v.scaleTSC(s.TSCKHz); err != nil {
			return err
		}
	}
	if len(s.CPUID) > 0 {
		if err := v.setCPUIDKept(s.CPUID); err != nil {
			return err
		}
	}
	if err := v.SetMPState(&s.MPState); err != nil {
		return err
	}
	if err := v.SetRegs(&s.Regs); err != nil {
		return err
	}
	if err := v.SetSregs(&s.Sregs); err != nil {
		return err
	}
	if len(s.XSave) > 0 {
		if err := v.SetXSave2(s.XSave); err != nil {
			return err
		}
	} else if err := v.SetFPU(&s.FPU); err != nil {
		return err
	}
	if s.XCRS.NrXCRs > 0 {
		if s.XCRS.NrXCRs > MaxXCRs {
			return fmt.Errorf("KVM_SET_XCRS: %d XCRs, at most %d", s.XCRS.NrXCRs, MaxXCRs)
		}
		if err := v.SetXCRS(&s.XCRS); err != nil {
			return err
		}
	}
	if err := v.SetDebugRegs(&s.DebugRegs); err != nil {
		return err
	}
	if err := v.SetLAPIC(&s.LAPIC); err != nil {
		return err
	}
	first := make([]MSREntry, 0, len(s.MSRs))
	var last []MSREntry
	for _, e := range s.MSRs {
		if deferredMSR(e.Index) {
			last = append(last, e)
		} else {
			first = append(first, e)
		}
	}
	if err := v.restoreMSRs(first); err != nil {
		return err
	}
	if err := v.restoreMSRs(last); err != nil {
		return err
	}
	if err := v.SetVCPUEvents(&s.Events); err != nil {
		return err
	}
	_ = v.KVMClockCtrl()
	return nil
}

// setCPUIDKept sets a saved CPUID table and checks that KVM kept it.
// KVM_SET_CPUID2 may silently drop leaves: a 6.18 host was seen to drop
// the AMX leaves 0x1d and 0x1e (tile information), which its own
// KVM_GET_SUPPORTED_CPUID lists. A dropped leaf whose registers are all
// zero is harmless: CPUID of a leaf within the maximum basic or extended
// leaf that the table lacks returns zeros (KVM's kvm_cpuid), which is what
// the guest read before. A dropped leaf with any bit set would change what
// the running guest sees, so the restore fails naming it.
func (v *VCPU) setCPUIDKept(entries []CPUIDEntry) error {
	if err := v.SetCPUID2(entries); err != nil {
		return err
	}
	got, err := v.GetCPUID2()
	if err != nil {
		return err
	}
	for _, e := range DroppedCPUID(entries, got) {
		if e.EAX|e.EBX|e.ECX|e.EDX != 0 {
			return fmt.Errorf("CPUID leaf %#x subleaf %d (eax %#x ebx %#x ecx %#x edx %#x) is not kept by this host's KVM: the snapshot needs a CPU like the one it was taken on",
				e.Function, e.Index, e.EAX, e.EBX, e.ECX, e.EDX)
		}
	}
	return nil
}

// DroppedCPUID returns the entries of set (given to KVM_SET_CPUID2) that
// are missing from got (KVM_GET_CPUID2 afterwards), matched by leaf and
// subleaf. KVM recomputes some bits of the entries it keeps (OSXSAVE, the
// XSAVE sizes), so values are not compared.
func DroppedCPUID(set, got []CPUIDEntry) []CPUIDEntry {
	type key struct{ fn, index uint32 }
	kept := make(map[key]bool, len(got))
	for _, e := range got {
		kept[key{e.Function, e.Index}] = true
	}
	var dropped []CPUIDEntry
	for _, e := range set {
		if !kept[key{e.Function, e.Index}] {
			dropped = append(dropped, e)
		}
	}
	return dropped
}

func (v *VCPU) restoreMSRs(entries []MSREntry) error {
	for off := 0; off < len(entries); off += msrChunk {
		chunk := entries[off:min(off+msrChunk, len(entries))]
		n, err := v.SetMSRs(chunk)
		if err != nil {
			return err
		}
		if n < len(chunk) {
			return fmt.Errorf("KVM_SET_MSRS: this host's KVM refused MSR %#x = %#x on vCPU %d", chunk[n].Index, chunk[n].Data, v.id)
		}
	}
	return nil
}

// scaleTSC sets the guest TSC frequency to khz unless the current one is
// within tscTolerancePPM of it.
func (v *VCPU) scaleTSC(khz uint32) error {
	if cur, err := v.GetTSCKHz(); err == nil {
		diff := int64(cur) - int64(khz)
		if diff < 0 {
			diff = -diff
		}
		if diff*1_000_000 <= int64(khz)*tscTolerancePPM {
			return nil
		}
	}
	if err := v.SetTSCKHz(khz); err != nil {
		return fmt.Errorf("guest TSC runs at %d kHz in the snapshot and cannot be scaled on this host: %w", khz, err)
	}
	return nil
}

// VMState is the VM-wide KVM state of an x86 VM with the in-kernel irqchip
// (Firecracker's VmState without the memory layout and resource allocator,
// which belong to the VMM).
type VMState struct {
	PICMaster IRQChip
	PICSlave  IRQChip
	IOAPIC    IRQChip
	PIT       *PITState2 // nil: the VM has no in-kernel PIT
	// Clock is KVM_GET_CLOCK without ClockTSCStable and ClockHostTSC, which
	// KVM_SET_CLOCK refuses on older kernels. ClockRealtime stays set when
	// the kernel (5.16+, TSC-based host clock) returned a CLOCK_REALTIME
	// reference, so RestoreStateWith can advance the clock.
	Clock ClockData
}

// SaveState reads the irqchips, the PIT (if any) and kvmclock. All vCPUs
// must be paused.
func (vm *VM) SaveState() (*VMState, error) {
	s := &VMState{}
	var err error
	if s.PICMaster, err = vm.GetIRQChip(IRQChipPICMaster); err != nil {
		return nil, err
	}
	if s.PICSlave, err = vm.GetIRQChip(IRQChipPICSlave); err != nil {
		return nil, err
	}
	if s.IOAPIC, err = vm.GetIRQChip(IRQChipIOAPIC); err != nil {
		return nil, err
	}
	pit, err := vm.GetPIT2()
	switch {
	case err == nil:
		s.PIT = &pit
	case errors.Is(err, unix.ENXIO):
		// No in-kernel PIT.
	default:
		return nil, err
	}
	if s.Clock, err = vm.GetClock(); err != nil {
		return nil, err
	}
	s.Clock.Flags &^= ClockTSCStable | ClockHostTSC
	s.Clock.HostTSC = 0
	return s, nil
}

// RestoreOptions are choices made when a snapshot is loaded.
type RestoreOptions struct {
	// ClockRealtime advances kvmclock by the wall-clock time that passed
	// since the snapshot (KVM_CLOCK_REALTIME; Firecracker's clock_realtime).
	// Off, the guest's clock resumes where it stopped. When the saved
	// clock has no CLOCK_REALTIME reference (the kernel gave none: older
	// than 5.16, clocksource not the TSC, some nested KVM), the clock is
	// advanced by the time since SavedAt instead.
	ClockRealtime bool
	// SavedAt is the host wall time at which the clock was saved (the
	// snapshot header's Created), for ClockRealtime without a
	// CLOCK_REALTIME reference.
	SavedAt time.Time
	// now is the wall clock (tests).
	now func() time.Time
}

// ErrNoRealtimeClock is returned by RestoreStateWith for ClockRealtime when
// the snapshot holds no CLOCK_REALTIME reference (it was taken on a kernel
// older than 5.16 or whose clocksource was not the TSC) and no SavedAt.
var ErrNoRealtimeClock = errors.New("snapshot kvmclock has no CLOCK_REALTIME reference (host kernel < 5.16 or clocksource not tsc when it was taken) and no creation time")

// RestoreState restores the VM-wide state with the clock frozen at snapshot
// time (Firecracker's default). Call it after creating the irqchip and PIT
// and before restoring the vCPUs.
func (vm *VM) RestoreState(s *VMState) error { return vm.RestoreStateWith(s, RestoreOptions{}) }

// RestoreStateWith restores the PIT, kvmclock and the irqchips, in
// Firecracker's order.
func (vm *VM) RestoreStateWith(s *VMState, o RestoreOptions) error {
	if s == nil {
		return errors.New("restore VM state: nil state")
	}
	if s.PIT != nil {
		if err := vm.SetPIT2(s.PIT); err != nil {
			return err
		}
	}
	clk := ClockData{Clock: s.Clock.Clock}
	if o.ClockRealtime {
		clk.Clock = advancedClock(s.Clock, o)
		switch {
		case s.Clock.Flags&ClockRealtime != 0:
			clk.Flags = ClockRealtime
			clk.Realtime = s.Clock.Realtime
		case o.SavedAt.IsZero():
			return ErrNoRealtimeClock
		}
	}
	if err := vm.SetClock(&clk); err != nil {
		return err
	}
	for _, c := range []struct {
		chip *IRQChip
		id   uint32
	}{{&s.PICMaster, IRQChipPICMaster}, {&s.PICSlave, IRQChipPICSlave}, {&s.IOAPIC, IRQChipIOAPIC}} {
		if c.chip.ChipID != c.id {
			return fmt.Errorf("KVM_SET_IRQCHIP: saved chip id %d where %d belongs", c.chip.ChipID, c.id)
		}
		if err := vm.SetIRQChip(c.chip); err != nil {
			return err
		}
	}
	return nil
}

// advancedClock is the kvmclock value to restore for ClockRealtime: with a
// CLOCK_REALTIME reference the saved value (KVM_SET_CLOCK advances it by
// the kernel's own wall-clock delta); without, the saved value plus the
// host wall time elapsed since o.SavedAt (never moved backwards).
func advancedClock(c ClockData, o RestoreOptions) uint64 {
	if c.Flags&ClockRealtime != 0 || o.SavedAt.IsZero() {
		return c.Clock
	}
	now := time.Now
	if o.now != nil {
		now = o.now
	}
	if d := now().Sub(o.SavedAt); d > 0 {
		return c.Clock + uint64(d)
	}
	return c.Clock
}

package kvm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Expected values computed with <linux/kvm.h> as in uapi_test.go.
func TestStateIoctlNumbers(t *testing.T) {
	if kvmGetXSave2 != 0x9000AECF {
		t.Errorf("KVM_GET_XSAVE2 = %#08x, want 0x9000aecf", kvmGetXSave2)
	}
	if XSaveMinSize != 4096 {
		t.Errorf("XSaveMinSize = %d, want 4096", XSaveMinSize)
	}
	// The state structs a snapshot stores keep their kernel sizes.
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_irqchip", unsafe.Sizeof(IRQChip{}), 520},
		{"kvm_pit_state2", unsafe.Sizeof(PITState2{}), 112},
		{"kvm_clock_data", unsafe.Sizeof(ClockData{}), 48},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"kvm_xcrs", unsafe.Sizeof(XCRS{}), 392},
		{"kvm_debugregs", unsafe.Sizeof(DebugRegs{}), 128},
		{"kvm_mp_state", unsafe.Sizeof(MPState{}), 4},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestMSRFilter(t *testing.T) {
	for _, tc := range []struct {
		index uint32
		want  bool
	}{
		{MSRIA32TSC, true},
		{MSRIA32TSCDeadline, true},
		{MSRIA32TSCAdjust, true},
		{MSRKVMSystemTimeNew, true},
		{MSRKVMWallClockNew, true},
		{MSRKVMAsyncPFEn, true},
		{MSRKVMStealTime, true},
		{MSRKVMPVEOIEn, true},
		{MSRKVMAsyncPFInt, true},
		{MSRKVMMigrationCtl, false},
		{0x4b564d07, false}, // MSR_KVM_ASYNC_PF_ACK
		{MSRIA32MCGCtl, false},
		{0x12, false},       // MSR_KVM_SYSTEM_TIME (old)
		{0x10a, false},      // MSR_IA32_ARCH_CAPABILITIES (feature MSR)
		{0x345, false},      // MSR_IA32_PERF_CAPABILITIES
		{0x480, false},      // MSR_IA32_VMX_BASIC
		{0xc0010117, false}, // MSR_VM_HSAVE_PA
		{MSREFER, true},
		{MSRLSTAR, true},
		{MSRKernelGSBase, true},
		{MSRIA32XSS, true},
		{MSRIA32XFD, true},
		{0xc001011f, true},
		{0x277, true}, // PAT
		{0x47f, true}, // last MCE bank MSR
		{0x800, true}, // x2APIC
		{0xbff, true},
		{0xc00, false},
	} {
		if got := MSRShouldSave(tc.index); got != tc.want {
			t.Errorf("MSRShouldSave(%#x) = %v, want %v", tc.index, got, tc.want)
		}
	}

	cpuid := []CPUIDEntry{
		{Function: 1, EDX: 1<<cpuidFeatureEDXMTRR | 1<<cpuidFeatureEDXMCE},
		{Function: 7, Index: 0, ECX: 1 << cpuid7ECXShadowStack},
		{Function: kvmCPUIDFeatures, EAX: 1<<kvmFeatureClocksource2 | 1<<kvmFeatureStealTime},
	}
	extra := MSRsByCPUID(cpuid)
	for _, want := range []uint32{0x200, 0x20f, 0x250, MSRMTRRDefType, MSRIA32CRPAT, 0x400, 0x47f,
		MSRIA32UCET, MSRIA32SCET, MSRIA32PL0SSP + 3, MSRIA32IntSSPTab, MSRKVMSystemTimeNew, MSRKVMWallClockNew, MSRKVMStealTime} {
		if !slices.Contains(extra, want) {
			t.Errorf("MSRsByCPUID lacks %#x", want)
		}
	}
	for _, no := range []uint32{MSRIA32BNDCFGS, MSRKVMAsyncPFEn, MSRKVMPVEOIEn} {
		if slices.Contains(extra, no) {
			t.Errorf("MSRsByCPUID has %#x, whose CPUID bit is clear", no)
		}
	}
	if got := MSRsByCPUID(nil); len(got) != 0 {
		t.Errorf("MSRsByCPUID(nil) = %#x", got)
	}

	got := mergeMSRs([]uint32{0x10, 0x12, 0x6e0, 0x10, 0x4b564d01}, []uint32{0x4b564d01, 0x277, 0x277})
	if want := []uint32{0x10, 0x6e0, 0x4b564d01, 0x277}; !slices.Equal(got, want) {
		t.Errorf("mergeMSRs = %#x, want %#x", got, want)
	}
}

// TestGuardedBuf checks that the page after an XSAVE buffer faults for the
// kernel: a read(2) running past it stops at the guard.
func TestGuardedBuf(t *testing.T) {
	buf, free, err := guardedBuf(XSaveMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	if len(buf) != XSaveMaxSize {
		t.Fatalf("len = %d", len(buf))
	}
	f, err := os.Open("/dev/zero")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	over := unsafe.Slice(&buf[0], len(buf)+4096)
	n, err := unix.Read(int(f.Fd()), over)
	if err == nil && n > len(buf) {
		t.Fatalf("read %d bytes into a %d-byte guarded buffer", n, len(buf))
	}
}

// Real-mode program for the snapshot round trip (at stateEntry).
var stateProgram = []byte{
	0xBA, 0xF8, 0x03, //       mov dx, 0x3f8
	0xB0, 'A', //              mov al, 'A'
	0xEE,       //             out dx, al         exit 1 on VM A: snapshot here
	0x88, 0xD8, //             mov al, bl         (bl set by the host before the snapshot)
	0xEE,                   // out dx, al         exit 2 on VM B
	0xFE, 0x06, 0x00, 0x20, // inc byte [0x2000]
	0xA0, 0x00, 0x20, //       mov al, [0x2000]
	0xEE,       //                   out dx, al         exit 3 on VM B
	0xEB, 0xFE, //             jmp $
}

// Offsets in the XSAVE area: XMM0 in the legacy region, XSTATE_BV in the
// header.
const (
	xsaveXMM      = 160
	xsaveXStateBV = 512
)

const (
	stateEntry = 0x1000
	stateData  = 0x2000
	stateMem   = 0x10000
)

// stateVM creates a VM with the in-kernel irqchip and PIT, 64 KiB of RAM at
// 0 and vCPU 0, as a VMM does before booting or restoring.
func stateVM(t *testing.T, sys *System) (*VM, []byte, *VCPU) {
	t.Helper()
	vm := createVM(t, sys)
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Logf("SetTSSAddr: %v", err)
	}
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(PITConfig{Flags: PITSpeakerDummy}); err != nil {
		t.Fatal(err)
	}
	mem := guestMemory(t, vm, 0, 0, stateMem, MemLogDirtyPages)
	return vm, mem, createVCPU(t, vm, 0)
}

func TestStateRoundTrip(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	sys := openKVM(t)
	vmA, memA, a := stateVM(t, sys)
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	copy(memA[stateEntry:], stateProgram)
	memA[stateData] = 0x40
	setupRealMode(t, a, stateEntry)
	expectIO(t, a, IODirectionOut, 'A', 0)

	// Complete the OUT (advance RIP) without running further guest code,
	// as a VMM must before saving: KVM finishes an I/O exit on the next
	// KVM_RUN.
	a.SetImmediateExit(true)
	if err := a.Run(); err != unix.EINTR {
		t.Fatalf("Run with immediate_exit = %v, want EINTR", err)
	}
	a.SetImmediateExit(false)

	// Put recognisable values into every kind of state.
	regs, err := a.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	regs.RBX = 'B'
	regs.R13 = 0x1313_1313_1313
	if err := a.SetRegs(&regs); err != nil {
		t.Fatal(err)
	}
	// XMM5 through the XSAVE area. (KVM_SET_FPU would not do: it leaves
	// XSTATE_BV alone, so on a vCPU that never ran KVM_GET_XSAVE reports
	// SSE in its init state.)
	xsize, err := vmA.XSaveSize()
	if err != nil {
		t.Fatal(err)
	}
	xs, err := a.GetXSave2(xsize)
	if err != nil {
		t.Fatal(err)
	}
	xs[xsaveXMM+16*5+7] = 0xa5
	xs[xsaveXStateBV] |= 1 << 1 // SSE state present
	if err := a.SetXSave2(xs); err != nil {
		t.Fatal(err)
	}
	dr, err := a.GetDebugRegs()
	if err != nil {
		t.Fatal(err)
	}
	dr.DB[0] = 0xdead0000
	if err := a.SetDebugRegs(&dr); err != nil {
		t.Fatal(err)
	}
	lapic, err := a.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	lapic.Regs[0x80] = 0x20 // TPR
	if err := a.SetLAPIC(&lapic); err != nil {
		t.Fatal(err)
	}
	if n, err := a.SetMSRs([]MSREntry{{Index: MSRIA32SysenterCS, Data: 0x77}, {Index: MSRKernelGSBase, Data: 0xffff8880_0000_1000}}); err != nil || n != 2 {
		t.Fatalf("SetMSRs = %d, %v", n, err)
	}
	ioapic, err := vmA.GetIRQChip(IRQChipIOAPIC)
	if err != nil {
		t.Fatal(err)
	}
	// struct kvm_ioapic_state: base_address, ioregsel, id, irr, pad, then
	// redirtbl[24] at offset 24. Program pin 4: vector 0x30, masked.
	*(*uint64)(unsafe.Pointer(&ioapic.Chip[24+4*8])) = 0x10030
	if err := vmA.SetIRQChip(&ioapic); err != nil {
		t.Fatal(err)
	}

	// Save: MSR list as a VMM computes it at boot, then the states.
	toSave, err := sys.MSRsToSave(cpuid)
	if err != nil {
		t.Fatal(err)
	}
	readable, err := a.ReadableMSRs(toSave)
	if err != nil {
		t.Fatal(err)
	}
	if len(readable) < len(toSave) {
		t.Logf("%d of %d MSRs to save are refused by this host", len(toSave)-len(readable), len(toSave))
	}
	// (EFER travels in sregs; KVM does not list it.)
	for _, must := range []uint32{MSRIA32TSC, MSRIA32SysenterCS, MSRKernelGSBase} {
		if !slices.Contains(readable, must) {
			t.Errorf("MSR %#x not in the list to save", must)
		}
	}
	vmState, err := vmA.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	st, err := a.SaveState(readable)
	if err != nil {
		t.Fatal(err)
	}
	if vmState.PIT == nil {
		t.Error("VM state has no PIT")
	}
	if vmState.Clock.Flags&(ClockTSCStable|ClockHostTSC) != 0 {
		t.Errorf("saved clock flags %#x", vmState.Clock.Flags)
	}
	// The CPUID saved is the vCPU's as KVM holds it (which may lack leaves
	// KVM declined when it was set).
	held, err := a.GetCPUID2()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.MSRs) != len(readable) || len(st.XSave) < XSaveMinSize || !slices.Equal(st.CPUID, held) {
		t.Fatalf("saved %d MSRs (want %d), XSAVE %d bytes, %d CPUID entries (KVM holds %d; equal: %v)",
			len(st.MSRs), len(readable), len(st.XSave), len(st.CPUID), len(held), slices.Equal(st.CPUID, held))
	}
	if d := DroppedCPUID(cpuid, held); len(d) > 0 {
		t.Logf("KVM declined %d of the %d CPUID leaves set (all zero: %v)", len(d), len(cpuid), allZero(d))
	}
	if st.XCRS.NrXCRs == 0 {
		t.Log("host has no XCRs")
	}
	t.Logf("saved: %d MSRs, XSAVE %d bytes, TSC %d kHz, MP state %d, clock %d ns flags %#x",
		len(st.MSRs), len(st.XSave), st.TSCKHz, st.MPState.State, vmState.Clock.Clock, vmState.Clock.Flags)
	var savedTSC uint64
	for _, e := range st.MSRs {
		if e.Index == MSRIA32TSC {
			savedTSC = e.Data
		}
	}

	// Restore into a second VM, with RAM copied as a memory file would be.
	vmB, memB, b := stateVM(t, sys)
	copy(memB, memA)
	if err := vmB.RestoreState(vmState); err != nil {
		t.Fatal(err)
	}
	if err := b.RestoreState(st); err != nil {
		t.Fatal(err)
	}

	// The guest continues where A stopped, with A's registers and memory.
	expectIO(t, b, IODirectionOut, 'B', 0)
	expectIO(t, b, IODirectionOut, 0x41, 0)
	if memB[stateData] != 0x41 || memA[stateData] != 0x40 {
		t.Errorf("guest data: B %#x, A %#x; want 0x41, 0x40", memB[stateData], memA[stateData])
	}
	regsB, err := b.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if regsB.R13 != regs.R13 {
		t.Errorf("R13 = %#x, want %#x", regsB.R13, regs.R13)
	}
	if f, err := b.GetFPU(); err != nil {
		t.Fatal(err)
	} else if f.XMM[5][7] != 0xa5 {
		t.Errorf("XMM5 byte 7 = %#x, want 0xa5 (restored through XSAVE)", f.XMM[5][7])
	}
	if d, err := b.GetDebugRegs(); err != nil {
		t.Fatal(err)
	} else if d.DB[0] != 0xdead0000 {
		t.Errorf("DR0 = %#x", d.DB[0])
	}
	if l, err := b.GetLAPIC(); err != nil {
		t.Fatal(err)
	} else if l.Regs[0x80] != 0x20 {
		t.Errorf("LAPIC TPR = %#x, want 0x20", l.Regs[0x80])
	}
	msrs := []MSREntry{{Index: MSRIA32SysenterCS}, {Index: MSRKernelGSBase}, {Index: MSRIA32TSC}}
	if n, err := b.GetMSRs(msrs); err != nil || n != 3 {
		t.Fatalf("GetMSRs = %d, %v", n, err)
	}
	if msrs[0].Data != 0x77 || msrs[1].Data != 0xffff8880_0000_1000 {
		t.Errorf("MSRs after restore: %+v", msrs[:2])
	}
	if msrs[2].Data < savedTSC {
		t.Errorf("TSC went back: %d after restore, %d saved", msrs[2].Data, savedTSC)
	}
	if x, err := b.GetXCRS(); err == nil && st.XCRS.NrXCRs > 0 && x.XCRs[0] != st.XCRS.XCRs[0] {
		t.Errorf("XCR0 = %+v, saved %+v", x.XCRs[0], st.XCRS.XCRs[0])
	}
	if c, err := vmB.GetIRQChip(IRQChipIOAPIC); err != nil {
		t.Fatal(err)
	} else if got := *(*uint64)(unsafe.Pointer(&c.Chip[24+4*8])); got != 0x10030 {
		t.Errorf("IOAPIC pin 4 = %#x, want 0x10030", got)
	}
	if c, err := vmB.GetIRQChip(IRQChipPICMaster); err != nil {
		t.Fatal(err)
	} else if !bytes.Equal(c.Chip[:16], vmState.PICMaster.Chip[:16]) {
		t.Errorf("PIC master %x, saved %x", c.Chip[:16], vmState.PICMaster.Chip[:16])
	}
	if p, err := vmB.GetPIT2(); err != nil {
		t.Fatal(err)
	} else if p.Channels[0].Mode != vmState.PIT.Channels[0].Mode || p.Flags != vmState.PIT.Flags {
		t.Errorf("PIT %+v, saved %+v", p, *vmState.PIT)
	}
	clk, err := vmB.GetClock()
	if err != nil {
		t.Fatal(err)
	}
	if clk.Clock < vmState.Clock.Clock || clk.Clock > vmState.Clock.Clock+10e9 {
		t.Errorf("kvmclock %d after restoring %d", clk.Clock, vmState.Clock.Clock)
	}

	// B holds the saved CPUID, leaf by leaf.
	if got, err := b.GetCPUID2(); err != nil {
		t.Fatal(err)
	} else if !slices.Equal(got, st.CPUID) {
		t.Errorf("CPUID after restore differs from the saved one:\nsaved %+v\ngot   %+v", st.CPUID, got)
	}

	// A second snapshot of B restores too (state read back is valid input).
	st2, err := b.SaveState(readable)
	if err != nil {
		t.Fatal(err)
	}
	_, _, c := stateVM(t, sys)
	if err := c.RestoreState(st2); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreClockRealtime(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := openKVM(t)
	// KVM only offers a CLOCK_REALTIME reference with its master clock,
	// which a vCPU sets up when it first enters the guest.
	vm, mem, v := stateVM(t, sys)
	copy(mem[stateEntry:], stateProgram)
	setupRealMode(t, v, stateEntry)
	expectIO(t, v, IODirectionOut, 'A', 0)
	st, err := vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if st.PIT == nil {
		t.Error("no PIT saved")
	}
	vm2, _, _ := stateVM(t, sys)
	// Without a CLOCK_REALTIME reference, the fallback: the saved clock
	// plus the wall time since SavedAt; no SavedAt, an error.
	noRef := *st
	noRef.Clock.Flags &^= ClockRealtime
	noRef.Clock.Realtime = 0
	if err := vm2.RestoreStateWith(&noRef, RestoreOptions{ClockRealtime: true}); !errors.Is(err, ErrNoRealtimeClock) {
		t.Fatalf("ClockRealtime without a reference or SavedAt: %v, want ErrNoRealtimeClock", err)
	}
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	o := RestoreOptions{ClockRealtime: true, SavedAt: fixed.Add(-5 * time.Second), now: func() time.Time { return fixed }}
	if err := vm2.RestoreStateWith(&noRef, o); err != nil {
		t.Fatal(err)
	}
	clk, err := vm2.GetClock()
	if err != nil {
		t.Fatal(err)
	}
	if clk.Clock < noRef.Clock.Clock+5e9 || clk.Clock > noRef.Clock.Clock+6e9 {
		t.Errorf("fallback: kvmclock %d, want %d + 5 s (within 1 s)", clk.Clock, noRef.Clock.Clock)
	}
	// A SavedAt in the future does not move the clock backwards.
	o.SavedAt = fixed.Add(time.Hour)
	if got := advancedClock(noRef.Clock, o); got != noRef.Clock.Clock {
		t.Errorf("SavedAt in the future: clock %d, want %d", got, noRef.Clock.Clock)
	}
	err = vm2.RestoreStateWith(st, RestoreOptions{ClockRealtime: true})
	if st.Clock.Flags&ClockRealtime == 0 {
		t.Skip("host kvmclock has no CLOCK_REALTIME reference")
	}
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the snapshot is 5 s old: the clock must jump forward.
	st.Clock.Realtime -= 5e9
	if err := vm2.RestoreStateWith(st, RestoreOptions{ClockRealtime: true}); err != nil {
		t.Fatal(err)
	}
	if clk, err = vm2.GetClock(); err != nil {
		t.Fatal(err)
	}
	if clk.Clock < st.Clock.Clock+5e9 {
		t.Errorf("kvmclock %d, want at least %d", clk.Clock, st.Clock.Clock+5e9)
	}
}

func TestXSave2(t *testing.T) {
	sys := openKVM(t)
	vm := createVM(t, sys)
	v := createVCPU(t, vm, 0)
	size, err := vm.XSaveSize()
	if err != nil {
		t.Fatal(err)
	}
	x, err := v.GetXSave2(size)
	if isUnsupported(err) {
		t.Skipf("no KVM_GET_XSAVE2: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != size {
		t.Fatalf("GetXSave2(%d) returned %d bytes", size, len(x))
	}
	legacy, err := v.GetXSave()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x[:XSaveMinSize], unsafe.Slice((*byte)(unsafe.Pointer(&legacy)), XSaveMinSize)) {
		t.Error("KVM_GET_XSAVE2 and KVM_GET_XSAVE disagree on the first 4 KiB")
	}
	x[xsaveXMM+16*2] = 0x3c
	x[xsaveXStateBV] |= 1 << 1 // SSE state present
	if err := v.SetXSave2(x); err != nil {
		t.Fatal(err)
	}
	if f, _ := v.GetFPU(); f.XMM[2][0] != 0x3c {
		t.Errorf("XMM2 = %#x after SetXSave2", f.XMM[2][0])
	}
	if err := v.SetXSave(&legacy); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int{0, 4095, XSaveMaxSize + 4, 4098} {
		if _, err := v.GetXSave2(bad); err == nil {
			t.Errorf("GetXSave2(%d) succeeded", bad)
		}
	}
	if err := v.SetXSave2(make([]byte, 100)); err == nil {
		t.Error("SetXSave2 of 100 bytes succeeded")
	}
	bm, err := vm.DirtyBitmap(0, 100)
	if err == nil || bm != nil {
		t.Errorf("DirtyBitmap of a missing slot = %v, %v", bm, err)
	}
}

func TestDirtyBitmap(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := openKVM(t)
	vm, mem, v := stateVM(t, sys)
	copy(mem[stateEntry:], stateProgram)
	setupRealMode(t, v, stateEntry)
	const pages = stateMem / 4096
	if _, err := vm.DirtyBitmap(0, pages); err != nil { // clear the host's writes
		t.Fatal(err)
	}
	regs, _ := v.GetRegs()
	regs.RIP = stateEntry + 9 // inc byte [0x2000] ...
	regs.RDX = 0x3f8
	if err := v.SetRegs(&regs); err != nil {
		t.Fatal(err)
	}
	expectIO(t, v, IODirectionOut, 1, 0)
	bm, err := vm.DirtyBitmap(0, pages)
	if err != nil {
		t.Fatal(err)
	}
	// The written page must be logged, and no page the program does not
	// touch. Some hosts' KVM (nested SVM, as in the lab) also logs the
	// code page the vCPU ran from, so that page may be either.
	const written, code = uint64(1) << (stateData / 4096), uint64(1) << (stateEntry / 4096)
	if len(bm) != 1 || bm[0]&written == 0 || bm[0]&^(written|code) != 0 {
		t.Errorf("dirty bitmap %#x, want page 2 (%#x) and at most the code page (%#x)", bm, written, code)
	}
	if _, err := vm.DirtyBitmap(0, 0); err == nil {
		t.Error("DirtyBitmap(0 pages) succeeded")
	}
}

func TestVMStateWithoutPIT(t *testing.T) {
	sys := openKVM(t)
	vm := createVM(t, sys)
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	st, err := vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if st.PIT != nil {
		t.Error("PIT saved on a VM without one")
	}
	if err := vm.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	st.PICSlave.ChipID = IRQChipIOAPIC
	if err := vm.RestoreState(st); err == nil {
		t.Error("RestoreState accepted a swapped irqchip")
	}
	if err := vm.RestoreState(nil); err == nil {
		t.Error("RestoreState(nil) succeeded")
	}
	v := createVCPU(t, vm, 0)
	if err := v.RestoreState(nil); err == nil {
		t.Error("VCPU.RestoreState(nil) succeeded")
	}
	if _, err := v.SaveState([]uint32{0xdeadbeef}); err == nil {
		t.Error("SaveState with a bogus MSR succeeded")
	}
}

func allZero(entries []CPUIDEntry) bool {
	for _, e := range entries {
		if e.EAX|e.EBX|e.ECX|e.EDX != 0 {
			return false
		}
	}
	return true
}

// TestRestoreDeclinedCPUID: a saved CPUID leaf that this host's KVM does
// not keep fails the restore with an error naming it when it holds any
// bit, and is accepted when it is all zero (the guest reads zeros for it
// either way). Which leaves a host declines differs from host to host: the
// test finds them first, and says so when there are none.
func TestRestoreDeclinedCPUID(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := openKVM(t)
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	_, _, probe := stateVM(t, sys)
	if err := probe.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	held, err := probe.GetCPUID2()
	if err != nil {
		t.Fatal(err)
	}
	declined := DroppedCPUID(cpuid, held)
	if len(declined) == 0 {
		t.Skip("this host's KVM keeps every CPUID leaf it lists as supported: nothing to decline")
	}
	leaf := declined[0]
	t.Logf("this host's KVM declines leaf %#x subleaf %d", leaf.Function, leaf.Index)

	zero := leaf
	zero.EAX, zero.EBX, zero.ECX, zero.EDX = 0, 0, 0, 0
	_, _, a := stateVM(t, sys)
	st, err := a.SaveState(nil)
	if err != nil {
		t.Fatal(err)
	}
	st.CPUID = append(slices.Clone(held), zero)
	_, _, b := stateVM(t, sys)
	if err := b.RestoreState(st); err != nil {
		t.Errorf("restore with the declined leaf all zero: %v", err)
	}

	nonzero := zero
	nonzero.EAX = 1
	st.CPUID = append(slices.Clone(held), nonzero)
	_, _, c := stateVM(t, sys)
	err = c.RestoreState(st)
	want := fmt.Sprintf("CPUID leaf %#x subleaf %d", leaf.Function, leaf.Index)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("restore with the declined leaf set: %v, want an error naming %q", err, want)
	}
	t.Log(err)
}

package kvm

import (
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/internal/testkvm"
)

// openKVM opens /dev/kvm, or skips the test where there is none (fails it
// under CI: see testkvm).
func openKVM(t *testing.T) *System {
	t.Helper()
	testkvm.Need(t)
	sys, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

func createVM(t *testing.T, sys *System) *VM {
	t.Helper()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm
}

func createVCPU(t *testing.T, vm *VM, id int) *VCPU {
	t.Helper()
	v, err := vm.CreateVCPU(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// guestMemory mmaps size bytes of anonymous memory and registers them as
// slot at gpa.
func guestMemory(t *testing.T, vm *VM, slot uint32, gpa uint64, size int, flags uint32) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	err = vm.SetUserMemoryRegion(UserspaceMemoryRegion{
		Slot:          slot,
		Flags:         flags,
		GuestPhysAddr: gpa,
		MemorySize:    uint64(size),
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
	})
	if err != nil {
		t.Fatal(err)
	}
	return mem
}

// runOnce calls Run until it returns something other than EINTR (signals,
// e.g. the Go scheduler's preemption, interrupt KVM_RUN).
func runOnce(t *testing.T, v *VCPU) {
	t.Helper()
	for {
		err := v.Run()
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
}

func TestSystem(t *testing.T) {
	sys := openKVM(t)
	for _, c := range []struct {
		name string
		cap  int
	}{
		{"USER_MEMORY", CapUserMemory},
		{"IRQCHIP", CapIRQChip},
		{"PIT2", CapPIT2},
		{"IMMEDIATE_EXIT", CapImmediateExit},
		{"IOEVENTFD", CapIOEventFD},
		{"IRQFD", CapIRQFD},
		{"NR_VCPUS", CapNrVCPUs},
		{"MAX_VCPUS", CapMaxVCPUs},
		{"XSAVE", CapXSave},
		{"XCRS", CapXCRS},
		{"ADJUST_CLOCK", CapAdjustClock},
		{"TSC_CONTROL", CapTSCControl},
		{"KVMCLOCK_CTRL", CapKVMClockCtrl},
	} {
		n, err := sys.CheckExtension(c.cap)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("KVM_CAP_%s = %d", c.name, n)
		if (c.cap == CapUserMemory || c.cap == CapImmediateExit) && n == 0 {
			t.Errorf("KVM_CAP_%s not supported", c.name)
		}
	}
	size, err := sys.VCPUMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	if size < runMinSize {
		t.Errorf("VCPUMmapSize() = %d, want >= %d", size, runMinSize)
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpuid) == 0 || cpuid[0].Function != 0 {
		t.Fatalf("SupportedCPUID(): %d entries, first %+v", len(cpuid), cpuid)
	}
	vendor := string(unsafe.Slice((*byte)(unsafe.Pointer(&cpuid[0].EBX)), 4)) +
		string(unsafe.Slice((*byte)(unsafe.Pointer(&cpuid[0].EDX)), 4)) +
		string(unsafe.Slice((*byte)(unsafe.Pointer(&cpuid[0].ECX)), 4))
	t.Logf("SupportedCPUID: %d entries, max leaf %#x, vendor %q", len(cpuid), cpuid[0].EAX, vendor)
	msrs, err := sys.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	if len(msrs) == 0 {
		t.Fatal("MSRIndexList() is empty")
	}
	t.Logf("MSRIndexList: %d MSRs", len(msrs))
}

// realModeProgram runs at guest-physical realModeEntry in 16-bit real mode.
var realModeProgram = []byte{
	0xBA, 0xF8, 0x03, // mov dx, 0x3f8
	0xB0, 'A', //        mov al, 'A'
	0xEE,             // out dx, al              -> IO out 'A'
	0xA2, 0x00, 0x80, // mov [0x8000], al        -> MMIO write (unmapped)
	0xA0, 0x00, 0x90, // mov al, [0x9000]        -> MMIO read, we answer 'Z'
	0xEE,             // out dx, al              -> IO out 'Z'
	0xA2, 0x00, 0x18, // mov [0x1800], al        (RAM: dirty-logged)
	0xEC, //             in al, dx               -> IO in, we answer 'Q'
	0xEE, //             out dx, al              -> IO out 'Q'
	0xF4, //             hlt                     -> HLT exit
}

const (
	realModeEntry = 0x1000
	realModePage  = 0x1000
)

func setupRealMode(t *testing.T, v *VCPU, rip uint64) {
	t.Helper()
	sregs, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Segment{&sregs.CS, &sregs.DS, &sregs.ES, &sregs.SS} {
		s.Base, s.Selector = 0, 0
	}
	if err := v.SetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(&Regs{RIP: rip, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
}

func expectIO(t *testing.T, v *VCPU, dir uint8, want byte, reply byte) {
	t.Helper()
	runOnce(t, v)
	if r := v.ExitReason(); r != ExitIO {
		t.Fatalf("exit reason %d, want ExitIO (%d)", r, ExitIO)
	}
	d, size, port, count, data := v.IO()
	if d != dir || size != 1 || port != 0x3f8 || count != 1 || len(data) != 1 {
		t.Fatalf("IO() = dir %d size %d port %#x count %d len %d; want dir %d size 1 port 0x3f8 count 1", d, size, port, count, len(data), dir)
	}
	if dir == IODirectionOut && data[0] != want {
		t.Fatalf("IO out data %q, want %q", data[0], want)
	}
	if dir == IODirectionIn {
		data[0] = reply
	}
}

func TestRealModeGuest(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	sys := openKVM(t)
	vm := createVM(t, sys)
	// Intel VMX without unrestricted guest needs these for real mode; set
	// them as a VMM would, where the host allows it.
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		t.Logf("SetTSSAddr: %v", err)
	}
	if err := vm.SetIdentityMapAddr(0xfffbc000); err != nil {
		t.Logf("SetIdentityMapAddr: %v", err)
	}
	mem := guestMemory(t, vm, 0, realModePage, 0x1000, MemLogDirtyPages)
	copy(mem[realModeEntry-realModePage:], realModeProgram)
	v := createVCPU(t, vm, 0)
	if v.ID() != 0 || v.Fd() < 0 {
		t.Fatalf("ID() = %d, Fd() = %d", v.ID(), v.Fd())
	}
	setupRealMode(t, v, realModeEntry)

	// Clear the dirty bitmap left by the host's copy above.
	bitmap := make([]uint64, 1)
	if err := vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	expectIO(t, v, IODirectionOut, 'A', 0)

	runOnce(t, v)
	if r := v.ExitReason(); r != ExitMMIO {
		t.Fatalf("exit reason %d, want ExitMMIO (%d)", r, ExitMMIO)
	}
	addr, data, isWrite := v.MMIO()
	if addr != 0x8000 || !isWrite || len(data) != 1 || data[0] != 'A' {
		t.Fatalf("MMIO() = %#x %q write=%v; want 0x8000 \"A\" write", addr, data, isWrite)
	}

	runOnce(t, v)
	if r := v.ExitReason(); r != ExitMMIO {
		t.Fatalf("exit reason %d, want ExitMMIO (%d)", r, ExitMMIO)
	}
	addr, data, isWrite = v.MMIO()
	if addr != 0x9000 || isWrite || len(data) != 1 {
		t.Fatalf("MMIO() = %#x len %d write=%v; want 0x9000 len 1 read", addr, len(data), isWrite)
	}
	data[0] = 'Z'

	expectIO(t, v, IODirectionOut, 'Z', 0)
	expectIO(t, v, IODirectionIn, 0, 'Q')
	expectIO(t, v, IODirectionOut, 'Q', 0)

	runOnce(t, v)
	if r := v.ExitReason(); r != ExitHLT {
		if r == ExitInternalError {
			sub, d := v.InternalError()
			t.Fatalf("internal error %d %#x", sub, d)
		}
		t.Fatalf("exit reason %d, want ExitHLT (%d)", r, ExitHLT)
	}
	t.Logf("guest ran in %v", time.Since(start))

	if got := mem[0x1800-realModePage]; got != 'Z' {
		t.Errorf("guest RAM [0x1800] = %q, want 'Z'", got)
	}
	regs, err := v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(realModeEntry + len(realModeProgram)); regs.RIP != want || regs.RAX&0xff != 'Q' || regs.RDX != 0x3f8 {
		t.Errorf("after HLT: RIP %#x RAX %#x RDX %#x; want RIP %#x AL 'Q' DX 0x3f8", regs.RIP, regs.RAX, regs.RDX, want)
	}
	if err := vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	if bitmap[0]&1 == 0 {
		t.Errorf("dirty bitmap %#x: page 0 of the slot (GPA 0x1000) not marked dirty", bitmap[0])
	}
}

func TestImmediateExit(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	sys := openKVM(t)
	vm := createVM(t, sys)
	mem := guestMemory(t, vm, 0, realModePage, 0x1000, 0)
	copy(mem, []byte{0xEB, 0xFE}) // jmp $: would spin forever
	v := createVCPU(t, vm, 0)
	setupRealMode(t, v, realModePage)

	v.SetImmediateExit(true)
	start := time.Now()
	err := v.Run()
	if !errors.Is(err, unix.EINTR) {
		t.Fatalf("Run() with immediate_exit = %v, want EINTR", err)
	}
	if err != unix.EINTR {
		t.Errorf("Run() returned %#v, want the bare unix.EINTR", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run() with immediate_exit took %v", d)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := v.Run(); err != unix.EINTR {
			t.Fatalf("Run() = %v", err)
		}
	})
	if allocs != 0 {
		t.Errorf("Run() returning EINTR allocates %.1f times, want 0", allocs)
	}
	v.SetImmediateExit(false)
}

func TestIRQChipAndState(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	sys := openKVM(t)
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
	guestMemory(t, vm, 0, 0, 0x10000, 0)
	v := createVCPU(t, vm, 0)

	// IRQLine is on device paths: it must not allocate.
	if err := vm.IRQLine(4, 1); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := vm.IRQLine(4, 1); err != nil {
			t.Fatal(err)
		}
		if err := vm.IRQLine(4, 0); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("IRQLine allocates %.1f times per call pair, want 0", allocs)
	}

	for _, id := range []uint32{IRQChipPICMaster, IRQChipPICSlave, IRQChipIOAPIC} {
		c, err := vm.GetIRQChip(id)
		if err != nil {
			t.Fatal(err)
		}
		if c.ChipID != id {
			t.Errorf("GetIRQChip(%d).ChipID = %d", id, c.ChipID)
		}
		if err := vm.SetIRQChip(&c); err != nil {
			t.Fatal(err)
		}
	}
	ioapic, _ := vm.GetIRQChip(IRQChipIOAPIC)
	if base := *(*uint64)(unsafe.Pointer(&ioapic.Chip[0])); base != 0xfec00000 {
		t.Errorf("IOAPIC base_address = %#x, want 0xfec00000", base)
	}

	pit, err := vm.GetPIT2()
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.SetPIT2(&pit); err != nil {
		t.Fatal(err)
	}

	clk, err := vm.GetClock()
	if err != nil {
		t.Fatal(err)
	}
	clk.Clock += 1e9
	if err := vm.SetClock(&ClockData{Clock: clk.Clock}); err != nil {
		t.Fatal(err)
	}
	if clk2, err := vm.GetClock(); err != nil {
		t.Fatal(err)
	} else if clk2.Clock < clk.Clock {
		t.Errorf("kvmclock %d after SetClock(%d)", clk2.Clock, clk.Clock)
	}

	// ioeventfd and irqfd.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	ioev := IOEventFDConfig{Addr: 0xd0000000, Len: 4, FD: int32(efd)}
	if err := vm.IOEventFD(ioev); err != nil {
		t.Fatal(err)
	}
	ioev.Flags = IOEventFDFlagDeassign
	if err := vm.IOEventFD(ioev); err != nil {
		t.Fatal(err)
	}
	if err := vm.IOEventFD(IOEventFDConfig{Addr: 0x510, Len: 2, FD: int32(efd), Flags: IOEventFDFlagPIO | IOEventFDFlagDatamatch, Datamatch: 7}); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQFD(IRQFDConfig{FD: uint32(efd), GSI: 5}); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQFD(IRQFDConfig{FD: uint32(efd), GSI: 5, Flags: IRQFDFlagDeassign}); err != nil {
		t.Fatal(err)
	}

	// vCPU state round trips.
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	got, err := v.GetCPUID2()
	if err != nil {
		t.Fatal(err)
	}
	// KVM may decline leaves (a 6.18 host drops the AMX leaves 0x1d and
	// 0x1e that it lists as supported): name them, and check that what it
	// kept is what was set and that the leaves every guest needs are there.
	for _, e := range DroppedCPUID(cpuid, got) {
		t.Logf("this host's KVM declined CPUID leaf %#x subleaf %d (eax %#x ebx %#x ecx %#x edx %#x)",
			e.Function, e.Index, e.EAX, e.EBX, e.ECX, e.EDX)
	}
	if extra := DroppedCPUID(got, cpuid); len(extra) > 0 {
		t.Errorf("GetCPUID2 has leaves that were never set: %+v", extra)
	}
	for _, fn := range []uint32{0, 1, 0x80000000, 0x40000000} {
		if !slices.ContainsFunc(got, func(e CPUIDEntry) bool { return e.Function == fn }) {
			t.Errorf("GetCPUID2 lacks leaf %#x", fn)
		}
	}

	regs, err := v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	regs.RBX = 0x1234_5678_9abc_def0
	if err := v.SetRegs(&regs); err != nil {
		t.Fatal(err)
	}
	if r2, _ := v.GetRegs(); r2.RBX != regs.RBX {
		t.Errorf("RBX = %#x after SetRegs(%#x)", r2.RBX, regs.RBX)
	}
	sregs, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	if sregs.CS.Selector != 0xf000 || sregs.CS.Base != 0xffff0000 {
		t.Errorf("reset CS = %#x base %#x, want 0xf000 base 0xffff0000", sregs.CS.Selector, sregs.CS.Base)
	}
	if err := v.SetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	fpu, err := v.GetFPU()
	if err != nil {
		t.Fatal(err)
	}
	// FNINIT state. (MXCSR reads back 0 on some kernels, so it is not checked.)
	if fpu.FCW != 0x37f {
		t.Errorf("reset FPU: FCW %#x, want 0x37f", fpu.FCW)
	}
	fpu.XMM[3][0] = 0x5a
	if err := v.SetFPU(&fpu); err != nil {
		t.Fatal(err)
	}
	if f2, err := v.GetFPU(); err != nil {
		t.Fatal(err)
	} else if f2.XMM[3][0] != 0x5a {
		t.Errorf("XMM3 byte 0 = %#x after SetFPU(0x5a)", f2.XMM[3][0])
	}

	const (
		msrIA32SysenterCS = 0x174 // MSR_IA32_SYSENTER_CS
		msrIA32SysenterSP = 0x175 // MSR_IA32_SYSENTER_ESP
	)
	n, err := v.SetMSRs([]MSREntry{{Index: msrIA32SysenterCS, Data: 0x10}, {Index: msrIA32SysenterSP, Data: 0xdead0000}})
	if err != nil || n != 2 {
		t.Fatalf("SetMSRs = %d, %v; want 2", n, err)
	}
	msrs := []MSREntry{{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterSP}, {Index: 0xdeadbeef}}
	n, err = v.GetMSRs(msrs)
	if err != nil || n != 2 {
		t.Fatalf("GetMSRs = %d, %v; want 2 (the third index is bogus)", n, err)
	}
	if msrs[0].Data != 0x10 || msrs[1].Data != 0xdead0000 {
		t.Errorf("GetMSRs = %+v", msrs[:2])
	}

	lapic, err := v.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	// APIC version register (offset 0x30): version 0x14 in the low byte.
	if ver := lapic.Regs[0x30]; ver != 0x14 && ver != 0x15 {
		t.Logf("LAPIC version %#x", ver)
	}
	if err := v.SetLAPIC(&lapic); err != nil {
		t.Fatal(err)
	}
	mp, err := v.GetMPState()
	if err != nil {
		t.Fatal(err)
	}
	if mp.State != MPStateRunnable {
		t.Errorf("BSP MP state %d, want runnable", mp.State)
	}
	if err := v.SetMPState(&mp); err != nil {
		t.Fatal(err)
	}
	ev, err := v.GetVCPUEvents()
	if err != nil {
		t.Fatal(err)
	}
	ev.Flags = 0
	if err := v.SetVCPUEvents(&ev); err != nil {
		t.Fatal(err)
	}
	dr, err := v.GetDebugRegs()
	if err != nil {
		t.Fatal(err)
	}
	if dr.DR7 != 0x400 {
		t.Errorf("reset DR7 = %#x, want 0x400", dr.DR7)
	}
	if err := v.SetDebugRegs(&dr); err != nil {
		t.Fatal(err)
	}

	if n, _ := sys.CheckExtension(CapXSave); n > 0 {
		xs, err := v.GetXSave()
		if err != nil {
			t.Fatal(err)
		}
		if err := v.SetXSave(&xs); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := sys.CheckExtension(CapXCRS); n > 0 {
		xcrs, err := v.GetXCRS()
		if err != nil {
			t.Fatal(err)
		}
		if xcrs.NrXCRs < 1 || xcrs.XCRs[0].XCR != 0 || xcrs.XCRs[0].Value&1 == 0 {
			t.Errorf("XCRS = %d entries, first %+v; want XCR0 with x87 bit", xcrs.NrXCRs, xcrs.XCRs[0])
		}
		if err := v.SetXCRS(&xcrs); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := sys.CheckExtension(CapGetTSCKHz); n > 0 {
		khz, err := v.GetTSCKHz()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("guest TSC %d kHz", khz)
		if n, _ := sys.CheckExtension(CapTSCControl); n > 0 {
			if err := v.SetTSCKHz(khz); err != nil {
				t.Error(err)
			}
		}
	}
	// The guest has not enabled kvmclock: KVM_KVMCLOCK_CTRL must fail
	// cleanly (EINVAL), not crash.
	if err := v.KVMClockCtrl(); err == nil {
		t.Log("KVMClockCtrl succeeded without guest kvmclock")
	} else if !errors.Is(err, unix.EINVAL) {
		t.Logf("KVMClockCtrl: %v", err)
	}
}

func TestErrorsAreWrapped(t *testing.T) {
	sys := openKVM(t)
	vm := createVM(t, sys)
	// A misaligned slot is rejected with EINVAL; the error names the ioctl.
	err := vm.SetUserMemoryRegion(UserspaceMemoryRegion{Slot: 0, GuestPhysAddr: 0x123, MemorySize: 0x1000, UserspaceAddr: 0x1000})
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("misaligned SetUserMemoryRegion = %v, want EINVAL", err)
	}
	if got := err.Error(); len(got) < len("KVM_SET_USER_MEMORY_REGION") || got[:len("KVM_SET_USER_MEMORY_REGION")] != "KVM_SET_USER_MEMORY_REGION" {
		t.Errorf("error %q does not name the ioctl", got)
	}
	if _, err := vm.CreateVCPU(-1); err == nil {
		t.Error("CreateVCPU(-1) succeeded")
	}
}

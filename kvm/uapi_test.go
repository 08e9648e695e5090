package kvm

import (
	"testing"
	"unsafe"
)

// The expected values below were computed independently of this package:
// by compiling a C program against <linux/kvm.h> (sizeof, offsetof and the
// _IO/_IOR/_IOW/_IOWR macros) on Debian 12's linux-libc-dev 6.1.

func TestStructSizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), 1024},
		{"kvm_userspace_memory_region", unsafe.Sizeof(UserspaceMemoryRegion{}), 32},
		{"kvm_pit_config", unsafe.Sizeof(PITConfig{}), 64},
		{"kvm_reinject_control", unsafe.Sizeof(reinjectControl{}), 32},
		{"kvm_irq_level", unsafe.Sizeof(IRQLevel{}), 8},
		{"kvm_mp_state", unsafe.Sizeof(MPState{}), 4},
		{"kvm_ioeventfd", unsafe.Sizeof(IOEventFDConfig{}), 64},
		{"kvm_irqfd", unsafe.Sizeof(IRQFDConfig{}), 32},
		{"kvm_irqchip", unsafe.Sizeof(IRQChip{}), 520},
		{"kvm_pit_channel_state", unsafe.Sizeof(PITChannelState{}), 24},
		{"kvm_pit_state2", unsafe.Sizeof(PITState2{}), 112},
		{"kvm_clock_data", unsafe.Sizeof(ClockData{}), 48},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"kvm_debugregs", unsafe.Sizeof(DebugRegs{}), 128},
		{"kvm_xsave", unsafe.Sizeof(XSave{}), 4096},
		{"kvm_xcr", unsafe.Sizeof(XCR{}), 16},
		{"kvm_xcrs", unsafe.Sizeof(XCRS{}), 392},
		{"kvm_dirty_log", unsafe.Sizeof(dirtyLog{}), 16},
		{"kvm_enable_cap", unsafe.Sizeof(enableCap{}), 104},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", tc.name, tc.got, tc.want)
		}
		if tc.got > iocSizeMask {
			t.Errorf("sizeof(struct %s) = %d does not fit the ioctl size field", tc.name, tc.got)
		}
	}
}

func TestStructOffsets(t *testing.T) {
	var (
		sregs  Sregs
		seg    Segment
		fpu    FPU
		regs   Regs
		msr    MSREntry
		cpuid  CPUIDEntry
		mem    UserspaceMemoryRegion
		ioev   IOEventFDConfig
		irqfd  IRQFDConfig
		chip   IRQChip
		pit    PITState2
		pitch  PITChannelState
		clock  ClockData
		events VCPUEvents
		xcrs   XCRS
		dregs  DebugRegs
		dlog   dirtyLog
		ecap   enableCap
	)
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs.rip", unsafe.Offsetof(regs.RIP), 128},
		{"kvm_regs.rflags", unsafe.Offsetof(regs.RFLAGS), 136},
		{"kvm_sregs.gdt", unsafe.Offsetof(sregs.GDT), 192},
		{"kvm_sregs.cr0", unsafe.Offsetof(sregs.CR0), 224},
		{"kvm_sregs.efer", unsafe.Offsetof(sregs.EFER), 264},
		{"kvm_sregs.apic_base", unsafe.Offsetof(sregs.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(sregs.InterruptBitmap), 280},
		{"kvm_segment.selector", unsafe.Offsetof(seg.Selector), 12},
		{"kvm_segment.type", unsafe.Offsetof(seg.Type), 14},
		{"kvm_segment.unusable", unsafe.Offsetof(seg.Unusable), 22},
		{"kvm_fpu.fcw", unsafe.Offsetof(fpu.FCW), 128},
		{"kvm_fpu.ftwx", unsafe.Offsetof(fpu.FTWX), 132},
		{"kvm_fpu.last_opcode", unsafe.Offsetof(fpu.LastOpcode), 134},
		{"kvm_fpu.last_ip", unsafe.Offsetof(fpu.LastIP), 136},
		{"kvm_fpu.xmm", unsafe.Offsetof(fpu.XMM), 152},
		{"kvm_fpu.mxcsr", unsafe.Offsetof(fpu.MXCSR), 408},
		{"kvm_msr_entry.data", unsafe.Offsetof(msr.Data), 8},
		{"kvm_cpuid_entry2.eax", unsafe.Offsetof(cpuid.EAX), 12},
		{"kvm_cpuid_entry2.edx", unsafe.Offsetof(cpuid.EDX), 24},
		{"kvm_userspace_memory_region.guest_phys_addr", unsafe.Offsetof(mem.GuestPhysAddr), 8},
		{"kvm_userspace_memory_region.userspace_addr", unsafe.Offsetof(mem.UserspaceAddr), 24},
		{"kvm_ioeventfd.len", unsafe.Offsetof(ioev.Len), 16},
		{"kvm_ioeventfd.fd", unsafe.Offsetof(ioev.FD), 20},
		{"kvm_ioeventfd.flags", unsafe.Offsetof(ioev.Flags), 24},
		{"kvm_irqfd.resamplefd", unsafe.Offsetof(irqfd.ResampleFD), 12},
		{"kvm_irqchip.chip", unsafe.Offsetof(chip.Chip), 8},
		{"kvm_pit_state2.flags", unsafe.Offsetof(pit.Flags), 72},
		{"kvm_pit_channel_state.count_load_time", unsafe.Offsetof(pitch.CountLoadTime), 16},
		{"kvm_clock_data.flags", unsafe.Offsetof(clock.Flags), 8},
		{"kvm_clock_data.realtime", unsafe.Offsetof(clock.Realtime), 16},
		{"kvm_clock_data.host_tsc", unsafe.Offsetof(clock.HostTSC), 24},
		{"kvm_vcpu_events.interrupt", unsafe.Offsetof(events.InterruptInjected), 8},
		{"kvm_vcpu_events.nmi", unsafe.Offsetof(events.NMIInjected), 12},
		{"kvm_vcpu_events.sipi_vector", unsafe.Offsetof(events.SIPIVector), 16},
		{"kvm_vcpu_events.flags", unsafe.Offsetof(events.Flags), 20},
		{"kvm_vcpu_events.smi", unsafe.Offsetof(events.SMISMM), 24},
		{"kvm_vcpu_events.triple_fault", unsafe.Offsetof(events.TripleFaultPending), 28},
		{"kvm_vcpu_events.exception_has_payload", unsafe.Offsetof(events.ExceptionHasPayload), 55},
		{"kvm_vcpu_events.exception_payload", unsafe.Offsetof(events.ExceptionPayload), 56},
		{"kvm_xcrs.xcrs", unsafe.Offsetof(xcrs.XCRs), 8},
		{"kvm_debugregs.dr7", unsafe.Offsetof(dregs.DR7), 40},
		{"kvm_debugregs.flags", unsafe.Offsetof(dregs.Flags), 48},
		{"kvm_dirty_log.dirty_bitmap", unsafe.Offsetof(dlog.Bitmap), 8},
		{"kvm_enable_cap.args", unsafe.Offsetof(ecap.Args), 8},
	} {
		if tc.got != tc.want {
			t.Errorf("offsetof(%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestRunOffsets(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want int
	}{
		{"request_interrupt_window", runRequestInterruptWindow, 0},
		{"immediate_exit", runImmediateExit, 1},
		{"exit_reason", runExitReason, 8},
		{"ready_for_interrupt_injection", runReadyForInterruptInjection, 12},
		{"if_flag", runIFFlag, 13},
		{"flags", runFlags, 14},
		{"cr8", runCR8, 16},
		{"apic_base", runAPICBase, 24},
		{"io.direction", runIODirection, 32},
		{"io.size", runIOSize, 33},
		{"io.port", runIOPort, 34},
		{"io.count", runIOCount, 36},
		{"io.data_offset", runIODataOffset, 40},
		{"mmio.phys_addr", runMMIOPhysAddr, 32},
		{"mmio.data", runMMIOData, 40},
		{"mmio.len", runMMIOLen, 48},
		{"mmio.is_write", runMMIOIsWrite, 52},
		{"internal.suberror", runInternalSuberror, 32},
		{"internal.ndata", runInternalNData, 36},
		{"internal.data", runInternalData, 40},
		{"system_event.type", runSystemEventType, 32},
		{"system_event.ndata", runSystemEventNData, 36},
		{"system_event.flags", runSystemEventData, 40},
		{"fail_entry.hardware_entry_failure_reason", runFailEntryReason, 32},
		{"fail_entry.cpu", runFailEntryCPU, 40},
		{"ex.exception", runExException, 32},
		{"ex.error_code", runExErrorCode, 36},
	} {
		if tc.got != tc.want {
			t.Errorf("offsetof(kvm_run.%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", kvmGetAPIVersion, 0x0000AE00},
		{"KVM_CREATE_VM", kvmCreateVM, 0x0000AE01},
		{"KVM_GET_MSR_INDEX_LIST", kvmGetMSRIndexList, 0xC004AE02},
		{"KVM_CHECK_EXTENSION", kvmCheckExtension, 0x0000AE03},
		{"KVM_GET_VCPU_MMAP_SIZE", kvmGetVCPUMmapSize, 0x0000AE04},
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID, 0xC008AE05},
		{"KVM_CREATE_VCPU", kvmCreateVCPU, 0x0000AE41},
		{"KVM_GET_DIRTY_LOG", kvmGetDirtyLog, 0x4010AE42},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion, 0x4020AE46},
		{"KVM_SET_TSS_ADDR", kvmSetTSSAddr, 0x0000AE47},
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr, 0x4008AE48},
		{"KVM_CREATE_IRQCHIP", kvmCreateIRQChip, 0x0000AE60},
		{"KVM_IRQ_LINE", kvmIRQLine, 0x4008AE61},
		{"KVM_GET_IRQCHIP", kvmGetIRQChip, 0xC208AE62},
		{"KVM_SET_IRQCHIP", kvmSetIRQChip, 0x8208AE63},
		{"KVM_IRQFD", kvmIRQFD, 0x4020AE76},
		{"KVM_CREATE_PIT2", kvmCreatePIT2, 0x4040AE77},
		{"KVM_REINJECT_CONTROL", kvmReinjectControl, 0xAE71},
		{"KVM_IOEVENTFD", kvmIOEventFD, 0x4040AE79},
		{"KVM_SET_CLOCK", kvmSetClock, 0x4030AE7B},
		{"KVM_GET_CLOCK", kvmGetClock, 0x8030AE7C},
		{"KVM_GET_PIT2", kvmGetPIT2, 0x8070AE9F},
		{"KVM_SET_PIT2", kvmSetPIT2, 0x4070AEA0},
		{"KVM_ENABLE_CAP", kvmEnableCap, 0x4068AEA3},
		{"KVM_RUN", kvmRun, 0x0000AE80},
		{"KVM_GET_REGS", kvmGetRegs, 0x8090AE81},
		{"KVM_SET_REGS", kvmSetRegs, 0x4090AE82},
		{"KVM_GET_SREGS", kvmGetSregs, 0x8138AE83},
		{"KVM_SET_SREGS", kvmSetSregs, 0x4138AE84},
		{"KVM_INTERRUPT", kvmInterrupt, 0x4004AE86},
		{"KVM_GET_MSRS", kvmGetMSRs, 0xC008AE88},
		{"KVM_SET_MSRS", kvmSetMSRs, 0x4008AE89},
		{"KVM_GET_FPU", kvmGetFPU, 0x81A0AE8C},
		{"KVM_SET_FPU", kvmSetFPU, 0x41A0AE8D},
		{"KVM_GET_LAPIC", kvmGetLAPIC, 0x8400AE8E},
		{"KVM_SET_LAPIC", kvmSetLAPIC, 0x4400AE8F},
		{"KVM_SET_CPUID2", kvmSetCPUID2, 0x4008AE90},
		{"KVM_GET_CPUID2", kvmGetCPUID2, 0xC008AE91},
		{"KVM_GET_MP_STATE", kvmGetMPState, 0x8004AE98},
		{"KVM_SET_MP_STATE", kvmSetMPState, 0x4004AE99},
		{"KVM_NMI", kvmNMI, 0x0000AE9A},
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents, 0x8040AE9F},
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents, 0x4040AEA0},
		{"KVM_GET_DEBUGREGS", kvmGetDebugRegs, 0x8080AEA1},
		{"KVM_SET_DEBUGREGS", kvmSetDebugRegs, 0x4080AEA2},
		{"KVM_SET_TSC_KHZ", kvmSetTSCKHz, 0x0000AEA2},
		{"KVM_GET_TSC_KHZ", kvmGetTSCKHz, 0x0000AEA3},
		{"KVM_GET_XSAVE", kvmGetXSave, 0x9000AEA4},
		{"KVM_SET_XSAVE", kvmSetXSave, 0x5000AEA5},
		{"KVM_GET_XCRS", kvmGetXCRS, 0x8188AEA6},
		{"KVM_SET_XCRS", kvmSetXCRS, 0x4188AEA7},
		{"KVM_KVMCLOCK_CTRL", kvmKVMClockCtrl, 0x0000AEAD},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#08x, want %#08x", tc.name, tc.got, tc.want)
		}
	}
}

// fakeVCPU returns a VCPU whose kvm_run is ordinary memory, to test the
// exit decoders without /dev/kvm.
func fakeVCPU(size int) *VCPU {
	return &VCPU{fd: -1, run: make([]byte, size)}
}

func put32(b []byte, off int, v uint32) {
	for i := range 4 {
		b[off+i] = byte(v >> (8 * i))
	}
}

func put64(b []byte, off int, v uint64) {
	for i := range 8 {
		b[off+i] = byte(v >> (8 * i))
	}
}

func TestIODecode(t *testing.T) {
	v := fakeVCPU(4096)
	r := v.run
	put32(r, runExitReason, ExitIO)
	r[runIODirection] = IODirectionOut
	r[runIOSize] = 2
	r[runIOPort], r[runIOPort+1] = 0xf8, 0x03
	put32(r, runIOCount, 3)
	put64(r, runIODataOffset, 4096-6)
	copy(r[4096-6:], "abcdef")
	dir, size, port, count, data := v.IO()
	if v.ExitReason() != ExitIO || dir != IODirectionOut || size != 2 || port != 0x3f8 || count != 3 || string(data) != "abcdef" {
		t.Fatalf("IO() = %d %d %#x %d %q", dir, size, port, count, data)
	}
	if cap(data) != len(data) {
		t.Errorf("IO data cap %d, want %d (appends must not run into the page)", cap(data), len(data))
	}

	// Out-of-range data_offset / length: empty data, no panic.
	for _, tc := range []struct {
		off   uint64
		count uint32
	}{
		{4096 - 5, 3},
		{4097, 0},
		{1 << 63, 1},
		{^uint64(0), 1},
		{0, ^uint32(0)},
	} {
		put64(r, runIODataOffset, tc.off)
		put32(r, runIOCount, tc.count)
		if _, _, _, _, data := v.IO(); len(data) != 0 {
			t.Errorf("IO() with data_offset %#x count %d: len(data) = %d, want 0", tc.off, tc.count, len(data))
		}
	}
}

func TestMMIODecode(t *testing.T) {
	v := fakeVCPU(4096)
	r := v.run
	put64(r, runMMIOPhysAddr, 0xd000_0010)
	copy(r[runMMIOData:], "12345678")
	put32(r, runMMIOLen, 4)
	r[runMMIOIsWrite] = 1
	addr, data, isWrite := v.MMIO()
	if addr != 0xd000_0010 || string(data) != "1234" || !isWrite {
		t.Fatalf("MMIO() = %#x %q %v", addr, data, isWrite)
	}
	put32(r, runMMIOLen, 1000)
	r[runMMIOIsWrite] = 0
	if _, data, isWrite := v.MMIO(); len(data) != 8 || isWrite {
		t.Fatalf("MMIO() with len 1000: len(data) = %d, isWrite %v; want 8, false", len(data), isWrite)
	}
}

func TestOtherExitDecode(t *testing.T) {
	v := fakeVCPU(4096)
	r := v.run
	put32(r, runInternalSuberror, InternalErrorEmulation)
	put32(r, runInternalNData, 2)
	put64(r, runInternalData, 0x1111)
	put64(r, runInternalData+8, 0x2222)
	sub, data := v.InternalError()
	if sub != InternalErrorEmulation || len(data) != 2 || data[0] != 0x1111 || data[1] != 0x2222 {
		t.Fatalf("InternalError() = %d %#x", sub, data)
	}
	put32(r, runInternalNData, 99)
	if _, data := v.InternalError(); len(data) != 16 {
		t.Fatalf("InternalError() with ndata 99: len %d, want 16", len(data))
	}

	clear(r)
	put32(r, runSystemEventType, SystemEventReset)
	put32(r, runSystemEventNData, 1)
	put64(r, runSystemEventData, 0xabc)
	if typ, flags := v.SystemEvent(); typ != SystemEventReset || flags != 0xabc {
		t.Fatalf("SystemEvent() = %d %#x", typ, flags)
	}
	if d := v.SystemEventData(); len(d) != 1 || d[0] != 0xabc {
		t.Fatalf("SystemEventData() = %#x", d)
	}

	clear(r)
	put64(r, runFailEntryReason, 0x80000021)
	put32(r, runFailEntryCPU, 3)
	if reason, cpu := v.FailEntry(); reason != 0x80000021 || cpu != 3 {
		t.Fatalf("FailEntry() = %#x %d", reason, cpu)
	}

	clear(r)
	put32(r, runExException, 6)
	put32(r, runExErrorCode, 0)
	if vec, ec := v.Exception(); vec != 6 || ec != 0 {
		t.Fatalf("Exception() = %d %d", vec, ec)
	}

	v.SetImmediateExit(true)
	v.SetRequestInterruptWindow(true)
	if r[runImmediateExit] != 1 || r[runRequestInterruptWindow] != 1 {
		t.Fatal("SetImmediateExit/SetRequestInterruptWindow did not set the bytes")
	}
	v.SetImmediateExit(false)
	if r[runImmediateExit] != 0 {
		t.Fatal("SetImmediateExit(false) did not clear the byte")
	}
}

func TestAccessorsDoNotAllocate(t *testing.T) {
	v := fakeVCPU(4096)
	put32(v.run, runIOCount, 1)
	v.run[runIOSize] = 1
	put64(v.run, runIODataOffset, 4000)
	put32(v.run, runMMIOLen, 4)
	put32(v.run, runInternalNData, 3)
	allocs := testing.AllocsPerRun(100, func() {
		_ = v.ExitReason()
		v.SetImmediateExit(false)
		_, _, _, _, _ = v.IO()
		_, _, _ = v.MMIO()
		_, _ = v.InternalError()
		_, _ = v.SystemEvent()
		_, _ = v.FailEntry()
		_, _ = v.Exception()
	})
	if allocs != 0 {
		t.Errorf("kvm_run accessors allocate %.1f times per call, want 0", allocs)
	}
}

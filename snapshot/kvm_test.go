package snapshot

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/kvm"
	"golang.org/x/sys/unix"
)

// guest is a one-vCPU VM with the in-kernel irqchip and PIT and one RAM
// region at guest address 0.
type guest struct {
	vm  *kvm.VM
	cpu *kvm.VCPU
	mem []byte
}

func newGuest(t *testing.T, sys *kvm.System, mem []byte) *guest {
	t.Helper()
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	vm.SetTSSAddr(0xfffbd000)
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT2(kvm.PITConfig{Flags: kvm.PITSpeakerDummy}); err != nil {
		t.Fatal(err)
	}
	err = vm.SetUserMemoryRegion(kvm.UserspaceMemoryRegion{
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
	})
	if err != nil {
		t.Fatal(err)
	}
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cpu.Close() })
	return &guest{vm: vm, cpu: cpu, mem: mem}
}

// out runs the vCPU to its next port write and returns the byte written.
func (g *guest) out(t *testing.T) byte {
	t.Helper()
	for {
		err := g.cpu.Run()
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	if r := g.cpu.ExitReason(); r != kvm.ExitIO {
		t.Fatalf("exit reason %d, want port I/O", r)
	}
	dir, _, port, _, data := g.cpu.IO()
	if dir != kvm.IODirectionOut || port != 0x3f8 || len(data) != 1 {
		t.Fatalf("I/O dir %d port %#x len %d", dir, port, len(data))
	}
	return data[0]
}

// Real-mode guest: prints a counter kept in RAM at 0x5000 (a page of its
// own) and increments it, forever.
var counterProgram = []byte{
	0xBA, 0xF8, 0x03, // mov dx, 0x3f8
	0xA0, 0x00, 0x50, // loop: mov al, [0x5000]
	0xEE,                   // out dx, al
	0xFE, 0x06, 0x00, 0x50, // inc byte [0x5000]
	0xEB, 0xF6, //           jmp loop
}

// TestSnapshotRestoreKVM takes a full snapshot of a running guest through
// the files of this package and restores it into a new VM whose RAM is the
// memory file mapped MAP_PRIVATE; then a diff snapshot of the clone,
// applied onto the full memory file, gives a third VM the clone's memory.
func TestSnapshotRestoreKVM(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	testkvm.Need(t)
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	dir := t.TempDir()
	const memSize = 1 << 20

	ram := anonRegion(t, memSize)
	copy(ram[0x1000:], counterProgram)
	ram[0x5000] = 10
	a := newGuest(t, sys, ram)
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cpu.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	sregs, _ := a.cpu.GetSregs()
	for _, s := range []*kvm.Segment{&sregs.CS, &sregs.DS, &sregs.ES, &sregs.SS} {
		s.Base, s.Selector = 0, 0
	}
	if err := a.cpu.SetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	if err := a.cpu.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	for want := byte(10); want < 13; want++ {
		if got := a.out(t); got != want {
			t.Fatalf("guest printed %d, want %d", got, want)
		}
	}
	// Pause: finish the pending OUT without running guest code.
	a.cpu.SetImmediateExit(true)
	if err := a.cpu.Run(); err != unix.EINTR {
		t.Fatalf("Run with immediate_exit: %v", err)
	}
	a.cpu.SetImmediateExit(false)

	msrs, err := sys.MSRsToSave(cpuid)
	if err != nil {
		t.Fatal(err)
	}
	if msrs, err = a.cpu.ReadableMSRs(msrs); err != nil {
		t.Fatal(err)
	}
	vcpu, err := a.cpu.SaveState(msrs)
	if err != nil {
		t.Fatal(err)
	}
	vmState, err := a.vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	statePath, memPath := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	err = Write(statePath, &State{
		Header: Header{
			EmberVersion: "test",
			Created:      time.Now(),
			MemoryKind:   MemoryFull,
			Regions:      []Region{{GuestAddr: 0, Size: memSize}},
			Devices:      []DeviceInfo{{Name: "serial", Kind: "serial"}},
		},
		VCPUs:   []kvm.VCPUState{*vcpu},
		VM:      *vmState,
		Devices: []Device{{Name: "serial", Data: []byte("lcr=3")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFull(memPath, [][]byte{ram}); err != nil {
		t.Fatal(err)
	}

	// Restore in a new VM from the files alone.
	st, err := Read(statePath)
	if err != nil {
		t.Fatal(err)
	}
	var desc bytes.Buffer
	Describe(&desc, st)
	t.Logf("\n%s", desc.String())
	regions, err := MapPrivate(memPath, st.Header.RegionSizes())
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(regions)
	b := newGuest(t, sys, regions[0])
	if err := b.vm.RestoreState(&st.VM); err != nil {
		t.Fatal(err)
	}
	if err := b.cpu.RestoreState(&st.VCPUs[0]); err != nil {
		t.Fatal(err)
	}
	for want := byte(13); want < 20; want++ {
		if got := b.out(t); got != want {
			t.Fatalf("restored guest printed %d, want %d", got, want)
		}
	}
	if f, _ := os.ReadFile(memPath); f[0x5000] != 12 {
		t.Errorf("memory file counter %d: the clone's writes reached the file", f[0x5000])
	}
	if got := a.out(t); got != 13 {
		t.Errorf("original guest printed %d after the snapshot, want 13", got)
	}

	// Diff of the clone: only the counter page changed since the full
	// snapshot. Apply it onto the full memory file and boot a third VM.
	b.cpu.SetImmediateExit(true)
	if err := b.cpu.Run(); err != unix.EINTR {
		t.Fatalf("Run with immediate_exit: %v", err)
	}
	b.cpu.SetImmediateExit(false)
	vcpu2, err := b.cpu.SaveState(msrs)
	if err != nil {
		t.Fatal(err)
	}
	vm2, err := b.vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	dirty := make([]uint64, memSize/PageSize/64)
	dirty[0] = 1 << 5
	diffPath := filepath.Join(dir, "vm.diff")
	if err := WriteDiff(diffPath, regions, [][]uint64{dirty}); err != nil {
		if errors.Is(err, ErrMemoryFile) {
			t.Skipf("diffs unsupported on this filesystem: %v", err)
		}
		t.Fatal(err)
	}
	if err := ApplyDiff(memPath, diffPath); err != nil {
		t.Fatal(err)
	}
	regions3, err := MapPrivate(memPath, []uint64{memSize})
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(regions3)
	c := newGuest(t, sys, regions3[0])
	if err := c.vm.RestoreState(vm2); err != nil {
		t.Fatal(err)
	}
	if err := c.cpu.RestoreState(vcpu2); err != nil {
		t.Fatal(err)
	}
	if got := c.out(t); got != 20 {
		t.Errorf("guest restored from base+diff printed %d, want 20", got)
	}
}

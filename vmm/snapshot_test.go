package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/snapshot"
	"github.com/embervm/ember/virtio/balloon"
	"github.com/embervm/ember/virtio/blk"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
)

// runAsync runs vm and returns its fate channel.
func runAsync(vm *VM) <-chan Fate {
	done := make(chan Fate, 1)
	go func() { done <- vm.Run() }()
	return done
}

// startVM builds cfg's VM, closed when the test ends, and runs it.
func startVM(t *testing.T, cfg Config) (*VM, <-chan Fate) {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, runAsync(a)
}

// snapshotAt waits until the running counter guest a has counted past n,
// pauses it and takes a Full snapshot into a new temporary directory.
func snapshotAt(t *testing.T, a *VM, n uint32) (dir, snap, mem string) {
	t.Helper()
	waitCount(t, a, n)
	a.Pause()
	dir = t.TempDir()
	snap, mem = filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); err != nil {
		t.Fatal(err)
	}
	return dir, snap, mem
}

func waitFate(t *testing.T, done <-chan Fate, want FateKind) {
	t.Helper()
	select {
	case f := <-done:
		if f.Kind != want {
			t.Fatalf("fate %v (%v), want %v", f.Kind, f.Err, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the guest did not end (want %v)", want)
	}
}

// setExitFlag makes the Counter guest reset the machine.
func setExitFlag(t *testing.T, vm *VM) {
	t.Helper()
	b, err := vm.Memory().Slice(tiny.ExitFlagAddr, 1)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 1
}

// TestSnapshotFullRestore: a counting guest paused and snapshotted (Full)
// is loaded into a new VM that resumes counting from where it stopped; the
// original carries on independently.
func TestSnapshotFullRestore(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	cfg.VCPUs = 8
	cfg.BootTimer = true
	a, doneA := startVM(t, cfg)
	waitCount(t, a, 1000)
	dir := t.TempDir()
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("snapshot of a running VM: %v, want ErrNotPaused", err)
	}
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	saved := counter(t, a)
	if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: snap, MemFilePath: mem, Type: SnapshotFull}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("snapshot directory holds %d entries, want the 2 files", len(ents))
	}
	if err := a.Resume(); err != nil {
		t.Fatal(err)
	}

	st, err := snapshot.Read(snap)
	if err != nil {
		t.Fatal(err)
	}
	if st.Header.VCPUCount != 8 || st.Header.MemorySize != uint64(cfg.MemMiB)<<20 || st.Header.CPUVendor == "" {
		t.Errorf("header %+v", st.Header)
	}

	base, blog := tinyConfig(t, tiny.Image())
	b, bcfg, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap, MemFilePath: mem})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restore log: %s", blog)
	defer b.Close()
	if bcfg.VCPUs != 8 || !bcfg.BootTimer {
		t.Errorf("restored config %+v", bcfg)
	}
	if n := counter(t, b); n != saved {
		t.Fatalf("restored count %d, saved %d", n, saved)
	}
	doneB := runAsync(b)
	time.Sleep(20 * time.Millisecond)
	if n := counter(t, b); n != saved {
		t.Fatalf("a VM loaded paused ran: count %d, saved %d", n, saved)
	}
	if err := b.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCount(t, b, saved+1000)

	// A snapshot of the restored VM (a clone of a clone) loads too.
	if err := b.Pause(); err != nil {
		t.Fatal(err)
	}
	snap2, mem2 := filepath.Join(dir, "vm2.snap"), filepath.Join(dir, "vm2.mem")
	if err := b.CreateSnapshot(SnapshotCreate{SnapshotPath: snap2, MemFilePath: mem2}); err != nil {
		t.Fatal(err)
	}
	saved2 := counter(t, b)
	b.Resume()
	setExitFlag(t, b)
	waitFate(t, doneB, FateReset)
	c, _, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap2, MemFilePath: mem2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := counter(t, c); n != saved2 {
		t.Fatalf("second-generation count %d, saved %d", n, saved2)
	}
	doneC := runAsync(c)
	c.Resume()
	waitCount(t, c, saved2)
	setExitFlag(t, c)
	waitFate(t, doneC, FateReset)

	setExitFlag(t, a)
	waitFate(t, doneA, FateReset)
	if f, _ := os.ReadFile(mem); f[tiny.ExitFlagAddr] != 0 {
		t.Error("the restored guest's memory writes reached the memory file")
	}
}

// TestSnapshotDiff: with dirty-page tracking, a Diff snapshot applied onto
// the Full one before it gives a guest at the Diff's point.
func TestSnapshotDiff(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	cfg.TrackDirtyPages = true
	a, doneA := startVM(t, cfg)
	defer func() { a.Stop(); <-doneA }()
	waitCount(t, a, 100)
	dir := t.TempDir()
	full, fullMem := filepath.Join(dir, "full.snap"), filepath.Join(dir, "full.mem")
	diff, diffMem := filepath.Join(dir, "diff.snap"), filepath.Join(dir, "diff.mem")
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: full, MemFilePath: fullMem, Type: SnapshotFull}); err != nil {
		t.Fatal(err)
	}
	n1 := counter(t, a)
	a.Resume()
	waitCount(t, a, n1+1000)
	a.Pause()
	n2 := counter(t, a)
	if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: diff, MemFilePath: diffMem, Type: SnapshotDiff}); err != nil {
		if errors.Is(err, snapshot.ErrMemoryFile) {
			t.Skipf("sparse diffs unsupported here: %v", err)
		}
		t.Fatal(err)
	}
	if fi, _ := os.Stat(diffMem); fi == nil {
		t.Fatal("no diff memory file")
	}
	if err := snapshot.ApplyDiff(fullMem, diffMem); err != nil {
		t.Fatal(err)
	}
	base, _ := tinyConfig(t, tiny.Image())
	b, _, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: diff, MemFilePath: fullMem})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if n := counter(t, b); n != n2 {
		t.Fatalf("count after base+diff restore %d, want %d (full snapshot had %d)", n, n2, n1)
	}
	doneB := runAsync(b)
	b.Resume()
	waitCount(t, b, n2)
	setExitFlag(t, b)
	waitFate(t, doneB, FateReset)

	// A Diff without dirty tracking is refused.
	cfg.TrackDirtyPages = false
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	doneC := runAsync(c)
	c.Pause()
	if err := c.CreateSnapshot(SnapshotCreate{SnapshotPath: diff, MemFilePath: diffMem, Type: SnapshotDiff}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Diff without tracking: %v", err)
	}
	c.Stop()
	<-doneC
}

// TestLoadBadSnapshot: corrupt or mismatched files fail with ErrBadSnapshot.
func TestLoadBadSnapshot(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	a, done := startVM(t, cfg)
	dir, snap, mem := snapshotAt(t, a, 0)
	a.Stop()
	<-done
	good, _ := os.ReadFile(snap)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 1
	badMagic := append([]byte("NOTEMBER"), good[8:]...)
	truncMem := filepath.Join(dir, "short.mem")
	if err := os.WriteFile(truncMem, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := snapshot.Read(snap)
	if err != nil {
		t.Fatal(err)
	}
	st.Header.CPUVendor = "CyrixInstead"
	vendor := filepath.Join(dir, "vendor.snap")
	if err := snapshot.Write(vendor, st); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]SnapshotLoad{
		"cpu vendor":   {SnapshotPath: vendor, MemFilePath: mem},
		"crc":          {SnapshotPath: write("crc.snap", flipped), MemFilePath: mem},
		"magic":        {SnapshotPath: write("magic.snap", badMagic), MemFilePath: mem},
		"truncated":    {SnapshotPath: write("trunc.snap", good[:len(good)-100]), MemFilePath: mem},
		"no file":      {SnapshotPath: filepath.Join(dir, "none"), MemFilePath: mem},
		"short mem":    {SnapshotPath: snap, MemFilePath: truncMem},
		"net override": {SnapshotPath: snap, MemFilePath: mem, NetOverrides: map[string]string{"eth9": "tap9"}},
	} {
		base, _ := tinyConfig(t, tiny.Image())
		vm, _, err := LoadSnapshot(base, p)
		if err == nil {
			vm.Close()
			t.Errorf("%s: loaded", name)
			continue
		}
		if !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s: %v, want ErrBadSnapshot", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

// TestSnapshotWithDevices: a machine with the PIT, a drive, an entropy
// device, a balloon and vsock (which the tiny guest never sets up) snapshots and
// restores, with the vsock socket overridden; the restored machine has the
// same devices and runs on.
func TestSnapshotWithDevices(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Drives = []DriveConfig{{Config: blk.Config{ID: "rootfs", Path: disk}, Root: true}}
	cfg.RNG = &rng.Config{}
	cfg.Balloon = &balloon.Config{AmountMiB: 16}
	cfg.Vsock = &vsock.Config{GuestCID: 3, UDSPath: filepath.Join(dir, "v.sock")}
	cfg.PIT = true
	a, doneA := startVM(t, cfg)
	waitCount(t, a, 0)
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); err != nil {
		t.Fatal(err)
	}
	saved := counter(t, a)
	a.Stop()
	<-doneA
	a.Close()

	st, err := snapshot.Read(snap)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, d := range st.Header.Devices {
		kinds[d.Name] = d.Kind + " " + d.Backend
	}
	if kinds["block rootfs"] != "virtio-block "+disk || kinds["vsock"] != "virtio-vsock "+cfg.Vsock.UDSPath ||
		kinds["rng"] != "virtio-rng " || kinds["balloon"] != "virtio-balloon " {
		t.Errorf("header devices %v", kinds)
	}

	base, blog := tinyConfig(t, tiny.Image())
	other := filepath.Join(dir, "other.sock")
	b, bcfg, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap, MemFilePath: mem, VsockUDSPath: other})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restore log: %s", blog)
	defer b.Close()
	if bcfg.Vsock.UDSPath != other || !bcfg.PIT || len(bcfg.Drives) != 1 || bcfg.Balloon == nil || bcfg.Balloon.AmountMiB != 16 || bcfg.RNG == nil {
		t.Errorf("restored config %+v", bcfg)
	}
	if len(b.virtio) != 4 {
		t.Errorf("%d virtio devices after restore, want 4", len(b.virtio))
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("vsock override: %v", err)
	}
	doneB := runAsync(b)
	b.Resume()
	waitCount(t, b, saved)
	setExitFlag(t, b)
	waitFate(t, doneB, FateReset)
}

// TestSnapshotUffd: a restore with the Uffd backend gets its pages from
// the page-fault handler (snapshot.UffdHandler here) and runs on.
func TestSnapshotUffd(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	a, doneA := startVM(t, cfg)
	dir, snap, mem := snapshotAt(t, a, 100)
	saved := counter(t, a)
	a.Stop()
	<-doneA

	sock := filepath.Join(dir, "uffd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type served struct {
		h   *snapshot.UffdHandler
		err error
	}
	handler := make(chan served, 1)
	stop := make(chan struct{})
	go func() {
		h, err := snapshot.AcceptUffd(ln, mem)
		if err == nil {
			err = h.Serve(stop)
		}
		handler <- served{h, err}
	}()

	base, _ := tinyConfig(t, tiny.Image())
	b, _, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap, UffdPath: sock})
	if err != nil {
		t.Fatal(err)
	}
	doneB := runAsync(b)
	b.Resume()
	waitCount(t, b, saved)
	setExitFlag(t, b)
	waitFate(t, doneB, FateReset)
	b.Close()
	close(stop)
	s := <-handler
	if s.err != nil {
		t.Fatal(s.err)
	}
	defer s.h.Close()
	if s.h.Faults == 0 {
		t.Error("the handler served no page")
	}
	t.Logf("%d pages served by the handler", s.h.Faults)
}

// TestSnapshotCreateLeavesNothingOnError: a snapshot into a directory that
// does not exist, or next to one, fails and leaves no file behind.
func TestSnapshotCreateLeavesNothingOnError(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	a, done := startVM(t, cfg)
	defer func() { a.Stop(); <-done }()
	a.Pause()
	dir := t.TempDir()
	for _, p := range []SnapshotCreate{
		{SnapshotPath: filepath.Join(dir, "vm.snap"), MemFilePath: filepath.Join(dir, "missing", "vm.mem")},
		{SnapshotPath: filepath.Join(dir, "missing", "vm.snap"), MemFilePath: filepath.Join(dir, "vm.mem")},
		{SnapshotPath: filepath.Join(dir, "vm.snap"), MemFilePath: filepath.Join(dir, "vm.mem"), Type: "Half"},
	} {
		if err := a.CreateSnapshot(p); err == nil {
			t.Errorf("%+v: no error", p)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%+v: left %d files behind", p, len(ents))
		}
	}
}

// TestSnapshotClockRealtime: loaded with clock_realtime, the guest's
// kvmclock has advanced by the wall-clock time since the snapshot (from
// KVM's CLOCK_REALTIME reference, or the header's creation time where KVM
// gives none); loaded without, it resumes where it stopped (Firecracker's
// default).
func TestSnapshotClockRealtime(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	a, done := startVM(t, cfg)
	_, snap, mem := snapshotAt(t, a, 0)
	a.Stop()
	<-done
	st, err := snapshot.Read(snap)
	if err != nil {
		t.Fatal(err)
	}
	if st.VM.Clock.Flags&kvm.ClockRealtime == 0 {
		// The fallback: the clock advances by the wall time since the
		// header's Created.
		t.Log("this host's kvmclock has no CLOCK_REALTIME reference: testing the fallback")
	}
	const gap = 300 * time.Millisecond
	time.Sleep(gap)
	base, _ := tinyConfig(t, tiny.Image())
	for _, realtime := range []bool{false, true} {
		b, _, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap, MemFilePath: mem, ClockRealtime: realtime})
		if err != nil {
			t.Fatal(err)
		}
		clk, err := b.vm.GetClock()
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
		advance := time.Duration(clk.Clock - st.VM.Clock.Clock)
		t.Logf("clock_realtime %v: kvmclock advanced %v", realtime, advance)
		if realtime && advance < gap {
			t.Errorf("with clock_realtime the clock advanced %v, want at least %v", advance, gap)
		}
		if !realtime && advance >= gap {
			t.Errorf("without clock_realtime the clock advanced %v, want it to resume where it stopped", advance)
		}
	}
	// The same snapshot as taken where KVM gives no CLOCK_REALTIME
	// reference (nested KVM): the clock advances by the time since Created.
	st.VM.Clock.Flags &^= kvm.ClockRealtime
	st.VM.Clock.Realtime = 0
	st.Header.Created = time.Now().Add(-10 * time.Second)
	if err := snapshot.Write(snap, st); err != nil {
		t.Fatal(err)
	}
	b, _, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap, MemFilePath: mem, ClockRealtime: true})
	if err != nil {
		t.Fatal(err)
	}
	clk, err := b.vm.GetClock()
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	if advance := time.Duration(clk.Clock - st.VM.Clock.Clock); advance < 10*time.Second || advance > 12*time.Second {
		t.Errorf("no CLOCK_REALTIME reference, snapshot 10 s old: the clock advanced %v, want about 10 s", advance)
	}
}

// TestLoadSnapshotFromAnotherCPU: a state file whose vCPUs this host's KVM
// cannot take fails to load with one error naming what is wrong: a CPUID
// feature bit the host does not offer, an MSR KVM refuses, a CPUID leaf
// KVM declines (when it holds any bit; an all-zero declined leaf loads,
// see kvm.VCPU.RestoreState). Which leaves a host declines differs between
// hosts: the test finds them by comparing the host's supported list with
// what the saved vCPU holds, and logs them.
func TestLoadSnapshotFromAnotherCPU(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	a, done := startVM(t, cfg)
	dir, snap, mem := snapshotAt(t, a, 0)
	a.Stop()
	<-done
	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	supported, err := sys.SupportedCPUID()
	sys.Close()
	if err != nil {
		t.Fatal(err)
	}

	// edit writes a copy of the state file with fn applied to vCPU 0.
	edit := func(name string, fn func(v *kvm.VCPUState)) string {
		st, err := snapshot.Read(snap)
		if err != nil {
			t.Fatal(err)
		}
		fn(&st.VCPUs[0])
		p := filepath.Join(dir, name)
		if err := snapshot.Write(p, st); err != nil {
			t.Fatal(err)
		}
		return p
	}
	load := func(p string) (*VM, error) {
		base, _ := tinyConfig(t, tiny.Image())
		vm, _, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: p, MemFilePath: mem})
		return vm, err
	}
	mustFail := func(what, p, want string) {
		t.Helper()
		vm, err := load(p)
		if err == nil {
			vm.Close()
			t.Fatalf("%s: loaded", what)
		}
		if !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%s: %v\nwant one line, ErrBadSnapshot, naming %q", what, err, want)
		}
		t.Logf("%s: %v", what, err)
	}

	// A feature bit neither the saved vCPU nor the host has: the guest of a
	// newer CPU model.
	const leaf7 = 7
	var bit uint32
	for i := range 32 {
		b := uint32(1) << i
		if cpuidEDX(st0CPUID(t, snap), leaf7)&b == 0 && cpuidEDX(supported, leaf7)&b == 0 {
			bit = b
			break
		}
	}
	if bit == 0 {
		t.Fatal("leaf 7 EDX has every bit set here")
	}
	newer := edit("newer.snap", func(v *kvm.VCPUState) {
		for i := range v.CPUID {
			if v.CPUID[i].Function == leaf7 && v.CPUID[i].Index == 0 {
				v.CPUID[i].EDX |= bit
			}
		}
	})
	mustFail("feature bit", newer, fmt.Sprintf("CPUID leaf 0x7 subleaf 0 EDX has bits %#x", bit))

	const bogusMSR = 0x4b56_4dff // in KVM's paravirtual range, never defined
	msr := edit("msr.snap", func(v *kvm.VCPUState) {
		v.MSRs = append(v.MSRs, kvm.MSREntry{Index: bogusMSR, Data: 1})
	})
	mustFail("MSR", msr, fmt.Sprintf("MSR %#x", bogusMSR))

	declined := kvm.DroppedCPUID(supported, st0CPUID(t, snap))
	if len(declined) == 0 {
		t.Log("this host's KVM keeps every CPUID leaf it supports: no declined leaf to load")
		return
	}
	leaf := declined[0]
	t.Logf("this host's KVM declines CPUID leaf %#x subleaf %d", leaf.Function, leaf.Index)
	set := leaf
	set.EAX |= 1
	withBits := edit("declined.snap", func(v *kvm.VCPUState) { v.CPUID = append(v.CPUID, set) })
	mustFail("declined leaf with bits", withBits, fmt.Sprintf("CPUID leaf %#x subleaf %d", leaf.Function, leaf.Index))

	zero := kvm.CPUIDEntry{Function: leaf.Function, Index: leaf.Index, Flags: leaf.Flags}
	harmless := edit("declined-zero.snap", func(v *kvm.VCPUState) { v.CPUID = append(v.CPUID, zero) })
	b, err := load(harmless)
	if err != nil {
		t.Fatalf("an all-zero declined leaf: %v", err)
	}
	defer b.Close()
	doneB := runAsync(b)
	saved := counter(t, b)
	if err := b.Resume(); err != nil {
		t.Fatal(err)
	}
	waitCount(t, b, saved)
	setExitFlag(t, b)
	waitFate(t, doneB, FateReset)
}

// st0CPUID is vCPU 0's saved CPUID in the state file p.
func st0CPUID(t *testing.T, p string) []kvm.CPUIDEntry {
	t.Helper()
	st, err := snapshot.Read(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.VCPUs[0].CPUID
}

// cpuidEDX is EDX of leaf fn, subleaf 0.
func cpuidEDX(entries []kvm.CPUIDEntry, fn uint32) uint32 {
	for _, e := range entries {
		if e.Function == fn && e.Index == 0 {
			return e.EDX
		}
	}
	return 0
}

// fullTmpfs mounts a small tmpfs on a new directory, removed when the test
// ends, and fills it: every write there fails with ENOSPC. It needs root:
// without it the test is skipped, or failed when CI is set (CI runs as
// root).
func fullTmpfs(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("mounting a tmpfs needs root")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for {
		if _, err := f.Write(make([]byte, snapshot.PageSize)); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("filling the tmpfs: %v", err)
			}
			return dir
		}
	}
}

// pointScribbler makes the Scribbler guest write to addr from now on.
func pointScribbler(t *testing.T, vm *VM, addr uint32) {
	t.Helper()
	b, err := vm.Memory().Slice(tiny.PointerAddr, 4)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(b, addr)
}

// TestSnapshotDiffAfterFailedSnapshot: a snapshot that fails on a full
// disk has already read (and so cleared) KVM's dirty log and the devices'
// written pages; the next Diff must still hold them. A Full base, a Diff
// that fails with ENOSPC, then a good Diff applied onto the base give the
// same memory as a Full snapshot taken at the good Diff's point.
func TestSnapshotDiffAfterFailedSnapshot(t *testing.T) {
	testkvm.Need(t)
	noSpace := fullTmpfs(t)
	cfg, _ := tinyConfig(t, tiny.Scribbler())
	cfg.TrackDirtyPages = true
	cfg.MemMiB = 16
	cfg.RNG = &rng.Config{} // a virtio device, so device writes are tracked
	a, done := startVM(t, cfg)
	defer func() { a.Stop(); <-done }()
	// The guest writes page A before the base, B before the failed Diff
	// and C before the good one; a device writes page D before the failed
	// Diff too.
	const pageA, pageB, pageC, pageD = 0x20_0000, 0x30_0000, 0x40_0000, 0x50_0000
	dir := t.TempDir()
	snap := func(name, typ string) (string, string, error) {
		s, m := filepath.Join(dir, name+".snap"), filepath.Join(dir, name+".mem")
		return s, m, a.CreateSnapshot(SnapshotCreate{SnapshotPath: s, MemFilePath: m, Type: typ})
	}
	run := func(addr uint32) {
		pointScribbler(t, a, addr)
		if err := a.Resume(); err != nil {
			t.Fatal(err)
		}
		waitCount(t, a, counter(t, a)+1000)
		if err := a.Pause(); err != nil {
			t.Fatal(err)
		}
	}
	pointScribbler(t, a, pageA)
	waitCount(t, a, 1000)
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	_, baseMem, err := snap("base", SnapshotFull)
	if err != nil {
		t.Fatal(err)
	}

	run(pageB)
	dev, err := a.Memory().Slice(pageD, 4)
	if err != nil {
		t.Fatal(err)
	}
	copy(dev, "dev!")
	a.tracker.MarkDirty(pageD, 4)
	err = a.CreateSnapshot(SnapshotCreate{SnapshotPath: filepath.Join(noSpace, "vm.snap"),
		MemFilePath: filepath.Join(noSpace, "vm.mem"), Type: SnapshotDiff})
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Diff onto a full disk: %v, want ENOSPC", err)
	}
	t.Logf("failed Diff: %v", err)

	run(pageC)
	_, diffMem, err := snap("diff", SnapshotDiff)
	if errors.Is(err, snapshot.ErrMemoryFile) {
		t.Skipf("sparse diffs unsupported here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	_, fullMem, err := snap("full", SnapshotFull)
	if err != nil {
		t.Fatal(err)
	}
	if err := snapshot.ApplyDiff(baseMem, diffMem); err != nil {
		t.Fatal(err)
	}
	merged, err := os.ReadFile(baseMem)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(fullMem)
	if err != nil {
		t.Fatal(err)
	}
	if len(merged) != len(want) {
		t.Fatalf("base+diff is %d bytes, the Full snapshot %d", len(merged), len(want))
	}
	for off := 0; off < len(want); off += snapshot.PageSize {
		if !bytes.Equal(merged[off:off+snapshot.PageSize], want[off:off+snapshot.PageSize]) {
			t.Errorf("page %#x differs between base+diff and the Full snapshot", off)
		}
	}
}

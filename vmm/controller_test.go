package vmm

import (
	"errors"
	"testing"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/ratelimit"
)

func TestControllerLifecycle(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Image())
	kernel := cfg.KernelPath
	cfg.KernelPath = ""
	c := NewController(Config{Logger: cfg.Logger, VCPUs: 1, MemMiB: 64, Cmdline: DefaultCmdline})
	defer c.Close()
	if s := c.State(); s != StateNotStarted {
		t.Fatalf("state %q, want %q", s, StateNotStarted)
	}
	// A failed edit changes nothing.
	if err := c.Configure(func(c *Config) error { c.MemMiB = 1; return errors.New("no") }); err == nil {
		t.Fatal("failed edit returned nil")
	}
	if c.Config().MemMiB != 64 {
		t.Fatal("a failed edit changed the configuration")
	}
	// A start without a kernel fails and leaves the instance not started.
	if err := c.Start(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("start without a kernel: %v", err)
	}
	if c.State() != StateNotStarted {
		t.Fatal("failed start changed the state")
	}
	if err := c.Configure(func(c *Config) error { c.KernelPath = kernel; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := c.SendCtrlAltDel(); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("SendCtrlAltDel before start: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); !errors.Is(err, ErrStarted) {
		t.Fatalf("second start: %v", err)
	}
	if err := c.Configure(func(c *Config) error { return nil }); !errors.Is(err, ErrStarted) {
		t.Fatalf("configure after start: %v", err)
	}
	if err := c.UpdateDrive("nope", DriveUpdate{}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("update of a missing drive: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second): // a hang, not a speed figure
		t.Fatal("tiny guest did not end")
	}
	if f := c.Fate(); f.Kind != FateReset {
		t.Fatalf("fate %v (%v), want reset", f.Kind, f.Err)
	}
}

func TestControllerStopBeforeStart(t *testing.T) {
	c := NewController(Config{VCPUs: 1, MemMiB: 64})
	defer c.Close()
	c.Stop()
	if f := c.Fate(); f.Kind != FateStopped {
		t.Fatalf("fate %v, want stopped", f.Kind)
	}
}

// TestMergeLimit: the configuration GET /vm/config shows after a PATCH of
// a limiter follows Firecracker's merge: given buckets replace, size 0
// removes, absent ones stay.
func TestMergeLimit(t *testing.T) {
	bw := &ratelimit.TokenBucketConfig{Size: 100, RefillTime: 10}
	ops := &ratelimit.TokenBucketConfig{Size: 5, RefillTime: 10}
	got := mergeLimit(&ratelimit.Config{Bandwidth: bw}, &ratelimit.Config{Ops: ops})
	if got == nil || got.Bandwidth != bw || got.Ops != ops {
		t.Fatalf("adding ops: %+v", got)
	}
	got = mergeLimit(got, &ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{}})
	if got == nil || got.Bandwidth != nil || got.Ops != ops {
		t.Fatalf("removing bandwidth: %+v", got)
	}
	if got = mergeLimit(got, &ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{}}); got != nil {
		t.Fatalf("removing both: %+v", got)
	}
	if mergeLimit(nil, nil) != nil {
		t.Fatal("nil update of nil")
	}
}

// TestControllerSnapshot: pause, snapshot and resume through the
// controller; a second controller loads the snapshot (resumed) and its
// guest runs on; a failed load ends that controller's run.
func TestControllerSnapshot(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	c := NewController(cfg)
	defer c.Close()
	if err := c.Pause(); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("pause before start: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	vm := c.vm.Load()
	waitCount(t, vm, 0)
	dir := t.TempDir()
	snap, mem := dir+"/vm.snap", dir+"/vm.mem"
	if err := c.CreateSnapshot(SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("snapshot while running: %v", err)
	}
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if c.State() != StatePaused {
		t.Fatalf("state %q after pause", c.State())
	}
	if err := c.CreateSnapshot(SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); err != nil {
		t.Fatal(err)
	}
	saved := counter(t, vm)
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	if c.State() != StateRunning {
		t.Fatalf("state %q after resume", c.State())
	}
	if err := c.LoadSnapshot(SnapshotLoad{SnapshotPath: snap, MemFilePath: mem}); !errors.Is(err, ErrLoadAfterStart) {
		t.Fatalf("load into a started controller: %v", err)
	}
	c.Stop()
	<-c.Done()

	base, _ := tinyConfig(t, tiny.Image())
	c2 := NewController(Config{Logger: base.Logger, Console: base.Console})
	defer c2.Close()
	if err := c2.LoadSnapshot(SnapshotLoad{SnapshotPath: snap, MemFilePath: mem, ResumeVM: true}); err != nil {
		t.Fatal(err)
	}
	if c2.State() != StateRunning {
		t.Fatalf("state %q after load with resume", c2.State())
	}
	vm2 := c2.vm.Load()
	waitCount(t, vm2, saved)
	setExitFlag(t, vm2)
	select {
	case <-c2.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("restored guest did not end")
	}
	if f := c2.Fate(); f.Kind != FateReset {
		t.Fatalf("fate %v (%v)", f.Kind, f.Err)
	}

	c3 := NewController(Config{Logger: base.Logger})
	defer c3.Close()
	if err := c3.Configure(func(c *Config) error { c.MemMiB = 64; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := c3.LoadSnapshot(SnapshotLoad{SnapshotPath: snap, MemFilePath: mem}); !errors.Is(err, ErrLoadAfterConfig) {
		t.Fatalf("load after configuring: %v", err)
	}
	c4 := NewController(Config{Logger: base.Logger})
	defer c4.Close()
	if err := c4.LoadSnapshot(SnapshotLoad{SnapshotPath: snap + ".missing", MemFilePath: mem}); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("load of a missing file: %v", err)
	}
	select {
	case <-c4.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a failed load did not end the run")
	}
}

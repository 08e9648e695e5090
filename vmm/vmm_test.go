package vmm

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/devices"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/virtio/blk"
	"github.com/embervm/ember/x86"
)

func tinyConfig(t *testing.T, image []byte) (Config, *bytes.Buffer) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "guest.elf")
	if err := os.WriteFile(p, image, 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	return Config{
		KernelPath: p,
		VCPUs:      1,
		MemMiB:     DefaultMemMiB,
		Cmdline:    DefaultCmdline,
		Logger:     slog.New(slog.NewTextHandler(&log, nil)),
	}, &log
}

func runGuest(t *testing.T, cfg Config) Fate {
	t.Helper()
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	return vm.Run()
}

func TestTinyGuestResetIsNormalEnd(t *testing.T) {
	testkvm.Need(t)
	cfg, log := tinyConfig(t, tiny.Image())
	cfg.BootTimer = true
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if f := vm.Run(); f.Kind != FateReset {
		t.Fatalf("fate %v (%v), want reset", f.Kind, f.Err)
	}
	if _, ok := vm.BootTimer().Result(); !ok {
		t.Errorf("boot timer saw no 123; log:\n%s", log)
	}
}

// A guest that writes its exit status and resets ends with the status in
// its fate; one that writes none has none.
func TestExitStatusInFate(t *testing.T) {
	testkvm.Need(t)
	if devices.ExitStatusBase != x86.ExitStatusAddr || tiny.ExitStatusAddr != x86.ExitStatusAddr {
		t.Fatalf("exit-status register at %#x (devices), %#x (x86 layout), %#x (tiny guest)",
			devices.ExitStatusBase, x86.ExitStatusAddr, tiny.ExitStatusAddr)
	}
	for _, status := range []uint32{0, 3, 137, 255} {
		cfg, _ := tinyConfig(t, tiny.ExitStatus(status))
		f := runGuest(t, cfg)
		if f.Kind != FateReset || !f.HasExitStatus || f.ExitStatus != int(status) {
			t.Errorf("status %d: fate %+v", status, f)
		}
	}
	// Out of range: ignored, as if never written.
	cfg, _ := tinyConfig(t, tiny.ExitStatus(256))
	if f := runGuest(t, cfg); f.Kind != FateReset || f.HasExitStatus {
		t.Errorf("status 256: fate %+v", f)
	}
	cfg, _ = tinyConfig(t, tiny.Image())
	if f := runGuest(t, cfg); f.Kind != FateReset || f.HasExitStatus {
		t.Errorf("guest without a status: fate %+v", f)
	}
}

func TestTripleFaultIsReported(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.TripleFault())
	f := runGuest(t, cfg)
	if f.Kind != FateShutdown || f.Err == nil || !strings.Contains(f.Err.Error(), "rip=") {
		t.Fatalf("fate %v (%v), want a shutdown with a register dump", f.Kind, f.Err)
	}
}

// TestStopKicksSpinningVCPUs: Stop interrupts vCPUs that are running guest
// code and never exit on their own (immediate_exit plus a signal).
func TestStopKicksSpinningVCPUs(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Spin())
	cfg.VCPUs = 2
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	done := make(chan Fate, 1)
	go func() { done <- vm.Run() }()
	time.Sleep(50 * time.Millisecond)
	vm.Stop()
	select {
	case f := <-done:
		if f.Kind != FateStopped {
			t.Fatalf("fate %v (%v), want stopped", f.Kind, f.Err)
		}
	case <-time.After(30 * time.Second): // a hang, not a speed figure
		t.Fatal("Run did not return after Stop")
	}
}

func TestConfigValidation(t *testing.T) {
	good := Config{KernelPath: "k", VCPUs: 1, MemMiB: 128}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"no kernel":   func(c *Config) { c.KernelPath = "" },
		"0 vcpus":     func(c *Config) { c.VCPUs = 0 },
		"33 vcpus":    func(c *Config) { c.VCPUs = 33 },
		"0 memory":    func(c *Config) { c.MemMiB = 0 },
		"bad proto":   func(c *Config) { c.BootProtocol = "bios" },
		"huge memory": func(c *Config) { c.MemMiB = MaxMemMiB + 1 },
	} {
		c := good
		mod(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", name, err)
		}
	}
}

// TestBadKernelIsInvalidConfig: a file that is not a kernel is the user's error.
func TestBadKernelIsInvalidConfig(t *testing.T) {
	testkvm.Need(t) // the kernel is loaded after /dev/kvm is opened
	cfg, _ := tinyConfig(t, []byte("#!/bin/sh\necho not a kernel\n"))
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
}

// TestConsoleInputEndsWithRun: the goroutine that copies console input to
// the guest ends when Run returns, even though its input (a pipe nobody
// writes to or closes) never ends.
func TestConsoleInputEndsWithRun(t *testing.T) {
	testkvm.Need(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	cfg, _ := tinyConfig(t, tiny.Image())
	cfg.ConsoleIn = r
	if f := runGuest(t, cfg); f.Kind != FateReset {
		t.Fatalf("fate %v (%v), want reset", f.Kind, f.Err)
	}
	buf := make([]byte, 1<<20)
	if stacks := string(buf[:runtime.Stack(buf, true)]); strings.Contains(stacks, "feedConsole") {
		t.Fatalf("the console input goroutine outlived Run:\n%s", stacks)
	}
}

// Complete fills in the configuration after the kernel is loaded: its
// drives are attached, its error ends New, and it may not change the
// kernel. A kernel that fails to load ends New before Complete runs.
func TestComplete(t *testing.T) {
	testkvm.Need(t)
	drive := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(drive, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _ := tinyConfig(t, tiny.Image())
	called := 0
	cfg.Complete = func(c *Config) error {
		called++
		c.Drives = append(c.Drives, DriveConfig{Config: blk.Config{ID: "late", Path: drive}})
		c.Cmdline += " late=1"
		return nil
	}
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if called != 1 || len(vm.cfg.Drives) != 1 || vm.cfg.Drives[0].ID != "late" || !strings.HasSuffix(vm.cfg.Cmdline, " late=1") {
		t.Errorf("Complete called %d times; drives %+v, cmdline %q", called, vm.cfg.Drives, vm.cfg.Cmdline)
	}
	if f := vm.Run(); f.Kind != FateReset {
		t.Errorf("fate %v (%v), want reset", f.Kind, f.Err)
	}
	vm.Close()

	boom := errors.New("the image could not be prepared")
	cfg.Complete = func(*Config) error { return boom }
	if _, err := New(cfg); !errors.Is(err, boom) {
		t.Errorf("Complete's error: New returned %v", err)
	}
	cfg.Complete = func(c *Config) error { c.KernelPath = drive; return nil }
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "kernel changed") {
		t.Errorf("Complete changing the kernel: New returned %v", err)
	}
	cfg.Complete = func(c *Config) error {
		c.Drives = append(c.Drives, DriveConfig{Config: blk.Config{ID: "x"}})
		return nil
	}
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Complete adding a drive without a path: New returned %v", err)
	}
	called = 0
	cfg.Complete = func(*Config) error { called++; return nil }
	cfg.KernelPath = filepath.Join(t.TempDir(), "missing")
	if _, err := New(cfg); err == nil || called != 0 {
		t.Errorf("a kernel that does not load: New returned %v, Complete called %d times", err, called)
	}
}

package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/embervm/ember/devices"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/ratelimit"
)

// metricsOf returns the VM's metrics as "group.name" values.
func metricsOf(vm *VM) map[string]uint64 {
	m := map[string]uint64{}
	vm.readMetrics(func(group, name string, value uint64) { m[group+"."+name] = value })
	return m
}

// TestStalledConsoleDoesNotStallGuest: a guest printing to a stdout whose
// reader never reads (a pipe) keeps running, can be paused and
// snapshotted; what did not fit is dropped and counted in the uart
// metrics.
func TestStalledConsoleDoesNotStallGuest(t *testing.T) {
	testkvm.Need(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cfg, _ := tinyConfig(t, tiny.Chatter())
	cfg.Console = w
	a, done := startVM(t, cfg)
	defer func() {
		r.Close() // unblocks the console writer
		a.Stop()
		waitFate(t, done, FateStopped)
	}()
	// More than the pipe (64 KiB) and the console buffer hold: the guest
	// was not held up when they filled.
	waitCount(t, a, 3*devices.ConsoleBufferSize)
	paused := make(chan error, 1)
	go func() { paused <- a.Pause() }()
	select {
	case err := <-paused:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second): // a hang, not a speed figure
		t.Fatal("Pause hung behind the stalled console")
	}
	dir := t.TempDir()
	if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: filepath.Join(dir, "vm.snap"), MemFilePath: filepath.Join(dir, "vm.mem")}); err != nil {
		t.Fatal(err)
	}
	m := metricsOf(a)
	n := uint64(counter(t, a))
	if m["uart.missed_write_count"] == 0 || m["uart.write_count"]+m["uart.missed_write_count"] > n+tiny.ChatterChunk {
		t.Errorf("the guest wrote %d bytes; uart metrics %v", n, m)
	}
	t.Logf("guest wrote %d bytes: %d reached the pipe, %d dropped", n, m["uart.write_count"], m["uart.missed_write_count"])
}

// TestSerialOutCap: the serial_out_path file gets no more than its rate
// limiter lets through; the rest is dropped and counted.
func TestSerialOutCap(t *testing.T) {
	testkvm.Need(t)
	const budget = 16 << 10
	out := filepath.Join(t.TempDir(), "serial.log")
	cfg, _ := tinyConfig(t, tiny.Chatter())
	cfg.SerialOutPath = out
	// budget bytes, refilled over an hour: a few bytes accrue during the
	// test.
	cfg.SerialOutRateLimit = &ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{Size: budget, RefillTime: 3_600_000}}
	a, done := startVM(t, cfg)
	defer func() { a.Stop(); waitFate(t, done, FateStopped) }()
	waitCount(t, a, 8*budget)
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	m := metricsOf(a)
	n := uint64(counter(t, a))
	if fi.Size() > budget+1<<10 {
		t.Errorf("serial_out_path holds %d bytes, over the %d-byte budget", fi.Size(), budget)
	}
	// Not dropped: the file, the console buffer and the chunk the writer
	// holds while the limiter makes it wait (4 KiB).
	if uint64(fi.Size()) < m["uart.write_count"] || m["uart.missed_write_count"] < n-uint64(fi.Size())-devices.ConsoleBufferSize-4<<10-tiny.ChatterChunk {
		t.Errorf("the guest wrote %d bytes, the file holds %d; uart metrics %v", n, fi.Size(), m)
	}
	t.Logf("guest wrote %d bytes: %d in the file, %d dropped", n, fi.Size(), m["uart.missed_write_count"])
}

// TestSerialOutBadLimit: an invalid serial rate limiter is a configuration
// error.
func TestSerialOutBadLimit(t *testing.T) {
	cfg := Config{KernelPath: "k", VCPUs: 1, MemMiB: 128, SerialOutPath: "/tmp/x",
		SerialOutRateLimit: &ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{Size: 1, RefillTime: ratelimit.MaxRefillTime + 1}}}
	if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Validate: %v, want ErrInvalidConfig", err)
	}
}

package tiny_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/vmm"
)

// console collects the guest's serial output and signals each write.
type console struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case c.wrote <- struct{}{}:
	default:
	}
	return c.buf.Write(p)
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// TestIdlePrintsAndStaysUp: the idle guest prints its line on the serial
// console and then stays halted (it neither exits nor faults) until the
// host stops it.
func TestIdlePrintsAndStaysUp(t *testing.T) {
	testkvm.Need(t)
	p := filepath.Join(t.TempDir(), "idle.elf")
	if err := os.WriteFile(p, tiny.Idle(), 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	con := &console{wrote: make(chan struct{}, 1)}
	vm, err := vmm.New(vmm.Config{KernelPath: p, VCPUs: 1, MemMiB: vmm.DefaultMemMiB, Cmdline: vmm.DefaultCmdline,
		Console: con, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	done := make(chan vmm.Fate, 1)
	go func() { done <- vm.Run() }()
	deadline := time.After(10 * time.Second)
	for con.String() != tiny.IdleLine {
		select {
		case <-con.wrote:
		case f := <-done:
			t.Fatalf("the idle guest ended (%v: %v) having printed %q; log:\n%s", f.Kind, f.Err, con.String(), &log)
		case <-deadline:
			t.Fatalf("console %q, want %q; log:\n%s", con.String(), tiny.IdleLine, &log)
		}
	}
	vm.Stop()
	if f := <-done; f.Kind != vmm.FateStopped {
		t.Fatalf("fate %v (%v), want stopped: the guest ended on its own", f.Kind, f.Err)
	}
	if got := con.String(); got != tiny.IdleLine {
		t.Errorf("console %q, want exactly %q", got, tiny.IdleLine)
	}
}

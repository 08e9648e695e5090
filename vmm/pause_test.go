package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
)

// counter reads the Counter guest's count.
func counter(t *testing.T, vm *VM) uint32 {
	t.Helper()
	b, err := vm.Memory().Slice(tiny.CounterAddr, 4)
	if err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b)
}

// waitCount waits until the Counter guest's count passes above.
func waitCount(t *testing.T, vm *VM, above uint32) uint32 {
	t.Helper()
	// A guest that stopped counting is stuck; one that counts slowly (each
	// of the chatter's bytes is an exit, slow in the lab) is waited for.
	const stuck = 30 * time.Second
	last, moved := counter(t, vm), time.Now()
	for time.Since(moved) < stuck {
		n := counter(t, vm)
		if n > above {
			return n
		}
		if n != last {
			last, moved = n, time.Now()
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("the guest's count stayed at %d for %v (waiting for more than %d); %s", last, stuck, above, vcpuWhere(vm))
	return 0
}

// vcpuWhere says where each vCPU thread is (its system call, from
// /proc/self/task/TID/syscall: "16 ..." is an ioctl, KVM_RUN; "running"
// is user space) and its kernel stack's top, for a stalled guest.
func vcpuWhere(vm *VM) string {
	var out []string
	for i, c := range vm.cpus {
		tid := c.tid.Load()
		sc, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/syscall", tid))
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/wchan", tid))
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
		out = append(out, fmt.Sprintf("vCPU %d (tid %d): syscall %q, wchan %q, stat %q", i, tid,
			strings.TrimSpace(string(sc)), wchan, strings.TrimSpace(string(stat))))
	}
	return strings.Join(out, "; ")
}

// TestPauseResume: a paused guest does not run (its count and RIP stay
// put), and runs again after Resume.
func TestPauseResume(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	cfg.VCPUs = 2
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	done := make(chan Fate, 1)
	go func() { done <- vm.Run() }()
	waitCount(t, vm, 0)
	for round := 0; round < 3; round++ {
		if err := vm.Pause(); err != nil {
			t.Fatal(err)
		}
		if !vm.Paused() {
			t.Fatal("Paused() false after Pause")
		}
		n := counter(t, vm)
		rip := make([]uint64, len(vm.cpus))
		for i, c := range vm.cpus {
			r, err := c.fd.GetRegs()
			if err != nil {
				t.Fatal(err)
			}
			rip[i] = r.RIP
		}
		time.Sleep(50 * time.Millisecond)
		if m := counter(t, vm); m != n {
			t.Fatalf("round %d: count went from %d to %d while paused", round, n, m)
		}
		for i, c := range vm.cpus {
			if r, _ := c.fd.GetRegs(); r.RIP != rip[i] {
				t.Fatalf("round %d: vCPU %d RIP moved from %#x to %#x while paused", round, i, rip[i], r.RIP)
			}
		}
		if err := vm.Resume(); err != nil {
			t.Fatal(err)
		}
		waitCount(t, vm, n)
	}
	// Stop works on a paused VM too.
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	vm.Stop()
	select {
	case f := <-done:
		if f.Kind != FateStopped {
			t.Fatalf("fate %v (%v), want stopped", f.Kind, f.Err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after Stop on a paused VM")
	}
	if err := vm.Resume(); err == nil {
		t.Error("Resume of a stopped VM succeeded")
	}
}

// blockingPort is a port-I/O device whose writes wait until release is
// closed: a vCPU stuck in a device handler.
type blockingPort struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingPort) Read(uint64, []byte) {}
func (b *blockingPort) Write(uint64, []byte) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
}

// TestPauseTimesOutOnStuckVCPU: a vCPU stuck in a device handler cannot
// park; Pause gives up after its timeout with ErrPauseTimeout instead of
// hanging, and leaves the VM running: the vCPU that had parked runs again,
// and once the handler returns the guest goes on (and resets).
func TestPauseTimesOutOnStuckVCPU(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Image())
	cfg.VCPUs = 2
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	port := &blockingPort{entered: make(chan struct{}), release: make(chan struct{})}
	if err := vm.pio.Insert(port, tiny.DebugExitPort, 1); err != nil {
		t.Fatal(err)
	}
	vm.pauseTimeout = 100 * time.Millisecond
	done := runAsync(vm)
	<-port.entered
	paused := make(chan error, 1)
	go func() { paused <- vm.Pause() }()
	select {
	case err := <-paused:
		if !errors.Is(err, ErrPauseTimeout) {
			t.Fatalf("Pause with a stuck vCPU: %v, want ErrPauseTimeout", err)
		}
		t.Logf("Pause: %v", err)
	case <-time.After(30 * time.Second): // a hang, not a speed figure
		t.Fatal("Pause hung on a stuck vCPU")
	}
	if vm.Paused() {
		t.Error("Paused() after a failed Pause")
	}
	close(port.release)
	waitFate(t, done, FateReset)
}

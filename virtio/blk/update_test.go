package blk

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// TestSetBackingFile: after a swap the guest reads the new file, sees its
// capacity in the configuration space and gets a config-change interrupt.
func TestSetBackingFile(t *testing.T) {
	d, m := start(t, Config{ID: "data", Path: disk(t, 4)})
	changed := 0
	d.SetConfigNotifier(func() error { changed++; return nil })

	newPath := filepath.Join(t.TempDir(), "new.img")
	b := make([]byte, 8*SectorSize)
	for i := range b {
		b[i] = 0x5a
	}
	if err := os.WriteFile(newPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.SetBackingFile(newPath); err != nil {
		t.Fatal(err)
	}
	if changed != 1 {
		t.Fatalf("config-change notifications: %d, want 1", changed)
	}
	if got := binary.LittleEndian.Uint64(m.Config(0, 8)); got != 8 {
		t.Fatalf("capacity after swap %d sectors, want 8", got)
	}
	head, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 7)}, virtiotest.Buf{WriteLen: 512})
	if st != statusOK || m.Queues[0].Written(head, 0, 512)[0] != 0x5a {
		t.Fatalf("read after swap: status %d, data %#x", st, m.Queues[0].Written(head, 0, 512)[0])
	}
	if err := d.SetBackingFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("swap to a missing file succeeded")
	}
	// The failed swap left the drive on the good file.
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 7)}, virtiotest.Buf{WriteLen: 512}); st != statusOK {
		t.Fatalf("read after a failed swap: status %d", st)
	}
}

// TestUpdateRateLimit: a limiter added at run time throttles, and removing
// it lets the waiting request through.
func TestUpdateRateLimit(t *testing.T) {
	d, m := start(t, Config{ID: "data", Path: disk(t, 64)})
	one := &ratelimit.TokenBucketConfig{Size: 1, RefillTime: ratelimit.MaxRefillTime}
	if err := d.UpdateRateLimit(ratelimit.Config{Ops: one}); err != nil {
		t.Fatal(err)
	}
	// The first request takes the one token; the second waits.
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 0)}, virtiotest.Buf{WriteLen: 512}); st != statusOK {
		t.Fatalf("first read: status %d", st)
	}
	m.Queues[0].Add(virtiotest.Buf{Data: header(typeIn, 1)}, virtiotest.Buf{WriteLen: 512}, virtiotest.Buf{WriteLen: 1})
	m.Notify(0)
	if _, _, err := m.WaitUsed(0, 200e6); err == nil {
		t.Fatal("second read served despite an empty ops bucket")
	}
	if err := d.UpdateRateLimit(ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.WaitUsed(0, wait); err != nil {
		t.Fatalf("read still waiting after the limiter was removed: %v", err)
	}
	if err := d.UpdateRateLimit(ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{Size: 1, RefillTime: ratelimit.MaxRefillTime + 1}}); err == nil {
		t.Fatal("an invalid limiter was accepted")
	}
}

// TestSetBackingFileDuringReset: a drive update (which tells the driver of
// the new capacity through the transport) racing the guest resetting and
// re-initialising the device (a vCPU holding the transport's lock into the
// device's Reset and Activate) finishes on both sides. It used to deadlock:
// SetBackingFile held the device's lock into the transport's.
func TestSetBackingFileDuringReset(t *testing.T) {
	d, err := New(Config{ID: "data", Path: disk(t, 4)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.SetConfigNotifier(tr.ConfigChanged)
	if _, err := virtiotest.SetupMMIO(tr, mem, ^uint64(0), 0x10000); err != nil {
		t.Fatal(err)
	}
	paths := []string{disk(t, 4), disk(t, 8)}
	const rounds = 300
	done := make(chan error, 2)
	go func() {
		for i := range rounds {
			if err := d.SetBackingFile(paths[i%2]); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	go func() {
		for range rounds {
			// SetupMMIO begins with a reset (status 0).
			if _, err := virtiotest.SetupMMIO(tr, mem, ^uint64(0), 0x10000); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	// A deadlock shows as neither side finishing; the devices are then
	// left as they are (closing them would hang too).
	deadline := time.After(60 * time.Second)
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("deadlock: SetBackingFile and a guest reset did not both finish within a minute")
		}
	}
	tr.Close()
	d.Close()
}

// TestUpdateWhilePaused: a rate-limiter update or a backing-file change on
// a paused device changes nothing the guest can see and writes no file: the
// request that waited for the old limits stays in the ring, unanswered and
// unwritten, no interrupt is raised for it, until Resume, when it goes to
// the new file.
func TestUpdateWhilePaused(t *testing.T) {
	oldPath := disk(t, 4)
	d, m := start(t, Config{ID: "data", Path: oldPath, RateLimit: &ratelimit.Config{
		Ops: &ratelimit.TokenBucketConfig{Size: 1, RefillTime: ratelimit.MaxRefillTime}}})
	d.SetConfigNotifier(m.T.ConfigChanged)
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 0)}, virtiotest.Buf{WriteLen: 512}); st != statusOK {
		t.Fatalf("first read: status %d", st)
	}
	// The second request, a write, waits for a token.
	data := bytes.Repeat([]byte{0xee}, SectorSize)
	head := m.Queues[0].Add(virtiotest.Buf{Data: header(typeOut, 2)}, virtiotest.Buf{Data: data}, virtiotest.Buf{WriteLen: 1})
	m.Notify(0)
	deadline := time.Now().Add(wait)
	for d.Metrics.RateLimiterThrottled.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second request was not throttled")
		}
		time.Sleep(time.Millisecond)
	}
	d.Pause()
	if st := m.Reg(0x060); st != 0 {
		m.SetReg(0x064, st)
	}
	m.Interrupts()
	used := m.UsedIdx(0)
	unchanged := func(when string) {
		t.Helper()
		if got := m.UsedIdx(0); got != used {
			t.Fatalf("%s: used index %d, was %d: the paused device answered a request", when, got, used)
		}
		if f, _ := os.ReadFile(oldPath); f[2*SectorSize] != 2 {
			t.Fatalf("%s: the paused device wrote the disk", when)
		}
	}

	if err := d.UpdateRateLimit(ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{}}); err != nil {
		t.Fatal(err)
	}
	unchanged("after a limiter update")
	if n := m.Interrupts(); n != 0 {
		t.Fatalf("after a limiter update: %d interrupts raised by the paused device", n)
	}

	newPath := disk(t, 8)
	if err := d.SetBackingFile(newPath); err != nil {
		t.Fatal(err)
	}
	unchanged("after a backing-file change")
	// The change itself is announced (the configuration is the new
	// file's), but no used buffer is.
	if st := m.Reg(0x060); st != 2 {
		t.Fatalf("after a backing-file change: interrupt status %#x, want only the configuration change (2)", st)
	}
	if f, _ := os.ReadFile(newPath); f[2*SectorSize] != 2 {
		t.Fatal("the paused device wrote the new disk")
	}

	d.Resume()
	h, n, err := m.WaitUsed(0, wait)
	if err != nil || h != head || n != 1 {
		t.Fatalf("after resume: used %d,%d,%v; want the waiting write %d", h, n, err, head)
	}
	if st := m.Queues[0].Written(head, 0, 1)[0]; st != statusOK {
		t.Fatalf("the write after resume: status %d", st)
	}
	if f, _ := os.ReadFile(newPath); !bytes.Equal(f[2*SectorSize:3*SectorSize], data) {
		t.Fatal("the write after resume did not reach the new file")
	}
	if f, _ := os.ReadFile(oldPath); f[2*SectorSize] != 2 {
		t.Fatal("the write after resume reached the old file")
	}
}

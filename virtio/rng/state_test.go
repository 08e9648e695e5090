package rng

import (
	"testing"
	"time"

	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// TestTransportStateRestore: a live device paused, saved and restored into
// a new transport and device over the same guest memory carries on at the
// saved ring positions.
func TestTransportStateRestore(t *testing.T) {
	d, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := virtiotest.SetupMMIO(tr, mem, ^uint64(0), 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		head := m.Queues[0].Add(virtiotest.Buf{WriteLen: 64})
		m.Notify(0)
		if h, n, err := m.WaitUsed(0, 5*time.Second); err != nil || h != head || n != 64 {
			t.Fatalf("used %d,%d,%v; want %d,64", h, n, err, head)
		}
	}
	d.Pause()
	s, err := tr.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !s.Active || s.Queues[0].NextAvail != 3 || s.Queues[0].NextUsed != 3 {
		t.Fatalf("saved %+v: want an active device at ring position 3", s)
	}
	d.Resume()
	tr.Close()
	d.Close()

	d2, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr2, err := virtio.NewMMIO(d2, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tr2.Close(); d2.Close() }()
	if err := tr2.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if got, _ := tr2.SaveState(); got.Status != s.Status || got.DriverFeatures != s.DriverFeatures {
		t.Fatalf("restored %+v, saved %+v", got, s)
	}
	m.T = tr2
	head := m.Queues[0].Add(virtiotest.Buf{WriteLen: 32})
	m.Notify(0)
	if h, n, err := m.WaitUsed(0, 5*time.Second); err != nil || h != head || n != 32 {
		t.Fatalf("after restore: used %d,%d,%v; want %d,32", h, n, err, head)
	}
	bad := s
	bad.DeviceType = virtio.IDBlock
	if err := tr2.RestoreState(bad); err == nil {
		t.Error("a block device's state restored into an rng transport")
	}
}

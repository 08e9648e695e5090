package rng

import (
	"bytes"
	"testing"
	"time"

	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

func TestFillsBuffers(t *testing.T) {
	d, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tr.Close(); d.Close() }()
	m, err := virtiotest.SetupMMIO(tr, mem, ^uint64(0), 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	head := m.Queues[0].Add(virtiotest.Buf{WriteLen: 4096})
	m.Notify(0)
	h, n, err := m.WaitUsed(0, 5*time.Second)
	if err != nil || h != head || n != 4096 {
		t.Fatalf("used %d,%d,%v; want %d,4096", h, n, err, head)
	}
	if b := m.Queues[0].Written(head, 0, 4096); bytes.Count(b, []byte{0}) > 100 {
		t.Fatal("buffer was not filled with random bytes")
	}
	// A device-readable buffer gets nothing.
	head = m.Queues[0].Add(virtiotest.Buf{Data: make([]byte, 16)})
	m.Notify(0)
	if h, n, err := m.WaitUsed(0, 5*time.Second); err != nil || h != head || n != 0 {
		t.Fatalf("readable buffer: used %d,%d,%v", h, n, err)
	}
}

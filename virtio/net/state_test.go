package net

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// TestRxBuffersSurviveSnapshots: the receive chains the device holds ahead
// of frames are not lost in a snapshot. A driver gives a queue's worth of
// receive buffers; the device is saved and restored (a new device on a new
// tap over the same guest memory, as a restored clone) three generations
// deep, taking frames in each (and the source carrying on after a
// snapshot); the last one still uses every one of the driver's buffers,
// each once, for the frames that arrive after it.
func TestRxBuffersSurviveSnapshots(t *testing.T) {
	const (
		bufBase = 0x100000
		bufLen  = 1526 // a 1500-byte MTU frame, its VLAN tag and vnet header
		frameN  = 60
	)
	mem := virtiotest.NewMemory(bufBase + queueSize*2048)
	d := newDevice(t, Config{})
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := virtiotest.SetupMMIO(tr, mem, all, 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	rx := m.Queues[0]
	desc, _, _ := rx.Rings()
	for i := range uint16(queueSize) {
		rx.WriteDesc(desc, i, bufBase+2048*uint64(i), bufLen, virtiotest.FWrite, 0)
		rx.Publish(i)
	}
	m.Notify(0)

	used := map[uint16]bool{}
	seq := byte(0)
	// receive injects one frame and checks it arrives whole, in a buffer
	// not used before.
	receive := func(sock int) {
		t.Helper()
		f := frame(frameN, seq)
		seq++
		inject(t, sock, f)
		head, n, err := m.WaitUsed(0, wait)
		if err != nil {
			t.Fatalf("frame %d (%d buffers used so far): %v", seq-1, len(used), err)
		}
		if used[head] {
			t.Fatalf("buffer %d used twice", head)
		}
		used[head] = true
		b, _ := mem.Slice(bufBase+2048*uint64(head), uint64(n))
		rxHdr(t, b, 1)
		if !bytes.Equal(b[HdrLen:], f) {
			t.Fatalf("frame %d differs", seq-1)
		}
	}

	sock := packetSocket(t, d)
	for gen := range 3 {
		receive(sock)
		// The device now holds a window of receive chains again. A
		// snapshot taken from it puts them back; the source carries on
		// after it, popping them again.
		d.Pause()
		if _, err := tr.SaveState(); err != nil {
			t.Fatal(err)
		}
		d.Resume()
		receive(sock)
		d.Pause()
		s, err := tr.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		tr.Close()
		d.Close()

		var s2 virtio.MMIOState
		if err := json.Unmarshal(b, &s2); err != nil {
			t.Fatal(err)
		}
		d = newDevice(t, Config{})
		if tr, err = virtio.NewMMIO(d, mem, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		if err := tr.RestoreState(s2); err != nil {
			t.Fatalf("generation %d: %v", gen+1, err)
		}
		m.T = tr
		sock = packetSocket(t, d)
	}
	for len(used) < queueSize {
		receive(sock)
	}
}

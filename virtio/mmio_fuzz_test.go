package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/embervm/ember/memory"
)

const (
	fuzzMemSize = 1 << 16
	// fuzzFeatures are the fake device's own feature bits.
	fuzzFeatures = 1<<0 | 1<<5
	// fuzzFailActivation: a driver accepting this (offered) feature makes
	// the fake device refuse to activate.
	fuzzFailActivation = 1 << 5
	fuzzOp             = 8 // bytes of input per operation
)

// fuzzDevice is a fake device for the transport's fuzz target: it checks
// what the transport hands it and serves its queues by returning every
// chain unused.
type fuzzDevice struct {
	t      *testing.T
	mem    Memory
	active *Activation
	cfg    [16]byte
	chain  *Chain
}

func (d *fuzzDevice) Type() uint32         { return IDNet }
func (d *fuzzDevice) Features() uint64     { return fuzzFeatures }
func (d *fuzzDevice) QueueSizes() []uint16 { return []uint16{MaxQueueSize, 16} }
func (d *fuzzDevice) ReadConfig(off uint64, data []byte) {
	clear(data)
	if off < uint64(len(d.cfg)) {
		copy(data, d.cfg[off:])
	}
}
func (d *fuzzDevice) WriteConfig(off uint64, data []byte) {
	if off < uint64(len(d.cfg)) {
		copy(d.cfg[off:], data)
	}
}

func (d *fuzzDevice) Activate(a *Activation) error {
	if d.active != nil {
		d.t.Fatal("Activate on an active device")
	}
	if a.Features&^(fuzzFeatures|transportFeatures) != 0 || a.Features&FVersion1 == 0 {
		d.t.Fatalf("activated with features %#x", a.Features)
	}
	for i, q := range a.Queues {
		if !q.Active() {
			continue
		}
		if q.Size == 0 || q.Size > q.MaxSize || q.Size&(q.Size-1) != 0 {
			d.t.Fatalf("queue %d activated with size %d", i, q.Size)
		}
		for _, r := range [][2]uint64{{q.DescAddr, 16 * uint64(q.Size)}, {q.AvailAddr, 6 + 2*uint64(q.Size)}, {q.UsedAddr, 6 + 8*uint64(q.Size)}} {
			if _, err := d.mem.Slice(r[0], r[1]); err != nil {
				d.t.Fatalf("queue %d activated with a ring outside RAM: %v", i, err)
			}
		}
	}
	if a.Features&fuzzFailActivation != 0 {
		return errors.New("refused")
	}
	d.active = a
	return nil
}

func (d *fuzzDevice) Reset() { d.active = nil }

// serve returns up to a queue's worth of chains of queue i unused.
func (d *fuzzDevice) serve(i int) {
	if d.active == nil || i >= len(d.active.Queues) || !d.active.Queues[i].Active() {
		return
	}
	q := d.active.Queues[i]
	for range int(q.Size) + 1 {
		ok, err := q.Pop(d.chain)
		if !ok {
			return
		}
		if err == nil {
			for _, b := range d.chain.Descs {
				if b.Addr > fuzzMemSize || uint64(len(b.Buf)) > fuzzMemSize-b.Addr {
					d.t.Fatalf("buffer [%#x, +%#x) outside RAM", b.Addr, len(b.Buf))
				}
			}
		}
		q.PushUsed(d.chain.Head, 0)
	}
	if q.NeedInterrupt() {
		d.active.Interrupt.Used()
	}
}

// fuzzOps encodes register writes as FuzzMMIO operations (kind 0, 4
// bytes), for the seed corpus.
func fuzzOps(regs ...[2]uint32) []byte {
	var b []byte
	for _, r := range regs {
		op := make([]byte, fuzzOp)
		op[0], op[7] = 0, 2 // write, 4 bytes
		binary.LittleEndian.PutUint16(op[1:], uint16(r[0]))
		binary.LittleEndian.PutUint32(op[3:], r[1])
		b = append(b, op...)
	}
	return b
}

// FuzzMMIO runs the virtio-mmio transport through arbitrary sequences of
// register reads and writes (any offset, width and value), guest memory
// writes, queue processing by the device, and snapshot save and restore.
// Whatever the guest does, nothing panics, the device is activated only
// with FEATURES_OK and DRIVER_OK, features it offered and queues that lie
// in RAM, never twice without a reset, and the transport's view of the
// device's state matches the device's.
func FuzzMMIO(f *testing.F) {
	const ok = StatusAcknowledge | StatusDriver
	setup := fuzzOps([2]uint32{regStatus, 0}, [2]uint32{regStatus, ok},
		[2]uint32{regDriverFeaturesSel, 1}, [2]uint32{regDriverFeatures, 1},
		[2]uint32{regDriverFeaturesSel, 0}, [2]uint32{regDriverFeatures, FEventIdx},
		[2]uint32{regStatus, ok | StatusFeaturesOK},
		[2]uint32{regQueueSel, 0}, [2]uint32{regQueueNum, 16},
		[2]uint32{regQueueDescLow, 0x1000}, [2]uint32{regQueueDriverLow, 0x2000}, [2]uint32{regQueueDeviceLow, 0x3000},
		[2]uint32{regQueueReady, 1},
		[2]uint32{regStatus, ok | StatusFeaturesOK | StatusDriverOK})
	serve := []byte{3, 0, 0, 0, 0, 0, 0, 0}
	avail := []byte{2, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00, 0} // avail idx 1 at 0x2002... (addr = off*16)
	f.Add(setup)
	f.Add(append(append(bytes.Clone(setup), avail...), serve...))
	f.Add(append(bytes.Clone(setup), 4, 0, 0, 0, 0, 0, 0, 0))
	f.Add(fuzzOps([2]uint32{regStatus, ok | StatusFeaturesOK | StatusDriverOK}))
	f.Add(fuzzOps([2]uint32{regDriverFeatures, 1 << 20}, [2]uint32{regStatus, ok | StatusFeaturesOK}))
	f.Add([]byte{1, 0x00, 0x01, 0, 0, 0, 0, 3, 0, 0x71, 0, 1, 2, 3, 4, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		mem := memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: make([]byte, fuzzMemSize)}})
		dev := &fuzzDevice{t: t, mem: mem, chain: NewChain()}
		tr, err := NewMMIO(dev, mem, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { tr.Close() }()
		var buf [8]byte
		for len(ops) >= fuzzOp {
			op := ops[:fuzzOp]
			ops = ops[fuzzOp:]
			off := uint64(binary.LittleEndian.Uint16(op[1:])) % 0x200
			width := 1 << (op[7] % 4) // 1, 2, 4 or 8 bytes
			copy(buf[:], op[3:7])
			switch op[0] % 5 {
			case 0:
				tr.Write(off, buf[:width])
			case 1:
				tr.Read(off, buf[:width])
				if off == regMagic && width == 4 && binary.LittleEndian.Uint32(buf[:]) != mmioMagic {
					t.Fatalf("magic %#x", buf[:4])
				}
				if off >= regConfig+uint64(len(dev.cfg)) && !bytes.Equal(buf[:width], make([]byte, width)) {
					t.Fatalf("config read past the device's space: % x", buf[:width])
				}
			case 2:
				b, _ := mem.Slice(uint64(binary.LittleEndian.Uint16(op[1:]))*16%(fuzzMemSize-4), 4)
				copy(b, op[3:7])
			case 3:
				dev.serve(int(op[1] % 2))
			case 4:
				// A snapshot: save, then restore into a fresh transport
				// and device over the same memory, which carry on.
				st, err := tr.SaveState()
				if err != nil {
					t.Fatal(err)
				}
				tr.Close()
				dev = &fuzzDevice{t: t, mem: mem, chain: NewChain(), cfg: dev.cfg}
				if tr, err = NewMMIO(dev, mem, nil); err != nil {
					t.Fatal(err)
				}
				if err := tr.RestoreState(st); err != nil {
					t.Fatalf("restoring a state the transport saved: %v", err)
				}
				if got, _ := tr.SaveState(); got.Status != st.Status || got.DriverFeatures != st.DriverFeatures || got.Active != st.Active {
					t.Fatalf("restored %+v, saved %+v", got, st)
				}
			}
			tr.mu.Lock()
			status, active, drv := tr.status, tr.active, tr.driverFeatures
			tr.mu.Unlock()
			switch {
			case active != (dev.active != nil):
				t.Fatalf("transport active=%v, device active=%v", active, dev.active != nil)
			case active && status&(StatusFeaturesOK|StatusDriverOK) != StatusFeaturesOK|StatusDriverOK:
				t.Fatalf("active with status %#x", status)
			case status&StatusFeaturesOK != 0 && (drv&^(fuzzFeatures|transportFeatures) != 0 || drv&FVersion1 == 0):
				t.Fatalf("FEATURES_OK with driver features %#x", drv)
			}
		}
	})
}

// TestRestoreBadQueueNum: a guest that wrote a QueueNum above QueueNumMax
// (and set the queue ready, and DRIVER_OK, which failed) leaves a state
// that restores; a saved active state with such a queue does not. Found
// by FuzzMMIO: the snapshot of such a guest could not be loaded.
func TestRestoreBadQueueNum(t *testing.T) {
	mem := memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: make([]byte, fuzzMemSize)}})
	newTransport := func() (*MMIO, *fuzzDevice) {
		dev := &fuzzDevice{t: t, mem: mem, chain: NewChain()}
		tr, err := NewMMIO(dev, mem, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		return tr, dev
	}
	tr, _ := newTransport()
	var b [4]byte
	for _, r := range [][2]uint32{{regStatus, StatusAcknowledge | StatusDriver}, {regDriverFeaturesSel, 1}, {regDriverFeatures, 1},
		{regStatus, StatusAcknowledge | StatusDriver | StatusFeaturesOK}, {regQueueNum, 0xffff}, {regQueueReady, 1},
		{regStatus, StatusAcknowledge | StatusDriver | StatusFeaturesOK | StatusDriverOK}} {
		binary.LittleEndian.PutUint32(b[:], r[1])
		tr.Write(uint64(r[0]), b[:])
	}
	st, err := tr.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if st.Active || st.Status&StatusNeedsReset == 0 {
		t.Fatalf("saved %+v: want an inactive device that needs a reset", st)
	}
	tr2, _ := newTransport()
	if err := tr2.RestoreState(st); err != nil {
		t.Fatalf("restoring the state of a guest that wrote a bad QueueNum: %v", err)
	}
	st.Active = true
	tr3, _ := newTransport()
	if err := tr3.RestoreState(st); err == nil {
		t.Fatal("an active state with a queue of 65535 entries was restored")
	}
}

package net

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// The fuzz targets drive the device's queue processing on the fuzzing
// goroutine, with a SOCK_SEQPACKET socket pair standing in for the tap:
// like a tap, it moves one frame (vnet header first) per readv or writev,
// and it needs no network namespace. (What a real tap does with the
// frames is the other tests' business.)

const (
	fuzzRxBase   = 0x10000
	fuzzTxBase   = 0x20000
	fuzzBufBase  = 0x100000
	fuzzSlot     = 4096 // buffer bytes per descriptor index in FuzzRxWindow
	fuzzTxBudget = 1 << 20
	fuzzMemSize  = fuzzBufBase + queueSize*fuzzSlot + fuzzTxBudget
)

// fuzzNet is a device on a socket pair: peer is the host side of the
// "tap".
type fuzzNet struct {
	d      *Device
	peer   int
	mem    *memory.Guest
	rx, tx *virtiotest.Driver
}

// newFuzzNet makes the device over mem (fuzzMemSize bytes, reused from
// one input to the next: its rings are cleared here).
func newFuzzNet(t *testing.T, mem *memory.Guest, features uint64, mtu int) *fuzzNet {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	d := &Device{cfg: Config{IfaceID: "fuzz", MTU: mtu}, tap: &tap{name: "fuzz", fd: fds[0]}, log: log, glog: virtio.NewGuestLog(log)}
	d.features = FeatCsum | FeatGuestCsum | FeatGuestTSO4 | FeatGuestTSO6 | FeatGuestUFO |
		FeatHostTSO4 | FeatHostTSO6 | FeatHostUFO | FeatMrgRxBuf | virtio.FVersion1
	if mtu != 0 {
		d.features |= FeatMTU
	}
	d.rx.init()
	d.tx.init()
	f := &fuzzNet{d: d, peer: fds[1], mem: mem}
	rings, _ := mem.Slice(fuzzRxBase, fuzzTxBase+0x3000-fuzzRxBase)
	clear(rings)
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	rxq, txq := virtio.NewQueue(queueSize), virtio.NewQueue(queueSize)
	if f.rx, err = virtiotest.New(f.mem, rxq, fuzzRxBase, queueSize, features&virtio.FEventIdx != 0, fuzzRxBase+0x3000); err != nil {
		t.Fatal(err)
	}
	if f.tx, err = virtiotest.New(f.mem, txq, fuzzTxBase, queueSize, features&virtio.FEventIdx != 0, fuzzMemSize); err != nil {
		t.Fatal(err)
	}
	var fd [3]*virtio.EventFD
	for i := range fd {
		if fd[i], err = virtio.NewEventFD(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fd[i].Close() })
	}
	d.start(&virtio.Activation{Mem: f.mem, Features: features | virtio.FVersion1, Queues: []*virtio.Queue{rxq, txq},
		Notify: fd[:2], Interrupt: virtio.NewInterrupt(fd[2])})
	return f
}

// recv reads the next frame the device wrote to the "tap", nil if none.
func (f *fuzzNet) recv(buf []byte) []byte {
	n, err := unix.Read(f.peer, buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// FuzzTx sends chains of arbitrary shape (1 to 4 descriptors of any
// length, device-readable or not, inside RAM or not) with arbitrary
// headers and frames. Every chain comes back used, with nothing written;
// exactly the well-formed ones (readable, a vnet header and a frame of 14
// bytes to MaxFrame) reach the tap, in order, as the bytes of their
// buffers; the others are counted as bad chains or drops.
func FuzzTx(f *testing.F) {
	rec := func(ndesc, flags byte, lens ...uint16) []byte {
		b := []byte{ndesc, flags}
		for _, l := range lens {
			b = append(b, byte(l), byte(l>>8))
		}
		return b
	}
	f.Add(rec(0, 0, HdrLen+60), byte(1))
	f.Add(bytes.Join([][]byte{rec(1, 0, 4, 200), rec(0, 0, HdrLen+14), rec(0, 0, HdrLen+13), rec(0, 2, 100)}, nil), byte(2))
	f.Add(bytes.Join([][]byte{rec(1, 0, 65535, 65535), rec(3, 0x10, 12, 0, 1500, 20)}, nil), byte(3))
	f.Add(rec(2, 0x80, 12, 60, 100), byte(4))
	mem := virtiotest.NewMemory(fuzzMemSize)
	f.Fuzz(func(t *testing.T, shape []byte, seed byte) {
		n := newFuzzNet(t, mem, ^uint64(0), 0)
		type want struct {
			head  uint16
			frame []byte // nil: not sent
		}
		var wants []want
		budget := uint64(fuzzTxBudget)
		descs := 0
		desc, _, _ := n.tx.Rings()
		for len(shape) >= 2 && descs < queueSize-4 {
			nd := int(shape[0]%4) + 1
			flags := shape[1]
			shape = shape[2:]
			head := uint16(descs)
			var frame []byte
			bad := false
			for i := range nd {
				var l uint64
				if len(shape) >= 2 {
					l = uint64(binary.LittleEndian.Uint16(shape))
					shape = shape[2:]
				}
				l = min(l, budget)
				budget -= l
				var addr uint64
				var fl uint16
				switch {
				case flags&(0x10<<i) != 0 && i < 2: // outside RAM
					addr, bad = fuzzMemSize-l/2, true
					if l == 0 {
						addr = fuzzMemSize + 1
					}
				default:
					addr = n.tx.Alloc(int(l))
					b, _ := n.mem.Slice(addr, l)
					for j := range b {
						b[j] = seed + byte(j) + byte(i)
					}
					frame = append(frame, b...)
				}
				if flags&(1<<i) != 0 {
					fl |= virtiotest.FWrite
					bad = true
				}
				if i < nd-1 {
					fl |= virtiotest.FNext
				}
				n.tx.WriteDesc(desc, uint16(descs), addr, uint32(l), fl, uint16(descs+1))
				descs++
			}
			n.tx.Publish(head)
			if bad || len(frame) < HdrLen+minFrame || len(frame) > HdrLen+MaxFrame {
				frame = nil
			}
			wants = append(wants, want{head, frame})
		}

		buf := make([]byte, bufSize+1)
		var sent [][]byte
		for range 2 * len(wants) {
			n.d.processTx()
			for b := n.recv(buf); b != nil; b = n.recv(buf) {
				sent = append(sent, bytes.Clone(b))
			}
			n.d.tx.tapBlocked = false // the "tap" was drained
		}
		var wantSent [][]byte
		for i, w := range wants {
			head, l, ok := n.tx.Used()
			if !ok || head != w.head || l != 0 {
				t.Fatalf("chain %d: used %d,%d,%v; want %d,0", i, head, l, ok, w.head)
			}
			if w.frame != nil {
				wantSent = append(wantSent, w.frame)
			}
		}
		if _, _, ok := n.tx.Used(); ok {
			t.Fatal("more chains used than offered")
		}
		if len(sent) != len(wantSent) {
			t.Fatalf("%d frames sent, want %d", len(sent), len(wantSent))
		}
		for i := range sent {
			if !bytes.Equal(sent[i], wantSent[i]) {
				t.Fatalf("frame %d differs", i)
			}
		}
		m := &n.d.Metrics
		if m.TxPackets.Load() != uint64(len(sent)) || m.TxPackets.Load()+m.TxDrops.Load()+m.BadChains.Load() != uint64(len(wants)) {
			t.Fatalf("metrics: %d packets, %d drops, %d bad chains for %d chains", m.TxPackets.Load(), m.TxDrops.Load(), m.BadChains.Load(), len(wants))
		}
	})
}

// rxFrame is a frame the "tap" handed the device, for FuzzRxWindow.
type rxFrame struct {
	gso   byte
	frame []byte
}

// FuzzRxWindow runs the receive path through arbitrary sequences of
// receive buffers (1 to 3 descriptors of up to 4 KiB, some not receive
// buffers), frames of any length and GSO type from the tap, processing
// and snapshot rewinds, with or without mergeable buffers, checksum and
// segmentation offloads and an MTU. Every chain used is one the driver
// offered and had not got back, used no further than its length;
// malformed chains come back empty; the frames delivered are frames the
// tap sent, in order, whole, with num_buffers right; the window's
// bookkeeping holds after every step; and once the driver gives buffers
// enough, every frame is delivered or counted as dropped.
func FuzzRxWindow(f *testing.F) {
	f.Add([]byte{0, 0, 0x5, 0xee, 1, 0, 0, 100, 2, 0, 0, 0}, true, byte(0xff))
	f.Add([]byte{0, 2, 16, 0, 0, 2, 16, 0, 1, 2, 0x20, 0, 2, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0}, true, byte(0xff))
	f.Add([]byte{0, 0, 0x6, 0x00, 1, 0, 0x5, 0xdc, 1, 3, 0x7f, 0xff, 2, 0, 0, 0}, false, byte(0x01))
	f.Add([]byte{0, 0x80, 1, 0, 0, 0, 0, 5, 1, 0, 0, 60, 3, 0, 0, 0}, true, byte(0))
	mem := virtiotest.NewMemory(fuzzMemSize)
	f.Fuzz(func(t *testing.T, ops []byte, mrg bool, feat byte) {
		features := uint64(virtio.FEventIdx)
		for i, bit := range []uint64{FeatGuestCsum, FeatGuestTSO4, FeatGuestTSO6, FeatGuestUFO} {
			if feat&(1<<i) != 0 {
				features |= bit
			}
		}
		if mrg {
			features |= FeatMrgRxBuf
		}
		mtu := 0
		if feat&0x10 != 0 {
			mtu = 1500
		}
		n := newFuzzNet(t, mem, features, mtu)
		s := &n.d.rx
		desc, _, _ := n.rx.Rings()

		var free []uint16 // descriptor indices the driver owns
		for i := queueSize - 1; i >= 0; i-- {
			free = append(free, uint16(i))
		}
		type chain struct {
			descs []uint16
			lens  []uint32
			cap   uint32
			bad   bool
		}
		out := map[uint16]*chain{} // offered, not yet used, by head
		offer := func(nd int, size uint32, bad bool) {
			if len(free) < nd {
				return
			}
			c := &chain{bad: bad}
			for range nd {
				c.descs = append(c.descs, free[len(free)-1])
				free = free[:len(free)-1]
			}
			for i, dx := range c.descs {
				var fl uint16 = virtiotest.FWrite
				if bad && i == 0 {
					fl = 0
				}
				if i < nd-1 {
					fl |= virtiotest.FNext
				}
				next := uint16(0)
				if i < nd-1 {
					next = c.descs[i+1]
				}
				n.rx.WriteDesc(desc, dx, fuzzBufBase+uint64(dx)*fuzzSlot, size, fl, next)
				c.lens = append(c.lens, size)
				c.cap += size
			}
			if c.cap < HdrLen {
				c.bad = true
			}
			out[c.descs[0]] = c
			n.rx.Publish(c.descs[0])
		}

		var sent []rxFrame // frames the tap sent, not yet delivered or passed over
		delivered, seq := 0, byte(0)
		var pending []byte // the chains of a frame being reassembled
		pendingK := 0
		check := func() {
			t.Helper()
			for {
				head, l, ok := n.rx.Used()
				if !ok {
					break
				}
				c := out[head]
				if c == nil {
					t.Fatalf("used head %d was not offered (or used twice)", head)
				}
				delete(out, head)
				for _, dx := range c.descs {
					free = append(free, dx)
				}
				if l > c.cap {
					t.Fatalf("used length %d of a chain of %d bytes", l, c.cap)
				}
				if c.bad {
					if l != 0 {
						t.Fatalf("a malformed chain came back with %d bytes", l)
					}
					continue
				}
				if l == 0 {
					t.Fatal("a receive chain came back empty")
				}
				var data []byte
				for i, dx := range c.descs {
					b, _ := n.mem.Slice(fuzzBufBase+uint64(dx)*fuzzSlot, uint64(c.lens[i]))
					data = append(data, b...)
				}
				data = data[:l]
				if pendingK == 0 {
					if len(data) < HdrLen {
						t.Fatal("a frame's first chain holds less than its header")
					}
					pendingK = int(binary.LittleEndian.Uint16(data[hdrNumBuffers:]))
					if pendingK == 0 || !mrg && pendingK != 1 {
						t.Fatalf("num_buffers %d (mergeable %v)", pendingK, mrg)
					}
				}
				pending = append(pending, data...)
				if pendingK--; pendingK > 0 {
					continue
				}
				got := pending
				pending = nil
				for len(sent) > 0 && !bytes.Equal(sent[0].frame, got[HdrLen:]) {
					sent = sent[1:] // dropped
				}
				if len(sent) == 0 {
					t.Fatalf("a delivered frame of %d bytes is not one the tap sent (or came out of order)", len(got)-HdrLen)
				}
				if got[hdrGSOType] != sent[0].gso {
					t.Fatalf("gso type %d, sent %d", got[hdrGSOType], sent[0].gso)
				}
				if features&FeatGuestCsum == 0 && got[hdrFlags] != 0 {
					t.Fatalf("flags %#x without GUEST_CSUM", got[hdrFlags])
				}
				sent = sent[1:]
				delivered++
			}
			var capSum uint64
			for i := s.c0; i < s.c1; i++ {
				capSum += s.chains[i].cap
			}
			switch {
			case capSum != s.cap:
				t.Fatalf("window holds %d bytes by its chains, %d by its count", capSum, s.cap)
			case s.held() > queueSize || s.i1-s.i0 > maxRxIov || s.held() < 0:
				t.Fatalf("window of %d chains, %d buffers", s.held(), s.i1-s.i0)
			}
		}
		gsoTypes := [...]byte{gsoNone, gsoTCPv4, gsoUDP, gsoTCPv6, 5, gsoECN | gsoTCPv4}
		injected := 0
		inject := func(gso byte, flags byte, l int) {
			fr := make([]byte, HdrLen+l)
			fr[hdrFlags], fr[hdrGSOType] = flags, gso
			for i := HdrLen; i < len(fr); i++ {
				fr[i] = seq + byte(i)
			}
			seq++
			if _, err := unix.Write(n.peer, fr); err != nil {
				return // the "tap" is full
			}
			sent = append(sent, rxFrame{gso, fr[HdrLen:]})
			injected++
		}
		for len(ops) >= 4 {
			op, a, b, c := ops[0], ops[1], ops[2], ops[3]
			ops = ops[4:]
			v := int(b)<<8 | int(c)
			switch op % 5 {
			case 0:
				offer(int(a%3)+1, uint32(v%(fuzzSlot+1)), a&0x80 != 0)
			case 1:
				l := minFrame + v%(MaxFrame-minFrame+1)
				if a&1 == 0 {
					l = minFrame + v%1500
				}
				inject(gsoTypes[int(a>>1)%len(gsoTypes)], a&0x40>>6, l)
			case 2:
				s.tapReady = true // the tap's readiness event
				n.d.processRx()
			case 3:
				n.d.processRx() // the driver's notification
			case 4:
				n.d.rewindRx() // a snapshot
				n.d.processRx()
			}
			check()
		}
		// The driver gives buffers enough for any frame, until the tap is
		// empty: every frame is delivered or dropped.
		for range 4 * (injected + 1) {
			if len(free) >= 17 {
				if mrg {
					for len(free) >= 1 {
						offer(1, fuzzSlot, false)
					}
				} else {
					offer(17, fuzzSlot, false)
				}
			}
			s.tapReady = true
			n.d.processRx()
			check()
			if s.frameLen == 0 && !s.tapReady {
				break // the tap said EAGAIN: empty
			}
		}
		m := &n.d.Metrics
		if got := m.RxPackets.Load(); got != uint64(delivered) {
			t.Fatalf("%d frames delivered, %d counted", delivered, got)
		}
		if s.frameLen == 0 && !s.tapReady && m.RxPackets.Load()+m.RxDrops.Load() != uint64(injected) {
			t.Fatalf("%d frames sent: %d delivered, %d dropped", injected, m.RxPackets.Load(), m.RxDrops.Load())
		}
	})
}

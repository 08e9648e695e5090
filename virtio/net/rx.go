package net

import (
	"encoding/binary"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/virtio"
)

const (
	// rxBudget is how many frames one call of processRx reads before it
	// lets the worker handle other events (it re-notifies itself).
	rxBudget = 256
	// rxSignalEvery is how many frames are delivered between checks for
	// an interrupt while draining the tap.
	rxSignalEvery = 32
	// maxRxIov is the most buffers the held receive chains may have: one
	// readv takes them and the overflow buffer.
	maxRxIov = maxIov - 1
)

// rxChain is a receive chain the device holds: its writable buffers are
// iov[iov0 : iov0+niov] of rxState, cap bytes in all. avail is the
// available-ring position it was popped from, for rewindRx.
type rxChain struct {
	head  uint16
	avail uint16
	iov0  int
	niov  int
	cap   uint64
}

// rxState is the receive side, owned by the worker.
//
// The device pops receive chains ahead of frames and holds them (the
// window chains[c0:c1], whose buffers are iov[i0:i1]): with mergeable
// buffers until they can hold the longest frame, without until it has
// one. Each tap read is one readv into the window's buffers followed by
// the overflow buffer, so a frame lands in guest memory directly and the
// tap never cuts one short. A frame that ran into the overflow buffer is
// copied into further chains as the guest provides them (with mergeable
// buffers) or dropped (without: each chain must hold a whole frame). The
// chains a frame used are returned, in order, with num_buffers set; the
// rest stay held for the next frame.
type rxState struct {
	chain  *virtio.Chain
	mrg    bool
	chains []rxChain    // 2*queueSize, window [c0, c1)
	iov    []unix.Iovec // 2*maxIov, window [i0, i1), then the overflow
	c0, c1 int
	i0, i1 int
	cap    uint64 // bytes the window holds

	pending []byte // the overflow buffer, bufSize bytes

	// The frame read but not yet returned to the guest: frameLen bytes
	// (header included) from the start of the window, of which the last
	// overflow bytes are in pending, placed of those copied out already.
	frameLen int
	overflow int
	placed   int
	charged  bool // the rate limiter has accounted the frame

	tapReady    bool // the tap may have frames: read until EAGAIN
	broken      bool
	unsignalled int  // frames returned since the last interrupt check
	readErrLog  bool // a tap read error was logged
}

func (s *rxState) init() {
	s.chain = virtio.NewChain()
	s.chains = make([]rxChain, 2*queueSize)
	s.iov = make([]unix.Iovec, 2*maxIov)
	s.pending = make([]byte, bufSize)
}

func (s *rxState) reset(mrg bool) {
	s.mrg = mrg
	s.c0, s.c1, s.i0, s.i1, s.cap = 0, 0, 0, 0, 0
	s.frameLen, s.overflow, s.placed, s.charged = 0, 0, 0, false
	s.tapReady, s.broken, s.unsignalled, s.readErrLog = true, false, 0, false
}

func (s *rxState) held() int { return s.c1 - s.c0 }

// wantMore reports whether the device should hold more chains before
// reading the tap.
func (s *rxState) wantMore() bool {
	if s.mrg {
		return s.cap < bufSize && s.held() < queueSize
	}
	return s.held() == 0
}

// Outcomes of park.
const (
	parked = iota
	parkBad
	parkNoRoom
	parkNone
)

// park adds chain c to the window. It refuses a chain that is not a
// receive buffer (parkBad: a device-readable descriptor, or less room
// than a vnet header), and one whose buffers would take the window past
// what one readv takes or that would exceed a queue's worth of chains
// (parkNoRoom: retry later).
func (s *rxState) park(c *virtio.Chain) int {
	var capacity uint64
	niov := 0
	for _, desc := range c.Descs {
		if !desc.Write {
			return parkBad
		}
		if len(desc.Buf) > 0 {
			capacity += uint64(len(desc.Buf))
			niov++
		}
	}
	if capacity < HdrLen || niov > maxRxIov {
		return parkBad
	}
	if s.i1-s.i0+niov > maxRxIov || s.held() >= queueSize {
		return parkNoRoom
	}
	if s.c1 == len(s.chains) || s.i1+niov >= len(s.iov) {
		s.compact()
	}
	ch := &s.chains[s.c1]
	ch.head, ch.iov0, ch.niov, ch.cap = c.Head, s.i1, niov, capacity
	for _, desc := range c.Descs {
		if len(desc.Buf) > 0 {
			setIov(&s.iov[s.i1], desc.Buf)
			s.i1++
		}
	}
	s.c1++
	s.cap += capacity
	return parked
}

// compact moves the window to the start of its arrays. The arrays are
// twice the window's largest size, so this happens at most once every
// queue's worth of chains.
func (s *rxState) compact() {
	shift := s.i0
	n := copy(s.chains, s.chains[s.c0:s.c1])
	for i := range n {
		s.chains[i].iov0 -= shift
	}
	copy(s.iov, s.iov[s.i0:s.i1])
	s.c0, s.c1 = 0, n
	s.i0, s.i1 = 0, s.i1-shift
}

// hdrByte is byte off (< HdrLen) of the vnet header at the start of the
// window: the first chain holds at least HdrLen bytes, in one buffer or
// several.
func (s *rxState) hdrByte(off int) *byte {
	for i := s.i0; i < s.i1; i++ {
		b := iovBytes(&s.iov[i])
		if off < len(b) {
			return &b[off]
		}
		off -= len(b)
	}
	panic("virtio-net: vnet header outside the receive window")
}

// processRx moves frames from the tap to the guest while there are both.
func (d *Device) processRx() {
	s := &d.rx
	if s.broken {
		return
	}
	q := d.act.Queues[rxQueue]
	budget := rxBudget
	for !s.broken {
		if s.frameLen > 0 {
			if d.finishFrame(q) {
				continue
			}
			if d.rxLimiter.Blocked() || !q.EnableNotify() {
				break // the limiter's timer or the driver will wake us
			}
			continue
		}
		if !(s.tapReady || d.replyPending()) || d.rxLimiter.Blocked() {
			break
		}
		if budget == 0 {
			d.act.Notify[rxQueue].Signal() // come back after the other events
			break
		}
		budget--
		if s.wantMore() {
			d.fillRx(q)
			if s.broken {
				break
			}
		}
		if s.held() == 0 {
			// No buffers: leave the frames in the tap until the
			// driver adds some.
			if !q.EnableNotify() {
				break
			}
			continue
		}
		d.readFrame()
	}
	if s.unsignalled > 0 {
		s.unsignalled = 0
		d.interrupt(q)
	}
}

// fillRx pops receive chains into the window until it holds enough.
func (d *Device) fillRx(q *virtio.Queue) {
	s := &d.rx
	for s.wantMore() {
		if d.popRx(q) != parked {
			return
		}
	}
}

// popRx pops one chain into the window: it returns parked, parkNoRoom (the
// chain was put back) or parkNone (the queue is empty or broken).
// Malformed chains are returned unused on the way.
func (d *Device) popRx(q *virtio.Queue) int {
	s := &d.rx
	for {
		ok, err := q.Pop(s.chain)
		if !ok {
			if err != nil {
				s.broken = true
				d.queueBroken("rx", err)
			}
			return parkNone
		}
		if err != nil {
			d.badChain("rx", err)
			d.pushRx(q, s.chain.Head, 0)
			continue
		}
		switch r := s.park(s.chain); r {
		case parked:
			s.chains[s.c1-1].avail = q.NextAvail - 1
			return r
		case parkNoRoom:
			q.Undo()
			return r
		}
		d.badChainMsg("rx", "receive chain with a device-readable descriptor or shorter than the virtio-net header", uint64(s.chain.Head))
		d.pushRx(q, s.chain.Head, 0)
	}
}

func (d *Device) pushRx(q *virtio.Queue, head uint16, n uint32) {
	q.PushUsed(head, n)
	d.rx.unsignalled++
	if d.rx.unsignalled >= rxSignalEvery {
		d.rx.unsignalled = 0
		d.interrupt(q)
	}
}

// readFrame reads one frame into the window (and the overflow buffer):
// the interceptor's if it has one (its frames go first), else the tap's.
// It checks it; a frame that passes is left in flight for finishFrame.
func (d *Device) readFrame() {
	if d.replyPending() {
		d.readReply()
		return
	}
	s := &d.rx
	setIov(&s.iov[s.i1], s.pending)
	n, err := d.tap.readv(s.iov[s.i0 : s.i1+1])
	switch err {
	case nil:
	case unix.EAGAIN:
		s.tapReady = false
		return
	case unix.EINVAL, unix.EFAULT:
		// The tap could not hand this frame over (a GSO type the vnet
		// header cannot express); it is gone, the next may do.
		d.Metrics.RxDrops.Add(1)
		d.Metrics.TapReadErrors.Add(1)
		return
	default:
		s.tapReady = false
		d.Metrics.TapReadErrors.Add(1)
		if !s.readErrLog {
			s.readErrLog = true
			d.glog.Warn("virtio-net: reading the tap failed; receive stopped until it is readable again", "err", err)
		}
		return
	}
	d.frameRead(n)
}

// frameRead checks the frame of n bytes (vnet header included) just put
// into the window and leaves it in flight if it passes.
func (d *Device) frameRead(n int) {
	s := &d.rx
	if n < HdrLen || uint64(n) > s.cap+uint64(len(s.pending)) {
		d.Metrics.RxDrops.Add(1) // cannot happen with a sane tap: too short, or cut
		return
	}
	if !d.rxFrameOK(n) {
		d.Metrics.RxDrops.Add(1)
		return // the chains stay held for the next frame
	}
	if d.neg&FeatGuestCsum == 0 {
		// The tap may mark a frame DATA_VALID; without GUEST_CSUM the
		// flags must be zero (5.1.6.4.1). The frame is fully checksummed.
		*s.hdrByte(hdrFlags) = 0
	}
	s.frameLen, s.placed, s.charged = n, 0, false
	s.overflow = 0
	if uint64(n) > s.cap {
		s.overflow = n - int(s.cap)
	}
}

// rxFrameOK checks a frame just read, of n bytes with its header, against
// what the driver accepted.
func (d *Device) rxFrameOK(n int) bool {
	s := &d.rx
	if !s.mrg && uint64(n) > s.cap {
		return false // without mergeable buffers one chain must hold it
	}
	gso := *s.hdrByte(hdrGSOType)
	if gso&gsoECN != 0 && d.neg&FeatGuestECN == 0 {
		return false
	}
	var need uint64
	switch gso &^ gsoECN {
	case gsoNone:
		if d.neg&FeatMTU != 0 && n-HdrLen > d.cfg.MTU+ethHdrLen {
			return false // 5.1.6.3.2: nothing longer than the MTU unless GSO
		}
		return true
	case gsoTCPv4:
		need = FeatGuestTSO4
	case gsoTCPv6:
		need = FeatGuestTSO6
	case gsoUDP:
		need = FeatGuestUFO
	default:
		return false
	}
	return d.neg&need != 0
}

// finishFrame accounts the frame in flight, copies what overflowed into
// further chains and returns the chains to the guest. It reports false if
// the frame must wait: for the rate limiter, or for receive buffers.
func (d *Device) finishFrame(q *virtio.Queue) bool {
	s := &d.rx
	frame := uint64(s.frameLen - HdrLen)
	if !s.charged {
		if !d.rxLimiter.Consume(frame) {
			d.Metrics.RxThrottled.Add(1)
			return false
		}
		s.charged = true
	}
	for s.placed < s.overflow {
		switch d.popRx(q) {
		case parkNone:
			// Wait for buffers (or, broken, for a reset).
			return s.broken
		case parkNoRoom:
			// The window cannot take another chain: the frame
			// cannot be delivered. Keep the chains for the next.
			d.Metrics.RxDrops.Add(1)
			s.frameLen = 0
			return true
		}
		ch := &s.chains[s.c1-1] // park may have compacted the window
		for i := ch.iov0; i < ch.iov0+ch.niov && s.placed < s.overflow; i++ {
			s.placed += copy(iovBytes(&s.iov[i]), s.pending[s.placed:s.overflow])
		}
	}

	// The frame fills the first k chains of the window.
	k, left := 0, uint64(s.frameLen)
	for i := s.c0; left > 0; i++ {
		left -= min(left, s.chains[i].cap)
		k++
	}
	b0, b1 := s.hdrByte(hdrNumBuffers), s.hdrByte(hdrNumBuffers+1)
	var nb [2]byte
	binary.LittleEndian.PutUint16(nb[:], uint16(k))
	*b0, *b1 = nb[0], nb[1]

	left = uint64(s.frameLen)
	for range k {
		ch := &s.chains[s.c0]
		used := min(left, ch.cap)
		left -= used
		s.cap -= ch.cap
		s.c0++
		d.pushRx(q, ch.head, uint32(used))
	}
	if s.c0 == s.c1 {
		s.c0, s.c1, s.i0, s.i1 = 0, 0, 0, 0
	} else {
		s.i0 = s.chains[s.c0].iov0
	}
	s.frameLen = 0
	d.Metrics.RxPackets.Add(1)
	d.Metrics.RxBytes.Add(frame)
	return true
}

// rewindRx puts the chains the window holds back into the queue (for a
// snapshot; see PrepareSave), newest first, as long as each is the last one
// popped: a malformed chain the driver put between two receive buffers was
// already returned and cannot be popped again, so the held chains before it
// stay held (and are lost to a restored device: only a broken driver gets
// there). A frame in flight in the held buffers is dropped.
func (d *Device) rewindRx() {
	s := &d.rx
	if s.broken {
		return
	}
	if s.frameLen > 0 {
		d.Metrics.RxDrops.Add(1)
		s.frameLen, s.overflow, s.placed, s.charged = 0, 0, 0, false
	}
	q := d.act.Queues[rxQueue]
	for s.c1 > s.c0 && s.chains[s.c1-1].avail == q.NextAvail-1 {
		q.Undo()
		s.c1--
		ch := &s.chains[s.c1]
		s.cap -= ch.cap
		s.i1 = ch.iov0
	}
	if s.c0 == s.c1 {
		s.c0, s.c1, s.i0, s.i1 = 0, 0, 0, 0
	}
	// Pop them again (and read the tap, which may hold frames that
	// waited for buffers) once the worker resumes.
	s.tapReady = true
}

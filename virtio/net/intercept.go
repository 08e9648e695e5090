package net

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/virtio"
)

// Interceptor is an in-VMM service on the guest's link (the MMDS,
// mmds/netstack.Stack): the device hands it the guest's frames it wants
// instead of writing them to the tap, and delivers its frames to the guest
// ahead of the tap's. This file is the whole seam; a device without an
// interceptor pays one nil check per frame on each path.
type Interceptor interface {
	// Wants reports whether the frame whose first bytes are head (up to
	// interceptHead of them) is the service's. A frame it wants never
	// reaches the tap.
	Wants(head []byte) bool
	// Intercept takes such a frame (Ethernet, without the vnet header),
	// copied out of guest memory; truncated if it was longer than
	// interceptMax. The bytes are the interceptor's until it returns.
	Intercept(frame []byte, truncated bool)
	// Pending reports whether Reply has a frame (cheap: called per
	// receive round).
	Pending() bool
	// Reply writes its next frame (Ethernet) into buf and returns its
	// length, 0 if none.
	Reply(buf []byte) int
	// SetNotify gives it the function to call, from any goroutine, when
	// it has frames the device does not know of.
	SetNotify(func())
}

const (
	// interceptHead is how much of a frame Wants sees: an Ethernet header
	// and an ARP packet (netstack.HeadLen).
	interceptHead = 14 + 28
	// interceptMax is the longest frame Intercept gets whole: the MMDS
	// advertises an 8 KiB window, so a well-behaved guest's frames to it
	// are far shorter; a longer one arrives truncated (and is dropped).
	interceptMax = 16 << 10
	// replyMax is the longest frame an interceptor replies with: an
	// Ethernet frame of a 1500-byte MTU (netstack.MaxFrameLen).
	replyMax = 14 + 1500
)

// interception is a device's interceptor and its buffers.
type interception struct {
	icpt  Interceptor
	frame []byte // interceptMax: a transmitted frame for it
	reply []byte // HdrLen + replyMax: its frame, behind a vnet header
	// rxKick is the receive queue's notify eventfd while the device is
	// active: signalling it makes the worker serve the receive queue,
	// where the interceptor's frames are delivered.
	rxKick atomic.Pointer[virtio.EventFD]
	// intercepted: processTx handed a frame over (worker only).
	intercepted bool
}

// SetInterceptor attaches i to the device; call it before the guest
// activates the device (at VM build).
func (d *Device) SetInterceptor(i Interceptor) {
	ic := &interception{icpt: i, frame: make([]byte, interceptMax), reply: make([]byte, HdrLen+replyMax)}
	i.SetNotify(func() {
		if e := ic.rxKick.Load(); e != nil && e.Signal() != nil {
			d.Metrics.EventFails.Add(1)
		}
	})
	d.ic = ic
}

// interceptTx hands the frame in c to the interceptor if it wants it, and
// reports whether it did.
func (d *Device) interceptTx(c *virtio.Chain) bool {
	var head [interceptHead]byte
	n, _ := gatherDescs(head[:], c.Descs, HdrLen)
	if !d.ic.icpt.Wants(head[:n]) {
		return false
	}
	n, total := gatherDescs(d.ic.frame, c.Descs, HdrLen)
	d.ic.icpt.Intercept(d.ic.frame[:n], total > n)
	d.ic.intercepted = true
	return true
}

// replyPending reports whether the interceptor has a frame for the guest.
func (d *Device) replyPending() bool { return d.ic != nil && d.ic.icpt.Pending() }

// readReply puts the interceptor's next frame, behind a vnet header with
// nothing to offload (its checksums are complete), into the receive window
// as readFrame puts a tap frame there.
func (d *Device) readReply() {
	s, ic := &d.rx, d.ic
	n := ic.icpt.Reply(ic.reply[HdrLen:])
	if n == 0 {
		return
	}
	clear(ic.reply[:HdrLen])
	d.frameRead(scatter(ic.reply[:HdrLen+n], s.iov[s.i0:s.i1], s.pending))
}

// processTx sends the driver's frames, then delivers at once what the
// interceptor answered to those it took.
func (d *Device) processTx() {
	d.processTxQueue()
	if d.ic != nil && d.ic.intercepted {
		d.ic.intercepted = false
		if d.ic.icpt.Pending() {
			d.processRx()
		}
	}
}

// gatherDescs copies the bytes of descs from offset skip into dst. It returns
// how many it copied and how many there are from skip on.
func gatherDescs(dst []byte, descs []virtio.Desc, skip int) (n, total int) {
	for _, desc := range descs {
		b := desc.Buf
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b, skip = b[skip:], 0
		total += len(b)
		n += copy(dst[n:], b)
	}
	return n, total
}

// scatter copies src into the buffers of iov and then into overflow, as
// readv would, and returns len(src). The caller has made them hold it.
func scatter(src []byte, iov []unix.Iovec, overflow []byte) int {
	n := 0
	for i := range iov {
		if n == len(src) {
			return n
		}
		n += copy(unsafe.Slice(iov[i].Base, int(iov[i].Len)), src[n:])
	}
	return n + copy(overflow, src[n:])
}

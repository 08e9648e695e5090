package netstack

import (
	"sync"
	"syscall"
	"time"
)

// TCP states of a connection (RFC 9293 3.3.2), passive side only: the MMDS
// never connects. TIME-WAIT is not kept: the connection goes once its last
// ACK is sent (a guest that retransmits its FIN then gets a RST, which ends
// its side too).
type state int

const (
	synReceived state = iota // SYN received, SYN-ACK sent
	established
	closeWait // the guest's FIN received
	lastAck   // the guest's FIN received, ours sent
	finWait1  // our FIN sent
	finWait2  // our FIN acknowledged
	closing   // both FINs sent, ours not acknowledged
	closed    // removed from the stack
)

// Sequence number comparisons modulo 2^32 (RFC 9293 3.4).
func seqLT(a, b uint32) bool { return int32(a-b) < 0 }
func seqGT(a, b uint32) bool { return int32(a-b) > 0 }

// conn is one TCP connection of the MMDS, and the net.Conn the HTTP server
// reads and writes (conn.go). Its fields are guarded by the stack's mutex.
type conn struct {
	s     *Stack
	key   connKey
	mac   [macLen]byte // the guest's, from its last frame
	state state

	// Receive side.
	rcvNxt  uint32
	rbuf    []byte // received and not yet read, at most recvBufSize
	finRcvd bool   // the guest's FIN is at rcvNxt-1: EOF after rbuf
	lastWnd uint16 // the window of the last segment sent

	// Send side. sbuf holds the bytes from sndUna on: sent ones (sent of
	// them) then unsent ones. The FIN follows them once the HTTP server
	// closed the connection (finQueued).
	iss, sndUna uint32
	sndMax      uint32 // the highest sequence number sent: ACKs beyond it are bogus
	sndWnd      uint32 // the guest's window
	mss         int
	sbuf        []byte
	sent        int
	finQueued   bool
	finSent     bool
	finAcked    bool
	synAckDue   bool // send (again) the SYN-ACK
	ackDue      bool // the guest is owed an ACK
	probeDue    bool // send one byte into a zero window
	doneAfter   bool // remove once the next segment (the last ACK) is out

	// Timers: retransmission (rtoAt, zero when nothing is outstanding),
	// and FIN-WAIT-2's end.
	rtoAt    time.Time
	rto      time.Duration
	retries  int
	lingerAt time.Time

	// The HTTP server's side (conn.go).
	accepted     bool
	appClosed    bool
	err          error // why the connection ended, for Read and Write
	rcond, wcond *sync.Cond
	rdl, wdl     deadline
}

// newConn answers the SYN seg with a SYN-ACK (s.mu held).
func newConn(s *Stack, key connKey, mac [macLen]byte, seg tcpSegment) *conn {
	c := &conn{s: s, key: key, mac: mac, rcvNxt: seg.seq + 1, iss: newISS(), rto: initialRTO,
		sndWnd: uint32(seg.window), mss: defaultMSS, synAckDue: true}
	c.sndUna = c.iss
	if seg.mss > 0 {
		c.mss = int(seg.mss)
	}
	c.mss = min(c.mss, maxSegment)
	c.rcond, c.wcond = sync.NewCond(&s.mu), sync.NewCond(&s.mu)
	return c
}

// sndNxt is the next sequence number to send.
func (c *conn) sndNxt() uint32 {
	n := c.sndUna + uint32(c.sent)
	if c.finSent && !c.finAcked {
		n++
	}
	return n
}

// window is the receive window to advertise.
func (c *conn) window() uint16 {
	if c.appClosed {
		return recvBufSize // data after the close is discarded
	}
	return uint16(recvBufSize - len(c.rbuf))
}

// inWindow reports whether seq is acceptable for a RST (RFC 9293 3.10.7.4
// in the RFC 5961 3.2 reading: exactly rcvNxt, or within the window).
func (c *conn) inWindow(seq uint32) bool {
	return seq == c.rcvNxt || (!seqLT(seq, c.rcvNxt) && seqLT(seq, c.rcvNxt+uint32(c.window())))
}

// input handles a segment of this connection (RFC 9293 3.10.7.4, for the
// states a passive connection has).
func (c *conn) input(mac [macLen]byte, seg tcpSegment) {
	c.mac = mac
	if seg.flags&flagRST != 0 {
		if c.inWindow(seg.seq) {
			c.abort(errReset)
		}
		return
	}
	if seg.flags&flagSYN != 0 {
		if c.state == synReceived && seg.seq == c.rcvNxt-1 {
			c.synAckDue = true // our SYN-ACK was lost
		} else {
			c.ackDue = true // challenge ACK (RFC 5961 4.2)
		}
		return
	}
	if seg.flags&flagACK == 0 {
		return
	}
	if c.state == synReceived {
		if seg.ack != c.iss+1 {
			c.s.reset(mac, c.key, seg)
			return
		}
		c.state, c.sndUna, c.sndWnd = established, c.iss+1, uint32(seg.window)
		c.rtoAt, c.retries, c.rto = time.Time{}, 0, initialRTO
		c.s.ln.push(c)
	} else {
		if seqGT(seg.ack, c.sndMax) {
			c.ackDue = true // acknowledges what was never sent
			return
		}
		if seqGT(seg.ack, c.sndUna) {
			c.acked(seg.ack - c.sndUna)
		}
		if !seqLT(seg.ack, c.sndUna) {
			c.sndWnd = uint32(seg.window)
			c.wcond.Broadcast()
		}
		if c.state == closed {
			return
		}
	}
	if len(seg.payload) > 0 {
		c.receive(seg.seq, seg.payload)
	}
	if seg.flags&flagFIN != 0 && !c.finRcvd && seg.seq+uint32(len(seg.payload)) == c.rcvNxt {
		c.rcvNxt++
		c.finRcvd, c.ackDue = true, true
		c.rcond.Broadcast()
		switch c.state {
		case established:
			c.state = closeWait
		case finWait1:
			c.state = closing
		case finWait2:
			c.doneAfter = true // our last ACK goes, then so does the connection
		}
	}
}

// acked handles an acknowledgement of n more bytes of sequence space (at
// most up to sndMax: after a timeout went back, the guest may acknowledge
// what was sent before).
func (c *conn) acked(n uint32) {
	data := min(n, uint32(len(c.sbuf)))
	if n > data {
		c.finAcked = true // the FIN follows the data, and was sent
	}
	c.sbuf = c.sbuf[:copy(c.sbuf, c.sbuf[data:])]
	c.sent = max(0, c.sent-int(data))
	c.sndUna += n
	c.retries, c.rto = 0, initialRTO
	c.rtoAt = time.Time{}
	if seqGT(c.sndMax, c.sndUna) {
		c.rtoAt = time.Now().Add(c.rto)
	}
	c.wcond.Broadcast()
	if c.finAcked {
		switch c.state {
		case finWait1:
			c.state, c.lingerAt = finWait2, time.Now().Add(finWait2Timeout)
		case closing, lastAck:
			c.s.remove(c)
		}
	}
}

// receive takes in-order data into the receive buffer: what the guest
// retransmits is trimmed, what comes out of order or beyond the window is
// dropped (the guest sends it again), and an ACK is owed either way.
func (c *conn) receive(seq uint32, data []byte) {
	c.ackDue = true
	switch c.state {
	case established, finWait1, finWait2:
	default:
		return // after the guest's FIN: nothing more may come
	}
	if seqLT(seq, c.rcvNxt) {
		d := c.rcvNxt - seq
		if uint64(d) >= uint64(len(data)) {
			return
		}
		data, seq = data[d:], c.rcvNxt
	}
	if seq != c.rcvNxt {
		return
	}
	if c.appClosed {
		c.rcvNxt += uint32(len(data)) // discarded: nobody reads any more
		return
	}
	n := min(len(data), recvBufSize-len(c.rbuf))
	if n == 0 {
		return
	}
	if c.rbuf == nil {
		c.rbuf = make([]byte, 0, recvBufSize)
	}
	c.rbuf = append(c.rbuf, data[:n]...)
	c.rcvNxt += uint32(n)
	c.rcond.Broadcast()
}

// unsent is how many bytes of sbuf have not been sent.
func (c *conn) unsent() int { return len(c.sbuf) - c.sent }

// canSend is how many unsent bytes the guest's window takes now.
func (c *conn) canSend() int {
	room := int(c.sndWnd) - c.sent
	if c.probeDue && room <= 0 {
		room = 1
	}
	return max(0, min(c.unsent(), room))
}

// wantsOutput reports whether the connection has a segment to send.
func (c *conn) wantsOutput() bool {
	switch {
	case c.state == closed:
		return false
	case c.synAckDue:
		return true
	case c.state == synReceived:
		return false
	}
	return c.ackDue || c.canSend() > 0 || (c.finQueued && !c.finSent && c.unsent() == 0)
}

// output writes the connection's next segment into buf.
func (c *conn) output(buf []byte) int {
	s := c.s
	if c.synAckDue {
		c.synAckDue = false
		c.armRTO()
		c.sndMax = c.iss + 1
		c.lastWnd = c.window()
		return s.segment(buf, c.mac, c.key, port, c.iss, c.rcvNxt, flagSYN|flagACK, c.lastWnd, nil, maxSegment)
	}
	room := len(buf) - (ethHdrLen + ipv4MinHdr + tcpMinHdr)
	n := min(c.canSend(), c.mss, room)
	seq := c.sndNxt()
	payload := c.sbuf[c.sent : c.sent+n]
	flags := byte(flagACK)
	if n > 0 {
		flags |= flagPSH
		c.probeDue = false
	}
	c.sent += n
	if c.finQueued && !c.finSent && c.unsent() == 0 {
		flags |= flagFIN
		c.finSent = true
		switch c.state {
		case established:
			c.state = finWait1
		case closeWait:
			c.state = lastAck
		}
	}
	if n > 0 || flags&flagFIN != 0 {
		c.armRTO()
		if nxt := c.sndNxt(); seqGT(nxt, c.sndMax) {
			c.sndMax = nxt
		}
	}
	c.ackDue = false
	c.lastWnd = c.window()
	size := s.segment(buf, c.mac, c.key, port, seq, c.rcvNxt, flags, c.lastWnd, payload, 0)
	if c.doneAfter {
		s.remove(c)
	}
	return size
}

// armRTO starts the retransmission timer unless it runs.
func (c *conn) armRTO() {
	if c.rtoAt.IsZero() {
		c.rtoAt = time.Now().Add(c.rto)
	}
}

// deadline is when the connection's timer is due next (zero for never).
func (c *conn) deadline() time.Time {
	if c.state == finWait2 {
		return c.lingerAt
	}
	return c.rtoAt
}

// timeout handles the connection's due timer: it goes back to the first
// unacknowledged byte (the SYN-ACK, the data, the FIN) and sends again, or
// probes a zero window; after maxRetries it aborts. A FIN-WAIT-2 that
// lasted finWait2Timeout ends.
func (c *conn) timeout(now time.Time) {
	if c.state == finWait2 {
		if !c.lingerAt.IsZero() && !now.Before(c.lingerAt) {
			c.s.remove(c)
		}
		return
	}
	if c.rtoAt.IsZero() || now.Before(c.rtoAt) {
		return
	}
	c.retries++
	if c.retries > maxRetries {
		c.s.reset(c.mac, c.key, tcpSegment{dstPort: port, flags: flagACK, ack: c.sndNxt()})
		c.abort(syscall.ETIMEDOUT)
		return
	}
	c.rto = min(2*c.rto, maxRTO)
	c.rtoAt = now.Add(c.rto)
	switch {
	case c.state == synReceived:
		c.synAckDue = true
	case seqGT(c.sndMax, c.sndUna):
		c.sent = 0
		if !c.finAcked {
			c.finSent = false
		}
		c.probeDue = c.sndWnd == 0 // a lost probe into a zero window: probe again
	case c.unsent() > 0:
		c.probeDue = true
	default:
		c.rtoAt = time.Time{}
	}
}

// abort ends the connection at once with err (a RST from the guest, too
// many retransmissions, the stack closing).
func (c *conn) abort(err error) {
	if c.err == nil {
		c.err = err
	}
	c.s.remove(c)
}

package vsock

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/virtio"
)

// Per-connection flow control (virtio 5.10.6.3).
const (
	// ConnBufAlloc is the receive buffer Ember advertises to the guest for
	// each connection (buf_alloc): guest data not yet written to the host
	// socket never exceeds it.
	ConnBufAlloc = 256 << 10
	// creditThreshold: once the host socket has taken this many bytes the
	// guest has not heard about, Ember sends CREDIT_UPDATE unprompted.
	creditThreshold = 64 << 10
)

type connState uint8

const (
	// stateLine: a host client connected to uds_path; waiting for its
	// "CONNECT <port>\n" line. Not yet known to the guest.
	stateLine connState = iota
	// stateConnecting: REQUEST queued or sent to the guest; waiting for
	// RESPONSE (or RST).
	stateConnecting
	// stateEstablished: relaying.
	stateEstablished
)

// Control packets a connection owes the guest.
const (
	ctrlRequest = 1 << iota
	ctrlResponse
	ctrlCreditUpdate
)

// conn is one relayed connection: a host unix socket and the guest's
// stream socket at (peer port) talking to (local port) on the host CID.
// It is used on the device's worker goroutine only.
type conn struct {
	fd    int
	slot  int
	state connState
	dead  bool
	inMap bool

	local, peer uint32 // our (host) port and the guest's port
	ctrl        uint8  // ctrl* packets owed to the guest

	// On the device's list of connections that have something for the
	// rx queue.
	inRx           bool
	rxNext, rxPrev *conn

	// What the edge-triggered socket may do: set on every event, cleared
	// when a read or write says EAGAIN.
	hostReadable, hostWritable bool
	hostEOF                    bool // read 0; SHUTDOWN(SEND) sent to the guest
	guestNoSend, guestNoRecv   bool // from the guest's SHUTDOWN flags
	shutWr, shutRd             bool // shutdown(2) done on the socket
	creditAsked                bool // CREDIT_REQUEST sent, no credit since

	// Credit (virtio 5.10.6.3). The guest's: its buffer and how much of
	// what we sent it has consumed; ours: bytes sent to it (tx_cnt), guest
	// bytes written to the socket (fwd_cnt), and the fwd_cnt last told.
	peerBufAlloc, peerFwdCnt uint32
	txCnt                    uint32
	fwdCnt, sentFwdCnt       uint32

	deadline time.Time // stateConnecting: when to give up on the guest

	// The CONNECT line, read one byte at a time so no stream byte after
	// it is consumed.
	line    [32]byte
	lineLen int

	// "OK <port>\n" owed to the host client, written before any data.
	pre            [24]byte
	preOff, preLen int

	// Guest data the host socket would not take yet: a ring of
	// ConnBufAlloc bytes, allocated the first time it is needed.
	pend              []byte
	pendHead, pendLen int
}

// credit is how many more payload bytes the guest can take:
// peer_buf_alloc - (tx_cnt - peer_fwd_cnt), zero if the guest's counters
// make no sense.
func (c *conn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// mayRead reports whether host data could go to the guest now, credit
// aside.
func (c *conn) mayRead() bool {
	return c.state == stateEstablished && c.hostReadable && !c.hostEOF && !c.guestNoRecv
}

// wantsRx reports whether the connection has a packet for the rx queue.
func (c *conn) wantsRx() bool {
	if c.dead {
		return false
	}
	if c.ctrl != 0 {
		return true
	}
	if !c.mayRead() {
		return false
	}
	return c.credit() > 0 || !c.creditAsked
}

// flushed reports whether nothing is waiting to be written to the host.
func (c *conn) flushed() bool { return c.preOff == c.preLen && c.pendLen == 0 }

// finished reports whether both directions are over: the guest will
// neither send nor receive, and its data has reached the host.
func (c *conn) finished() bool { return c.guestNoSend && c.guestNoRecv && c.flushed() }

// consumed accounts n guest bytes written to the host socket.
func (c *conn) consumed(n int) {
	c.fwdCnt += uint32(n)
	if c.fwdCnt-c.sentFwdCnt >= creditThreshold {
		c.ctrl |= ctrlCreditUpdate
	}
}

// toHost writes a guest payload to the host socket, keeping what the
// socket will not take in the ring. It fails on a socket error, and when
// the guest sent more than the credit Ember gave it (the ring overflows).
func (c *conn) toHost(k *cursor) error {
	for b := k.next(); b != nil; b = k.next() {
		if c.flushed() && c.hostWritable {
			n, err := send(c.fd, b)
			switch {
			case err == unix.EAGAIN:
				c.hostWritable = false
			case err != nil:
				return err
			}
			c.consumed(n)
			b = b[n:]
		}
		if len(b) > 0 && !c.stash(b) {
			return errCredit
		}
	}
	return nil
}

// fromHost reads up to max bytes from c's socket into ch after the header.
// It returns the bytes read; (0, nil) is EOF.
func (c *conn) fromHost(ch *virtio.Chain, max int) (int, error) {
	k := newCursor(ch, hdrSize, max)
	total := 0
	for b := k.next(); b != nil; b = k.next() {
		n, err := recv(c.fd, b)
		if err != nil {
			if total == 0 {
				return 0, err
			}
			if err == unix.EAGAIN {
				c.hostReadable = false
			}
			break // any other error comes back on the next read
		}
		if n == 0 {
			break // EOF, reported by the next read
		}
		total += n
		if n < len(b) {
			break
		}
	}
	return total, nil
}

// stash appends b to the ring; false if it does not fit.
func (c *conn) stash(b []byte) bool {
	if len(b) > ConnBufAlloc-c.pendLen {
		return false
	}
	if c.pend == nil {
		c.pend = make([]byte, ConnBufAlloc)
	}
	tail := (c.pendHead + c.pendLen) % ConnBufAlloc
	n := copy(c.pend[tail:], b)
	copy(c.pend, b[n:])
	c.pendLen += len(b)
	return true
}

// flush writes what is owed to the host socket (the OK line, then the
// ring) until it is all written or the socket would block, and half-closes
// the socket once the guest has said it sends no more.
func (c *conn) flush() error {
	for c.hostWritable && c.preOff < c.preLen {
		n, err := send(c.fd, c.pre[c.preOff:c.preLen])
		if err == unix.EAGAIN {
			c.hostWritable = false
			return nil
		}
		if err != nil {
			return err
		}
		c.preOff += n
	}
	for c.hostWritable && c.pendLen > 0 {
		end := min(c.pendHead+c.pendLen, ConnBufAlloc)
		n, err := send(c.fd, c.pend[c.pendHead:end])
		if err == unix.EAGAIN {
			c.hostWritable = false
			return nil
		}
		if err != nil {
			return err
		}
		c.pendHead = (c.pendHead + n) % ConnBufAlloc
		c.pendLen -= n
		c.consumed(n)
	}
	if c.pendLen == 0 {
		c.pendHead = 0
	}
	if c.flushed() && c.guestNoSend && !c.shutWr {
		c.shutWr = true
		if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
			return err
		}
	}
	return nil
}

// send writes b to the stream socket fd without blocking and without
// SIGPIPE (a host client that went away is an EPIPE, not a signal), and
// returns the bytes written.
func send(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// recv reads from fd without blocking; n == 0 with a nil error is EOF.
func recv(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

// parseConnect parses a host client's "CONNECT <port>\n" line (the verb
// in any case, as Firecracker; a trailing CR and spaces are tolerated).
func parseConnect(line []byte) (uint32, bool) {
	const verb = "connect "
	if len(line) < len(verb)+2 || line[len(line)-1] != '\n' {
		return 0, false
	}
	for i := 0; i < len(verb); i++ {
		ch := line[i]
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != verb[i] {
			return 0, false
		}
	}
	rest := line[len(verb) : len(line)-1]
	for len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	for len(rest) > 0 && (rest[len(rest)-1] == ' ' || rest[len(rest)-1] == '\r') {
		rest = rest[:len(rest)-1]
	}
	if len(rest) == 0 || len(rest) > 10 {
		return 0, false
	}
	var port uint64
	for _, ch := range rest {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		port = port*10 + uint64(ch-'0')
	}
	if port > 1<<32-1 {
		return 0, false
	}
	return uint32(port), true
}

package netstack

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// The HTTP server's side of a connection: conn is its net.Conn, listener
// its net.Listener. Reads and writes block on the connection's condition
// variables (on the stack's mutex) until data, room, the end of the
// connection or a deadline; net/http relies on deadlines (it aborts a
// pending read by setting one in the past).

// deadline is a read or write deadline: at, and a timer that wakes the
// waiters then.
type deadline struct {
	at    time.Time
	timer *time.Timer
}

func (d *deadline) expired() bool { return !d.at.IsZero() && !time.Now().Before(d.at) }

// set moves the deadline to t (zero: none) and wakes cond's waiters so
// that they look again (s.mu held).
func (d *deadline) set(s *Stack, t time.Time, cond *sync.Cond) {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.at = t
	if wait := time.Until(t); !t.IsZero() && wait > 0 {
		d.timer = time.AfterFunc(wait, func() {
			s.mu.Lock()
			cond.Broadcast()
			s.mu.Unlock()
		})
	}
	cond.Broadcast()
}

func (d *deadline) stop() {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

// Read reads received data; io.EOF once the guest's FIN follows it.
func (c *conn) Read(b []byte) (int, error) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		switch {
		case c.appClosed:
			return 0, net.ErrClosed
		case len(c.rbuf) > 0:
			n := copy(b, c.rbuf)
			c.rbuf = c.rbuf[:copy(c.rbuf, c.rbuf[n:])]
			// Tell the guest when its window reopens from below half.
			if c.lastWnd < recvBufSize/2 && c.window() >= recvBufSize/2 && c.state != closed {
				c.ackDue = true
				s.settle()
				s.kick()
			}
			return n, nil
		case c.finRcvd:
			return 0, io.EOF
		case c.err != nil:
			return 0, c.err
		case c.state == closed:
			return 0, io.EOF
		case c.rdl.expired():
			return 0, os.ErrDeadlineExceeded
		}
		c.rcond.Wait()
	}
}

// Write queues b for the guest, waiting for room in the send buffer.
func (c *conn) Write(b []byte) (int, error) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	written := 0
	for len(b) > 0 {
		switch {
		case c.appClosed:
			return written, net.ErrClosed
		case c.err != nil:
			return written, c.err
		case c.state != established && c.state != closeWait:
			return written, io.ErrClosedPipe
		case c.wdl.expired():
			return written, os.ErrDeadlineExceeded
		}
		room := sendBufSize - len(c.sbuf)
		if room == 0 {
			c.wcond.Wait()
			continue
		}
		if c.sbuf == nil {
			c.sbuf = make([]byte, 0, sendBufSize)
		}
		n := min(room, len(b))
		c.sbuf = append(c.sbuf, b[:n]...)
		b, written = b[n:], written+n
		s.settle()
		s.kick()
	}
	return written, nil
}

// Close sends the FIN after what was written; data the guest sends later
// is discarded.
func (c *conn) Close() error {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.appClosed {
		return nil
	}
	c.appClosed = true
	c.rbuf = nil
	c.rdl.stop()
	c.wdl.stop()
	c.rcond.Broadcast()
	c.wcond.Broadcast()
	if c.state == established || c.state == closeWait {
		c.finQueued = true
	}
	s.settle()
	s.kick()
	return nil
}

func (c *conn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IP(c.s.ip[:]).To16(), Port: port}
}

func (c *conn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IP(c.key.ip[:]).To16(), Port: int(c.key.port)}
}

func (c *conn) SetDeadline(t time.Time) error {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.rdl.set(c.s, t, c.rcond)
	c.wdl.set(c.s, t, c.wcond)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.rdl.set(c.s, t, c.rcond)
	return nil
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.wdl.set(c.s, t, c.wcond)
	return nil
}

// listener hands the established connections to the HTTP server.
type listener struct {
	s      *Stack
	queue  []*conn
	cond   *sync.Cond // on s.mu
	closed bool
}

// push queues an established connection (s.mu held). The queue is bounded
// by the connection budget.
func (l *listener) push(c *conn) {
	l.queue = append(l.queue, c)
	l.cond.Signal()
}

func (l *listener) Accept() (net.Conn, error) {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	for len(l.queue) == 0 && !l.closed {
		l.cond.Wait()
	}
	if l.closed {
		return nil, net.ErrClosed
	}
	c := l.queue[0]
	l.queue = l.queue[1:]
	c.accepted = true
	return c, nil
}

func (l *listener) Close() error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	l.closed = true
	l.cond.Broadcast()
	return nil
}

func (l *listener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IP(l.s.ip[:]).To16(), Port: port}
}

package client

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// DialPort connects to a TCP port on the guest's loopback through the
// agent (proto.OpPortConnect): the guest needs no network interface. The
// connection is a net.Conn whose CloseWrite half-closes it; Close ends it.
func (c *Client) DialPort(ctx context.Context, port int) (*PortConn, error) {
	if !c.hello.Supports(proto.FeaturePort) {
		return nil, proto.Errorf(proto.CodeUnsupported, "the guest's agent (%s) does not forward ports: rebuild the template with this Ember", c.hello.Agent)
	}
	req := proto.PortRequest{Port: port}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	st, err := c.s.Open(ctx, proto.OpPortConnect, req)
	if err != nil {
		return nil, err
	}
	it, err := st.Recv(ctx)
	if err == nil && it.Kind != mux.KindMsg {
		err = proto.Errorf(proto.CodeInternal, "%s: the agent sent data before connecting", proto.OpPortConnect)
	}
	if errors.Is(err, io.EOF) {
		err = proto.Errorf(proto.CodeInternal, "%s: the agent sent nothing", proto.OpPortConnect)
	}
	if err != nil {
		st.End(nil)
		return nil, err
	}
	return &PortConn{st: st, port: port}, nil
}

// PortConn is a connection to a guest port. Deadlines apply to reads;
// writes wait for the agent's window (the guest's reading) and end with
// the connection.
type PortConn struct {
	st   *mux.Stream
	port int
	rest []byte
	err  error

	mu       sync.Mutex
	deadline time.Time
}

// Read reads what the guest side sent; io.EOF after its half-close.
func (p *PortConn) Read(b []byte) (int, error) {
	for len(p.rest) == 0 {
		if p.err != nil {
			return 0, p.err
		}
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		p.mu.Lock()
		if dl := p.deadline; !dl.IsZero() {
			ctx, cancel = context.WithDeadline(ctx, dl)
		}
		p.mu.Unlock()
		it, err := p.st.Recv(ctx)
		timedOut := err != nil && ctx.Err() != nil
		cancel()
		switch {
		case timedOut:
			return 0, os.ErrDeadlineExceeded // the stream goes on
		case err != nil:
			p.err = err
		case it.Kind == mux.KindData && it.Channel == proto.ChanBody:
			p.rest = it.Payload
		case it.Kind == mux.KindClose && it.Channel == proto.ChanBody:
			p.err = io.EOF
		}
	}
	n := copy(b, p.rest)
	p.rest = p.rest[n:]
	return n, nil
}

// Write sends b to the guest side.
func (p *PortConn) Write(b []byte) (int, error) {
	if err := p.st.Write(proto.ChanBody, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// CloseWrite half-closes: the guest side reads EOF, and may still send.
func (p *PortConn) CloseWrite() error { return p.st.CloseChannel(proto.ChanBody) }

// Close ends the connection both ways.
func (p *PortConn) Close() error {
	p.st.End(nil)
	return nil
}

// portAddr is a guest port as a net.Addr.
type portAddr int

func (a portAddr) Network() string { return "ember-agent" }
func (a portAddr) String() string  { return "guest:" + strconv.Itoa(int(a)) }

// LocalAddr is the host's end (unnamed).
func (p *PortConn) LocalAddr() net.Addr { return portAddr(0) }

// RemoteAddr is the guest port.
func (p *PortConn) RemoteAddr() net.Addr { return portAddr(p.port) }

// SetDeadline sets the read deadline (see PortConn).
func (p *PortConn) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

// SetReadDeadline makes a later Read fail with
// os.ErrDeadlineExceeded once t passes (zero: no deadline).
func (p *PortConn) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	p.deadline = t
	p.mu.Unlock()
	return nil
}

// SetWriteDeadline is accepted and ignored (see PortConn).
func (p *PortConn) SetWriteDeadline(time.Time) error { return nil }

var _ net.Conn = (*PortConn)(nil)

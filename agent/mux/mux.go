package mux

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/embervm/ember/agent/proto"
)

// MaxStreams bounds the streams open at once on one connection; the agent
// refuses an Open beyond it with CodeExhausted. Each may buffer up to
// proto.Window bytes each way, so this bounds a connection's memory too.
const MaxStreams = 1024

// readBufferSize is the connection reader's buffer: a few frame headers
// and small payloads per read(2).
const readBufferSize = 64 << 10

// ErrClosed is returned once the session is closed.
var ErrClosed = errors.New("agent connection closed")

// Session is one connection carrying many streams.
type Session struct {
	conn   io.ReadWriteCloser
	server bool

	wmu    sync.Mutex // serialises frames on conn
	wbuf   []byte
	openMu sync.Mutex // orders Opens (client)

	mu      sync.Mutex
	streams map[uint32]*Stream
	lastID  uint32
	// Control frames the reader loop owes the peer, written by ctlLoop so
	// that the reader never blocks on a write (two peers both blocked
	// writing, neither reading, would deadlock).
	ctlWindows map[uint32]uint32
	ctlEnds    []proto.Frame
	ctlKick    chan struct{}

	closed   chan struct{}
	closeErr error
	once     sync.Once
	handler  func(*Stream)
}

func newSession(conn io.ReadWriteCloser, server bool) *Session {
	s := &Session{
		conn:       conn,
		server:     server,
		streams:    map[uint32]*Stream{},
		ctlWindows: map[uint32]uint32{},
		ctlKick:    make(chan struct{}, 1),
		closed:     make(chan struct{}),
	}
	return s
}

// Client performs the client's side of the handshake on conn: it sends
// hello (a Hello frame's payload) and returns the agent's reply payload and
// the session, which runs until Close or a broken connection. conn is
// closed on any error.
func Client(ctx context.Context, conn io.ReadWriteCloser, hello []byte) (*Session, []byte, error) {
	s := newSession(conn, false)
	br := bufio.NewReaderSize(conn, readBufferSize)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := s.writeFrame(&proto.Frame{Type: proto.FrameHello, Payload: hello}); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("sending hello: %w", err)
	}
	f, err := proto.ReadFrame(br)
	if err == nil && f.Type != proto.FrameHello {
		err = fmt.Errorf("first frame from the agent is %s, want hello", f.Type)
	}
	if err == nil {
		err = f.Check()
	}
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("agent handshake: %w", err)
	}
	go s.readLoop(br)
	go s.ctlLoop()
	return s, f.Payload, nil
}

// Server performs the agent's side of the handshake: it reads the
// client's Hello payload, hands it to hello, sends the reply it returns
// and, unless hello said to stop (ok false), serves the connection:
// every stream the client opens runs handler on its own goroutine. It
// returns when the connection ends.
func Server(conn io.ReadWriteCloser, hello func([]byte) (reply []byte, ok bool), handler func(*Stream)) error {
	s := newSession(conn, true)
	s.handler = handler
	br := bufio.NewReaderSize(conn, readBufferSize)
	f, err := proto.ReadFrame(br)
	if err == nil && f.Type != proto.FrameHello {
		err = fmt.Errorf("first frame from the client is %s, want hello", f.Type)
	}
	if err == nil {
		err = f.Check()
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("agent handshake: %w", err)
	}
	reply, ok := hello(f.Payload)
	if err := s.writeFrame(&proto.Frame{Type: proto.FrameHello, Payload: reply}); err != nil || !ok {
		conn.Close()
		return err
	}
	go s.ctlLoop()
	s.readLoop(br)
	return s.Err()
}

// Close ends the session: the connection is closed and every stream ends
// with CodeUnavailable.
func (s *Session) Close() error {
	s.fail(ErrClosed)
	return nil
}

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.closed }

// Err is why the session ended (nil while it runs).
func (s *Session) Err() error {
	select {
	case <-s.closed:
		return s.closeErr
	default:
		return nil
	}
}

// fail ends the session once, for reason err.
func (s *Session) fail(err error) {
	s.once.Do(func() {
		s.mu.Lock()
		s.closeErr = err
		streams := s.streams
		s.streams = map[uint32]*Stream{}
		s.mu.Unlock()
		close(s.closed)
		s.conn.Close()
		lost := proto.Errorf(proto.CodeUnavailable, "agent connection lost: %v", err)
		for _, st := range streams {
			st.peerEnded(lost)
		}
	})
}

// writeFrame writes one frame, whole, under the write lock.
func (s *Session) writeFrame(f *proto.Frame) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	select {
	case <-s.closed:
		return ErrClosed
	default:
	}
	s.wbuf = proto.AppendFrame(s.wbuf[:0], f)
	if _, err := s.conn.Write(s.wbuf); err != nil {
		s.fail(fmt.Errorf("writing: %w", err))
		return ErrClosed
	}
	if cap(s.wbuf) > 4*proto.MaxData {
		s.wbuf = nil // an Open or a large message: do not keep its buffer
	}
	return nil
}

// readLoop reads frames until the connection ends. It never blocks on
// anything but the connection: each stream's inbound queue is bounded by
// the window it granted, control replies go through ctlLoop.
func (s *Session) readLoop(br *bufio.Reader) {
	for {
		f, err := proto.ReadFrame(br)
		if err == nil {
			err = f.Check()
		}
		if err == nil {
			err = s.dispatch(&f)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.EOF
			}
			s.fail(err)
			return
		}
	}
}

func (s *Session) dispatch(f *proto.Frame) error {
	switch f.Type {
	case proto.FrameHello:
		return errors.New("agent protocol: second hello")
	case proto.FrameOpen:
		if !s.server {
			return errors.New("agent protocol: the agent opened a stream")
		}
		return s.open(f)
	case proto.FrameMsg, proto.FrameData, proto.FrameClose, proto.FrameEnd, proto.FrameWindow:
	default:
		return nil // a newer peer's frame type: skipped
	}
	s.mu.Lock()
	st := s.streams[f.Stream]
	if f.Type == proto.FrameEnd && st != nil {
		delete(s.streams, f.Stream)
	}
	s.mu.Unlock()
	if st == nil {
		// A stream this side has ended already: the peer sent these
		// before it saw the End. Nothing to do.
		return nil
	}
	switch f.Type {
	case proto.FrameWindow:
		return st.grant(f.WindowIncrement())
	case proto.FrameEnd:
		var e proto.End
		if len(f.Payload) > 0 {
			if err := proto.DecodeJSON(f.Payload, &e); err != nil {
				e.Error = proto.Errorf(proto.CodeInternal, "undecodable end: %v", err)
			}
		}
		if e.Error == nil && s.server {
			e.Error = proto.Errorf(proto.CodeCanceled, "canceled by the client")
		}
		if e.Error == nil {
			st.peerEnded(nil) // not a nil *proto.Error in an error
		} else {
			st.peerEnded(e.Error)
		}
		return nil
	}
	return st.deliver(f)
}

// open starts a stream the client opened.
func (s *Session) open(f *proto.Frame) error {
	s.mu.Lock()
	if f.Stream <= s.lastID {
		s.mu.Unlock()
		return fmt.Errorf("agent protocol: stream %d opened after stream %d", f.Stream, s.lastID)
	}
	s.lastID = f.Stream
	full := len(s.streams) >= MaxStreams
	s.mu.Unlock()

	var o proto.Open
	err := proto.DecodeJSON(f.Payload, &o)
	if err == nil && o.Op == "" {
		err = proto.Errorf(proto.CodeInvalid, "open: no op")
	}
	if err == nil && full {
		err = proto.Errorf(proto.CodeExhausted, "%d streams open on this connection: the limit", MaxStreams)
	}
	if err != nil {
		return s.queueEnd(f.Stream, err)
	}
	st := newStream(s, f.Stream, o.Op, o.Req)
	s.mu.Lock()
	s.streams[f.Stream] = st
	s.mu.Unlock()
	go s.handler(st)
	return nil
}

// queueEnd has ctlLoop end a stream that never started.
func (s *Session) queueEnd(id uint32, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ctlEnds) >= MaxStreams {
		return errors.New("agent protocol: the client opens streams faster than it reads their refusals")
	}
	s.ctlEnds = append(s.ctlEnds, proto.Frame{Type: proto.FrameEnd, Stream: id, Payload: endPayload(err)})
	s.kick()
	return nil
}

// queueWindow has ctlLoop grant the peer n more bytes on a stream.
func (s *Session) queueWindow(id uint32, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ctlWindows[id] += uint32(n)
	s.kick()
}

func (s *Session) kick() {
	select {
	case s.ctlKick <- struct{}{}:
	default:
	}
}

// ctlLoop writes the control frames the reader and the receivers owe.
func (s *Session) ctlLoop() {
	for {
		select {
		case <-s.closed:
			return
		case <-s.ctlKick:
		}
		s.mu.Lock()
		windows, ends := s.ctlWindows, s.ctlEnds
		s.ctlWindows, s.ctlEnds = map[uint32]uint32{}, nil
		s.mu.Unlock()
		for _, f := range ends {
			if s.writeFrame(&f) != nil {
				return
			}
		}
		for id, n := range windows {
			if s.writeFrame(&proto.Frame{Type: proto.FrameWindow, Stream: id, Payload: proto.WindowPayload(n)}) != nil {
				return
			}
		}
	}
}

// Open opens a stream for op with request req (a JSON-encodable value, or
// nil) — the client side. The stream lives until either side ends it;
// cancelling ctx ends it (the operation is canceled in the agent).
func (s *Session) Open(ctx context.Context, op string, req any) (*Stream, error) {
	o := proto.Open{Op: op}
	if req != nil {
		b, err := jsonMarshal(req)
		if err != nil {
			return nil, err
		}
		o.Req = b
	}
	payload, err := jsonMarshal(o)
	if err != nil {
		return nil, err
	}
	if len(payload) > proto.MaxFrame {
		return nil, proto.Errorf(proto.CodeInvalid, "%s request: %d bytes encoded (limit %d)", op, len(payload), proto.MaxFrame)
	}
	// Stream IDs must reach the agent in increasing order: the ID is
	// taken and the Open written under one lock.
	s.openMu.Lock()
	s.mu.Lock()
	select {
	case <-s.closed:
		s.mu.Unlock()
		s.openMu.Unlock()
		return nil, s.lostErr()
	default:
	}
	s.lastID++
	st := newStream(s, s.lastID, op, nil)
	s.streams[st.id] = st
	s.mu.Unlock()
	err = s.writeFrame(&proto.Frame{Type: proto.FrameOpen, Stream: st.id, Payload: payload})
	s.openMu.Unlock()
	if err != nil {
		st.End(nil)
		return nil, s.lostErr()
	}
	st.stopCtx = context.AfterFunc(ctx, func() {
		st.End(proto.Errorf(proto.CodeCanceled, "%s: %v", op, context.Cause(ctx)))
	})
	return st, nil
}

func (s *Session) lostErr() error {
	return proto.Errorf(proto.CodeUnavailable, "agent connection lost: %v", s.Err())
}

// remove forgets a stream this side ended.
func (s *Session) remove(id uint32) {
	s.mu.Lock()
	delete(s.streams, id)
	delete(s.ctlWindows, id)
	s.mu.Unlock()
}

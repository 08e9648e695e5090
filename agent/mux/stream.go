package mux

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/embervm/ember/agent/proto"
)

// Kind is what an Item holds.
type Kind uint8

// Kinds of items.
const (
	KindMsg   Kind = iota + 1 // a JSON message (Payload)
	KindData                  // bytes on Channel (Payload)
	KindClose                 // Channel is closed: no more Data on it
)

// Item is one thing received on a stream, in the order the peer sent it.
type Item struct {
	Kind    Kind
	Channel uint8
	Payload []byte
}

// Stream is one operation on a session: the client's request and what
// both sides send for it. Its methods are safe for concurrent use; Recv
// and RecvHold by one goroutine at a time.
type Stream struct {
	s   *Session
	id  uint32
	op  string
	req json.RawMessage

	ctx    context.Context
	cancel context.CancelCauseFunc
	// stopCtx detaches the caller's context (client side).
	stopCtx func() bool

	mu sync.Mutex
	// Receiving: the queue, what the peer may still send (recvAvail), what
	// was consumed since the last grant.
	queue     []Item
	recvAvail int
	consumed  int
	closedCh  [4]uint64 // channels the peer closed, a bit each
	peerEnd   bool      // the peer ended the stream
	peerErr   error     // its error (nil: success)
	recvWake  chan struct{}
	// Sending: the window the peer granted, and whether this side ended.
	sendAvail int
	sendWake  chan struct{} // closed (and replaced) when sendAvail grows
	ended     bool
	endErr    error // what Recv returns once this side ended
}

func newStream(s *Session, id uint32, op string, req json.RawMessage) *Stream {
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Stream{
		s: s, id: id, op: op, req: req,
		ctx: ctx, cancel: cancel,
		recvAvail: proto.Window,
		sendAvail: proto.Window,
		recvWake:  make(chan struct{}, 1),
		sendWake:  make(chan struct{}),
	}
}

// Op is the stream's operation.
func (st *Stream) Op() string { return st.op }

// ID is the stream's number on its session.
func (st *Stream) ID() uint32 { return st.id }

// Request is the request the client sent with the Open (agent side).
func (st *Stream) Request() json.RawMessage { return st.req }

// Context is done when the stream can no longer send: either side ended
// it, or the session is gone. An agent's handler stops its work then.
func (st *Stream) Context() context.Context { return st.ctx }

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// deliver queues a Msg, Data or Close frame from the peer.
func (st *Stream) deliver(f *proto.Frame) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.peerEnd {
		return nil
	}
	if f.Type == proto.FrameClose {
		word, bit := f.Channel/64, uint64(1)<<(f.Channel%64)
		if st.closedCh[word]&bit != 0 {
			return nil
		}
		st.closedCh[word] |= bit
		st.queue = append(st.queue, Item{Kind: KindClose, Channel: f.Channel})
		wake(st.recvWake)
		return nil
	}
	if c := f.Cost(); c > st.recvAvail {
		return fmt.Errorf("agent protocol: stream %d: %s frame of %d bytes beyond the %d granted", st.id, f.Type, c, st.recvAvail)
	}
	st.recvAvail -= f.Cost()
	kind := KindMsg
	if f.Type == proto.FrameData {
		kind = KindData
	}
	st.queue = append(st.queue, Item{Kind: kind, Channel: f.Channel, Payload: f.Payload})
	wake(st.recvWake)
	return nil
}

// grant adds to the window the peer gave this side.
func (st *Stream) grant(n int) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.sendAvail+n > proto.MaxWindow {
		return fmt.Errorf("agent protocol: stream %d: window grown beyond %d", st.id, proto.MaxWindow)
	}
	st.sendAvail += n
	st.wakeSenders()
	return nil
}

// peerEnded records the peer's End (err nil for success) or the session's
// loss.
func (st *Stream) peerEnded(err error) {
	st.mu.Lock()
	if !st.peerEnd {
		st.peerEnd, st.peerErr = true, err
	}
	st.mu.Unlock()
	if err == nil {
		err = io.EOF
	}
	st.cancel(err)
	wake(st.recvWake)
	st.mu.Lock()
	st.wakeSenders()
	st.mu.Unlock()
}

// wakeSenders wakes every goroutine waiting for window (st.mu held).
func (st *Stream) wakeSenders() {
	close(st.sendWake)
	st.sendWake = make(chan struct{})
}

// Recv returns the next item. Once the queue is empty and the peer has
// ended the stream it returns io.EOF (success) or the peer's error (a
// *proto.Error). The bytes of the item are credited back to the peer.
func (st *Stream) Recv(ctx context.Context) (Item, error) {
	it, err := st.RecvHold(ctx)
	if err == nil && it.Kind != KindClose {
		st.Credit(it.cost())
	}
	return it, err
}

func (it *Item) cost() int { return proto.HeaderSize + len(it.Payload) }

// RecvHold is Recv without the credit: the caller calls Credit with
// Item.Cost when it is done with the item. It lets a receiver go on
// reading a stream while one kind of item waits for a slow consumer (a
// process's stdin) without letting the peer send more than the window.
func (st *Stream) RecvHold(ctx context.Context) (Item, error) {
	for {
		st.mu.Lock()
		if len(st.queue) > 0 {
			it := st.queue[0]
			st.queue[0] = Item{}
			st.queue = st.queue[1:]
			st.mu.Unlock()
			return it, nil
		}
		if st.peerEnd {
			err := st.peerErr
			st.mu.Unlock()
			if err == nil {
				err = io.EOF
			}
			return Item{}, err
		}
		if st.ended {
			err := st.endErr
			st.mu.Unlock()
			return Item{}, err
		}
		st.mu.Unlock()
		select {
		case <-st.recvWake:
		case <-ctx.Done():
			return Item{}, context.Cause(ctx)
		}
	}
}

// Queued says whether items wait to be received: a receiver that has
// consumed everything may want to tell the peer so before it blocks.
func (st *Stream) Queued() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.queue) > 0
}

// Cost is what an item took from the window (for Credit).
func (it Item) Cost() int {
	if it.Kind == KindClose {
		return 0
	}
	return it.cost()
}

// Credit returns n bytes of window to the peer once the receiver is done
// with them. Grants are batched: one Window frame per half window.
func (st *Stream) Credit(n int) {
	if n <= 0 {
		return
	}
	st.mu.Lock()
	st.consumed += n
	grant := 0
	if st.consumed >= proto.Window/2 && !st.ended && !st.peerEnd {
		grant, st.consumed = st.consumed, 0
		st.recvAvail += grant
	}
	st.mu.Unlock()
	if grant > 0 {
		st.s.queueWindow(st.id, grant)
	}
}

// SendMsg sends v as a JSON message, waiting for window.
func (st *Stream) SendMsg(v any) error {
	b, err := proto.EncodeMessage(v)
	if err != nil {
		return err
	}
	return st.send(&proto.Frame{Type: proto.FrameMsg, Stream: st.id, Payload: b}, false)
}

// Write sends p as Data frames on channel ch, each as large as the window
// and proto.MaxData allow, waiting for window as the peer consumes.
func (st *Stream) Write(ch uint8, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), proto.MaxData)
		f := &proto.Frame{Type: proto.FrameData, Channel: ch, Stream: st.id, Payload: p[:n]}
		if err := st.send(f, true); err != nil {
			return err
		}
		p = p[len(f.Payload):]
	}
	return nil
}

// CloseChannel sends a Close for ch: no more Data on it from this side.
func (st *Stream) CloseChannel(ch uint8) error {
	return st.send(&proto.Frame{Type: proto.FrameClose, Channel: ch, Stream: st.id}, false)
}

// send writes f once the window allows (Msg and Data frames), shrinking
// a Data frame's payload to what the window allows when split is set.
func (st *Stream) send(f *proto.Frame, split bool) error {
	for {
		st.mu.Lock()
		if err := st.sendErr(); err != nil {
			st.mu.Unlock()
			return err
		}
		if f.Type == proto.FrameClose {
			st.mu.Unlock()
			break
		}
		avail := st.sendAvail - proto.HeaderSize
		if split && avail > 0 && avail < len(f.Payload) {
			f.Payload = f.Payload[:avail]
		}
		if f.Cost() <= st.sendAvail {
			st.sendAvail -= f.Cost()
			st.mu.Unlock()
			break
		}
		woken := st.sendWake
		st.mu.Unlock()
		select {
		case <-woken:
		case <-st.s.closed:
		}
	}
	return st.s.writeFrame(f)
}

// sendErr says why nothing more can be sent (st.mu held).
func (st *Stream) sendErr() error {
	switch {
	case st.ended:
		return proto.Errorf(proto.CodeCanceled, "%s: stream already ended", st.op)
	case st.peerEnd:
		if st.peerErr != nil {
			return st.peerErr
		}
		return proto.Errorf(proto.CodeCanceled, "%s: the peer ended the stream", st.op)
	}
	select {
	case <-st.s.closed:
		return st.s.lostErr()
	default:
		return nil
	}
}

// End ends the stream from this side: with err nil, success (the agent's
// normal end); otherwise err is sent as the outcome (an agent's error, or
// a client's cancellation). Later calls do nothing. Items already queued
// can still be received.
func (st *Stream) End(err error) {
	st.mu.Lock()
	if st.ended {
		st.mu.Unlock()
		return
	}
	st.ended = true
	st.endErr = proto.Errorf(proto.CodeCanceled, "%s: this side ended the stream", st.op)
	if pe, ok := err.(*proto.Error); ok && pe.Code == proto.CodeCanceled {
		st.endErr = pe
	}
	peerEnded := st.peerEnd
	st.mu.Unlock()
	if st.stopCtx != nil {
		st.stopCtx()
	}
	st.s.remove(st.id)
	if !peerEnded {
		_ = st.s.writeFrame(&proto.Frame{Type: proto.FrameEnd, Stream: st.id, Payload: endPayload(err)})
	}
	st.cancel(proto.Errorf(proto.CodeCanceled, "%s: stream ended", st.op))
	wake(st.recvWake)
	st.mu.Lock()
	st.wakeSenders()
	st.mu.Unlock()
}

// endPayload encodes an End frame's payload: empty for success.
func endPayload(err error) []byte {
	if err == nil {
		return nil
	}
	e := &proto.Error{Code: proto.CodeOf(err), Message: err.Error()}
	if len(e.Message) > proto.MaxMessage/2 {
		e.Message = e.Message[:proto.MaxMessage/2] + "..."
	}
	b, _ := json.Marshal(proto.End{Error: e})
	return b
}

func jsonMarshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, proto.Errorf(proto.CodeInvalid, "encoding %T: %v", v, err)
	}
	return b, nil
}

package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// ackBatch is how much consumed output the client acknowledges at once
// (it also acknowledges before it waits for more): half the smallest
// output buffer, so the agent never waits on an acknowledgement the
// client holds back.
const ackBatch = proto.MinOutputBuffer / 2

// EventKind is what an Event is.
type EventKind int

// Kinds of events.
const (
	// EventOutput is output: Data on Channel (proto.ChanStdout or
	// proto.ChanStderr) at Offset.
	EventOutput EventKind = iota + 1
	// EventGap is output lost before it reached this client (Gap).
	EventGap
	// EventExit is the end (Exit); no event follows.
	EventExit
)

// Event is one thing an attached process reports.
type Event struct {
	Kind    EventKind
	Channel uint8
	Data    []byte
	// Offset is the output offset of Data's first byte.
	Offset int64
	Gap    *proto.Gap
	Exit   *proto.ExitStatus
}

// Process is an attachment to a process in the guest: its events, its
// stdin. Ending it (Detach, or the context of Start or Attach) leaves the
// process running; reattach with Client.Attach from Offset.
type Process struct {
	c        *Client
	st       *mux.Stream
	attached proto.Attached
	manual   bool

	mu     sync.Mutex // Next's state
	offset int64      // after the last byte returned by Next
	acked  int64      // last offset acknowledged
}

// Start starts a process and attaches to it.
func (c *Client) Start(ctx context.Context, req proto.ExecStart) (*Process, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if req.Container != "" {
		// An older agent would drop the field and run the process in
		// the guest's root.
		if err := c.supportsContainers(proto.OpExecStart + " in a container"); err != nil {
			return nil, err
		}
	}
	return c.attach(ctx, proto.OpExecStart, req, req.AutoAck)
}

// Attach reattaches to a process: its output is replayed from req.From.
func (c *Client) Attach(ctx context.Context, req proto.ExecAttach) (*Process, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return c.attach(ctx, proto.OpExecAttach, req, req.AutoAck)
}

func (c *Client) attach(ctx context.Context, op string, req any, autoAck bool) (*Process, error) {
	st, err := c.s.Open(ctx, op, req)
	if err != nil {
		return nil, err
	}
	// With AutoAck the agent acknowledges as it sends: the client does not.
	p := &Process{c: c, st: st, manual: autoAck}
	it, err := st.Recv(ctx)
	var ev proto.ExecEvent
	if err == nil && it.Kind != mux.KindMsg {
		err = proto.Errorf(proto.CodeInternal, "%s: the agent sent output before attaching", op)
	}
	if err == nil {
		err = proto.DecodeJSON(it.Payload, &ev)
	}
	if err == nil && ev.Attached == nil {
		err = proto.Errorf(proto.CodeInternal, "%s: the agent's first event is not the attach", op)
	}
	if errors.Is(err, io.EOF) {
		err = proto.Errorf(proto.CodeInternal, "%s: the agent ended the stream at once", op)
	}
	if err != nil {
		st.End(nil)
		return nil, err
	}
	p.attached = *ev.Attached
	p.offset, p.acked = ev.Attached.From, ev.Attached.From
	return p, nil
}

// PID is the process's pid in the guest.
func (p *Process) PID() int { return p.attached.PID }

// Tag is the process's tag.
func (p *Process) Tag() string { return p.attached.Tag }

// Ref names the process for the Client's unary calls.
func (p *Process) Ref() proto.ProcessRef { return proto.ProcessRef{PID: p.attached.PID} }

// Offset is the output offset after the last event Next returned: where
// a new attachment resumes.
func (p *Process) Offset() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.offset
}

// SetManualAck turns off automatic acknowledgement (before the first
// Next): the caller acknowledges with Ack once it has stored the output,
// so output a crash lost is replayed to the next attachment. Without it,
// output is acknowledged once Next returned it and the caller asked for
// the next event.
func (p *Process) SetManualAck() { p.manual = true }

// Ack tells the agent that output before off is safe with the client:
// the agent drops it from its buffer.
func (p *Process) Ack(off int64) error {
	return p.st.SendMsg(proto.ExecControl{Ack: &off})
}

// Next returns the next event. After EventExit it returns io.EOF. An
// error ends the attachment (the process goes on).
func (p *Process) Next(ctx context.Context) (Event, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if !p.manual && p.offset > p.acked && (p.offset-p.acked >= ackBatch || !p.st.Queued()) {
			// Acknowledge what the caller consumed: in batches, and before
			// waiting, so the agent's buffer never waits on this client.
			// A failure means the stream is over; Recv says how.
			_ = p.Ack(p.offset)
			p.acked = p.offset
		}
		it, err := p.st.Recv(ctx)
		if err != nil {
			return Event{}, err
		}
		switch it.Kind {
		case mux.KindData:
			ev := Event{Kind: EventOutput, Channel: it.Channel, Data: it.Payload, Offset: p.offset}
			p.offset += int64(len(it.Payload))
			return ev, nil
		case mux.KindMsg:
			var ev proto.ExecEvent
			if err := proto.DecodeJSON(it.Payload, &ev); err != nil {
				return Event{}, err
			}
			switch {
			case ev.Gap != nil:
				p.offset = ev.Gap.To
				return Event{Kind: EventGap, Gap: ev.Gap, Offset: ev.Gap.From}, nil
			case ev.Exit != nil:
				return Event{Kind: EventExit, Exit: ev.Exit, Offset: p.offset}, nil
			}
		}
	}
}

// Wait reads events until the exit, discarding output, and returns the
// exit status.
func (p *Process) Wait(ctx context.Context) (proto.ExitStatus, error) {
	es, err := p.Copy(ctx, io.Discard, io.Discard)
	return es, err
}

// Copy writes the output to stdout and stderr (a terminal's output goes
// to stdout) until the exit, and returns the exit status. Gaps are
// reported as an error once the process exited.
func (p *Process) Copy(ctx context.Context, stdout, stderr io.Writer) (proto.ExitStatus, error) {
	defer p.Detach()
	var gaps []proto.Gap
	for {
		ev, err := p.Next(ctx)
		if err != nil {
			return proto.ExitStatus{}, err
		}
		switch ev.Kind {
		case EventOutput:
			w := stdout
			if ev.Channel == proto.ChanStderr {
				w = stderr
			}
			if _, err := w.Write(ev.Data); err != nil {
				return proto.ExitStatus{}, fmt.Errorf("writing the process's output: %w", err)
			}
		case EventGap:
			gaps = append(gaps, *ev.Gap)
		case EventExit:
			if len(gaps) > 0 {
				return *ev.Exit, fmt.Errorf("output lost before it reached this client: %v", gaps)
			}
			return *ev.Exit, nil
		}
	}
}

// Stdin writes to the process's standard input through this attachment,
// with the agent's backpressure: Write blocks while the process does not
// read. Close sends EOF.
func (p *Process) Stdin() io.WriteCloser { return stdin{p} }

type stdin struct{ p *Process }

func (s stdin) Write(b []byte) (int, error) {
	if err := s.p.st.Write(proto.ChanStdin, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (s stdin) Close() error { return s.p.st.CloseChannel(proto.ChanStdin) }

// Detach ends the attachment; the process goes on.
func (p *Process) Detach() {
	p.st.End(nil)
}

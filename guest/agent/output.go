package agent

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/embervm/ember/agent/proto"
)

// chunkOverhead is what the output buffer charges for each chunk beyond
// its bytes (the chunk's record), so that a process writing one byte at a
// time on alternating stdout and stderr cannot make the buffer's real
// memory exceed its size by an order of magnitude.
const chunkOverhead = 64

// chunkMax is the most a chunk grows to by coalescing small reads.
const chunkMax = proto.MaxData

// errReleased ends the attachments of a process that was released.
var errReleased = errors.New("the process was released")

// chunk is output read from one channel, at offset off.
type chunk struct {
	ch   uint8
	off  int64
	data []byte
}

// outputLog is a process's output: stdout and stderr chunks in the order
// they were read, numbered by byte offset from 0. It holds what no client
// has acknowledged ([start, end)), within its capacity; see ExecAttach in
// package proto for the semantics. The pumps that read the process append;
// attachments read from their cursor.
type outputLog struct {
	mu        sync.Mutex
	chunks    []chunk // chunks[0] holds start
	start     int64
	end       int64
	used      int // bytes plus chunkOverhead per chunk
	capacity  int
	overwrite bool
	dropped   int64
	closed    bool  // no more output
	err       error // set by release: readers stop
	changed   chan struct{}
}

func newOutputLog(capacity int, overwrite bool) *outputLog {
	return &outputLog{capacity: capacity, overwrite: overwrite, changed: make(chan struct{})}
}

// notify wakes everyone waiting for a change (l.mu held).
func (l *outputLog) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// append adds p (read from channel ch), waiting while the buffer is full
// of unacknowledged output (unless it overwrites). It returns an error
// only when the log was released.
func (l *outputLog) append(ch uint8, p []byte) error {
	cost := len(p) + chunkOverhead
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.used+cost > l.capacity && l.err == nil {
		if l.overwrite && len(l.chunks) > 0 {
			l.dropFront()
			continue
		}
		wait := l.changed
		l.mu.Unlock()
		<-wait
		l.mu.Lock()
	}
	if l.err != nil {
		return l.err
	}
	if n := len(l.chunks); n > 0 {
		last := &l.chunks[n-1]
		if last.ch == ch && len(last.data)+len(p) <= chunkMax {
			last.data = append(last.data, p...)
			l.used += len(p)
			l.end += int64(len(p))
			l.notify()
			return nil
		}
	}
	data := make([]byte, len(p), max(len(p), min(chunkMax, 4*len(p))))
	copy(data, p)
	l.chunks = append(l.chunks, chunk{ch: ch, off: l.end, data: data})
	l.used += cost
	l.end += int64(len(p))
	l.notify()
	return nil
}

// dropFront drops the oldest chunk unacknowledged (overwrite mode).
func (l *outputLog) dropFront() {
	c := l.chunks[0]
	l.chunks[0] = chunk{}
	l.chunks = l.chunks[1:]
	l.used -= len(c.data) + chunkOverhead
	l.dropped += c.off + int64(len(c.data)) - l.start
	l.start = c.off + int64(len(c.data))
	l.notify()
}

// ack drops output before off: a client has it.
func (l *outputLog) ack(off int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if off > l.end {
		off = l.end
	}
	if off <= l.start {
		return
	}
	for len(l.chunks) > 0 {
		c := &l.chunks[0]
		cend := c.off + int64(len(c.data))
		if cend <= off {
			l.used -= len(c.data) + chunkOverhead
			l.chunks[0] = chunk{}
			l.chunks = l.chunks[1:]
			continue
		}
		if c.off < off {
			cut := int(off - c.off)
			c.data = c.data[cut:]
			c.off = off
			l.used -= cut
		}
		break
	}
	if len(l.chunks) == 0 {
		l.chunks = nil // let the backing array go
	}
	l.start = off
	l.notify()
}

// close marks the end of the output.
func (l *outputLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.notify()
}

// release drops everything and stops readers and writers.
func (l *outputLog) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = errReleased
	l.chunks, l.used = nil, 0
	l.notify()
}

// piece is what read returns.
type piece struct {
	ch   uint8
	data []byte // output at the cursor (shared: read only)
	gap  *proto.Gap
	eof  bool // the cursor is at the end of a closed log
}

// read returns the output at cursor, waiting for some: data (the rest of
// a chunk), a gap when the cursor's bytes were dropped, or eof. It fails
// when ctx ends or the log is released.
func (l *outputLog) read(ctx context.Context, cursor int64) (piece, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.err != nil {
			return piece{}, l.err
		}
		if cursor < l.start {
			return piece{gap: &proto.Gap{From: cursor, To: l.start}}, nil
		}
		if cursor < l.end {
			// The first chunk ending after the cursor holds it.
			i := sort.Search(len(l.chunks), func(i int) bool {
				return l.chunks[i].off+int64(len(l.chunks[i].data)) > cursor
			})
			c := l.chunks[i]
			return piece{ch: c.ch, data: c.data[cursor-c.off:]}, nil
		}
		if l.closed {
			return piece{eof: true}, nil
		}
		wait := l.changed
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			l.mu.Lock()
			return piece{}, context.Cause(ctx)
		}
		l.mu.Lock()
	}
}

// state reports the buffer.
func (l *outputLog) state() proto.OutputState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return proto.OutputState{Start: l.start, End: l.end, Capacity: l.capacity, Dropped: l.dropped}
}

// bounds returns start and end.
func (l *outputLog) bounds() (int64, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.start, l.end
}

package devices

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embervm/ember/ratelimit"
)

const (
	// ConsoleBufferSize is the default capacity of a ConsoleOutput: 64
	// KiB, a screenful of boot messages many times over, held while the
	// host reader catches up; beyond it output is dropped.
	ConsoleBufferSize = 64 << 10

	// consoleWriteChunk is the most the writer hands to the host writer
	// (and takes from the rate limiter) at once.
	consoleWriteChunk = 4 << 10
)

// ConsoleStats are cumulative counters of a ConsoleOutput, in bytes.
type ConsoleStats struct {
	Written     uint64 // taken by the host writer
	Dropped     uint64 // lost to a full buffer (a slow or stalled reader, or the rate limit)
	WriteErrors uint64 // refused by the host writer
}

// ConsoleOutput decouples a UART's transmitter from the host side of the
// console. The guest's bytes go into a bounded ring buffer (Write never
// blocks and never fails, so a vCPU thread writing under the UART's lock
// cannot be held by a stalled stdout reader); a goroutine of its own
// drains the buffer to the host writer. When the buffer is full, new bytes
// are dropped and counted. An optional rate limiter (Firecracker's serial
// rate_limiter) paces the writer, so output beyond the rate fills the
// buffer and is dropped in turn: a hostile guest cannot fill a log file
// faster than the limit allows.
type ConsoleOutput struct {
	out io.Writer
	lim *ratelimit.Limiter // owned by the writer goroutine
	log *slog.Logger

	mu         sync.Mutex
	ring       []byte
	head, n    int           // ring[head] is the oldest of n buffered bytes
	busy       bool          // the writer holds bytes it took from the ring
	flushWant  bool          // a Flush waits for the writer to go idle
	idle       chan struct{} // closed when the writer goes idle with flushWant set
	loggedFail bool

	wake      chan struct{} // one pending wake-up for the writer
	stop      chan struct{} // closed by Close
	closeOnce sync.Once

	written, dropped, writeErrors atomic.Uint64
}

// NewConsoleOutput returns a ConsoleOutput of size bytes (ConsoleBufferSize
// if size <= 0) draining into out, paced by lim if lim is not nil (it then
// belongs to the ConsoleOutput, which closes it), and starts its writer.
// Close stops it.
func NewConsoleOutput(out io.Writer, size int, lim *ratelimit.Limiter, log *slog.Logger) *ConsoleOutput {
	if size <= 0 {
		size = ConsoleBufferSize
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &ConsoleOutput{out: out, lim: lim, log: log, ring: make([]byte, size),
		idle: make(chan struct{}), wake: make(chan struct{}, 1), stop: make(chan struct{})}
	go c.run()
	return c
}

// Write buffers as much of p as fits and drops the rest. It never blocks
// and always reports len(p) written: to the guest, a dropped byte went out
// on the wire.
func (c *ConsoleOutput) Write(p []byte) (int, error) {
	c.mu.Lock()
	k := min(len(p), len(c.ring)-c.n)
	if k > 0 {
		tail := (c.head + c.n) % len(c.ring)
		copied := copy(c.ring[tail:], p[:k])
		copy(c.ring, p[copied:k])
		c.n += k
	}
	c.mu.Unlock()
	if k < len(p) {
		c.dropped.Add(uint64(len(p) - k))
	}
	if k > 0 {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// Stats returns the counters.
func (c *ConsoleOutput) Stats() ConsoleStats {
	return ConsoleStats{Written: c.written.Load(), Dropped: c.dropped.Load(), WriteErrors: c.writeErrors.Load()}
}

// Flush waits until everything buffered has been handed to the host
// writer, or timeout has passed, and reports whether it was all handed
// over. The VMM calls it when the guest has stopped, so that its last
// words reach the console before the process exits, without letting a
// stalled reader hold the exit.
func (c *ConsoleOutput) Flush(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		c.mu.Lock()
		if c.n == 0 && !c.busy {
			c.mu.Unlock()
			return true
		}
		c.flushWant = true
		idle := c.idle
		c.mu.Unlock()
		select {
		case <-idle:
		case <-t.C:
			return false
		case <-c.stop:
			return false
		}
	}
}

// Close stops the writer; what is still buffered is dropped. It does not
// wait for a write blocked in the host writer: that write ends when the
// writer does (closing a pipe's read end, or the file, ends it), and the
// goroutine with it.
func (c *ConsoleOutput) Close() {
	c.closeOnce.Do(func() { close(c.stop) })
}

// run is the writer goroutine.
func (c *ConsoleOutput) run() {
	defer c.lim.Close()
	buf := make([]byte, consoleWriteChunk)
	for {
		k := c.take(buf)
		if k == 0 {
			select {
			case <-c.wake:
				continue
			case <-c.stop:
				return
			}
		}
		if !c.pace(k) {
			return
		}
		if _, err := c.out.Write(buf[:k]); err != nil {
			c.writeErrors.Add(uint64(k))
			c.mu.Lock()
			first := !c.loggedFail
			c.loggedFail = true
			c.mu.Unlock()
			if first {
				c.log.Warn("console output write failed; further failures are only counted", "err", err)
			}
		} else {
			c.written.Add(uint64(k))
		}
		select {
		case <-c.stop:
			return
		default:
		}
	}
}

// take moves up to len(buf) buffered bytes into buf and returns how many.
// With nothing buffered it marks the writer idle, waking a Flush.
func (c *ConsoleOutput) take(buf []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := min(len(buf), c.n)
	if k == 0 {
		c.busy = false
		if c.flushWant {
			c.flushWant = false
			close(c.idle)
			c.idle = make(chan struct{})
		}
		return 0
	}
	copied := copy(buf[:k], c.ring[c.head:])
	copy(buf[copied:k], c.ring)
	c.head = (c.head + k) % len(c.ring)
	c.n -= k
	c.busy = true
	return k
}

// pace waits until the rate limiter lets k bytes through; it returns false
// if the output was closed meanwhile.
func (c *ConsoleOutput) pace(k int) bool {
	for !c.lim.Consume(uint64(k)) {
		t := time.NewTimer(c.lim.RetryAfter())
		select {
		case <-t.C:
		case <-c.stop:
			t.Stop()
			return false
		}
		if err := c.lim.Event(); err != nil {
			c.log.Warn("console output rate limiter", "err", err)
		}
	}
	return true
}

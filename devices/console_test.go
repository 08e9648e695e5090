package devices

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/embervm/ember/ratelimit"
)

// hangLimit bounds waits for what takes microseconds: reaching it is a
// hang, not a slow run.
const hangLimit = 30 * time.Second

// gatedWriter blocks every Write until open is closed, then records.
type gatedWriter struct {
	open chan struct{}
	mu   sync.Mutex
	b    bytes.Buffer
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.Write(p)
}

func (g *gatedWriter) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.Len()
}

// TestConsoleOutputDropsWhenStalled: while the host writer is stalled,
// Write neither blocks nor fails; what does not fit in the buffer is
// dropped and counted, and once the writer moves again the buffer drains,
// in order.
func TestConsoleOutputDropsWhenStalled(t *testing.T) {
	const size = 1 << 10
	w := &gatedWriter{open: make(chan struct{})}
	c := NewConsoleOutput(w, size, nil, nil)
	defer c.Close()
	var sent bytes.Buffer
	for i := range 10 * size {
		b := []byte{byte(i)}
		if n, err := c.Write(b); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		sent.Write(b)
	}
	close(w.open)
	if !c.Flush(hangLimit) {
		t.Fatal("Flush did not drain the buffer")
	}
	st := c.Stats()
	if st.Written != uint64(w.Len()) || st.Written+st.Dropped != uint64(sent.Len()) || st.Dropped < 10*size-size-consoleWriteChunk {
		t.Fatalf("stats %+v for %d bytes sent, %d written", st, sent.Len(), w.Len())
	}
	// What went out is what was sent, in order, less what was dropped.
	in := sent.Bytes()
	for _, b := range w.b.Bytes() {
		for len(in) > 0 && in[0] != b {
			in = in[1:]
		}
		if len(in) == 0 {
			t.Fatal("the output is not the input in order with bytes left out")
		}
		in = in[1:]
	}
}

// TestConsoleOutputRateLimit: with a rate limiter, the host writer gets no
// more than the bucket allows; the rest is dropped.
func TestConsoleOutputRateLimit(t *testing.T) {
	const budget = 8 << 10
	lim, err := ratelimit.New(ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{Size: budget, RefillTime: 3_600_000}})
	if err != nil {
		t.Fatal(err)
	}
	w := &gatedWriter{open: make(chan struct{})}
	close(w.open)
	c := NewConsoleOutput(w, ConsoleBufferSize, lim, nil)
	const total = 4 * ConsoleBufferSize
	for range total / 256 {
		c.Write(make([]byte, 256))
	}
	c.Close()
	st := c.Stats()
	// The writer counts a chunk once its write returned: Written may lag
	// the output by the chunk in flight.
	if w.Len() > budget+64 || st.Written > uint64(w.Len()) {
		t.Errorf("%d bytes written with a %d-byte budget (stats %+v)", w.Len(), budget, st)
	}
	if st.Dropped < total-ConsoleBufferSize-consoleWriteChunk-budget-64 {
		t.Errorf("stats %+v: want the excess dropped", st)
	}
}

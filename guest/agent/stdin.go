package agent

import (
	"os"
	"sync"

	"github.com/embervm/ember/agent/proto"
)

// stdinWriter feeds a process's stdin from a queue, on its own goroutine,
// so that a process that does not read its input blocks only that
// goroutine: the clients' acknowledgements on the same stream still get
// through. The queue is bounded by the stream windows of the clients that
// fill it (their credit comes back only once a write completed).
type stdinWriter struct {
	f   *os.File
	tty bool

	mu     sync.Mutex
	queue  []stdinItem
	wake   chan struct{}
	closed bool // EOF queued or stdin gone
}

type stdinItem struct {
	data []byte
	eof  bool
	quit bool // stop without writing (the terminal is gone)
	done func(error)
}

func newStdinWriter(f *os.File, tty bool) *stdinWriter {
	w := &stdinWriter{f: f, tty: tty, wake: make(chan struct{}, 1)}
	go w.run()
	return w
}

// enqueue queues data (and EOF); done is called once written or failed.
func (w *stdinWriter) enqueue(data []byte, eof bool, done func(error)) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		done(proto.Errorf(proto.CodePrecondition, "stdin is closed"))
		return
	}
	if eof {
		w.closed = true
	}
	w.queue = append(w.queue, stdinItem{data: data, eof: eof, done: done})
	w.mu.Unlock()
	wake(w.wake)
}

// close closes stdin once the queue is written (the process exited).
func (w *stdinWriter) close() { w.enqueue(nil, true, func(error) {}) }

// quit ends the writer without a last write (its terminal is closed).
func (w *stdinWriter) quit() {
	w.mu.Lock()
	w.closed = true
	w.queue = append(w.queue, stdinItem{quit: true, done: func(error) {}})
	w.mu.Unlock()
	wake(w.wake)
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (w *stdinWriter) run() {
	var failed error
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.mu.Unlock()
			<-w.wake
			continue
		}
		it := w.queue[0]
		w.queue[0] = stdinItem{}
		w.queue = w.queue[1:]
		w.mu.Unlock()

		if it.quit {
			it.done(nil)
			w.drain(proto.Errorf(proto.CodePrecondition, "stdin is closed"))
			return
		}
		err := failed
		if err == nil && len(it.data) > 0 {
			_, err = w.f.Write(it.data)
		}
		if err == nil && it.eof {
			if w.tty {
				_, err = w.f.Write([]byte{eofChar})
			} else {
				err = w.f.Close()
			}
		}
		if err != nil && failed == nil {
			failed = proto.Errorf(proto.CodePrecondition, "writing stdin: %v", err)
			err = failed
		}
		it.done(err)
		if it.eof {
			w.drain(proto.Errorf(proto.CodePrecondition, "stdin is closed"))
			return
		}
	}
}

// drain fails what is still queued after the end.
func (w *stdinWriter) drain(err error) {
	w.mu.Lock()
	q := w.queue
	w.queue, w.closed = nil, true
	w.mu.Unlock()
	for _, it := range q {
		it.done(err)
	}
}

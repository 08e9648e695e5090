package virtio

import (
	"fmt"
	"log/slog"
	"sync"
)

// Worker is a device's queue-processing goroutine: it waits on the queues'
// notify eventfds (and any extra fds the device watches: a tap, a rate
// limiter's timer) and calls the device's handler with the ready token.
// Tokens 0..len(Notify)-1 are the queues; extra fds get the tokens the
// device chose when it called Watch.
type Worker struct {
	poller  *Poller
	stop    *EventFD
	done    chan struct{}
	notify  []*EventFD
	handler func(token uint32)
	log     *slog.Logger
	started bool

	// call wakes the loop to run the functions queued by Do.
	call    *EventFD
	callMu  sync.Mutex
	pending []func()

	// resume, while the worker is parked by Pause, is closed by Resume.
	pauseMu sync.Mutex
	resume  chan struct{}
}

// Tokens of the worker's own eventfds.
const (
	stopToken = ^uint32(0)
	callToken = ^uint32(0) - 1
)

// NewWorker prepares a worker for the activation's notify eventfds; add
// extra fds with Watch, then Start it.
func NewWorker(a *Activation, log *slog.Logger, handler func(token uint32)) (*Worker, error) {
	if log == nil {
		log = slog.Default()
	}
	p, err := NewPoller()
	if err != nil {
		return nil, err
	}
	w := &Worker{poller: p, done: make(chan struct{}), notify: a.Notify, handler: handler, log: log}
	if w.stop, err = NewEventFD(); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.Add(w.stop.FD(), stopToken); err != nil {
		w.close()
		return nil, err
	}
	if w.call, err = NewEventFD(); err != nil {
		w.close()
		return nil, err
	}
	if err := p.Add(w.call.FD(), callToken); err != nil {
		w.close()
		return nil, err
	}
	for i, e := range a.Notify {
		if err := p.Add(e.FD(), uint32(i)); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

// NewWorkerWatching is NewWorker that also watches fd under token when fd
// is not negative: a device's rate-limiter timer, say.
func NewWorkerWatching(a *Activation, log *slog.Logger, handler func(token uint32), fd int, token uint32) (*Worker, error) {
	w, err := NewWorker(a, log, handler)
	if err != nil || fd < 0 {
		return w, err
	}
	if err := w.Watch(fd, token); err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

// Watch adds fd (level-triggered readability) under token.
func (w *Worker) Watch(fd int, token uint32) error { return w.poller.Add(fd, token) }

// WatchEdge adds fd edge-triggered for reading and writing under token.
func (w *Worker) WatchEdge(fd int, token uint32) error { return w.poller.AddEdge(fd, token) }

// Unwatch removes fd.
func (w *Worker) Unwatch(fd int) error { return w.poller.Remove(fd) }

// Start runs the loop on a new goroutine. The handler runs on it alone. A
// queue token's eventfd is cleared before the handler is called, so a
// notification that arrives while the handler runs wakes it again.
func (w *Worker) Start() {
	w.started = true
	go func() {
		defer close(w.done)
		for {
			evs, err := w.poller.Wait(-1)
			if err != nil {
				w.log.Error("virtio worker stopped", "err", err)
				return
			}
			for _, ev := range evs {
				tok := uint32(ev.Fd)
				switch tok {
				case stopToken:
					return
				case callToken:
					w.runCalls()
					continue
				}
				if tok < uint32(len(w.notify)) {
					if _, err := w.notify[tok].Clear(); err != nil {
						w.log.Error("virtio worker", "err", fmt.Errorf("queue %d notify: %w", tok, err))
					}
				}
				w.handler(tok)
			}
		}
	}()
}

// Do runs fn on the worker's goroutine, between two handler calls, and
// returns when it has run: the way to change state that the handler owns
// (a rate limiter, a backing file) from another goroutine. On a worker that
// is not running or is paused, fn runs on the caller's goroutine. Do is for
// rare control operations, not the data path: it allocates.
//
// fn changes state only: it must not process the queues (nor touch guest
// memory or raise interrupts), since on a paused VM that would change what
// the guest sees. To have the queues served after a change, fn calls Kick:
// the handler then runs on the worker, at once or after Resume.
func (w *Worker) Do(fn func()) {
	if w == nil || !w.started {
		fn()
		return
	}
	// A worker parked by Pause runs nothing until Resume, and owns nothing
	// meanwhile: fn runs here, holding off Resume until it is done.
	w.pauseMu.Lock()
	if w.resume != nil {
		defer w.pauseMu.Unlock()
		fn()
		return
	}
	done := make(chan struct{})
	w.callMu.Lock()
	w.pending = append(w.pending, func() { fn(); close(done) })
	w.callMu.Unlock()
	err := w.call.Signal()
	w.pauseMu.Unlock()
	if err != nil {
		w.log.Error("virtio worker: waking for a call", "err", err)
	}
	select {
	case <-done:
	case <-w.done: // the loop ended before it ran fn
		w.runCalls()
		<-done
	}
}

// Kick makes the worker handle queue as if the driver had notified it: at
// once on a running worker, after Resume on a paused one. A device calls it
// (from Do's fn, say) when a change may let it serve buffers that were
// waiting, such as a looser rate limit. Kicking a nil worker does nothing.
func (w *Worker) Kick(queue int) error {
	if w == nil || queue < 0 || queue >= len(w.notify) {
		return nil
	}
	return w.notify[queue].Signal()
}

// runCalls runs the functions queued by Do.
func (w *Worker) runCalls() {
	if _, err := w.call.Clear(); err != nil {
		w.log.Error("virtio worker: call eventfd", "err", err)
	}
	w.callMu.Lock()
	calls := w.pending
	w.pending = nil
	w.callMu.Unlock()
	for _, fn := range calls {
		fn()
	}
}

// Pause parks the worker's goroutine between two handler calls and returns
// once it is parked: from then until Resume the device touches neither
// guest memory nor its queues (a VM pause, a snapshot). Notifications that
// arrive meanwhile are handled after Resume. Pausing a paused, stopped or
// nil worker does nothing.
func (w *Worker) Pause() {
	if w == nil || !w.started {
		return
	}
	w.pauseMu.Lock()
	defer w.pauseMu.Unlock()
	if w.resume != nil {
		return
	}
	resume, parked := make(chan struct{}), make(chan struct{})
	w.resume = resume
	w.callMu.Lock()
	w.pending = append(w.pending, func() { close(parked); <-resume })
	w.callMu.Unlock()
	if err := w.call.Signal(); err != nil {
		w.log.Error("virtio worker: waking to pause", "err", err)
	}
	select {
	case <-parked:
	case <-w.done:
	}
}

// Resume releases a worker parked by Pause.
func (w *Worker) Resume() {
	if w == nil {
		return
	}
	w.pauseMu.Lock()
	defer w.pauseMu.Unlock()
	if w.resume != nil {
		close(w.resume)
		w.resume = nil
	}
}

// Stop ends the loop, waits for it, and releases the worker's own fds (not
// the notify eventfds, which belong to the transport). A paused worker is
// resumed first.
func (w *Worker) Stop() {
	if w == nil {
		return
	}
	w.Resume()
	if w.started {
		w.stop.Signal()
		<-w.done
	}
	w.close()
}

func (w *Worker) close() {
	w.poller.Close()
	w.stop.Close()
	if w.call != nil {
		w.call.Close()
	}
}

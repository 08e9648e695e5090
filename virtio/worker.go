package virtio

import (
	"fmt"
	"log/slog"
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
}

// stopToken marks the worker's own stop eventfd.
const stopToken = ^uint32(0)

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
	for i, e := range a.Notify {
		if err := p.Add(e.FD(), uint32(i)); err != nil {
			w.close()
			return nil, err
		}
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
				if tok == stopToken {
					return
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

// Stop ends the loop, waits for it, and releases the worker's own fds (not
// the notify eventfds, which belong to the transport).
func (w *Worker) Stop() {
	if w == nil {
		return
	}
	if w.started {
		w.stop.Signal()
		<-w.done
	}
	w.close()
}

func (w *Worker) close() {
	w.poller.Close()
	w.stop.Close()
}

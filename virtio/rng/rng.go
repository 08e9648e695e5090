// Package rng is Ember's virtio-rng entropy device (virtio 5.4): it fills
// the guest's buffers from the host's getrandom(2), optionally behind a rate
// limiter (Firecracker's /entropy).
package rng

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio"
)

const (
	queueSize = virtio.MaxQueueSize
	// maxRequest bounds the bytes served for one chain: a guest cannot make
	// Ember spend unbounded time in getrandom for one request (Linux asks
	// for at most a page at a time).
	maxRequest = 64 << 10
	// limiterToken is the worker token of the rate limiter's timer.
	limiterToken = 1 << 16
)

// Config is Firecracker's entropy device configuration.
type Config struct {
	RateLimit *ratelimit.Config `json:"rate_limiter,omitempty"`
}

// Metrics counts the device's work.
type Metrics struct {
	Bytes, Requests, Throttled, BadRequests atomic.Uint64
}

// Device is a virtio-rng device.
type Device struct {
	log     *slog.Logger
	glog    *virtio.GuestLog // for the lines a guest can cause
	limiter *ratelimit.Limiter
	Metrics Metrics

	worker *virtio.Worker
	act    *virtio.Activation
	chain  *virtio.Chain
	broken bool
}

// New makes the device.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	d := &Device{log: log, glog: virtio.NewGuestLog(log), chain: virtio.NewChain()}
	if cfg.RateLimit != nil {
		var err error
		if d.limiter, err = ratelimit.New(*cfg.RateLimit); err != nil {
			return nil, fmt.Errorf("entropy: %w", err)
		}
	}
	return d, nil
}

func (d *Device) Type() uint32                           { return virtio.IDRNG }
func (d *Device) Features() uint64                       { return 0 }
func (d *Device) QueueSizes() []uint16                   { return []uint16{queueSize} }
func (d *Device) ReadConfig(offset uint64, data []byte)  { clear(data) }
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// SuppressedLogs counts the guest-caused log lines the device's rate limit
// left out (virtio.SuppressedLogger).
func (d *Device) SuppressedLogs() uint64 { return d.glog.Suppressed() }

// Activate starts the worker.
func (d *Device) Activate(a *virtio.Activation) error {
	if !a.Queues[0].Active() {
		return errors.New("virtio-rng: request queue not set up")
	}
	w, err := virtio.NewWorkerWatching(a, d.log, d.handle, d.limiter.FD(), limiterToken)
	if err != nil {
		return err
	}
	d.act, d.worker, d.broken = a, w, false
	w.Start()
	return nil
}

// Reset stops the worker.
func (d *Device) Reset() {
	d.worker.Stop()
	d.worker, d.act = nil, nil
}

// Close stops the device and releases the limiter.
func (d *Device) Close() error {
	d.Reset()
	return d.limiter.Close()
}

func (d *Device) handle(token uint32) {
	if token == limiterToken {
		if err := d.limiter.Event(); err != nil {
			d.log.Error("virtio-rng rate limiter", "err", err)
		}
	}
	if d.limiter.Blocked() || d.broken {
		return
	}
	q, c := d.act.Queues[0], d.chain
	for {
		for {
			ok, err := q.Pop(c)
			if !ok {
				if err != nil {
					d.glog.Warn("virtio-rng: queue broken; waiting for a device reset", "err", err)
					d.broken = true
					return
				}
				break
			}
			if err != nil {
				d.Metrics.BadRequests.Add(1)
				q.PushUsed(c.Head, 0)
				continue
			}
			want := 0
			for _, desc := range c.Descs {
				if desc.Write {
					want += len(desc.Buf)
				}
			}
			want = min(want, maxRequest)
			if !d.limiter.Consume(uint64(want)) {
				q.Undo()
				d.Metrics.Throttled.Add(1)
				break
			}
			q.PushUsed(c.Head, d.fill(c, want))
		}
		if q.NeedInterrupt() {
			d.act.Interrupt.Used()
		}
		if d.limiter.Blocked() || !q.EnableNotify() {
			return
		}
	}
}

// fill writes up to n random bytes into the chain's writable buffers and
// returns how many it wrote.
func (d *Device) fill(c *virtio.Chain, n int) uint32 {
	written := 0
	for _, desc := range c.Descs {
		if !desc.Write || written == n {
			continue
		}
		b := desc.Buf[:min(len(desc.Buf), n-written)]
		for len(b) > 0 {
			k, err := unix.Getrandom(b, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				d.glog.Warn("virtio-rng: getrandom failed", "err", err)
				return uint32(written)
			}
			b, written = b[k:], written+k
		}
	}
	d.Metrics.Requests.Add(1)
	d.Metrics.Bytes.Add(uint64(written))
	return uint32(written)
}

// Pause parks the device's worker: until Resume it touches neither guest
// memory nor its queue (a VM pause or snapshot). Activate and Reset run on
// vCPU threads, which are paused first.
func (d *Device) Pause() { d.worker.Pause() }

// Resume releases the worker parked by Pause.
func (d *Device) Resume() { d.worker.Resume() }

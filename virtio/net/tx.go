package net

import (
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/virtio"
)

// txBudget is how many chains one call of processTx serves before it lets
// the worker handle other events (it re-notifies itself to come back).
const txBudget = 256

// txState is the transmit side, owned by the worker.
type txState struct {
	chain *virtio.Chain
	iov   []unix.Iovec // maxIov entries
	// tapBlocked: the tap refused a write (EAGAIN); wait for it to be
	// writable. The refused chain was put back, its tokens already taken
	// (charged).
	tapBlocked bool
	charged    bool
	broken     bool
}

func (s *txState) init() {
	s.chain = virtio.NewChain()
	s.iov = make([]unix.Iovec, maxIov)
}

func (s *txState) reset() {
	s.tapBlocked, s.charged, s.broken = false, false, false
}

// processTxQueue sends every frame the driver has made available (through
// processTx, which then delivers the interceptor's answers).
func (d *Device) processTxQueue() {
	s := &d.tx
	if s.broken || s.tapBlocked || d.txLimiter.Blocked() {
		return
	}
	q, c := d.act.Queues[txQueue], s.chain
	for {
		for range txBudget {
			ok, err := q.Pop(c)
			if !ok {
				if err != nil {
					s.broken = true
					d.queueBroken("tx", err)
					return
				}
				break
			}
			if err != nil {
				d.badChain("tx", err)
				q.PushUsed(c.Head, 0)
				continue
			}
			if !d.sendFrame(c) {
				q.Undo()
				d.interrupt(q)
				return
			}
			q.PushUsed(c.Head, 0) // transmit buffers are read-only: nothing written
		}
		d.interrupt(q)
		if q.Pending() {
			// Budget spent: come back after the other events.
			d.act.Notify[txQueue].Signal()
			return
		}
		if !q.EnableNotify() {
			return
		}
	}
}

// sendFrame writes the frame in c to the tap. It returns false if the
// chain must wait (rate limiter or a full tap) and be retried; otherwise
// the chain is done, sent or dropped.
func (d *Device) sendFrame(c *virtio.Chain) bool {
	s := &d.tx
	var total uint64
	n := 0
	for _, desc := range c.Descs {
		if desc.Write {
			d.badChainMsg("tx", "device-writable descriptor in a transmit chain", desc.Addr)
			return true
		}
		if len(desc.Buf) == 0 {
			continue
		}
		total += uint64(len(desc.Buf))
		setIov(&s.iov[n], desc.Buf)
		n++
	}
	if total < HdrLen {
		d.badChainMsg("tx", "transmit chain shorter than the virtio-net header", total)
		return true
	}
	frame := total - HdrLen
	if frame < minFrame || frame > MaxFrame {
		d.Metrics.TxDrops.Add(1)
		return true
	}
	if !s.charged {
		if !d.txLimiter.Consume(frame) {
			d.Metrics.TxThrottled.Add(1)
			return false
		}
		s.charged = true
	}
	if d.ic != nil && d.interceptTx(c) {
		s.charged = false
		return true
	}
	_, err := d.tap.writev(s.iov[:n])
	switch err {
	case nil:
		d.Metrics.TxPackets.Add(1)
		d.Metrics.TxBytes.Add(frame)
	case unix.EAGAIN:
		s.tapBlocked = true
		return false
	default:
		// The tap refused the frame (a bad vnet header, the interface
		// gone): drop it, keep going.
		d.Metrics.TxDrops.Add(1)
		d.Metrics.TapWriteErrors.Add(1)
		if d.glog.Enabled(slog.LevelDebug) {
			d.glog.Debug("virtio-net: tap write failed; frame dropped", "err", err, "len", frame)
		}
	}
	s.charged = false
	return true
}

// badChain counts and logs (at debug level) a chain the queue layer
// refused.
func (d *Device) badChain(queue string, err error) {
	d.Metrics.BadChains.Add(1)
	if d.glog.Enabled(slog.LevelDebug) {
		d.glog.Debug("virtio-net: bad descriptor chain", "queue", queue, "err", err)
	}
}

func (d *Device) badChainMsg(queue, msg string, v uint64) {
	d.Metrics.BadChains.Add(1)
	if d.glog.Enabled(slog.LevelDebug) {
		d.glog.Debug("virtio-net: bad descriptor chain: "+msg, "queue", queue, "value", v)
	}
}

// Package virtio implements the device side of virtio 1.x (OASIS "Virtual
// I/O Device (VIRTIO) Version 1.2", cited below as "virtio") for Ember: split
// virtqueues, the virtio-mmio version 2 transport, and the small pieces every
// device shares (feature bits, eventfds, a worker loop). The devices
// themselves live in subpackages (virtio/blk, virtio/rng, ...).
//
// The guest is not trusted. Every index, address and length read from a
// queue is checked before use: a descriptor chain is bounded by the queue
// size (no loops), every buffer must lie wholly inside guest RAM, and a
// malformed chain is reported as an error that the device answers by
// returning the chain with nothing written, or, when the queue itself is
// broken, by asking the driver to reset the device. Nothing the guest writes
// can make Ember touch host memory outside guest RAM. Nor can it fill
// Ember's log: every line a guest can cause goes through a GuestLog, a
// per-device (and per-transport) limit of a few lines per interval whose
// suppressed lines are counted (MMIO.SuppressedLogs, reported as
// logger.missed_log_count).
//
// Threads: MMIO register accesses arrive on vCPU threads (through the
// devices.Bus). Queue processing happens on one worker goroutine per device,
// woken by KVM ioeventfds on the QueueNotify register; the worker signals the
// guest through a KVM irqfd. The transport and the worker share only the
// interrupt status word (atomic) and the activation hand-over.
package virtio

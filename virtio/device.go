package virtio

import (
	"sync/atomic"
)

// Device IDs (virtio 5, "Device Types").
const (
	IDNet     = 1
	IDBlock   = 2
	IDConsole = 3
	IDRNG     = 4
	IDBalloon = 5
	IDVsock   = 19
)

// Feature bits shared by all devices (virtio 6, "Reserved Feature Bits").
const (
	FIndirectDesc = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FEventIdx     = 1 << 29 // VIRTIO_F_RING_EVENT_IDX
	FVersion1     = 1 << 32 // VIRTIO_F_VERSION_1
)

// Device status bits (virtio 2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 64
	StatusFailed      = 128
)

// Interrupt status bits (virtio 4.2.2, InterruptStatus).
const (
	intUsedBuffer   = 1
	intConfigChange = 2
)

// Device is one virtio device behind a transport. The transport handles
// feature negotiation, queue set-up and status; the device supplies its
// type, features, configuration space and the queue processing.
type Device interface {
	// Type is the virtio device ID.
	Type() uint32
	// Features are the device's feature bits. The transport adds
	// VERSION_1, EVENT_IDX and INDIRECT_DESC, which its queues implement.
	Features() uint64
	// QueueSizes gives the maximum size of each queue; its length is the
	// number of queues.
	QueueSizes() []uint16
	// ReadConfig and WriteConfig access the device configuration space
	// (offsets from its start). Out-of-range reads must return zeros.
	ReadConfig(offset uint64, data []byte)
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device once the driver has set DRIVER_OK: the
	// queues are checked and mapped. The device typically starts a worker
	// goroutine that waits on the notify eventfds.
	Activate(a *Activation) error
	// Reset stops the device (and waits for its worker) and forgets the
	// activation; it is called when the driver writes 0 to Status and when
	// the VM is torn down. It must be safe to call on an inactive device.
	Reset()
}

// Activation is what a device gets when the driver has set it up.
type Activation struct {
	Mem      Memory
	Features uint64 // negotiated
	Queues   []*Queue
	// Notify[i] is signalled when the driver notifies queue i.
	Notify []*EventFD
	// Interrupt raises the device's interrupt.
	Interrupt *Interrupt
}

// Interrupt is a device's interrupt line: the InterruptStatus register it
// shares with the transport, and the irqfd that raises the GSI.
type Interrupt struct {
	status atomic.Uint32
	fd     *EventFD
}

// NewInterrupt returns an interrupt signalled through fd.
func NewInterrupt(fd *EventFD) *Interrupt { return &Interrupt{fd: fd} }

// FD is the eventfd to bind to the device's GSI with KVM_IRQFD.
func (i *Interrupt) FD() *EventFD { return i.fd }

// Used tells the driver that used buffers are waiting.
func (i *Interrupt) Used() error {
	i.status.Or(intUsedBuffer)
	return i.fd.Signal()
}

// ConfigChanged tells the driver the configuration space changed.
func (i *Interrupt) ConfigChanged() error {
	i.status.Or(intConfigChange)
	return i.fd.Signal()
}

// Status is the InterruptStatus register.
func (i *Interrupt) Status() uint32 { return i.status.Load() }

// Ack clears the bits set in v (InterruptACK).
func (i *Interrupt) Ack(v uint32) { i.status.And(^v) }

// Features64 splits and joins 64-bit feature words by 32-bit halves, as the
// transport's *FeaturesSel registers expose them.
func featureWord(f uint64, sel uint32) uint32 {
	switch sel {
	case 0:
		return uint32(f)
	case 1:
		return uint32(f >> 32)
	}
	return 0
}

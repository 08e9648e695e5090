package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// virtio-mmio register offsets, version 2 (virtio 4.2.2, table "MMIO Device
// Register Layout").
const (
	regMagic             = 0x000
	regVersion           = 0x004
	regDeviceID          = 0x008
	regVendorID          = 0x00c
	regDeviceFeatures    = 0x010
	regDeviceFeaturesSel = 0x014
	regDriverFeatures    = 0x020
	regDriverFeaturesSel = 0x024
	regQueueSel          = 0x030
	regQueueNumMax       = 0x034
	regQueueNum          = 0x038
	regQueueReady        = 0x044
	// RegQueueNotify is where the driver writes a queue index to notify
	// the device; the VMM binds an ioeventfd per queue to it.
	RegQueueNotify     = 0x050
	regInterruptStatus = 0x060
	regInterruptACK    = 0x064
	regStatus          = 0x070
	regQueueDescLow    = 0x080
	regQueueDescHigh   = 0x084
	regQueueDriverLow  = 0x090
	regQueueDriverHigh = 0x094
	regQueueDeviceLow  = 0x0a0
	regQueueDeviceHigh = 0x0a4
	regConfigGen       = 0x0fc
	regConfig          = 0x100

	mmioMagic   = 0x74726976 // "virt", little-endian
	mmioVersion = 2          // virtio 1.x register layout
	// mmioVendorID is the vendor ID Ember reports: the virtio PCI vendor
	// 0x1af4, as Firecracker and QEMU do on MMIO too.
	mmioVendorID = 0x1af4

	// transportFeatures are the generic features the queues implement.
	transportFeatures = FVersion1 | FEventIdx | FIndirectDesc
)

// MMIO is the virtio-mmio transport for one device: the 4 KiB register
// window the guest programs, on the VMM's MMIO bus. Register accesses come
// from vCPU threads; InterruptStatus and InterruptACK, read on every
// interrupt, take no lock, the rest (set-up only) take mu.
//
// Lock order: mu, then the device's own lock (mu is held into the device's
// Activate, Reset and config accesses). A device must therefore not call
// into the transport holding its lock; ConfigChanged, the one call devices
// make at run time, takes no lock at all.
type MMIO struct {
	dev    Device
	mem    Memory
	log    *GuestLog // every line the transport writes is guest-caused
	irq    *Interrupt
	notify []*EventFD

	mu             sync.Mutex
	queues         []*Queue
	status         uint32
	devFeaturesSel uint32
	drvFeaturesSel uint32
	driverFeatures uint64
	queueSel       uint32
	active         bool

	// configGen is ConfigGeneration; atomic so that ConfigChanged needs
	// no lock.
	configGen atomic.Uint32
}

// NewMMIO wraps dev in a transport over guest memory mem. It creates the
// device's notify eventfds (one per queue) and its interrupt eventfd; the
// VMM binds them to KVM with NotifyFDs and IRQ.
func NewMMIO(dev Device, mem Memory, log *slog.Logger) (*MMIO, error) {
	t := &MMIO{dev: dev, mem: mem, log: NewGuestLog(log)}
	fd, err := NewEventFD()
	if err != nil {
		return nil, err
	}
	t.irq = NewInterrupt(fd)
	for _, max := range dev.QueueSizes() {
		t.queues = append(t.queues, NewQueue(max))
		e, err := NewEventFD()
		if err != nil {
			t.Close()
			return nil, err
		}
		t.notify = append(t.notify, e)
	}
	return t, nil
}

// Device is the wrapped device.
func (t *MMIO) Device() Device { return t.dev }

// SuppressedLogs counts the guest-caused log lines left out by the rate
// limit (GuestLog) of the transport and, if it has one, of its device: the
// VMM reports the sum in its metrics.
func (t *MMIO) SuppressedLogs() uint64 {
	n := t.log.Suppressed()
	if d, ok := t.dev.(SuppressedLogger); ok {
		n += d.SuppressedLogs()
	}
	return n
}

// NotifyFDs are the per-queue doorbells: bind NotifyFDs()[i] with
// KVM_IOEVENTFD to base+RegQueueNotify, 4 bytes, datamatch i.
func (t *MMIO) NotifyFDs() []*EventFD { return t.notify }

// IRQ is the interrupt; bind IRQ().FD() to the device's GSI with KVM_IRQFD.
func (t *MMIO) IRQ() *Interrupt { return t.irq }

// Close resets the device and closes the eventfds.
func (t *MMIO) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dev.Reset()
	t.active = false
	for _, e := range t.notify {
		e.Close()
	}
	return t.irq.fd.Close()
}

// Read implements devices.Device.
func (t *MMIO) Read(offset uint64, data []byte) {
	if offset >= regConfig {
		t.mu.Lock()
		t.dev.ReadConfig(offset-regConfig, data)
		t.mu.Unlock()
		return
	}
	clear(data)
	if len(data) != 4 || offset%4 != 0 {
		t.log.Debug("virtio-mmio: ignored unaligned register read", "offset", offset, "len", len(data))
		return
	}
	var v uint32
	switch offset {
	case regInterruptStatus:
		v = t.irq.Status()
	default:
		t.mu.Lock()
		v = t.readReg(offset)
		t.mu.Unlock()
	}
	binary.LittleEndian.PutUint32(data, v)
}

func (t *MMIO) readReg(offset uint64) uint32 {
	switch offset {
	case regMagic:
		return mmioMagic
	case regVersion:
		return mmioVersion
	case regDeviceID:
		return t.dev.Type()
	case regVendorID:
		return mmioVendorID
	case regDeviceFeatures:
		return featureWord(t.dev.Features()|transportFeatures, t.devFeaturesSel)
	case regQueueNumMax:
		if q := t.queue(); q != nil {
			return uint32(q.MaxSize)
		}
	case regQueueReady:
		if q := t.queue(); q != nil && q.Ready {
			return 1
		}
	case regStatus:
		return t.status
	case regConfigGen:
		return t.configGen.Load()
	}
	return 0
}

// queue is the selected queue, nil if QueueSel is out of range.
func (t *MMIO) queue() *Queue {
	if t.queueSel < uint32(len(t.queues)) {
		return t.queues[t.queueSel]
	}
	return nil
}

// Write implements devices.Device.
func (t *MMIO) Write(offset uint64, data []byte) {
	if offset >= regConfig {
		t.mu.Lock()
		if t.status&StatusDriver != 0 {
			t.dev.WriteConfig(offset-regConfig, data)
		}
		t.mu.Unlock()
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		t.log.Debug("virtio-mmio: ignored unaligned register write", "offset", offset, "len", len(data))
		return
	}
	v := binary.LittleEndian.Uint32(data)
	switch offset {
	case regInterruptACK:
		t.irq.Ack(v)
		return
	case RegQueueNotify:
		// Normally caught by the ioeventfd; a write KVM did not match
		// (another width, say) lands here.
		if v < uint32(len(t.notify)) {
			t.notify[v].Signal()
		}
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writeReg(offset, v)
}

func (t *MMIO) writeReg(offset uint64, v uint32) {
	q := t.queue()
	// Queue registers may change only before the driver sets the queue
	// ready and the device live (virtio 4.2.3.2).
	queueWritable := q != nil && !q.Ready && t.status&StatusDriverOK == 0
	switch offset {
	case regDeviceFeaturesSel:
		t.devFeaturesSel = v
	case regDriverFeaturesSel:
		t.drvFeaturesSel = v
	case regDriverFeatures:
		if t.status&StatusFeaturesOK != 0 || t.drvFeaturesSel > 1 {
			return
		}
		shift := 32 * uint64(t.drvFeaturesSel)
		t.driverFeatures = t.driverFeatures&^(0xffffffff<<shift) | uint64(v)<<shift
	case regQueueSel:
		t.queueSel = v
	case regQueueNum:
		if queueWritable {
			q.Size = uint16(min(v, 0xffff)) // Activate checks it against MaxSize
		}
	case regQueueReady:
		switch {
		case q == nil:
		case v == 1 && queueWritable:
			q.Ready = true
		case v == 0 && t.status&StatusDriverOK == 0:
			q.Ready = false
		}
	case regQueueDescLow, regQueueDescHigh, regQueueDriverLow, regQueueDriverHigh, regQueueDeviceLow, regQueueDeviceHigh:
		if !queueWritable {
			return
		}
		var p *uint64
		switch offset &^ 7 {
		case regQueueDescLow:
			p = &q.DescAddr
		case regQueueDriverLow:
			p = &q.AvailAddr
		default:
			p = &q.UsedAddr
		}
		if offset%8 == 0 {
			*p = *p&^0xffffffff | uint64(v)
		} else {
			*p = *p&0xffffffff | uint64(v)<<32
		}
	case regStatus:
		t.setStatus(v)
	default:
		t.log.Debug("virtio-mmio: write to read-only or unknown register", "offset", offset)
	}
}

// setStatus follows the driver through initialisation (virtio 3.1.1).
func (t *MMIO) setStatus(v uint32) {
	if v == 0 {
		t.reset()
		return
	}
	if v&^t.status&StatusFeaturesOK != 0 {
		offered := t.dev.Features() | transportFeatures
		if t.driverFeatures&^offered != 0 || t.driverFeatures&FVersion1 == 0 {
			t.log.Warn("virtio-mmio: driver features refused", "device", t.dev.Type(), "driver", fmt.Sprintf("%#x", t.driverFeatures), "offered", fmt.Sprintf("%#x", offered))
			v &^= StatusFeaturesOK // the driver re-reads status and gives up
		}
	}
	// Bits are only ever added until a reset (the driver may set FAILED).
	newBits := v &^ t.status
	t.status |= v
	if newBits&StatusDriverOK != 0 && !t.active {
		if err := t.activate(); err != nil {
			t.log.Warn("virtio-mmio: device not activated", "device", t.dev.Type(), "err", err)
			t.status |= StatusNeedsReset
			t.configGen.Add(1)
			t.irq.ConfigChanged()
		}
	}
}

func (t *MMIO) activate() error {
	if t.status&StatusFeaturesOK == 0 {
		return errors.New("DRIVER_OK without FEATURES_OK")
	}
	a := &Activation{Mem: t.mem, Features: t.driverFeatures, Notify: t.notify, Interrupt: t.irq}
	for i, q := range t.queues {
		q.EventIdx = t.driverFeatures&FEventIdx != 0
		if !q.Ready {
			continue
		}
		if err := q.Activate(t.mem); err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
	}
	a.Queues = t.queues
	if err := t.dev.Activate(a); err != nil {
		return err
	}
	t.active = true
	return nil
}

func (t *MMIO) reset() {
	t.dev.Reset()
	for _, q := range t.queues {
		q.Reset()
	}
	t.active = false
	t.status, t.driverFeatures, t.devFeaturesSel, t.drvFeaturesSel, t.queueSel = 0, 0, 0, 0, 0
	t.irq.Ack(^uint32(0))
}

// ConfigChanged bumps ConfigGeneration and interrupts the driver, after the
// device changed its configuration space (a resized disk, say). It takes no
// lock: a device may call it from anywhere, holding its own lock or not.
func (t *MMIO) ConfigChanged() error {
	t.configGen.Add(1)
	return t.irq.ConfigChanged()
}

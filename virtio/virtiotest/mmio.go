package virtiotest

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
)

// virtio-mmio registers used by the driver (virtio 4.2.2).
const (
	regDeviceFeatures    = 0x010
	regDeviceFeaturesSel = 0x014
	regDriverFeatures    = 0x020
	regDriverFeaturesSel = 0x024
	regQueueSel          = 0x030
	regQueueNumMax       = 0x034
	regQueueNum          = 0x038
	regQueueReady        = 0x044
	regInterruptStatus   = 0x060
	regInterruptACK      = 0x064
	regStatus            = 0x070
	regQueueDescLow      = 0x080
	regQueueDriverLow    = 0x090
	regQueueDeviceLow    = 0x0a0
	regConfig            = 0x100
)

// MMIODriver initialises a device through its virtio-mmio registers the way
// Linux's virtio_mmio driver does, then drives its queues.
type MMIODriver struct {
	T      *virtio.MMIO
	Queues []*Driver
	// Features is what was negotiated.
	Features uint64
}

// Reg reads a 32-bit register.
func (m *MMIODriver) Reg(off uint64) uint32 {
	var b [4]byte
	m.T.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// SetReg writes a 32-bit register.
func (m *MMIODriver) SetReg(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	m.T.Write(off, b[:])
}

// Config reads n bytes of the device configuration at off.
func (m *MMIODriver) Config(off uint64, n int) []byte {
	b := make([]byte, n)
	m.T.Read(regConfig+off, b)
	return b
}

// SetupMMIO negotiates the device's features intersected with want, sets
// up each queue (at most 256 entries) at base + i*64 KiB with buffer space
// after it, and sets DRIVER_OK. mem must extend past base + n*64 KiB.
func SetupMMIO(t *virtio.MMIO, mem *memory.Guest, want uint64, base uint64) (*MMIODriver, error) {
	m := &MMIODriver{T: t}
	m.SetReg(regStatus, 0)
	m.SetReg(regStatus, virtio.StatusAcknowledge)
	m.SetReg(regStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	var offered uint64
	for sel := uint32(0); sel < 2; sel++ {
		m.SetReg(regDeviceFeaturesSel, sel)
		offered |= uint64(m.Reg(regDeviceFeatures)) << (32 * sel)
	}
	m.Features = offered & want
	for sel := uint32(0); sel < 2; sel++ {
		m.SetReg(regDriverFeaturesSel, sel)
		m.SetReg(regDriverFeatures, uint32(m.Features>>(32*sel)))
	}
	st := uint32(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	m.SetReg(regStatus, st)
	if m.Reg(regStatus)&virtio.StatusFeaturesOK == 0 {
		return nil, fmt.Errorf("device refused features %#x", m.Features)
	}
	for i := 0; i < len(t.Device().QueueSizes()); i++ {
		m.SetReg(regQueueSel, uint32(i))
		size := uint16(min(m.Reg(regQueueNumMax), 256))
		qbase := base + uint64(i)<<16
		d := Layout(mem, qbase, size, qbase+1<<16)
		desc, avail, used := d.Rings()
		m.SetReg(regQueueNum, uint32(size))
		for _, r := range []struct {
			off  uint64
			addr uint64
		}{{regQueueDescLow, desc}, {regQueueDriverLow, avail}, {regQueueDeviceLow, used}} {
			m.SetReg(r.off, uint32(r.addr))
			m.SetReg(r.off+4, uint32(r.addr>>32))
		}
		m.SetReg(regQueueReady, 1)
		m.Queues = append(m.Queues, d)
	}
	m.SetReg(regStatus, st|virtio.StatusDriverOK)
	if s := m.Reg(regStatus); s&virtio.StatusNeedsReset != 0 {
		return nil, fmt.Errorf("device needs reset after DRIVER_OK (status %#x)", s)
	}
	return m, nil
}

// Notify kicks queue q the way the ioeventfd would.
func (m *MMIODriver) Notify(q int) {
	m.T.NotifyFDs()[q].Signal()
}

// WaitUsed waits up to timeout for the device to return a chain on queue q,
// acknowledging the interrupt like the guest's handler.
func (m *MMIODriver) WaitUsed(q int, timeout time.Duration) (head uint16, n uint32, err error) {
	deadline := time.Now().Add(timeout)
	for {
		if h, n, ok := m.Queues[q].Used(); ok {
			if st := m.Reg(regInterruptStatus); st != 0 {
				m.SetReg(regInterruptACK, st)
			}
			return h, n, nil
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("queue %d: no used buffer within %v", q, timeout)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// NewMMIOMemory is test guest memory big enough for SetupMMIO at base 0x10000
// with up to 4 queues.
func NewMMIOMemory() *memory.Guest { return NewMemory(0x10000 + 4<<16) }

// Interrupts returns how many times the device signalled its interrupt
// eventfd since the last call, and clears the count. (In a test no KVM
// irqfd consumes the eventfd, so its counter accumulates.)
func (m *MMIODriver) Interrupts() uint64 {
	var b [8]byte
	for {
		_, err := unix.Read(m.T.IRQ().FD().FD(), b[:])
		switch err {
		case nil:
			return binary.NativeEndian.Uint64(b[:])
		case unix.EINTR:
			continue
		}
		return 0 // EAGAIN: not signalled
	}
}

// UsedIdx is the device's used->idx.
func (m *MMIODriver) UsedIdx(q int) uint16 {
	d := m.Queues[q]
	return d.load16(d.used + 2)
}

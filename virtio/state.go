package virtio

import (
	"errors"
	"fmt"
)

// QueueState is one virtqueue as a snapshot keeps it: what the driver
// programmed and the device's ring positions.
type QueueState struct {
	Size      uint16
	Ready     bool
	DescAddr  uint64
	AvailAddr uint64
	UsedAddr  uint64
	EventIdx  bool
	NextAvail uint16
	NextUsed  uint16
}

// MMIOState is a virtio-mmio transport's state for a snapshot: the driver's
// registers, the negotiated features, the interrupt status and the queues.
// Device-specific state is the device's own.
type MMIOState struct {
	DeviceType     uint32
	Status         uint32
	DriverFeatures uint64
	DevFeaturesSel uint32
	DrvFeaturesSel uint32
	QueueSel       uint32
	ConfigGen      uint32
	InterruptStat  uint32
	Active         bool
	Queues         []QueueState
	// Device is the device's own state (StatefulDevice), if any.
	Device []byte `json:",omitempty"`
}

// StatefulDevice is a Device with state of its own that a snapshot must
// keep (the balloon's reported size and held statistics buffer, say).
type StatefulDevice interface {
	// SaveDeviceState returns the state; the device is quiescent.
	SaveDeviceState() ([]byte, error)
	// RestoreDeviceState loads it, after the transport's state is
	// restored and the device re-activated (if it was active).
	RestoreDeviceState([]byte) error
}

// SavePreparer is a Device that holds chains it has popped but not used
// (virtio-net's receive buffers, popped ahead of frames). A snapshot that
// recorded the queue's next available index past them, and not the chains,
// would lose them: the restored device starts with none held, and the
// driver never offers them again. PrepareSave puts them back (Queue.Undo),
// so that the saved index covers them and the restored device pops them
// again, as Firecracker's net device does before a save. The device is
// paused; it pops them again itself after Resume.
type SavePreparer interface {
	PrepareSave()
}

// SaveState returns the transport's state. The device must be quiescent
// (its worker paused, the vCPUs out of the guest). A SavePreparer device
// first puts back the chains it holds unused.
func (t *MMIO) SaveState() (MMIOState, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if sp, ok := t.dev.(SavePreparer); ok && t.active {
		sp.PrepareSave()
	}
	s := MMIOState{DeviceType: t.dev.Type(), Status: t.status, DriverFeatures: t.driverFeatures,
		DevFeaturesSel: t.devFeaturesSel, DrvFeaturesSel: t.drvFeaturesSel, QueueSel: t.queueSel,
		ConfigGen: t.configGen.Load(), InterruptStat: t.irq.Status(), Active: t.active}
	for _, q := range t.queues {
		s.Queues = append(s.Queues, QueueState{Size: q.Size, Ready: q.Ready, DescAddr: q.DescAddr,
			AvailAddr: q.AvailAddr, UsedAddr: q.UsedAddr, EventIdx: q.EventIdx,
			NextAvail: q.NextAvail, NextUsed: q.NextUsed})
	}
	if sd, ok := t.dev.(StatefulDevice); ok {
		b, err := sd.SaveDeviceState()
		if err != nil {
			return s, err
		}
		s.Device = b
	}
	return s, nil
}

// RestoreState loads s into a fresh transport over the restored guest
// memory. A device the driver had set live is activated again, its queues
// resuming at the saved ring positions (the device's worker starts); an
// interrupt pending at snapshot time is raised again.
func (t *MMIO) RestoreState(s MMIOState) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.DeviceType != t.dev.Type() {
		return fmt.Errorf("virtio state: device type %d saved for a device of type %d", s.DeviceType, t.dev.Type())
	}
	if len(s.Queues) != len(t.queues) {
		return fmt.Errorf("virtio state: %d queues saved for a device with %d", len(s.Queues), len(t.queues))
	}
	if t.active {
		return errors.New("virtio state: the device is already active")
	}
	t.status, t.driverFeatures = s.Status, s.DriverFeatures
	t.devFeaturesSel, t.drvFeaturesSel, t.queueSel = s.DevFeaturesSel, s.DrvFeaturesSel, s.QueueSel
	t.configGen.Store(s.ConfigGen)
	// Queue sizes are restored as the driver wrote them, even above
	// QueueNumMax: the register holds what the driver wrote, and a saved
	// state with such a queue is one SaveState makes (a guest that wrote
	// a bad QueueNum). Activation checks the sizes of the queues it
	// activates, as on DRIVER_OK.
	for i, qs := range s.Queues {
		q := t.queues[i]
		q.Size, q.Ready, q.DescAddr, q.AvailAddr, q.UsedAddr = qs.Size, qs.Ready, qs.DescAddr, qs.AvailAddr, qs.UsedAddr
		q.EventIdx, q.NextAvail, q.NextUsed = qs.EventIdx, qs.NextAvail, qs.NextUsed
	}
	if s.Active {
		if err := t.activate(); err != nil {
			return fmt.Errorf("virtio state: reactivating the device: %w", err)
		}
	}
	if sd, ok := t.dev.(StatefulDevice); ok && s.Device != nil {
		if err := sd.RestoreDeviceState(s.Device); err != nil {
			return fmt.Errorf("virtio state: device: %w", err)
		}
	}
	if s.InterruptStat != 0 {
		t.irq.status.Or(s.InterruptStat)
		if err := t.irq.fd.Signal(); err != nil {
			return err
		}
	}
	return nil
}

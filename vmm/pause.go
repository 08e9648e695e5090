package vmm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrVMStopped: the guest's run ended while the VMM waited for it.
var ErrVMStopped = errors.New("the microVM has stopped")

// pauseRound is one Pause: every vCPU reports on parked once it is out of
// KVM_RUN for good, and waits for resume.
type pauseRound struct {
	parked chan int
	resume chan struct{}
}

// pauser is a virtio device whose worker can be parked (virtio.Worker.Pause).
type pauser interface {
	Pause()
	Resume()
}

// park holds a vCPU out of the guest for pause round r. KVM completes an
// exit's pending I/O (a port or MMIO read's data) on the next KVM_RUN, so a
// last KVM_RUN with immediate_exit set finishes it without running guest
// code, as the KVM API documentation requires before saving state. Then
// KVM_KVMCLOCK_CTRL tells a kvmclock guest it was stopped, so its soft
// lockup watchdog does not fire when it resumes.
func (c *vcpu) park(r *pauseRound) {
	c.fd.SetImmediateExit(true)
	for {
		err := c.fd.Run()
		if err == nil || !errors.Is(err, unix.EAGAIN) {
			break // EINTR: nothing ran; another error shows on resume
		}
	}
	_ = c.fd.KVMClockCtrl() // fails on a guest without kvmclock
	r.parked <- c.id
	select {
	case <-r.resume:
	case <-c.vm.stopped:
	}
	c.fd.SetImmediateExit(false)
}

// Pause stops every vCPU outside KVM_RUN and parks the virtio workers, so
// neither the guest nor the devices change guest memory or device state
// until Resume. It returns once everything is parked. Pausing a paused VM
// does nothing.
func (v *VM) Pause() error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if v.paused {
		return nil
	}
	if v.stopping.Load() {
		return ErrVMStopped
	}
	r := &pauseRound{parked: make(chan int, len(v.cpus)), resume: make(chan struct{})}
	v.pauseReq.Store(r)
	for _, c := range v.cpus {
		c.kick()
	}
	for range v.cpus {
		select {
		case <-r.parked:
		case <-v.stopped:
			v.pauseReq.Store(nil)
			close(r.resume)
			return ErrVMStopped
		}
	}
	for _, d := range v.virtio {
		if p, ok := d.transport.Device().(pauser); ok {
			p.Pause()
		}
	}
	v.paused = true
	v.log.Debug("microVM paused")
	return nil
}

// Resume undoes Pause: the devices, then the vCPUs, run again.
func (v *VM) Resume() error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	if !v.paused {
		return nil
	}
	if v.stopping.Load() {
		return ErrVMStopped
	}
	for _, d := range v.virtio {
		if p, ok := d.transport.Device().(pauser); ok {
			p.Resume()
		}
	}
	r := v.pauseReq.Swap(nil)
	if r == nil {
		return fmt.Errorf("resume: no pause in progress")
	}
	v.paused = false
	close(r.resume)
	v.log.Debug("microVM resumed")
	return nil
}

// Paused reports whether the VM is paused.
func (v *VM) Paused() bool {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	return v.paused
}

package vmm

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ErrVMStopped: the guest's run ended while the VMM waited for it.
var ErrVMStopped = errors.New("the microVM has stopped")

// ErrPauseTimeout: a vCPU did not leave the guest in time to pause; the VM
// runs on as before.
var ErrPauseTimeout = errors.New("the microVM could not be paused")

// pauseTimeout bounds how long Pause waits for the vCPUs to park. A kicked
// vCPU leaves KVM_RUN within microseconds; one that has not parked after
// this long is stuck outside the guest (a device handler, the host
// kernel), and an API request must not wait for it.
const pauseTimeout = 5 * time.Second

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
	timeout := time.NewTimer(v.pauseTimeout)
	defer timeout.Stop()
	parked := make([]bool, len(v.cpus))
	for range v.cpus {
		select {
		case id := <-r.parked:
			parked[id] = true
		case <-v.stopped:
			v.pauseReq.Store(nil)
			close(r.resume)
			return ErrVMStopped
		case <-timeout.C:
			stuck := v.cancelPause(r, parked)
			return fmt.Errorf("%w: vCPU %d did not stop within %v (stuck in a device or the host kernel); it keeps running", ErrPauseTimeout, stuck, v.pauseTimeout)
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

// cancelPause undoes pause round r after a timeout, leaving every vCPU
// running: the parked ones are released, and the others, whose kick left
// immediate_exit set, get it cleared so that they run the guest when they
// come back to KVM_RUN instead of spinning out of it. (A Stop racing with
// this has set stopping before its own kick, so such a vCPU is kicked
// again.) It returns the first vCPU that had not parked.
func (v *VM) cancelPause(r *pauseRound, parked []bool) (stuck int) {
	v.pauseReq.Store(nil)
	stuck = -1
	for i, c := range v.cpus {
		if parked[i] {
			continue
		}
		if stuck < 0 {
			stuck = i
		}
		c.fd.SetImmediateExit(false)
		if v.stopping.Load() {
			c.kick()
		}
	}
	close(r.resume)
	return stuck
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

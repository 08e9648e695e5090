package main

import (
	"log/slog"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"
)

// stopTimeout is how long a stop asked for by a signal may take before
// Ember gives up on it and exits: stopping kicks every vCPU out of KVM_RUN,
// which takes microseconds, so a run still going after this long has a
// vCPU stuck outside the guest (in the host kernel or a device) that
// waiting will not free.
const stopTimeout = 10 * time.Second

// stopSignals are the signals that stop the VM.
var stopSignals = []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP}

// notifyStop starts delivering the stop signals to a new channel, with
// room for the second signal while the first is being handled.
func notifyStop() <-chan os.Signal {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, stopSignals...)
	return sigs
}

// watchSignals ends a run on the host's signals: the first one calls stop
// (which ends the run once the vCPUs are out of the guest); a second one,
// or a run that has not ended (done closed) within timeout of the first,
// calls exit with the reason, which must end the process. It returns when
// done is closed.
func watchSignals(log *slog.Logger, sigs <-chan os.Signal, done <-chan struct{}, stop func(), timeout time.Duration, exit func(reason string)) {
	select {
	case s := <-sigs:
		log.Info("stopping the microVM", "signal", s)
		stop()
	case <-done:
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case s := <-sigs:
		exit("a second signal (" + s.String() + ") while stopping")
	case <-t.C:
		exit("the microVM did not stop within " + timeout.String() + " (a vCPU is stuck outside the guest)")
	case <-done:
	}
}

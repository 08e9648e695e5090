package api

import (
	"errors"
	"fmt"
	"unicode"

	"github.com/embervm/ember/vmm"
)

// Firecracker's own fault messages, kept word for word so that tools (and
// Firecracker's integration tests) that match on them keep working.
const (
	msgPostBoot   = "The requested operation is not supported after starting the microVM."
	msgPreBoot    = "The requested operation is not supported before starting the microVM."
	msgIDMismatch = "The id from the path does not match the id from the body!"
	msgEmptyID    = "The ID cannot be empty."
	msgInvalidID  = "API Resource IDs can only contain alphanumeric characters and underscores."
	msgGetBody    = "GET request cannot have a body."
	msgNoBalloon  = "No balloon device found."
	msgNoStats    = "Statistics for the balloon device are not enabled"
	msgStatsOnOff = "Cannot enable/disable the statistics after boot."
	msgNoKernel   = "Cannot start microvm without kernel configuration."
	// fmtBodyError wraps every error of a request body.
	fmtBodyError = "An error occurred when deserializing the json body of a request: %s."
	// fmtInvalidPath answers unknown paths and wrong methods.
	fmtInvalidPath = "Invalid request method and/or path: %s %s."
	// fmtEmptyBody answers a PUT or PATCH without a body.
	fmtEmptyBody = "Empty %s request."
	// fmtTooLarge answers a body over the payload limit (micro_http's words).
	fmtTooLarge = "Request payload with size %d is larger than the limit of %d allowed by server."
	// fmtNotSupported is Firecracker's NotSupported error.
	fmtNotSupported = "The requested operation is not supported: %s."
)

// errPreBoot is returned for run-time operations before InstanceStart.
var errPreBoot = errors.New(msgPreBoot)

// errPostBoot is returned for pre-boot operations after InstanceStart.
var errPostBoot = errors.New(msgPostBoot)

// bodyError is an error in a request body: its message gets Firecracker's
// "An error occurred when deserializing ..." wrapping.
type bodyError struct{ err error }

func (e bodyError) Error() string { return fmt.Sprintf(fmtBodyError, e.err) }
func (e bodyError) Unwrap() error { return e.err }

// notSupported is an operation Ember refuses because it does not implement
// it (yet); what says which.
func notSupported(format string, args ...any) error {
	return fmt.Errorf(fmtNotSupported, fmt.Sprintf(format, args...))
}

// faultMessage is the fault_message for err: the VMM's state errors become
// Firecracker's sentences, every other error says itself.
func faultMessage(err error) string {
	switch {
	case errors.Is(err, vmm.ErrStarted), errors.Is(err, errPostBoot):
		return msgPostBoot
	case errors.Is(err, vmm.ErrNotStarted), errors.Is(err, errPreBoot):
		return msgPreBoot
	}
	return err.Error()
}

// checkID applies Firecracker's rule to a resource id (drive_id,
// iface_id): not empty, letters, digits and underscores only.
func checkID(id string) error {
	if id == "" {
		return errors.New(msgEmptyID)
	}
	for _, r := range id {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			return errors.New(msgInvalidID)
		}
	}
	return nil
}

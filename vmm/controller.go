package vmm

import (
	"errors"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio/balloon"
)

// State is the instance state reported by GET / (Firecracker's names).
type State string

// Instance states.
const (
	StateNotStarted State = "Not started"
	StateRunning    State = "Running"
	StatePaused     State = "Paused"
)

// Errors of the controller. The API turns them into 400s whose
// fault_message is the error text.
var (
	// ErrStarted: the request is valid only before InstanceStart.
	ErrStarted = errors.New("the microVM is already running: this resource can only be configured before InstanceStart")
	// ErrNotStarted: the request is valid only after InstanceStart.
	ErrNotStarted = errors.New("the microVM is not running: this operation is only valid after InstanceStart")
	// ErrNoDevice: the named device does not exist.
	ErrNoDevice = errors.New("no such device")
)

// DriveUpdate is a post-boot change to a drive (PATCH /drives/{id}): a new
// backing file, a new rate limiter, or both. Nil fields are unchanged.
type DriveUpdate struct {
	Path      *string
	RateLimit *ratelimit.Config
}

// NetUpdate is a post-boot change to a network interface's rate limiters
// (PATCH /network-interfaces/{id}). Nil fields are unchanged.
type NetUpdate struct {
	RxRateLimit *ratelimit.Config
	TxRateLimit *ratelimit.Config
}

// Backend is the VMM as the API sees it. Pre-boot, the API edits the
// pending Config with Configure; Start builds and boots the machine from it;
// after that the run-time methods reach the running VM. Implementations
// serialise the calls on the VMM's own goroutine: no method runs guest work
// on the caller's goroutine, and State never waits for the VMM.
type Backend interface {
	// State is the instance state; it never blocks.
	State() State
	// Config is a copy of the configuration: the pending one before
	// Start, the one booted after.
	Config() Config
	// Configure applies edit to the pending configuration, atomically: if
	// edit returns an error, nothing changes. After Start it returns
	// ErrStarted without calling edit.
	Configure(edit func(*Config) error) error
	// Start builds the machine from the pending configuration and starts
	// its vCPUs (InstanceStart). A second call returns ErrStarted.
	Start() error
	// SendCtrlAltDel presses Ctrl+Alt+Del on the i8042.
	SendCtrlAltDel() error
	// UpdateDrive changes a running drive.
	UpdateDrive(id string, u DriveUpdate) error
	// UpdateNet changes a running interface's rate limiters.
	UpdateNet(id string, u NetUpdate) error
	// SetBalloonTarget sets the running balloon's target size.
	SetBalloonTarget(mib uint32) error
	// SetBalloonStatsInterval changes how often the guest reports
	// statistics; it cannot turn statistics on or off after boot.
	SetBalloonStatsInterval(seconds int) error
	// BalloonStats returns the latest balloon statistics.
	BalloonStats() (balloon.Stats, error)
	// ReadMetrics calls add with the cumulative value of every counter of
	// the VMM and its devices, grouped as Firecracker's metrics are
	// ("block_rootfs", "net_eth0", "vcpu", ...). It never blocks on a vCPU.
	ReadMetrics(add func(group, name string, value uint64))
}

package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

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
	// Start, the one booted after, including the run-time changes made
	// since (drive paths, rate limiters, balloon target and interval).
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
	// Pause stops the vCPUs and the device workers (PATCH /vm Paused).
	Pause() error
	// Resume runs a paused VM again (PATCH /vm Resumed).
	Resume() error
	// CreateSnapshot writes a snapshot of the paused VM.
	CreateSnapshot(p SnapshotCreate) error
	// LoadSnapshot builds the VM from a snapshot instead of from the
	// configuration; only before Start, and only if nothing but the logger
	// and metrics was configured.
	LoadSnapshot(p SnapshotLoad) error
	// ReadMetrics calls add with the cumulative value of every counter of
	// the VMM and its devices, grouped as Firecracker's metrics are
	// ("block_rootfs", "net_eth0", "vcpu", ...). It never blocks on a vCPU.
	ReadMetrics(add func(group, name string, value uint64))
}

// Controller is the VMM behind the API: it owns the pending configuration,
// builds the VM at Start and routes run-time requests to it. Every request
// is a message run on the controller's own goroutine, one at a time, so the
// API's goroutines never touch the VM; the vCPUs and devices run on theirs.
type Controller struct {
	log   *slog.Logger
	calls chan func()
	stop  chan struct{}

	state atomic.Pointer[State]
	vm    atomic.Pointer[VM] // set once Start succeeded

	// Owned by the controller goroutine.
	cfg        Config
	configured bool // Configure succeeded at least once

	done     chan struct{} // closed when the run has ended
	doneOnce sync.Once
	fate     Fate
}

// NewController returns a controller whose pending configuration starts as
// base (console, logger and defaults; the API fills in the rest).
func NewController(base Config) *Controller {
	c := &Controller{log: base.Logger, calls: make(chan func()), stop: make(chan struct{}),
		cfg: base, done: make(chan struct{})}
	if c.log == nil {
		c.log = slog.Default()
	}
	st := StateNotStarted
	c.state.Store(&st)
	go c.loop()
	return c
}

func (c *Controller) loop() {
	for {
		select {
		case fn := <-c.calls:
			fn()
		case <-c.stop:
			return
		}
	}
}

// do runs fn on the controller goroutine and returns its error.
func (c *Controller) do(fn func() error) error {
	ch := make(chan error, 1)
	select {
	case c.calls <- func() { ch <- fn() }:
		return <-ch
	case <-c.stop:
		return errors.New("the VMM is shutting down")
	}
}

func (c *Controller) setState(s State) { c.state.Store(&s) }

// State is the instance state; it never blocks.
func (c *Controller) State() State { return *c.state.Load() }

// Config is a copy of the pending or booted configuration.
func (c *Controller) Config() Config {
	var cfg Config
	c.do(func() error { cfg = c.cfg.clone(); return nil })
	return cfg
}

// Configure edits the pending configuration, all or nothing.
func (c *Controller) Configure(edit func(*Config) error) error {
	return c.do(func() error {
		if c.vm.Load() != nil {
			return ErrStarted
		}
		next := c.cfg.clone()
		if err := edit(&next); err != nil {
			return err
		}
		c.cfg = next
		c.configured = true
		return nil
	})
}

// Start builds the VM from the pending configuration and runs it. If
// building fails nothing is left behind and the instance stays Not started.
func (c *Controller) Start() error {
	return c.do(func() error {
		if c.vm.Load() != nil {
			return ErrStarted
		}
		cfg := c.cfg.clone()
		if cfg.StartTime.IsZero() {
			// The boot timer counts from InstanceStart, as Firecracker's.
			cfg.StartTime = time.Now()
		}
		vm, err := New(cfg)
		if err != nil {
			return err
		}
		c.cfg = cfg
		c.vm.Store(vm)
		c.setState(StateRunning)
		go func() {
			f := vm.Run()
			c.finish(f)
		}()
		return nil
	})
}

// finish records the run's fate once.
func (c *Controller) finish(f Fate) {
	c.doneOnce.Do(func() {
		c.fate = f
		close(c.done)
	})
}

// Done is closed when the VM's run has ended (or Stop was called before
// it started).
func (c *Controller) Done() <-chan struct{} { return c.done }

// Fate is how the run ended; valid once Done is closed.
func (c *Controller) Fate() Fate {
	<-c.done
	return c.fate
}

// Stop ends the run from the host (a signal): a running VM is stopped, and
// one never started ends at once.
func (c *Controller) Stop() {
	if vm := c.vm.Load(); vm != nil {
		vm.Stop()
		return
	}
	c.finish(Fate{Kind: FateStopped})
}

// Close ends the controller goroutine and releases the VM. Call it after
// Done.
func (c *Controller) Close() error {
	select {
	case <-c.stop:
		return nil
	default:
	}
	close(c.stop)
	if vm := c.vm.Load(); vm != nil {
		return vm.Close()
	}
	return nil
}

// running returns the VM, or ErrNotStarted.
func (c *Controller) running() (*VM, error) {
	vm := c.vm.Load()
	if vm == nil {
		return nil, ErrNotStarted
	}
	return vm, nil
}

// SendCtrlAltDel presses Ctrl+Alt+Del on the i8042.
func (c *Controller) SendCtrlAltDel() error {
	return c.do(func() error {
		vm, err := c.running()
		if err != nil {
			return err
		}
		return vm.SendCtrlAltDel()
	})
}

// UpdateDrive swaps a running drive's file or changes its rate limiter.
func (c *Controller) UpdateDrive(id string, u DriveUpdate) error {
	return c.do(func() error {
		vm, err := c.running()
		if err != nil {
			return err
		}
		d := vm.drives[id]
		if d == nil {
			return fmt.Errorf("drive %q: %w", id, ErrNoDevice)
		}
		if u.RateLimit != nil {
			if err := d.UpdateRateLimit(*u.RateLimit); err != nil {
				return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
			}
		}
		if u.Path != nil {
			if err := d.SetBackingFile(*u.Path); err != nil {
				return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
			}
		}
		for i := range c.cfg.Drives {
			if dc := &c.cfg.Drives[i]; dc.ID == id {
				if u.Path != nil {
					dc.Path = *u.Path
				}
				if u.RateLimit != nil {
					dc.RateLimit = mergeLimit(dc.RateLimit, u.RateLimit)
				}
			}
		}
		return nil
	})
}

// UpdateNet changes a running interface's rate limiters.
func (c *Controller) UpdateNet(id string, u NetUpdate) error {
	return c.do(func() error {
		vm, err := c.running()
		if err != nil {
			return err
		}
		d := vm.nets[id]
		if d == nil {
			return fmt.Errorf("network interface %q: %w", id, ErrNoDevice)
		}
		if err := d.UpdateRateLimits(u.RxRateLimit, u.TxRateLimit); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		for i := range c.cfg.Nets {
			if nc := &c.cfg.Nets[i]; nc.IfaceID == id {
				nc.RxRateLimit = mergeLimit(nc.RxRateLimit, u.RxRateLimit)
				nc.TxRateLimit = mergeLimit(nc.TxRateLimit, u.TxRateLimit)
			}
		}
		return nil
	})
}

// mergeLimit is the configuration after a limiter update: buckets given
// replace the old ones, size 0 removes one.
func mergeLimit(old, upd *ratelimit.Config) *ratelimit.Config {
	if upd == nil {
		return old
	}
	var m ratelimit.Config
	if old != nil {
		m = *old
	}
	if upd.Bandwidth != nil {
		m.Bandwidth = upd.Bandwidth
		if upd.Bandwidth.Size == 0 || upd.Bandwidth.RefillTime == 0 {
			m.Bandwidth = nil
		}
	}
	if upd.Ops != nil {
		m.Ops = upd.Ops
		if upd.Ops.Size == 0 || upd.Ops.RefillTime == 0 {
			m.Ops = nil
		}
	}
	if m.Bandwidth == nil && m.Ops == nil {
		return nil
	}
	return &m
}

// balloonDev returns the running balloon, or an error naming why not.
func (c *Controller) balloonDev() (*balloon.Device, error) {
	vm, err := c.running()
	if err != nil {
		return nil, err
	}
	if vm.balloon == nil {
		return nil, fmt.Errorf("balloon: %w", ErrNoDevice)
	}
	return vm.balloon, nil
}

// SetBalloonTarget sets the running balloon's target size.
func (c *Controller) SetBalloonTarget(mib uint32) error {
	return c.do(func() error {
		b, err := c.balloonDev()
		if err != nil {
			return err
		}
		if err := b.SetTarget(mib); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		c.cfg.Balloon.AmountMiB = mib
		return nil
	})
}

// SetBalloonStatsInterval changes the statistics period.
func (c *Controller) SetBalloonStatsInterval(seconds int) error {
	return c.do(func() error {
		b, err := c.balloonDev()
		if err != nil {
			return err
		}
		if err := b.UpdateStatsInterval(seconds); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		c.cfg.Balloon.StatsPollingIntervalS = seconds
		return nil
	})
}

// BalloonStats returns the latest balloon statistics.
func (c *Controller) BalloonStats() (balloon.Stats, error) {
	var st balloon.Stats
	err := c.do(func() error {
		b, err := c.balloonDev()
		if err != nil {
			return err
		}
		if !b.StatsEnabled() {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, balloon.ErrStatsDisabled)
		}
		st = b.Stats()
		return nil
	})
	return st, err
}

// Pause pauses the running VM.
func (c *Controller) Pause() error {
	return c.do(func() error {
		vm, err := c.running()
		if err != nil {
			return err
		}
		if err := vm.Pause(); err != nil {
			return err
		}
		c.setState(StatePaused)
		return nil
	})
}

// Resume resumes the paused VM.
func (c *Controller) Resume() error {
	return c.do(func() error {
		vm, err := c.running()
		if err != nil {
			return err
		}
		if err := vm.Resume(); err != nil {
			return err
		}
		c.setState(StateRunning)
		return nil
	})
}

// Errors of LoadSnapshot in the wrong state (Firecracker's messages).
var (
	ErrLoadAfterConfig = errors.New("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	ErrLoadAfterStart  = errors.New("Loading a microVM snapshot not allowed after starting the microVM.")
)

// CreateSnapshot snapshots the paused VM.
func (c *Controller) CreateSnapshot(p SnapshotCreate) error {
	return c.do(func() error {
		vm, err := c.running()
		if err != nil {
			return err
		}
		return vm.CreateSnapshot(p)
	})
}

// LoadSnapshot builds the VM from a snapshot (a fresh controller only) and
// runs it, paused unless p.ResumeVM. If the snapshot cannot be loaded the
// run ends at once with FateInternalError: a process whose load failed
// exits, as Firecracker's does.
func (c *Controller) LoadSnapshot(p SnapshotLoad) error {
	return c.do(func() error {
		if c.vm.Load() != nil {
			return ErrLoadAfterStart
		}
		if c.configured {
			return ErrLoadAfterConfig
		}
		vm, cfg, err := LoadSnapshot(c.cfg, p)
		if err != nil {
			c.finish(Fate{Kind: FateInternalError, Err: err})
			return err
		}
		c.cfg = cfg
		c.vm.Store(vm)
		c.setState(StatePaused)
		go func() {
			f := vm.Run()
			c.finish(f)
		}()
		if p.ResumeVM {
			if err := vm.Resume(); err != nil {
				return err
			}
			c.setState(StateRunning)
		}
		return nil
	})
}

// ReadMetrics reports the counters of the running VM's devices.
func (c *Controller) ReadMetrics(add func(group, name string, value uint64)) {
	if vm := c.vm.Load(); vm != nil {
		vm.readMetrics(add)
	}
}

var _ Backend = (*Controller)(nil)

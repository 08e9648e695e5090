package api

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/embervm/ember/virtio/balloon"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/vmm"
)

// fakeBackend is a vmm.Backend without a VM: it keeps the configuration,
// a state, and records the run-time calls.
type fakeBackend struct {
	// state is atomic: State never waits, as the interface requires.
	state atomic.Value // vmm.State

	mu      sync.Mutex
	cfg     vmm.Config
	started int

	// startGate, if set, makes Start wait until it is closed, holding the
	// backend (a VMM busy building a machine that hangs): every method but
	// State waits too. startEntered, if set, is closed when Start begins.
	// startErr is Start's error.
	startGate    chan struct{}
	startEntered chan struct{}
	startErr     error

	ctrlAltDel   int
	driveUpdates []string
	netUpdates   []string
	target       uint32
	stats        balloon.Stats
	snapshots    []vmm.SnapshotCreate
	loads        []vmm.SnapshotLoad
}

func newFake() *fakeBackend {
	f := &fakeBackend{cfg: vmm.Config{VCPUs: 1, MemMiB: 128}}
	f.state.Store(vmm.StateNotStarted)
	return f
}

var _ vmm.Backend = (*fakeBackend)(nil)

func (f *fakeBackend) State() vmm.State { return f.state.Load().(vmm.State) }

func (f *fakeBackend) Config() vmm.Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.cfg)
}

// clone copies c deeply enough for edits of the copy to leave c alone.
func clone(c vmm.Config) vmm.Config {
	c.Drives = slices.Clone(c.Drives)
	c.Nets = slices.Clone(c.Nets)
	if c.Balloon != nil {
		b := *c.Balloon
		c.Balloon = &b
	}
	return c
}

func (f *fakeBackend) Configure(edit func(*vmm.Config) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.State() != vmm.StateNotStarted {
		return vmm.ErrStarted
	}
	next := clone(f.cfg)
	if err := edit(&next); err != nil {
		return err
	}
	f.cfg = next
	return nil
}

func (f *fakeBackend) Start() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.startEntered != nil {
		close(f.startEntered)
		f.startEntered = nil
	}
	if f.startGate != nil {
		<-f.startGate
	}
	if f.State() != vmm.StateNotStarted {
		return vmm.ErrStarted
	}
	if f.startErr != nil {
		return f.startErr
	}
	f.state.Store(vmm.StateRunning)
	f.started++
	return nil
}

func (f *fakeBackend) running() error {
	if f.State() == vmm.StateNotStarted {
		return vmm.ErrNotStarted
	}
	return nil
}

func (f *fakeBackend) SendCtrlAltDel() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return err
	}
	f.ctrlAltDel++
	return nil
}

func (f *fakeBackend) UpdateDrive(id string, u vmm.DriveUpdate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return err
	}
	i := slices.IndexFunc(f.cfg.Drives, func(d vmm.DriveConfig) bool { return d.ID == id })
	if i < 0 {
		return fmt.Errorf("drive %q: %w", id, vmm.ErrNoDevice)
	}
	if u.Path != nil {
		f.cfg.Drives[i].Path = *u.Path
	}
	if u.RateLimit != nil {
		f.cfg.Drives[i].RateLimit = u.RateLimit
	}
	f.driveUpdates = append(f.driveUpdates, id)
	return nil
}

func (f *fakeBackend) UpdateNet(id string, u vmm.NetUpdate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return err
	}
	if !slices.ContainsFunc(f.cfg.Nets, func(n vnet.Config) bool { return n.IfaceID == id }) {
		return fmt.Errorf("network interface %q: %w", id, vmm.ErrNoDevice)
	}
	f.netUpdates = append(f.netUpdates, id)
	return nil
}

func (f *fakeBackend) SetBalloonTarget(mib uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return err
	}
	f.target = mib
	f.cfg.Balloon.AmountMiB = mib
	return nil
}

func (f *fakeBackend) SetBalloonStatsInterval(seconds int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return err
	}
	f.cfg.Balloon.StatsPollingIntervalS = seconds
	return nil
}

func (f *fakeBackend) BalloonStats() (balloon.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return balloon.Stats{}, err
	}
	return f.stats, nil
}

func (f *fakeBackend) ReadMetrics(func(group, name string, value uint64)) {}

func (f *fakeBackend) Pause() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return err
	}
	f.state.Store(vmm.StatePaused)
	return nil
}

func (f *fakeBackend) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.running(); err != nil {
		return err
	}
	f.state.Store(vmm.StateRunning)
	return nil
}

func (f *fakeBackend) CreateSnapshot(p vmm.SnapshotCreate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snapshots = append(f.snapshots, p)
	return nil
}

func (f *fakeBackend) LoadSnapshot(p vmm.SnapshotLoad) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.State() != vmm.StateNotStarted {
		return vmm.ErrLoadAfterStart
	}
	f.loads = append(f.loads, p)
	f.state.Store(vmm.StatePaused)
	if p.ResumeVM {
		f.state.Store(vmm.StateRunning)
	}
	return nil
}

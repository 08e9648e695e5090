package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/api"
	apiclient "github.com/embervm/ember/api/client"
	"github.com/embervm/ember/sandbox/network"
)

// Folders and files of the state folder.
const (
	dbName        = "emberd.db"
	templatesDir  = "templates"
	sandboxesDir  = "sandboxes"
	snapshotName  = "vm.snap"
	memFileName   = "vm.mem"
	rootDriveID   = "rootfs"
	guestCID      = 3 // the first CID a guest may have (0-2 are reserved: vsock(7))
	adoptTimeout  = 2 * time.Second
	stopWait      = 10 * time.Second
	sandboxPrefix = IDPrefix
)

// Config configures a Manager.
type Config struct {
	// StateDir holds the database, the templates and the sandboxes.
	StateDir string
	// Ember is the ember binary.
	Ember string
	// ImageHome is Ember's home for templates from images (default
	// image.Home(): $EMBER_HOME or /var/lib/ember).
	ImageHome string
	// Log receives the manager's log (default: discarded).
	Log *slog.Logger
	// Network, if not nil, turns networking on (package sandbox/network;
	// its Store and Logger are the manager's).
	Network *network.Config
	// Admission sets the host's budgets (zero fields: from the host).
	Admission AdmissionConfig
	// Observer, if set, hears creates, execs and ends (metrics).
	Observer Observer
}

// Manager owns the templates and sandboxes of one state folder.
type Manager struct {
	cfg Config
	log *slog.Logger
	db  *store
	net *network.Manager // nil without networking

	// budgets and adm: admission.go; obs: observe.go.
	budgets HostBudgets
	adm     *admission
	obs     Observer

	mu       sync.Mutex
	live     map[string]*live
	building map[string]bool
	closed   bool
	wg       sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
}

// live is a sandbox whose ember may be running.
type live struct {
	// ops serialises pause, resume and kill.
	ops sync.Mutex

	// Guarded by Manager.mu.
	sb      Sandbox
	proc    *vmProc // nil for an adopted VM
	timer   *time.Timer
	reason  string // the exit reason a kill or timeout set
	discard bool   // a failed create: forget the sandbox when it ends
	agent   *agentclient.Client

	done chan struct{} // closed once the end is recorded
}

// Open opens (or creates) the state in cfg.StateDir and adopts the VMs a
// previous manager left running.
func Open(cfg Config) (*Manager, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Ember == "" {
		return nil, errors.New("sandbox: no ember binary given")
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, templatesDir), filepath.Join(cfg.StateDir, sandboxesDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("state folder: %w", err)
		}
	}
	budgets, err := ResolveBudgets(cfg.Admission)
	if err != nil {
		return nil, fmt.Errorf("budgets: %w", err)
	}
	db, err := openStore(filepath.Join(cfg.StateDir, dbName))
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Log, db: db, live: map[string]*live{}, building: map[string]bool{},
		budgets: budgets, adm: newAdmission(budgets.Budgets)}
	m.obs = cfg.Observer
	if m.obs == nil {
		m.obs = nopObserver{}
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.recover(); err != nil {
		db.close()
		return nil, err
	}
	if cfg.Network != nil {
		if err := m.openNetwork(*cfg.Network); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// Close stops watching the VMs and closes the database. The VMs go on
// running; the next Open adopts them.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	for _, l := range m.live {
		if l.timer != nil {
			l.timer.Stop()
		}
		if l.agent != nil {
			l.agent.Close()
		}
	}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	if m.net != nil {
		if err := m.net.Close(); err != nil {
			m.log.Warn("removing the network pool", "err", err)
		}
	}
	return m.db.close()
}

// recover removes half-built templates and adopts or buries the
// sandboxes of the database.
func (m *Manager) recover() error {
	tpls, err := list[Template](m.db, bucketTemplates)
	if err != nil {
		return err
	}
	for _, t := range tpls {
		if t.State == TemplateReady {
			continue
		}
		m.log.Warn("removing a template whose build emberd did not finish", "template", t.ID)
		if t.PID > 0 && sameProcess(t.PID, t.PIDStart) {
			unix.Kill(t.PID, unix.SIGKILL)
		}
		os.RemoveAll(t.Dir)
		if err := m.db.delete(bucketTemplates, t.ID); err != nil {
			return err
		}
	}
	sbs, err := list[Sandbox](m.db, bucketSandboxes)
	if err != nil {
		return err
	}
	for _, sb := range sbs {
		if sb.State == StateExited {
			continue
		}
		l := &live{sb: sb, done: make(chan struct{})}
		alive := sameProcess(sb.PID, sb.PIDStart)
		if sb.State == StateStarting {
			// The create never answered: nobody knows this sandbox.
			if alive {
				unix.Kill(sb.PID, unix.SIGKILL)
			}
			m.bury(l, Exit{Reason: ExitKilled, Message: "emberd ended during the create", At: time.Now()}, false)
			continue
		}
		if alive {
			ctx, cancel := context.WithTimeout(context.Background(), adoptTimeout)
			c := apiclient.New(sb.Socket)
			_, err := c.Describe(ctx)
			c.Close()
			cancel()
			if err != nil {
				m.log.Warn("ember is alive but its API does not answer: killing it", "sandbox", sb.ID, "pid", sb.PID, "err", err)
				unix.Kill(sb.PID, unix.SIGKILL)
				m.bury(l, Exit{Reason: ExitVMMCrash, Message: fmt.Sprintf("ember (pid %d) did not answer on its API socket when emberd restarted: %v", sb.PID, err), At: time.Now()}, false)
				continue
			}
		} else {
			m.bury(l, m.exitOf(l, nil, 0), false)
			continue
		}
		m.log.Info("adopted a sandbox", "sandbox", sb.ID, "pid", sb.PID)
		m.adm.hold(sb.ID, m.holdsOf(sb))
		m.mu.Lock()
		m.live[sb.ID] = l
		m.armTimerLocked(l)
		m.mu.Unlock()
		m.wg.Add(1)
		go m.watchAdopted(l)
	}
	return nil
}

// reasonUnknownStatus is the exit of a VM that ended while emberd was
// not its parent (its status is lost).
func (m *Manager) reasonUnknownStatus(l *live) Exit {
	e := Exit{At: time.Now()}
	if line, ok := findLine(filepath.Join(l.sb.Dir, consoleName), panicMarker); ok {
		e.Reason, e.Message = ExitGuestPanic, line
		return e
	}
	e.Reason = ExitVMMCrash
	e.Message = fmt.Sprintf("ember (pid %d) ended while emberd was not its parent; exit status unknown", l.sb.PID)
	if last := lastLine(filepath.Join(l.sb.Dir, emberLogName)); last != "" {
		e.Message += "; its last log line: " + last
	}
	return e
}

// watchChild waits for an ember this manager started. Close does not
// wait for it (the VM goes on running); an end after Close is left to the
// next manager.
func (m *Manager) watchChild(l *live) {
	code, sig := l.proc.waitStatus()
	m.ended(l, &code, sig)
}

// watchAdopted waits for an adopted ember through a pidfd.
func (m *Manager) watchAdopted(l *live) {
	defer m.wg.Done()
	if err := waitPidfd(m.ctx, l.sb.PID); err != nil {
		if m.ctx.Err() == nil {
			m.log.Error("watching an adopted ember", "sandbox", l.sb.ID, "err", err)
		}
		return
	}
	m.ended(l, nil, 0)
}

// ended records the end of a sandbox's ember (code nil: unknown status).
func (m *Manager) ended(l *live, code *int, sig int) {
	m.mu.Lock()
	if m.closed {
		// The manager is closing: the next one will look at this VM.
		m.mu.Unlock()
		return
	}
	e := m.exitOf(l, code, sig)
	discard := l.discard
	m.mu.Unlock()
	m.bury(l, e, discard)
}

// bury records a sandbox's end, frees what it held on disk (sockets,
// overlays; its logs stay) and stops tracking it.
func (m *Manager) bury(l *live, e Exit, discard bool) {
	if !discard && abnormal(e.Reason) {
		m.mu.Lock()
		sb := l.sb
		m.mu.Unlock()
		if err := m.keepCrash(sb, e); err != nil {
			m.log.Error("keeping a crash record", "sandbox", sb.ID, "err", err)
		} else {
			e.Crash = true
		}
	}
	m.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.agent != nil {
		l.agent.Close()
		l.agent = nil
	}
	delete(m.live, l.sb.ID)
	l.sb.State = StateExited
	l.sb.Exit = &e
	l.sb.Deadline = nil
	l.sb.RemainingMS = 0
	sb := l.sb
	m.mu.Unlock()
	if sb.Network != nil {
		m.teardownNetwork(sb.ID)
	}
	if discard {
		os.RemoveAll(sb.Dir)
		if err := m.db.delete(bucketSandboxes, sb.ID); err != nil {
			m.log.Error("forgetting a failed sandbox", "sandbox", sb.ID, "err", err)
		}
	} else {
		for _, pattern := range []string{"*.sock", "*.sock_*", "*.cow"} {
			files, _ := filepath.Glob(filepath.Join(sb.Dir, pattern))
			for _, f := range files {
				os.Remove(f)
			}
		}
		if err := m.db.put(bucketSandboxes, sb.ID, sb); err != nil {
			m.log.Error("recording a sandbox's end", "sandbox", sb.ID, "err", err)
		}
		m.log.Info("sandbox ended", "sandbox", sb.ID, "reason", e.Reason, "message", e.Message)
	}
	m.adm.release(sb.ID)
	if !discard {
		m.obs.Ended(sb)
	}
	close(l.done)
}

// armTimerLocked starts the timer of a running sandbox with a deadline.
func (m *Manager) armTimerLocked(l *live) {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.sb.State != StateRunning || l.sb.Deadline == nil {
		return
	}
	l.timer = time.AfterFunc(time.Until(*l.sb.Deadline), func() {
		if err := m.stop(context.Background(), l, ExitTimeout); err != nil {
			m.log.Error("ending a sandbox at its timeout", "sandbox", l.sb.ID, "err", err)
		}
	})
}

// stop kills a sandbox's ember with reason and waits for its end.
func (m *Manager) stop(ctx context.Context, l *live, reason string) error {
	m.mu.Lock()
	if l.reason == "" {
		l.reason = reason
	}
	pid := l.sb.PID
	m.mu.Unlock()
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing ember (pid %d): %w", pid, err)
	}
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(stopWait):
		return fmt.Errorf("ember (pid %d) did not end %v after SIGKILL", pid, stopWait)
	}
}

// newID returns prefix and 12 random hex digits.
func newID(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// readyTimeout is the template's readiness bound.
func readyTimeout(r ReadyCheck) time.Duration {
	if r.TimeoutMS > 0 {
		return time.Duration(r.TimeoutMS) * time.Millisecond
	}
	return DefaultReadyTimeout
}

// withEmberLog adds ember's last log line to err.
func withEmberLog(err error, dir string) error {
	if last := lastLine(filepath.Join(dir, emberLogName)); last != "" {
		return fmt.Errorf("%w (ember's last log line: %s)", err, last)
	}
	return err
}

// dialAgent connects to the agent on the hybrid vsock socket, retrying
// until it answers or ctx ends.
func dialAgent(ctx context.Context, uds string) (*agentclient.Client, error) {
	return agentclient.Wait(ctx, uds, agentclient.Options{Name: "emberd"}, nil)
}

// emberDisk runs `ember disk create --base BASE OVERLAY`.
func (m *Manager) emberDisk(ctx context.Context, base, overlay string) error {
	out, err := exec.CommandContext(ctx, m.cfg.Ember, "disk", "create", "--base", base, overlay).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ember disk create --base %s %s: %w: %s", base, overlay, err, out)
	}
	return nil
}

// loadParams is the snapshot load of a sandbox from t into dir.
func loadParams(t Template, dir string) api.SnapshotLoadParams {
	p := api.SnapshotLoadParams{
		SnapshotPath: t.Snapshot,
		MemBackend:   &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: t.MemFile},
		ResumeVM:     true,
	}
	for _, d := range t.Drives {
		if d.ReadOnly {
			continue // shared by every clone
		}
		p.EmberDriveOverrides = append(p.EmberDriveOverrides, api.DriveOverride{DriveID: d.ID, PathOnHost: filepath.Join(dir, d.ID+".cow")})
	}
	if t.Vsock {
		p.VsockOverride = &api.VsockOverride{UDSPath: filepath.Join(dir, vsockName)}
		p.ClockRealtime = true
	}
	return p
}

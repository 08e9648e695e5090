package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/api"
	apiclient "github.com/embervm/ember/api/client"
	"github.com/embervm/ember/sandbox/network"
)

// create is Create's work (metrics.go counts it).
func (m *Manager) create(ctx context.Context, spec SandboxSpec) (_ Sandbox, err error) {
	t0 := time.Now()
	if err := spec.Validate(); err != nil {
		return Sandbox{}, err
	}
	t, err := m.Template(spec.Template)
	if err != nil {
		return Sandbox{}, err
	}
	if t.State != TemplateReady {
		return Sandbox{}, conflict("template %q is being built", t.ID)
	}
	if spec.Network != nil && !t.Spec.Network {
		return Sandbox{}, invalid("network", "template %q has no network (build it with network: true)", t.ID)
	}
	if t.Spec.Network {
		if err := m.needNetwork(); err != nil {
			return Sandbox{}, err
		}
	}
	id := newID(sandboxPrefix)
	if err := m.admit(id, t); err != nil {
		return Sandbox{}, err
	}
	tracked := false // once tracked, the sandbox's end (bury) releases what it holds
	defer func() {
		if !tracked {
			m.adm.release(id)
		}
		if err != nil {
			m.log.Warn("a create failed", "sandbox", id, "template", t.ID, "err", err)
		}
	}()
	dir := filepath.Join(m.cfg.StateDir, sandboxesDir, id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return Sandbox{}, fmt.Errorf("sandbox folder: %w", err)
	}
	sb := Sandbox{ID: id, Template: t.ID, State: StateStarting, Env: spec.Env, Metadata: spec.Metadata,
		Socket: filepath.Join(dir, apiSocketName), Dir: dir, CreatedAt: t0}
	if t.Vsock {
		sb.Vsock = filepath.Join(dir, vsockName)
		if sb.Generation, err = m.db.nextGeneration(); err != nil {
			os.RemoveAll(dir)
			return Sandbox{}, err
		}
	}
	netnsPath := ""
	if t.Spec.Network {
		var policy *network.Policy
		if spec.Network != nil {
			policy = spec.Network.Policy
		}
		att, err := m.setupNetwork(ctx, id, policy)
		if err != nil {
			os.RemoveAll(dir)
			return Sandbox{}, err
		}
		sb.Network = recordNetwork(att, policy)
		sb.Timings.NetworkMS = ms(att.Took)
		netnsPath = att.NetnsPath
	}
	proc, err := startEmberIn(netnsPath, m.cfg.Ember, dir, "--id", id)
	if err != nil {
		if sb.Network != nil {
			m.teardownNetwork(id)
		}
		os.RemoveAll(dir)
		return Sandbox{}, err
	}
	sb.PID = proc.pid
	sb.PIDStart, _, _ = procStartTime(proc.pid)
	l := &live{sb: sb, proc: proc, done: make(chan struct{})}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		proc.cmd.Process.Kill()
		proc.cmd.Wait()
		if sb.Network != nil {
			m.teardownNetwork(id)
		}
		os.RemoveAll(dir)
		return Sandbox{}, errors.New("emberd is shutting down")
	}
	m.live[id] = l
	tracked = true
	go m.watchChild(l) // not in m.wg: the VM outlives Close

	m.mu.Unlock()

	err = m.db.put(bucketSandboxes, id, sb)
	if err == nil {
		err = m.restore(ctx, l, t, spec, t0)
	}
	if err != nil {
		m.mu.Lock()
		l.discard = true
		m.mu.Unlock()
		err = withEmberLog(err, dir)
		if serr := m.stop(context.Background(), l, ExitKilled); serr != nil {
			m.log.Error("ending a failed create", "sandbox", id, "err", serr)
		} else {
			// ember may have ended, and been recorded, before the create
			// gave up (discard was not yet set): forget it all the same.
			os.RemoveAll(dir)
			m.db.delete(bucketSandboxes, id)
		}
		return Sandbox{}, fmt.Errorf("creating a sandbox from template %q: %w", t.ID, err)
	}
	m.mu.Lock()
	out := l.sb
	m.mu.Unlock()
	return out, nil
}

// restore loads the template's snapshot into l's ember and waits until
// the guest is ready.
func (m *Manager) restore(ctx context.Context, l *live, t Template, spec SandboxSpec, t0 time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout(t.Spec.Ready))
	defer cancel()
	dir := l.sb.Dir
	if err := waitSocket(ctx, l.sb.Socket, l.sb.PID); err != nil {
		return err
	}
	c := apiclient.New(l.sb.Socket)
	defer c.Close()
	load := loadParams(t, dir)
	if n := l.sb.Network; n != nil {
		load.NetworkOverrides = []api.NetworkOverride{{IfaceID: guestIface, HostDevName: n.Tap}}
	}
	if err := c.LoadSnapshot(ctx, load); err != nil {
		return fmt.Errorf("loading the template's snapshot: %w", err)
	}
	tLoaded := time.Now()
	var err error
	var ac *agentclient.Client
	switch t.Spec.Ready.Kind {
	case ReadyBootTimer:
		err = waitFileContains(ctx, filepath.Join(dir, emberLogName), 0, bootTimerMarker)
	case ReadyConsole:
		if t.Spec.Ready.RestoredConsole != "" {
			err = waitFileContains(ctx, filepath.Join(dir, consoleName), 0, t.Spec.Ready.RestoredConsole)
		}
	case ReadyAgent:
		ac, err = m.restoreAgent(ctx, l.sb, spec)
	}
	if err != nil {
		return fmt.Errorf("waiting until the restored guest is ready (%s): %w", t.Spec.Ready.Kind, err)
	}
	now := time.Now()
	m.mu.Lock()
	if l.reason != "" || l.sb.State == StateExited {
		m.mu.Unlock()
		if ac != nil {
			ac.Close()
		}
		return errors.New("the sandbox ended while it was starting")
	}
	l.agent = ac
	l.sb.State = StateRunning
	l.sb.Timings = Timings{RestoreMS: ms(tLoaded.Sub(t0)), AgentReadyMS: ms(now.Sub(tLoaded)), TotalMS: ms(now.Sub(t0)),
		NetworkMS: l.sb.Timings.NetworkMS}
	if spec.TimeoutS > 0 {
		d := now.Add(time.Duration(spec.TimeoutS) * time.Second)
		l.sb.Deadline = &d
	}
	m.armTimerLocked(l)
	sb := l.sb
	m.mu.Unlock()
	return m.db.put(bucketSandboxes, sb.ID, sb)
}

// restoreAgent runs the restore transaction with a restored guest's agent.
func (m *Manager) restoreAgent(ctx context.Context, sb Sandbox, spec SandboxSpec) (*agentclient.Client, error) {
	ac, err := dialAgent(ctx, sb.Vsock)
	if err != nil {
		return nil, err
	}
	req, err := agentclient.NewRestore(sb.Generation, rand.Reader)
	if err != nil {
		ac.Close()
		return nil, err
	}
	req.Metadata = spec.Metadata
	if n := sb.Network; n != nil {
		req.Network = guestNetwork(n)
	}
	if _, err := ac.Restore(ctx, req); err != nil {
		ac.Close()
		return nil, fmt.Errorf("restore transaction: %w", err)
	}
	return ac, nil
}

// Sandboxes lists the sandboxes, ended ones included.
func (m *Manager) Sandboxes() ([]Sandbox, error) { return list[Sandbox](m.db, bucketSandboxes) }

// Sandbox returns one sandbox.
func (m *Manager) Sandbox(id string) (Sandbox, error) {
	var sb Sandbox
	if err := m.db.get(bucketSandboxes, id, &sb); err != nil {
		if errors.Is(err, errNotFound) {
			return sb, notFound("sandbox %q: no such sandbox", id)
		}
		return sb, err
	}
	return sb, nil
}

// liveSandbox returns the tracked sandbox id, or the error to answer.
func (m *Manager) liveSandbox(id string) (*live, error) {
	m.mu.Lock()
	l := m.live[id]
	m.mu.Unlock()
	if l != nil {
		return l, nil
	}
	sb, err := m.Sandbox(id)
	if err != nil {
		return nil, err
	}
	return nil, conflict("sandbox %s has ended (%s)", id, sb.Exit.Reason)
}

// Kill ends a running or paused sandbox (reason "killed") and returns its
// record. A sandbox that has already ended is forgotten: its record and
// folder are removed (forgotten is then true).
func (m *Manager) Kill(ctx context.Context, id string) (sb Sandbox, forgotten bool, err error) {
	m.mu.Lock()
	l := m.live[id]
	m.mu.Unlock()
	if l == nil {
		sb, err := m.Sandbox(id)
		if err != nil {
			return sb, false, err
		}
		if err := m.db.delete(bucketSandboxes, id); err != nil {
			return sb, false, err
		}
		return sb, true, os.RemoveAll(sb.Dir)
	}
	l.ops.Lock()
	defer l.ops.Unlock()
	if err := m.stop(ctx, l, ExitKilled); err != nil {
		return Sandbox{}, false, err
	}
	sb, err = m.Sandbox(id)
	return sb, false, err
}

// Pause pauses a running sandbox; its timeout stops counting.
func (m *Manager) Pause(ctx context.Context, id string) (Sandbox, error) {
	return m.changeState(ctx, id, StateRunning, StatePaused)
}

// Resume resumes a paused sandbox; its timeout counts the time it had
// left.
func (m *Manager) Resume(ctx context.Context, id string) (Sandbox, error) {
	return m.changeState(ctx, id, StatePaused, StateRunning)
}

func (m *Manager) changeState(ctx context.Context, id, from, to string) (Sandbox, error) {
	l, err := m.liveSandbox(id)
	if err != nil {
		return Sandbox{}, err
	}
	l.ops.Lock()
	defer l.ops.Unlock()
	m.mu.Lock()
	state, sock := l.sb.State, l.sb.Socket
	m.mu.Unlock()
	if state != from {
		return Sandbox{}, conflict("sandbox %s is %s, not %s", id, state, from)
	}
	c := apiclient.New(sock)
	defer c.Close()
	if to == StatePaused {
		err = c.Pause(ctx)
	} else {
		err = c.Resume(ctx)
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("sandbox %s: %w", id, err)
	}
	m.mu.Lock()
	if l.sb.State == StateExited {
		m.mu.Unlock()
		return Sandbox{}, conflict("sandbox %s ended", id)
	}
	now := time.Now()
	if to == StatePaused {
		if l.sb.Deadline != nil {
			l.sb.RemainingMS = max(l.sb.Deadline.Sub(now).Milliseconds(), 1)
			l.sb.Deadline = nil
		}
	} else if l.sb.RemainingMS > 0 {
		d := now.Add(time.Duration(l.sb.RemainingMS) * time.Millisecond)
		l.sb.Deadline, l.sb.RemainingMS = &d, 0
	}
	l.sb.State = to
	m.armTimerLocked(l)
	sb := l.sb
	m.mu.Unlock()
	return sb, m.db.put(bucketSandboxes, id, sb)
}

// LogPath returns the file of a sandbox's console ("console") or ember
// log ("vmm").
func (m *Manager) LogPath(id, source string) (string, error) {
	sb, err := m.Sandbox(id)
	if err != nil {
		return "", err
	}
	switch source {
	case "", LogConsole:
		return filepath.Join(sb.Dir, consoleName), nil
	case LogVMM:
		return filepath.Join(sb.Dir, emberLogName), nil
	}
	return "", invalid("source", "%q; want %q or %q", source, LogConsole, LogVMM)
}

// agent returns the agent client of a running sandbox, connecting if
// needed.
func (m *Manager) agent(ctx context.Context, id string) (*agentclient.Client, error) {
	l, err := m.liveSandbox(id)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	ac, sb := l.agent, l.sb
	m.mu.Unlock()
	if sb.Vsock == "" {
		return nil, conflict("sandbox %s has no agent: its template's readiness is not %q", id, ReadyAgent)
	}
	if sb.State != StateRunning {
		return nil, conflict("sandbox %s is %s, not running", id, sb.State)
	}
	if ac != nil {
		select {
		case <-ac.Done():
		default:
			return ac, nil
		}
	}
	ac, err = agentclient.Dial(ctx, sb.Vsock, agentclient.Options{Name: "emberd"})
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	m.mu.Lock()
	if l.agent != nil {
		l.agent.Close()
	}
	l.agent = ac
	m.mu.Unlock()
	return ac, nil
}

// execRetain is how much output emberd leaves unacknowledged in the agent
// after sending it on: a client that lost its stream (or whose emberd was
// killed) reattaches from the offset it had, within this window, and loses
// nothing. The agent's buffer (proto.DefaultOutputBuffer, 1 MiB) holds it.
const execRetain = 256 << 10

// runExec is ExecWith's work (observe.go counts it).
func (m *Manager) runExec(ctx context.Context, id string, req ExecRequest, started func(ExecStarted), stdout, stderr io.Writer) (proto.ExitStatus, error) {
	if len(req.Args) == 0 || req.Args[0] == "" {
		return proto.ExitStatus{}, invalid("args", "empty command")
	}
	ac, err := m.agent(ctx, id)
	if err != nil {
		return proto.ExitStatus{}, err
	}
	sb, _ := m.Sandbox(id)
	env := map[string]string{}
	for k, v := range sb.Env {
		env[k] = v
	}
	for k, v := range req.Env {
		env[k] = v
	}
	tag := req.Tag
	if tag == "" {
		tag = newID("exec-")
	}
	start := proto.ExecStart{Args: req.Args, Env: env, Cwd: req.Cwd, User: req.User, Tag: tag, TTY: req.TTY,
		Stdin: req.Stdin != nil && req.TTY == nil}
	if err := start.Validate(); err != nil {
		return proto.ExitStatus{}, &Error{Kind: KindInvalid, Msg: err.Error()}
	}
	p, err := ac.Start(ctx, start)
	if err != nil {
		if proto.CodeOf(err) == proto.CodeExists {
			return proto.ExitStatus{}, conflict("tag %q: the sandbox has a process of that tag", tag)
		}
		return proto.ExitStatus{}, err
	}
	if req.Stdin != nil {
		go func() { // EOF after it (on a terminal, its EOF character)
			w := p.Stdin()
			w.Write(req.Stdin)
			w.Close()
		}()
	}
	return m.stream(ctx, id, ac, p, started, stdout, stderr)
}

// Attach reattaches to a process of a sandbox by its tag: its output is
// replayed from the offset from (what the client had; 0 for all the agent
// still holds), then streamed until its exit.
func (m *Manager) Attach(ctx context.Context, id, tag string, from int64, started func(ExecStarted), stdout, stderr io.Writer) (proto.ExitStatus, error) {
	ac, err := m.agent(ctx, id)
	if err != nil {
		return proto.ExitStatus{}, err
	}
	req := proto.ExecAttach{ProcessRef: proto.ProcessRef{Tag: tag}, From: from}
	if err := req.Validate(); err != nil {
		return proto.ExitStatus{}, &Error{Kind: KindInvalid, Msg: err.Error()}
	}
	p, err := ac.Attach(ctx, req)
	if err != nil {
		if proto.IsNotFound(err) {
			return proto.ExitStatus{}, notFound("sandbox %s has no process tagged %q", id, tag)
		}
		return proto.ExitStatus{}, err
	}
	return m.stream(ctx, id, ac, p, started, stdout, stderr)
}

// stream copies p's output to stdout and stderr until its exit,
// acknowledging to the agent only what lies execRetain behind what was
// sent; once the exit is passed on, the agent forgets the process.
func (m *Manager) stream(ctx context.Context, id string, ac *agentclient.Client, p *agentclient.Process, started func(ExecStarted), stdout, stderr io.Writer) (proto.ExitStatus, error) {
	p.SetManualAck()
	defer p.Detach()
	if started != nil {
		started(ExecStarted{PID: p.PID(), Tag: p.Tag(), From: p.Offset()})
	}
	acked := p.Offset()
	var gaps []proto.Gap
	for {
		ev, err := p.Next(ctx)
		if err != nil {
			return proto.ExitStatus{}, err
		}
		switch ev.Kind {
		case agentclient.EventOutput:
			w := stdout
			if ev.Channel == proto.ChanStderr {
				w = stderr
			}
			if _, err := w.Write(ev.Data); err != nil {
				return proto.ExitStatus{}, fmt.Errorf("passing the output on: %w", err)
			}
			if upTo := p.Offset() - execRetain; upTo >= acked+execRetain/4 {
				if err := p.Ack(upTo); err != nil {
					return proto.ExitStatus{}, err
				}
				acked = upTo
			}
		case agentclient.EventGap:
			gaps = append(gaps, *ev.Gap)
		case agentclient.EventExit:
			if len(gaps) > 0 {
				return *ev.Exit, fmt.Errorf("output lost before it reached emberd: %v", gaps)
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
			defer cancel()
			if err := ac.Release(rctx, p.Ref()); err != nil && !proto.IsNotFound(err) {
				m.log.Warn("forgetting a finished exec in the agent", "sandbox", id, "tag", p.Tag(), "err", err)
			}
			return *ev.Exit, nil
		}
	}
}

// releaseTimeout bounds telling the agent to forget a finished process.
const releaseTimeout = 5 * time.Second

// Upload writes r to path in a sandbox.
func (m *Manager) Upload(ctx context.Context, id, path string, r io.Reader) (proto.Entry, error) {
	req := proto.WriteRequest{PathRequest: proto.PathRequest{Path: path}}
	if err := req.Validate(); err != nil {
		return proto.Entry{}, &Error{Kind: KindInvalid, Msg: err.Error()}
	}
	ac, err := m.agent(ctx, id)
	if err != nil {
		return proto.Entry{}, err
	}
	return ac.Upload(ctx, req, r)
}

// Download reads path in a sandbox.
func (m *Manager) Download(ctx context.Context, id, path string) (io.ReadCloser, error) {
	req := proto.ReadRequest{PathRequest: proto.PathRequest{Path: path}}
	if err := req.Validate(); err != nil {
		return nil, &Error{Kind: KindInvalid, Msg: err.Error()}
	}
	ac, err := m.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	d, err := ac.Download(ctx, req)
	if err != nil {
		if proto.IsNotFound(err) {
			return nil, notFound("%s: %v", path, err)
		}
		return nil, err
	}
	return d, nil
}

// SetTimeout makes a running or paused sandbox end (reason "timeout")
// after d more of running: a running one d from now, a paused one d after
// it resumes. d must be positive and at most 30 days.
func (m *Manager) SetTimeout(ctx context.Context, id string, d time.Duration) (Sandbox, error) {
	if d <= 0 || d > MaxTimeout {
		return Sandbox{}, invalid("timeout", "%v: want more than 0 and at most %v", d, MaxTimeout)
	}
	l, err := m.liveSandbox(id)
	if err != nil {
		return Sandbox{}, err
	}
	l.ops.Lock()
	defer l.ops.Unlock()
	m.mu.Lock()
	switch l.sb.State {
	case StateRunning:
		at := time.Now().Add(d)
		l.sb.Deadline, l.sb.RemainingMS = &at, 0
	case StatePaused:
		l.sb.Deadline, l.sb.RemainingMS = nil, d.Milliseconds()
	default:
		state := l.sb.State
		m.mu.Unlock()
		return Sandbox{}, conflict("sandbox %s is %s", id, state)
	}
	m.armTimerLocked(l)
	sb := l.sb
	m.mu.Unlock()
	return sb, m.db.put(bucketSandboxes, id, sb)
}

// Agent returns the agent client of a running sandbox (connecting if
// needed), for a gateway that carries another protocol to the agent
// (package sandbox/e2b). The client is shared: do not close it.
func (m *Manager) Agent(ctx context.Context, id string) (*agentclient.Client, error) {
	return m.agent(ctx, id)
}

// Usage samples what a running sandbox's guest uses (its agent's
// sys.metrics).
func (m *Manager) Usage(ctx context.Context, id string) (Usage, error) {
	ac, err := m.agent(ctx, id)
	if err != nil {
		return Usage{}, err
	}
	g, err := ac.Metrics(ctx)
	if err != nil {
		return Usage{}, fmt.Errorf("sandbox %s: sampling its guest: %w", id, err)
	}
	return Usage{Time: g.Time, CPUs: g.CPUs, CPUUsedPct: g.CPUUsedPct, CPUUserNS: g.CPUUserNanos, CPUSystemNS: g.CPUSystemNanos,
		MemUsed: g.MemUsed, MemTotal: g.MemTotal, DiskUsed: g.DiskUsed, DiskTotal: g.DiskTotal}, nil
}

package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
)

// exitAgentLost is the exit status a process gets when the VM or the
// connection to its agent ended before the process's exit was known: 255,
// as runc's shim reports a process whose status it could not collect.
const exitAgentLost = 255

// stdio is a process's FIFOs, as containerd gives them.
type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
}

// process is the init process of a task or one of its execs.
type process struct {
	id     string // the exec ID; "" for the init process
	req    proto.ExecStart
	io     stdio
	log    *slog.Logger
	exited chan struct{} // closed once status is set and output written

	mu        sync.Mutex
	started   bool
	pid       uint32
	p         *agentclient.Process
	stdinFifo io.ReadCloser
	stdinDone chan struct{} // closed once stdin was copied and closed
	status    uint32
	exitedAt  time.Time
	// oomKilled: the guest's kernel killed the process for want of
	// memory (the agent's ExitStatus.OOMKilled).
	oomKilled bool
}

func newProcess(id string, req proto.ExecStart, io stdio, log *slog.Logger) *process {
	return &process{id: id, req: req, io: io, log: log, exited: make(chan struct{})}
}

// isExited reports whether the process has ended.
func (p *process) isExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// start starts the process in the guest through ac and copies its stdio
// between the FIFOs and the agent until it exits; onExit runs then, after
// the output was written and the FIFOs closed. ctx bounds the FIFOs and
// the attachment (the shim's lifetime, not a request's).
func (p *process) start(ctx context.Context, ac *agentclient.Client, onExit func(*process)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return errors.New("already started")
	}
	if p.isExited() {
		return errors.New("the process was killed before it started")
	}
	// Open the output FIFOs first: containerd has their read ends open
	// (or opening); O_NONBLOCK makes the library finish the open in the
	// background instead of blocking on a reader.
	var stdout, stderr io.WriteCloser
	var err error
	if p.io.stdout != "" {
		if stdout, err = fifo.OpenFifo(ctx, p.io.stdout, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err != nil {
			return fmt.Errorf("stdout %s: %w", p.io.stdout, err)
		}
	}
	if p.io.stderr != "" && !p.io.terminal {
		if stderr, err = fifo.OpenFifo(ctx, p.io.stderr, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err != nil {
			closeAll(stdout)
			return fmt.Errorf("stderr %s: %w", p.io.stderr, err)
		}
	}
	var stdin io.ReadCloser
	if p.io.stdin != "" {
		if stdin, err = fifo.OpenFifo(ctx, p.io.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0); err != nil {
			closeAll(stdout, stderr)
			return fmt.Errorf("stdin %s: %w", p.io.stdin, err)
		}
	}
	p.req.Stdin = stdin != nil && p.req.TTY == nil
	ap, err := ac.Start(ctx, p.req)
	if err != nil {
		closeAll(stdout, stderr, stdin)
		return fmt.Errorf("starting %q in the guest: %w", p.req.Args[0], err)
	}
	p.started, p.pid, p.p, p.stdinFifo = true, uint32(ap.PID()), ap, stdin
	if stdin != nil {
		p.stdinDone = make(chan struct{})
		go func() {
			defer close(p.stdinDone)
			w := ap.Stdin()
			if _, err := io.Copy(w, stdin); err != nil && !errors.Is(err, os.ErrClosed) {
				p.log.Debug("stdin", "exec", p.id, "err", err)
			}
			// EOF (or CloseIO): the process's stdin ends too.
			_ = w.Close()
		}()
	}
	go func() {
		var outW, errW io.Writer = io.Discard, io.Discard
		if stdout != nil {
			outW = stdout
		}
		if stderr != nil {
			errW = stderr
		}
		es, err := ap.Copy(ctx, outW, errW)
		closeAll(stdout, stderr)
		code := uint32(es.Code)
		if err != nil && es == (proto.ExitStatus{}) {
			p.log.Warn("lost the process's exit", "exec", p.id, "pid", p.pid, "err", err)
			code = exitAgentLost
		}
		// The exit's events go out before Wait returns, as containerd's
		// own shims publish TaskExit first: a client that saw Wait
		// return finds the event.
		p.record(code, es.OOMKilled)
		onExit(p)
		p.setExited(code)
	}()
	return nil
}

// record notes how the process ended (exit status, OOM kill), before
// setExited tells the waiters.
func (p *process) record(code uint32, oomKilled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isExited() {
		return
	}
	p.status, p.exitedAt, p.oomKilled = code, time.Now(), oomKilled
}

// setExited records the exit once (unless record did) and wakes the
// process's waiters.
func (p *process) setExited(code uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isExited() {
		return
	}
	if p.stdinFifo != nil {
		p.stdinFifo.Close()
	}
	if p.exitedAt.IsZero() {
		p.status, p.exitedAt = code, time.Now()
	}
	close(p.exited)
}

// stdinDrain bounds how long CloseIO lets the stdin copy finish on its
// own: containerd closes its end of the FIFO before it calls CloseIO, so
// the copy reaches EOF once it has passed on what the FIFO still holds.
const stdinDrain = time.Second

// closeStdin closes stdin: the process reads EOF after what containerd
// wrote.
func (p *process) closeStdin() {
	p.mu.Lock()
	f, done := p.stdinFifo, p.stdinDone
	p.mu.Unlock()
	if f == nil {
		return
	}
	if done != nil {
		select {
		case <-done:
			return
		case <-time.After(stdinDrain):
		}
	}
	f.Close()
}

func (p *process) exitStatus() (uint32, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.exitedAt
}

func (p *process) wasOOMKilled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.oomKilled
}

func (p *process) getPID() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

func (p *process) isStarted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

// closeAll closes what is not nil.
func closeAll(cs ...io.Closer) {
	for _, c := range cs {
		if c != nil {
			c.Close()
		}
	}
}

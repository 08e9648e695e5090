package sandbox

import (
	"context"
	"io"
	"time"

	"github.com/embervm/ember/agent/proto"
)

// Observer hears a manager's events; package sandbox/metrics makes
// Prometheus metrics of them. Its methods are called on the requests'
// goroutines and must not block. (The manager does not link Prometheus
// itself: the ember binary links this package for its types, and the VMM
// should not carry a metrics client and its init cost.)
type Observer interface {
	// Created is called after every create: err is nil (sb is running,
	// with its Timings), a refusal (KindOf(err) == KindExhausted, the
	// budget in the *Error) or a failure.
	Created(sb Sandbox, err error)
	// Exec is called after every exec with its duration; err is nil when
	// the process ran and its exit status is known.
	Exec(d time.Duration, err error)
	// Ended is called once per sandbox end that is recorded (sb.Exit is
	// set); a failed create's end is not.
	Ended(sb Sandbox)
}

// nopObserver is the Observer of a manager given none.
type nopObserver struct{}

func (nopObserver) Created(Sandbox, error)    {}
func (nopObserver) Exec(time.Duration, error) {}
func (nopObserver) Ended(Sandbox)             {}

// Create restores a sandbox from a template and waits until it is ready.
// A failed create leaves nothing behind; a create over one of the host's
// budgets is refused (KindExhausted) before anything is made.
func (m *Manager) Create(ctx context.Context, spec SandboxSpec) (Sandbox, error) {
	sb, err := m.create(ctx, spec)
	if err == nil {
		m.log.Info("sandbox created", "sandbox", sb.ID, "template", sb.Template, "pid", sb.PID, "total_ms", sb.Timings.TotalMS)
	}
	m.obs.Created(sb, err)
	return sb, err
}

// Exec runs a command in a sandbox through its agent, streaming its
// output to stdout and stderr, and returns its exit status.
func (m *Manager) Exec(ctx context.Context, id string, req ExecRequest, stdout, stderr io.Writer) (proto.ExitStatus, error) {
	return m.ExecWith(ctx, id, req, nil, stdout, stderr)
}

// ExecWith is Exec that reports the started process to started (if not
// nil) before any output.
func (m *Manager) ExecWith(ctx context.Context, id string, req ExecRequest, started func(ExecStarted), stdout, stderr io.Writer) (proto.ExitStatus, error) {
	t0 := time.Now()
	st, err := m.runExec(ctx, id, req, started, stdout, stderr)
	if err != nil {
		m.log.Debug("exec failed", "sandbox", id, "err", err)
	}
	m.obs.Exec(time.Since(t0), err)
	return st, err
}

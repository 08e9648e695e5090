package agent

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// reaper collects the exit status of the agent's processes. As PID 1 (or
// a subreaper) it also reaps every orphan the machine hands it, so no
// zombie outlives its parent for long; otherwise it waits for its own
// processes only, leaving the statuses of anything else in the process
// (a test's own children) alone.
type reaper struct {
	orphans bool

	mu      sync.Mutex
	waiting map[int]chan exit
}

// exit is how a process ended and what it used (with the children it
// waited for), from wait4(2).
type exit struct {
	status unix.WaitStatus
	usage  unix.Rusage
}

func newReaper(orphans bool) *reaper {
	return &reaper{orphans: orphans, waiting: map[int]chan exit{}}
}

// start runs fork (which starts a process and returns its pid) with the
// registry locked, so that the process's exit cannot be collected before
// it is registered, and returns the channel its exit will come on.
func (r *reaper) start(fork func() (int, error)) (int, <-chan exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := fork()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan exit, 1)
	r.waiting[pid] = ch
	return pid, ch, nil
}

// run reaps on every SIGCHLD until ctx ends.
func (r *reaper) run(ctx context.Context) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	for {
		// First: a child may have exited before Notify.
		r.reap()
		select {
		case <-sigs:
		case <-ctx.Done():
			return
		}
	}
}

// reap collects every child that has exited, without blocking.
func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.orphans {
		for {
			var e exit
			pid, err := unix.Wait4(-1, &e.status, unix.WNOHANG, &e.usage)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				return
			}
			r.deliver(pid, e)
		}
	}
	for pid := range r.waiting {
		var e exit
		got, err := unix.Wait4(pid, &e.status, unix.WNOHANG, &e.usage)
		for errors.Is(err, unix.EINTR) {
			got, err = unix.Wait4(pid, &e.status, unix.WNOHANG, &e.usage)
		}
		if got == pid {
			r.deliver(pid, e)
		}
	}
}

// deliver hands a registered process its exit (r.mu held); an orphan's
// is dropped. Stopped and continued children are not ends.
func (r *reaper) deliver(pid int, e exit) {
	if !e.status.Exited() && !e.status.Signaled() {
		return
	}
	if ch, ok := r.waiting[pid]; ok {
		ch <- e
		delete(r.waiting, pid)
	}
}

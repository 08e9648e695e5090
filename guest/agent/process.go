package agent

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/guest/workload"
)

// MaxFinished is how many finished processes the agent remembers (their
// exit status and unacknowledged output) until a client releases them.
// Beyond it the oldest finished one is forgotten, so clients that never
// release cannot grow the agent without bound.
const MaxFinished = 64

// eofChar is what closing a terminal's input sends: the VEOF character
// (^D) of a new terminal's line discipline, which makes a reader's read(2)
// return 0 in canonical mode, as when a user types it.
const eofChar = 0x04

// readSize is the buffer a pump reads a process's output with.
const readSize = proto.MaxData

// process is one process the agent started.
type process struct {
	pid  int
	info proto.ProcessInfo // what ExecList shows (Exit and Output filled on demand)
	out  *outputLog
	tty  *os.File // the terminal's master, or nil
	in   *stdinWriter

	exited   chan struct{} // closed once reaped
	mu       sync.Mutex
	status   *proto.ExitStatus
	finished time.Time
	// pumps are the goroutines reading output; when the last ends the
	// output log is closed.
	pumps sync.WaitGroup
	// exitFlag tells the pumps the process has exited: they drain what is
	// pending and stop rather than wait for an EOF that a background child
	// holding the pipe would delay forever.
	exitFlag chan struct{}
}

// exitStatus returns the status once the process has exited, else nil.
func (p *process) exitStatus() *proto.ExitStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// snapshot returns the process's description.
func (p *process) snapshot() proto.ProcessInfo {
	info := p.info
	info.Exit = p.exitStatus()
	info.Output = p.out.state()
	return info
}

// processTable holds the processes by pid and tag.
type processTable struct {
	reaper *reaper
	// tagMu serialises the starts of tagged processes, so that two
	// concurrent starts cannot both take one tag.
	tagMu sync.Mutex
	mu    sync.Mutex
	byPID map[int]*process
	byTag map[string]*process
	// ended, if set, is told what a process started in a container used,
	// once it is reaped.
	ended func(container string, usage *unix.Rusage)
}

func newProcessTable(r *reaper) *processTable {
	return &processTable{reaper: r, byPID: map[int]*process{}, byTag: map[string]*process{}}
}

// lookup finds a process by reference.
func (t *processTable) lookup(ref proto.ProcessRef) (*process, error) {
	if err := ref.Validate(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var p *process
	if ref.Tag != "" {
		p = t.byTag[ref.Tag]
	} else {
		p = t.byPID[ref.PID]
	}
	if p == nil {
		return nil, proto.Errorf(proto.CodeNotFound, "%s: no such process (never started, or released)", ref)
	}
	return p, nil
}

// list returns every process, by pid.
func (t *processTable) list() []*process {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := make([]*process, 0, len(t.byPID))
	for _, p := range t.byPID {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].pid < ps[j].pid })
	return ps
}

// count returns how many processes the table holds.
func (t *processTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byPID)
}

// spec is a resolved ExecStart.
type spec struct {
	req  proto.ExecStart
	env  []string
	dir  string
	uid  uint32
	gid  uint32
	grps []uint32
	// root and cloneflags: a container's process (chroot, namespaces).
	root       string
	cloneflags uintptr
}

// start starts a process and its output pumps.
func (t *processTable) start(sp *spec) (*process, error) {
	if sp.req.Tag != "" {
		t.tagMu.Lock()
		defer t.tagMu.Unlock()
		t.mu.Lock()
		_, dup := t.byTag[sp.req.Tag]
		t.mu.Unlock()
		if dup {
			return nil, proto.Errorf(proto.CodeExists, "tag %q: a process has it already", sp.req.Tag)
		}
	}
	capacity := sp.req.BufferSize
	if capacity == 0 {
		capacity = proto.DefaultOutputBuffer
	}
	p := &process{
		out:      newOutputLog(capacity, sp.req.Overwrite),
		exited:   make(chan struct{}),
		exitFlag: make(chan struct{}),
		info: proto.ProcessInfo{
			Tag: sp.req.Tag, Args: sp.req.Args, Env: sp.req.Env, Cwd: sp.dir,
			User: sp.req.User, TTY: sp.req.TTY != nil, Container: sp.req.Container,
		},
	}
	// The process's ends of its stdio, closed here once it has them.
	var child []*os.File
	var outputs []*os.File // what the pumps read
	var stdinW *os.File
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	fail := func(err error) (*process, error) {
		for _, f := range outputs {
			f.Close()
		}
		if stdinW != nil {
			stdinW.Close()
		}
		return nil, err
	}
	if sp.req.TTY != nil {
		master, slave, err := openPTY(*sp.req.TTY)
		if err != nil {
			return nil, err
		}
		p.tty = master
		child = []*os.File{slave, slave, slave}
		outputs = []*os.File{master}
	} else {
		var stdinR *os.File
		var err error
		if sp.req.Stdin {
			if stdinR, stdinW, err = os.Pipe(); err != nil {
				return fail(fmt.Errorf("stdin pipe: %w", err))
			}
		} else if stdinR, err = os.Open(os.DevNull); err != nil {
			return fail(err)
		}
		child = append(child, stdinR)
		for range 2 {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(fmt.Errorf("output pipe: %w", err))
			}
			outputs = append(outputs, r)
			child = append(child, w)
		}
	}
	pid, wait, err := t.reaper.start(func() (int, error) {
		return workload.Start(workload.Spec{
			Args: sp.req.Args, Env: sp.env, Dir: sp.dir,
			UID: sp.uid, GID: sp.gid, Groups: sp.grps,
			Stdio: child, Ctty: p.tty != nil,
			Root: sp.root, Cloneflags: sp.cloneflags,
		})
	})
	if err != nil {
		return fail(err)
	}
	p.pid, p.info.PID = pid, pid
	switch {
	case p.tty != nil:
		p.in = newStdinWriter(p.tty, true)
	case stdinW != nil:
		p.in = newStdinWriter(stdinW, false)
	}
	for i, f := range outputs {
		ch := uint8(proto.ChanStdout + i)
		p.pumps.Add(1)
		go p.pump(f, ch)
	}
	go func() {
		p.pumps.Wait()
		if p.tty != nil {
			p.in.quit()
			p.tty.Close() // hangs up what still holds the terminal
		}
		p.out.close()
	}()
	go t.await(p, wait)

	t.mu.Lock()
	if old := t.byPID[pid]; old != nil {
		// The kernel reused a finished process's pid: forget the old one.
		t.forget(old)
	}
	t.byPID[pid] = p
	if p.info.Tag != "" {
		t.byTag[p.info.Tag] = p
	}
	t.mu.Unlock()
	return p, nil
}

// await records the process's exit and trims the finished processes.
func (t *processTable) await(p *process, wait <-chan exit) {
	e := <-wait
	ws := e.status
	if t.ended != nil && p.info.Container != "" {
		t.ended(p.info.Container, &e.usage)
	}
	st := &proto.ExitStatus{Code: workload.ExitCode(ws)}
	if ws.Signaled() {
		st.Signal = int(ws.Signal())
		st.CoreDumped = ws.CoreDump()
		st.OOMKilled = st.Signal == int(unix.SIGKILL) && oomKilled(kmsgPath, p.pid)
	}
	p.mu.Lock()
	p.status, p.finished = st, time.Now()
	p.mu.Unlock()
	close(p.exitFlag)
	close(p.exited)
	if p.in != nil && p.tty == nil {
		p.in.close() // the reader is gone; a background child keeps its own copy
	}
	t.trimFinished()
}

// trimFinished forgets the oldest finished processes beyond MaxFinished.
func (t *processTable) trimFinished() {
	t.mu.Lock()
	defer t.mu.Unlock()
	var done []*process
	for _, p := range t.byPID {
		if p.exitStatus() != nil {
			done = append(done, p)
		}
	}
	if len(done) <= MaxFinished {
		return
	}
	sort.Slice(done, func(i, j int) bool { return done[i].finishedAt().Before(done[j].finishedAt()) })
	for _, p := range done[:len(done)-MaxFinished] {
		t.forget(p)
	}
}

func (p *process) finishedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.finished
}

// release forgets a finished process.
func (t *processTable) release(p *process) error {
	if p.exitStatus() == nil {
		return proto.Errorf(proto.CodePrecondition, "process %d is still running; signal it first", p.pid)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.forget(p)
	return nil
}

// forget drops a process from the table (t.mu held).
func (t *processTable) forget(p *process) {
	if t.byPID[p.pid] == p {
		delete(t.byPID, p.pid)
	}
	if p.info.Tag != "" && t.byTag[p.info.Tag] == p {
		delete(t.byTag, p.info.Tag)
	}
	p.out.release()
}

// pump reads one output file into the log until EOF, or until the
// process has exited and nothing more is pending: a background child that
// holds the pipe or terminal open must not keep the exit from being
// reported (it gets EPIPE, or a hangup, if it writes later).
func (p *process) pump(f *os.File, ch uint8) {
	defer p.pumps.Done()
	defer f.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-p.exitFlag:
			// Wake a read that waits for output that may never come.
			_ = f.SetReadDeadline(time.Now())
		case <-stop:
		}
	}()
	buf := make([]byte, readSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if p.out.append(ch, buf[:n]) != nil {
				return // released
			}
		}
		if err == nil {
			select {
			case <-p.exitFlag:
			default:
				continue
			}
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			return // EOF of a pipe; EIO from a terminal whose every slave is closed
		}
		p.drain(f, ch, buf)
		return
	}
}

// drain reads what f holds now, without waiting: what the process wrote
// before it exited. The reads are non-blocking read(2)s outside Go's
// poller (whose deadline has passed); on a terminal's master such a read
// first flushes the line discipline's pending work (n_tty_read), so output
// written just before the exit is not missed as it could be by FIONREAD.
func (p *process) drain(f *os.File, ch uint8, buf []byte) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	for {
		var n int
		var rerr error
		if err := rc.Control(func(fd uintptr) {
			for {
				n, rerr = unix.Read(int(fd), buf)
				if !errors.Is(rerr, unix.EINTR) {
					return
				}
			}
		}); err != nil || rerr != nil || n <= 0 {
			return // EAGAIN: nothing pending; EOF; EIO
		}
		if p.out.append(ch, buf[:n]) != nil {
			return
		}
	}
}

// signal sends sig to the process group (or the process alone).
func (p *process) signal(sig int, leaderOnly bool) error {
	target := -p.pid // the process group: the process leads its own session
	if leaderOnly {
		if p.exitStatus() != nil {
			return proto.Errorf(proto.CodePrecondition, "process %d has exited", p.pid)
		}
		target = p.pid
	}
	err := unix.Kill(target, unix.Signal(sig))
	if errors.Is(err, unix.ESRCH) {
		return proto.Errorf(proto.CodeNotFound, "process %d: no process left in its group", p.pid)
	}
	if err != nil {
		return fmt.Errorf("kill(%d, %d): %w", target, sig, err)
	}
	return nil
}

// resize sets the terminal's size.
func (p *process) resize(size proto.TTYSize) error {
	if p.tty == nil {
		return proto.Errorf(proto.CodePrecondition, "process %d has no terminal", p.pid)
	}
	return setWinsize(p.tty, size)
}

// input writes data to stdin and closes it if eof; it returns when the
// process has taken the data (a pipe's backpressure reaches the caller).
func (p *process) input(data []byte, eof bool) error {
	if p.in == nil {
		return proto.Errorf(proto.CodePrecondition, "process %d has no stdin (start it with stdin)", p.pid)
	}
	done := make(chan error, 1)
	p.in.enqueue(data, eof, func(err error) { done <- err })
	return <-done
}

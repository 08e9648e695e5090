package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/guest/ociuser"
	"github.com/embervm/ember/guest/workload"
)

// Environment defaults, as container runtimes give them.
const (
	// defaultPath is PATH when neither the image nor the request sets one
	// (runc's, containerd's oci.DefaultPathEnv).
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// defaultTerm is TERM on a terminal when nothing sets it (Docker gives
	// a container with a terminal the same).
	defaultTerm = "xterm"
)

// execStart starts a process and attaches the stream to it.
func (s *Server) execStart(st *mux.Stream) error {
	req, err := decode[proto.ExecStart](st)
	if err != nil {
		return err
	}
	var sp *spec
	if req.Container != "" {
		sp, err = s.resolveInContainer(req)
	} else {
		sp, err = s.resolve(req)
	}
	if err != nil {
		return err
	}
	p, err := s.procs.start(sp)
	if err != nil {
		var se *workload.StartError
		if errors.As(err, &se) {
			code := proto.CodePermission
			if se.Code == workload.ExitNotFound {
				code = proto.CodeNotFound
			}
			return proto.Errorf(code, "%v", se)
		}
		return err
	}
	s.log.Debug("agent: started", "pid", p.pid, "tag", req.Tag, "args", req.Args)
	return s.attach(st, p, 0, req.AutoAck, false)
}

// resolve turns a request into what to run: the user's ids, the complete
// environment, the working directory.
func (s *Server) resolve(req *proto.ExecStart) (*spec, error) {
	user := req.User
	if user == "" {
		user = s.cfg.User
	}
	id, err := ociuser.Resolve(s.cfg.Root, user)
	if err != nil {
		return nil, proto.Errorf(proto.CodeInvalid, "user %q: %v", user, err)
	}
	sp := &spec{req: *req, uid: id.UID, gid: id.GID, grps: id.Groups}
	sp.env = processEnv(s.cfg.Env, req.Env, id, req.TTY != nil)
	switch {
	case req.Cwd != "" && filepath.IsAbs(req.Cwd):
		sp.dir = filepath.Clean(req.Cwd)
	case req.Cwd != "":
		sp.dir = filepath.Join(id.Home, req.Cwd)
	case s.cfg.Dir != "":
		sp.dir = s.cfg.Dir
	default:
		sp.dir = id.Home
	}
	if sp.dir == "" {
		sp.dir = "/"
	}
	return sp, nil
}

// resolveInContainer is resolve for a process of a container: chrooted into the
// container's root, the user, home and working directory taken there, the
// environment the request's alone (the container's spec is complete; the
// guest's base environment is the pod sandbox's image's). The container's
// first process gets its own mount, PID and UTS namespaces: it is PID 1
// of the container, and its end ends what it started. Later ones (execs)
// share the guest's namespaces, chrooted: joining the first one's would
// take setns(2) in a single-threaded child, which Go's fork does not do.
func (s *Server) resolveInContainer(req *proto.ExecStart) (*spec, error) {
	root, first, err := s.containerRoot(req.Container)
	if err != nil {
		return nil, err
	}
	id, err := ociuser.Resolve(root, req.User)
	if err != nil {
		return nil, proto.Errorf(proto.CodeInvalid, "user %q in container %s: %v", req.User, req.Container, err)
	}
	sp := &spec{req: *req, uid: id.UID, gid: id.GID, grps: id.Groups}
	sp.env = processEnv(nil, req.Env, id, req.TTY != nil)
	switch {
	case req.Cwd != "":
		sp.dir = path.Clean("/" + req.Cwd)
	case id.Home != "":
		sp.dir = id.Home
	default:
		sp.dir = "/"
	}
	// The working directory must exist in the container, as runc makes
	// it.
	if dir, err := resolveIn(root, sp.dir); err == nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("container %s: working directory %s: %w", req.Container, sp.dir, err)
		}
	}
	sp.root = root
	if first {
		sp.cloneflags = containerCloneflags()
	}
	return sp, nil
}

// containerCloneflags are the namespaces a container's first process
// gets: a new mount namespace always (the kernel always has them), PID
// and UTS namespaces when the kernel has them (CONFIG_PID_NS,
// CONFIG_UTS_NS: /proc/self/ns lists them), else the VM's.
func containerCloneflags() uintptr {
	flags := uintptr(unix.CLONE_NEWNS)
	if _, err := os.Stat("/proc/self/ns/pid"); err == nil {
		flags |= unix.CLONE_NEWPID
	}
	if _, err := os.Stat("/proc/self/ns/uts"); err == nil {
		flags |= unix.CLONE_NEWUTS
	}
	return flags
}

// processEnv is base with the request's variables over it, completed with
// PATH, HOME and (on a terminal) TERM where neither sets them.
func processEnv(base []string, extra map[string]string, id ociuser.Identity, tty bool) []string {
	env := slices.Clone(base)
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
		env = append(env, k+"="+extra[k])
	}
	add := func(key, value string) {
		if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, key+"=") }) {
			env = append(env, key+"="+value)
		}
	}
	add("PATH", defaultPath)
	add("HOME", id.Home)
	if tty {
		add("TERM", defaultTerm)
	}
	return env
}

// execAttach attaches the stream to a process.
func (s *Server) execAttach(st *mux.Stream) error {
	req, err := decode[proto.ExecAttach](st)
	if err != nil {
		return err
	}
	p, err := s.procs.lookup(req.ProcessRef)
	if err != nil {
		return err
	}
	return s.attach(st, p, req.From, req.AutoAck, req.NoOutput)
}

// attach streams a process's output from offset from (-1: its end),
// takes stdin and acknowledgements from the client, and ends with the
// exit status. Ending the stream detaches; the process goes on.
func (s *Server) attach(st *mux.Stream, p *process, from int64, autoAck, noOutput bool) error {
	ctx := st.Context()
	_, end := p.out.bounds()
	cursor := from
	if from == -1 {
		cursor = end
	}
	if cursor > end {
		return proto.Errorf(proto.CodeInvalid, "from: %d: process %d has produced %d bytes so far", from, p.pid, end)
	}
	if err := st.SendMsg(proto.ExecEvent{Attached: &proto.Attached{PID: p.pid, Tag: p.info.Tag, From: cursor}}); err != nil {
		return err
	}
	inputDone := make(chan struct{})
	go func() {
		p.takeInput(ctx, st)
		close(inputDone)
	}()
	defer func() {
		if ctx.Err() != nil {
			// The client ended the stream: what it sent before (its last
			// acknowledgement) is taken before the stream goes.
			<-inputDone
		}
	}()

	if noOutput {
		select {
		case <-p.exited:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		es := *p.exitStatus()
		_, es.Output = p.out.bounds()
		return st.SendMsg(proto.ExecEvent{Exit: &es})
	}
	for {
		pc, err := p.out.read(ctx, cursor)
		if errors.Is(err, errReleased) {
			// Another client had the process released once it ended
			// (E2B's gateway does, as envd forgets ended processes): this
			// attachment still gets the exit, after a gap for the output
			// it had not read.
			select {
			case <-p.exited:
				es := *p.exitStatus()
				_, es.Output = p.out.bounds()
				if cursor < es.Output {
					if err := st.SendMsg(proto.ExecEvent{Gap: &proto.Gap{From: cursor, To: es.Output}}); err != nil {
						return err
					}
				}
				return st.SendMsg(proto.ExecEvent{Exit: &es})
			default:
			}
			return proto.Errorf(proto.CodePrecondition, "process %d was released", p.pid)
		}
		if err != nil {
			return err
		}
		switch {
		case pc.gap != nil:
			if err := st.SendMsg(proto.ExecEvent{Gap: pc.gap}); err != nil {
				return err
			}
			cursor = pc.gap.To
			continue
		case pc.eof:
		default:
			if err := st.Write(pc.ch, pc.data); err != nil {
				return err
			}
			cursor += int64(len(pc.data))
			if autoAck {
				p.out.ack(cursor)
			}
			continue
		}
		break
	}
	// All output is sent; the process has closed its output, so it has
	// exited or will (a process may close stdout and go on).
	select {
	case <-p.exited:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	es := *p.exitStatus()
	es.Output = cursor
	return st.SendMsg(proto.ExecEvent{Exit: &es})
}

// takeInput reads the client's side of an exec stream until it ends:
// stdin (Data and Close on ChanStdin) and acknowledgements. Stdin goes
// through the process's stdin writer, and the stream's credit for it
// comes back only once written, so a process that does not read its
// input holds back the client's input, not its acknowledgements.
func (p *process) takeInput(ctx context.Context, st *mux.Stream) {
	for {
		it, err := st.RecvHold(ctx)
		if err != nil {
			return
		}
		switch {
		case it.Kind == mux.KindMsg:
			st.Credit(it.Cost())
			var c proto.ExecControl
			if proto.DecodeJSON(it.Payload, &c) == nil && c.Ack != nil {
				p.out.ack(*c.Ack)
			}
		case it.Channel != proto.ChanStdin:
			st.Credit(it.Cost())
		case p.in == nil:
			st.Credit(it.Cost())
			st.End(proto.Errorf(proto.CodePrecondition, "process %d has no stdin (start it with stdin)", p.pid))
			return
		case it.Kind == mux.KindData:
			cost := it.Cost()
			p.in.enqueue(it.Payload, false, func(error) { st.Credit(cost) })
		case it.Kind == mux.KindClose:
			p.in.enqueue(nil, true, func(error) {})
		}
	}
}

// execList sends one ProcessInfo per process.
func (s *Server) execList(st *mux.Stream) error {
	for _, p := range s.procs.list() {
		info := p.snapshot()
		err := st.SendMsg(info)
		if proto.CodeOf(err) == proto.CodeExhausted {
			// A command line too large for one message: listed without
			// its environment, then with its command alone.
			info.Env = nil
			if err = st.SendMsg(info); proto.CodeOf(err) == proto.CodeExhausted {
				info.Args = info.Args[:1]
				err = st.SendMsg(info)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) execInput(_ context.Context, req *proto.ExecInput) (proto.Empty, error) {
	p, err := s.procs.lookup(req.ProcessRef)
	if err != nil {
		return proto.Empty{}, err
	}
	return proto.Empty{}, p.input(req.Data, req.EOF)
}

func (s *Server) execSignal(_ context.Context, req *proto.ExecSignal) (proto.Empty, error) {
	p, err := s.procs.lookup(req.ProcessRef)
	if err != nil {
		return proto.Empty{}, err
	}
	return proto.Empty{}, p.signal(req.Signal, req.LeaderOnly)
}

func (s *Server) execResize(_ context.Context, req *proto.ExecResize) (proto.Empty, error) {
	p, err := s.procs.lookup(req.ProcessRef)
	if err != nil {
		return proto.Empty{}, err
	}
	return proto.Empty{}, p.resize(req.TTYSize)
}

func (s *Server) execRelease(_ context.Context, req *proto.ProcessRef) (proto.Empty, error) {
	p, err := s.procs.lookup(*req)
	if err != nil {
		return proto.Empty{}, err
	}
	return proto.Empty{}, s.procs.release(p)
}

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// Name is the agent's name in its Hello reply and health answers.
const Name = "ember-agent/1"

// Config is what the agent is told.
type Config struct {
	// Root is where users are resolved (its /etc/passwd and /etc/group)
	// and relative to which nothing else is: the guest's root, "/".
	Root string
	// Env is the base environment of processes, KEY=VALUE (the image's,
	// completed by the init).
	Env []string
	// Dir is the default working directory (the image's); empty: the
	// user's home, else "/".
	Dir string
	// User is the default user, as an OCI image's User ("" is root).
	User string
	// RunDir holds the files the restore transaction writes for programs
	// in the guest (DefaultRunDir).
	RunDir string
	// ResolvConf is the file a restore's DNS servers are written to
	// (DefaultResolvConf).
	ResolvConf string
	// ReapOrphans makes the agent reap every child of the process, not
	// just its own: set as PID 1, which inherits every orphan.
	ReapOrphans bool
	// Clock, Entropy, Network and Host carry out the restore steps; nil
	// means the system's (SystemClock, SystemEntropy, SystemNetwork,
	// SystemHost).
	Clock   Clock
	Entropy Entropy
	Network Network
	Host    Host
	// Storage gives containers (proto.FeatureContainer) their file
	// systems; nil means the guest's (SystemStorage over RunDir).
	Storage Storage
	// Log receives the agent's own lines (nil: discarded).
	Log *slog.Logger
}

// Where the restore transaction writes, in the guest.
const (
	// DefaultRunDir holds "generation" (the restore generation, a decimal
	// number and a newline) and "metadata.json" (the per-sandbox metadata,
	// a JSON object of strings). /run is a tmpfs the init mounts, so both
	// are gone at the next boot, as they should be.
	DefaultRunDir     = "/run/ember"
	DefaultResolvConf = "/etc/resolv.conf"
)

// Listener is where connections come from: AF_VSOCK in the guest
// (ListenVsock), a unix socket in tests.
type Listener interface {
	Accept() (io.ReadWriteCloser, error)
	Close() error
}

// handler serves one operation on a stream; its error ends the stream.
type handler func(st *mux.Stream) error

// Server is the agent.
type Server struct {
	cfg    Config
	log    *slog.Logger
	reaper *reaper
	procs  *processTable
	ops    map[string]handler

	containers containerTable
	sysStorage *SystemStorage

	cpu cpuMeter // the previous CPU sample of sys.metrics

	restoreMu  sync.Mutex // one restore at a time
	generation atomic.Uint64
}

// New makes an agent.
func New(cfg Config) *Server {
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.RunDir == "" {
		cfg.RunDir = DefaultRunDir
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Entropy == nil {
		cfg.Entropy = SystemEntropy{}
	}
	if cfg.Network == nil {
		cfg.Network = SystemNetwork{}
	}
	if cfg.Host == nil {
		cfg.Host = SystemHost{}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := newReaper(cfg.ReapOrphans)
	s := &Server{cfg: cfg, log: log, reaper: r, procs: newProcessTable(r),
		containers: containerTable{m: map[string]*container{}, busy: map[string]bool{}},
		sysStorage: &SystemStorage{RunDir: cfg.RunDir}}
	s.procs.ended = s.containerEnded
	s.ops = map[string]handler{
		proto.OpExecStart:   s.execStart,
		proto.OpExecAttach:  s.execAttach,
		proto.OpExecList:    s.execList,
		proto.OpExecInput:   unary(s.execInput),
		proto.OpExecSignal:  unary(s.execSignal),
		proto.OpExecResize:  unary(s.execResize),
		proto.OpExecRelease: unary(s.execRelease),
		proto.OpStat:        unary(s.stat),
		proto.OpList:        s.list,
		proto.OpMkdir:       unary(s.mkdir),
		proto.OpMove:        unary(s.move),
		proto.OpRemove:      unary(s.remove),
		proto.OpRead:        s.read,
		proto.OpWrite:       s.write,
		proto.OpWatch:       s.watch,
		proto.OpHealth:      unary(s.health),
		proto.OpRestore:     s.restore,
		proto.OpPortConnect: s.portConnect,
		proto.OpMetrics:     unary(s.metrics),

		proto.OpContainerVolume: unary(s.containerVolume),
		proto.OpContainerCreate: unary(s.containerCreate),
		proto.OpContainerRemove: unary(s.containerRemove),
		proto.OpContainerStats:  unary(s.containerStats),
	}
	if g, err := readGeneration(cfg.RunDir); err == nil {
		s.generation.Store(g)
	}
	return s
}

// features returns what this agent implements.
func features() []string {
	return []string{
		proto.FeatureExec, proto.FeatureExecTTY, proto.FeatureFiles, proto.FeatureFilesTar,
		proto.FeatureWatch, proto.FeatureRestore, proto.FeatureNetwork, proto.FeatureHostname, proto.FeatureContainer,
		proto.FeaturePort, proto.FeatureMetrics, proto.FeatureContainerStats,
	}
}

// Serve accepts connections on l and serves each until ctx ends (it then
// closes l) or l fails. Processes outlive connections: a client that
// reconnects finds them.
func (s *Server) Serve(ctx context.Context, l Listener) error {
	go s.reaper.run(ctx)
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			return fmt.Errorf("agent: accepting a connection: %w", err)
		}
		go s.serveConn(ctx, conn)
	}
}

// serveConn serves one connection until it ends.
func (s *Server) serveConn(ctx context.Context, conn io.ReadWriteCloser) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	err := mux.Server(conn, s.hello, s.serveStream)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, mux.ErrClosed) {
		s.log.Info("agent: connection ended", "err", err)
	}
}

// hello answers a client's Hello.
func (s *Server) hello(payload []byte) ([]byte, bool) {
	reply := proto.HelloReply{
		Magic: proto.Magic, Agent: Name,
		Features: features(), Ops: s.opNames(), Generation: s.generation.Load(),
	}
	var h proto.Hello
	err := proto.DecodeJSON(payload, &h)
	if err == nil {
		reply.Version, err = proto.Negotiate(&h, proto.MinVersion, proto.Version)
	}
	if err != nil {
		var pe *proto.Error
		if !errors.As(err, &pe) {
			pe = proto.Errorf(proto.CodeInvalid, "%v", err)
		}
		reply.Error = pe
		s.log.Info("agent: refused a client", "client", h.Client, "err", err)
	} else {
		s.log.Debug("agent: client connected", "client", h.Client, "version", reply.Version, "features", h.Features)
	}
	b, _ := json.Marshal(reply)
	return b, err == nil
}

func (s *Server) opNames() []string {
	names := make([]string, 0, len(s.ops))
	for op := range s.ops {
		names = append(names, op)
	}
	sort.Strings(names)
	return names
}

// serveStream runs the stream's operation and ends the stream with its
// outcome. A panic in a handler ends the stream, not PID 1.
func (s *Server) serveStream(st *mux.Stream) {
	var err error
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("agent: internal error", "op", st.Op(), "panic", r)
			err = proto.Errorf(proto.CodeInternal, "%s: internal error: %v", st.Op(), r)
		}
		st.End(asProtoError(err))
	}()
	h, ok := s.ops[st.Op()]
	if !ok {
		err = proto.Errorf(proto.CodeUnsupported, "operation %q is not supported by this agent (%s, protocol version %d; it serves %v)", st.Op(), Name, proto.Version, s.opNames())
		return
	}
	err = h(st)
}

// validator is a request that checks itself.
type validator interface{ Validate() error }

// decode decodes and validates a stream's request.
func decode[Req any](st *mux.Stream) (*Req, error) {
	req := new(Req)
	if err := proto.DecodeJSON(st.Request(), req); err != nil {
		return nil, err
	}
	if v, ok := any(req).(validator); ok {
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// unary makes a handler of a function that answers one message.
func unary[Req, Resp any](f func(ctx context.Context, req *Req) (Resp, error)) handler {
	return func(st *mux.Stream) error {
		req, err := decode[Req](st)
		if err != nil {
			return err
		}
		resp, err := f(st.Context(), req)
		if err != nil {
			return err
		}
		return st.SendMsg(resp)
	}
}

// asProtoError gives err a code from its errno, if it has none.
func asProtoError(err error) error {
	if err == nil {
		return nil
	}
	var pe *proto.Error
	if errors.As(err, &pe) {
		if pe.Message != err.Error() {
			return &proto.Error{Code: pe.Code, Message: err.Error()}
		}
		return pe
	}
	code := proto.CodeInternal
	var errno unix.Errno
	switch {
	case errors.Is(err, fs.ErrNotExist):
		code = proto.CodeNotFound
	case errors.Is(err, fs.ErrExist):
		code = proto.CodeExists
	case errors.Is(err, fs.ErrPermission):
		code = proto.CodePermission
	case errors.Is(err, context.Canceled):
		code = proto.CodeCanceled
	case errors.As(err, &errno):
		switch errno {
		case unix.ENOSPC, unix.EDQUOT, unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.EAGAIN:
			code = proto.CodeExhausted
		case unix.ENOTDIR, unix.EISDIR, unix.EINVAL, unix.ENAMETOOLONG, unix.ELOOP, unix.EXDEV, unix.ENOTEMPTY:
			code = proto.CodeInvalid
		case unix.EROFS, unix.EBUSY:
			code = proto.CodePrecondition
		}
	}
	return &proto.Error{Code: code, Message: err.Error()}
}

// health answers OpHealth.
func (s *Server) health(_ context.Context, _ *proto.Empty) (proto.Health, error) {
	return proto.Health{Agent: Name, Generation: s.generation.Load(), Time: nowUTC(), Processes: s.procs.count()}, nil
}

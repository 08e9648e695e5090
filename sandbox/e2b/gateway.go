package e2b

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/sandbox"
)

// envd's wire constants (E2B's SDK: src/connectionConfig.ts,
// src/envd/rpc.ts, src/sandbox/index.ts).
const (
	// EnvdPort is envd's port in every sandbox; the SDK names it in
	// E2b-Sandbox-Port and in host names (<port>-<id>.<domain>).
	EnvdPort = 49983
	// EnvdVersion is the envd version the gateway reports: the highest
	// whose features all work through it (src/envd/versions.ts). 0.5.7
	// brings octet-stream and gzip uploads; 0.6.2 adds file metadata
	// (X-Metadata-* headers kept with each file), which Ember's agent
	// does not store, so the SDK refuses metadata, watch entries (0.6.3)
	// and network-mount watches (0.6.4) itself, with a clear error.
	EnvdVersion = "0.5.7"

	headerSandboxID   = "E2b-Sandbox-Id"
	headerSandboxPort = "E2b-Sandbox-Port"
	headerAccessToken = "X-Access-Token"
	// headerKeepalive is the interval, in seconds, at which a stream
	// sends keepalive events (the SDK sends 50).
	headerKeepalive = "Keepalive-Ping-Interval"
	// minKeepalive bounds how often a client may ask for keepalives.
	minKeepalive = time.Second
	// tokenContext is mixed into every access token, so the secret's
	// other uses can never produce one.
	tokenContext = "ember e2b envd access token v1\x00"
)

// Tokens derives each sandbox's envd access token from a secret emberd
// keeps (sandbox.Manager.Secret): HMAC-SHA256(secret, sandbox ID), in hex.
// A token is as unguessable as a random one, needs no storage, and is the
// same after emberd restarts and adopts the sandbox.
type Tokens struct{ secret []byte }

// NewTokens returns the tokens of secret (at least 32 bytes).
func NewTokens(secret []byte) (Tokens, error) {
	if len(secret) < 32 {
		return Tokens{}, fmt.Errorf("e2b: a token secret of %d bytes; want at least 32", len(secret))
	}
	return Tokens{secret: secret}, nil
}

// For returns the access token of sandbox id.
func (t Tokens) For(id string) string {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(tokenContext + id))
	return hex.EncodeToString(m.Sum(nil))
}

// check says whether token is sandbox id's (in constant time).
func (t Tokens) check(id, token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(t.For(id)), []byte(token)) == 1
}

// Backend is what the gateway needs of emberd.
type Backend interface {
	// Agent returns the agent of running sandbox id (shared: not to be
	// closed) and the environment every process of the sandbox gets (its
	// envVars). A sandbox that is unknown, ended or paused is an error.
	Agent(ctx context.Context, id string) (*agentclient.Client, map[string]string, error)
	// Running lists the IDs of the running sandboxes (signed file URLs
	// carry no sandbox ID: the gateway finds the sandbox whose token
	// signed them).
	Running() []string
}

// ManagerBackend is the Backend of a sandbox.Manager.
type ManagerBackend struct{ M *sandbox.Manager }

// Agent implements Backend.
func (b ManagerBackend) Agent(ctx context.Context, id string) (*agentclient.Client, map[string]string, error) {
	ac, err := b.M.Agent(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	sb, err := b.M.Sandbox(id)
	if err != nil {
		return nil, nil, err
	}
	return ac, sb.Env, nil
}

// Running implements Backend.
func (b ManagerBackend) Running() []string {
	sbs, _ := b.M.Sandboxes()
	var ids []string
	for _, sb := range sbs {
		if sb.State == sandbox.StateRunning {
			ids = append(ids, sb.ID)
		}
	}
	return ids
}

// Gateway serves envd's protocol for every sandbox and carries each call
// to the sandbox's agent.
type Gateway struct {
	b      Backend
	tokens Tokens
	log    *slog.Logger
	rpc    *http.ServeMux
	ports  *httputil.ReverseProxy
}

// target is the sandbox a request is for.
type target struct {
	id  string
	ac  *agentclient.Client
	env map[string]string
	// user runs processes and owns files: the Basic auth user or the
	// username parameter ("" is the agent's default, the image's user).
	user string
	// keepalive is the stream keepalive interval the client asked for
	// (0: none).
	keepalive time.Duration
}

type targetKey struct{}

func targetOf(ctx context.Context) *target { return ctx.Value(targetKey{}).(*target) }

// NewGateway returns the envd gateway.
func NewGateway(b Backend, tokens Tokens, log *slog.Logger) *Gateway {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{b: b, tokens: tokens, log: log, rpc: http.NewServeMux()}
	g.ports = g.portProxy()
	opts := []connect.HandlerOption{connect.WithCodec(jsonCodec{})}
	handle := func(h *connect.Handler, procedure string) { g.rpc.Handle(procedure, h) }
	// process.Process
	handle(connect.NewServerStreamHandlerSimple("/process.Process/Start", g.start, opts...), "/process.Process/Start")
	handle(connect.NewServerStreamHandlerSimple("/process.Process/Connect", g.connect, opts...), "/process.Process/Connect")
	handle(connect.NewUnaryHandlerSimple("/process.Process/List", g.list, opts...), "/process.Process/List")
	handle(connect.NewUnaryHandlerSimple("/process.Process/SendInput", g.sendInput, opts...), "/process.Process/SendInput")
	handle(connect.NewUnaryHandlerSimple("/process.Process/SendSignal", g.sendSignal, opts...), "/process.Process/SendSignal")
	handle(connect.NewUnaryHandlerSimple("/process.Process/CloseStdin", g.closeStdin, opts...), "/process.Process/CloseStdin")
	handle(connect.NewUnaryHandlerSimple("/process.Process/Update", g.update, opts...), "/process.Process/Update")
	// filesystem.Filesystem
	handle(connect.NewUnaryHandlerSimple("/filesystem.Filesystem/Stat", g.stat, opts...), "/filesystem.Filesystem/Stat")
	handle(connect.NewUnaryHandlerSimple("/filesystem.Filesystem/MakeDir", g.makeDir, opts...), "/filesystem.Filesystem/MakeDir")
	handle(connect.NewUnaryHandlerSimple("/filesystem.Filesystem/Move", g.move, opts...), "/filesystem.Filesystem/Move")
	handle(connect.NewUnaryHandlerSimple("/filesystem.Filesystem/ListDir", g.listDir, opts...), "/filesystem.Filesystem/ListDir")
	handle(connect.NewUnaryHandlerSimple("/filesystem.Filesystem/Remove", g.remove, opts...), "/filesystem.Filesystem/Remove")
	handle(connect.NewServerStreamHandlerSimple("/filesystem.Filesystem/WatchDir", g.watchDir, opts...), "/filesystem.Filesystem/WatchDir")
	return g
}

// SandboxOf returns the sandbox a request to envd names: the
// E2b-Sandbox-Id header, else a host name <port>-<id>.<domain> (what the
// SDK uses without E2B_SANDBOX_URL), and the port (EnvdPort unless the
// host or E2b-Sandbox-Port names another).
func SandboxOf(r *http.Request) (id string, port int) {
	port = EnvdPort
	if p := r.Header.Get(headerSandboxPort); p != "" {
		if n, err := strconv.Atoi(p); err == nil {
			port = n
		}
	}
	if id = r.Header.Get(headerSandboxID); id != "" {
		return id, port
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, _, ok := strings.Cut(host, ".")
	if !ok {
		return "", port
	}
	p, rest, ok := strings.Cut(label, "-")
	n, err := strconv.Atoi(p)
	if !ok || err != nil || n <= 0 || n > 65535 || rest == "" {
		return "", port
	}
	return rest, n
}

// IsEnvdRequest says whether r is for a sandbox's envd rather than the
// control plane.
func IsEnvdRequest(r *http.Request) bool {
	id, _ := SandboxOf(r)
	return id != ""
}

// envdError answers an envd request that never reached the agent: a
// Connect error body for RPCs, envd's {"code","message"} elsewhere.
func envdError(w http.ResponseWriter, r *http.Request, status int, connectCode connect.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if strings.HasPrefix(r.URL.Path, "/process.") || strings.HasPrefix(r.URL.Path, "/filesystem.") {
		json.NewEncoder(w).Encode(map[string]string{"code": connectCode.String(), "message": msg})
		return
	}
	json.NewEncoder(w).Encode(errorBody{Code: status, Message: msg})
}

// ServeHTTP routes a request to its sandbox: auth, then the RPC or
// /files handler.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, port := SandboxOf(r)
	if id != "" && port != EnvdPort {
		g.servePort(w, r, id, port)
		return
	}
	isFiles := r.URL.Path == "/files"
	if id == "" && isFiles {
		// A signed URL (uploadUrl/downloadUrl) carries no sandbox ID.
		id = g.signer(r)
	}
	if id == "" {
		envdError(w, r, http.StatusBadRequest, connect.CodeInvalidArgument, "no sandbox: send the E2b-Sandbox-Id header or use the host name 49983-<sandbox ID>.<domain>")
		return
	}
	user := ""
	if u, _, ok := r.BasicAuth(); ok {
		user = u
	}
	switch {
	case r.URL.Path == "/health" && r.Method == http.MethodGet:
		// No token, as envd: a probe of whether the sandbox runs.
		if _, _, err := g.b.Agent(r.Context(), id); err != nil {
			envdError(w, r, http.StatusBadGateway, connect.CodeUnavailable, fmt.Sprintf("sandbox %s: %v", id, err))
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	case isFiles:
		if q := r.URL.Query().Get("username"); q != "" {
			user = q
		}
		if !g.tokens.check(id, r.Header.Get(headerAccessToken)) && !g.signed(r, id, user) {
			envdError(w, r, http.StatusUnauthorized, connect.CodeUnauthenticated, "missing or wrong X-Access-Token (or URL signature) for sandbox "+id)
			return
		}
	default:
		if !g.tokens.check(id, r.Header.Get(headerAccessToken)) {
			envdError(w, r, http.StatusUnauthorized, connect.CodeUnauthenticated, "missing or wrong X-Access-Token for sandbox "+id)
			return
		}
	}
	ac, env, err := g.b.Agent(r.Context(), id)
	if err != nil {
		// What E2B's proxy answers for a sandbox that is not running; the
		// SDK reads 502 as "the sandbox is gone".
		envdError(w, r, http.StatusBadGateway, connect.CodeUnavailable, fmt.Sprintf("sandbox %s: %v", id, err))
		return
	}
	t := &target{id: id, ac: ac, env: env, user: user}
	if s := r.Header.Get(headerKeepalive); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			t.keepalive = max(time.Duration(n)*time.Second, minKeepalive)
		}
	}
	r = r.WithContext(context.WithValue(r.Context(), targetKey{}, t))
	if isFiles {
		g.files(w, r, t)
		return
	}
	if _, pattern := g.rpc.Handler(r); pattern == "" {
		envdError(w, r, http.StatusNotFound, connect.CodeUnimplemented, fmt.Sprintf("%s %s: envd has no such route here", r.Method, r.URL.Path))
		return
	}
	g.rpc.ServeHTTP(w, r)
}

// rpcError turns an agent error into a Connect error: the agent's codes
// are Connect's names.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return connect.NewError(connect.CodeCanceled, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	var code connect.Code
	if code.UnmarshalText([]byte(proto.CodeOf(err))) != nil {
		code = connect.CodeInternal
	}
	return connect.NewError(code, err)
}

func invalidArg(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

// ref turns a selector into the agent's process reference.
func ref(s *ProcessSelector) (proto.ProcessRef, error) {
	switch {
	case s == nil:
		return proto.ProcessRef{}, invalidArg("process: missing selector (pid or tag)")
	case s.PID != nil && *s.PID > 0:
		return proto.ProcessRef{PID: int(*s.PID)}, nil
	case s.Tag != nil && *s.Tag != "":
		return proto.ProcessRef{Tag: *s.Tag}, nil
	}
	return proto.ProcessRef{}, invalidArg("process: give a pid or a tag")
}

// sender sends on a stream from the handler and its keepalive ticker.
type sender[T any] struct {
	mu sync.Mutex
	st *connect.ServerStream[T]
}

func (s *sender[T]) send(m *T) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Send(m)
}

// keepalive sends ka every t.keepalive until stop is called.
func keepalive[T any](t *target, s *sender[T], ka *T) (stop func()) {
	if t.keepalive == 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(t.keepalive)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if s.send(ka) != nil {
					return
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (g *Gateway) start(ctx context.Context, req *StartRequest, st *connect.ServerStream[ProcessStreamResponse]) error {
	t := targetOf(ctx)
	if req.Process == nil || req.Process.Cmd == "" {
		return invalidArg("process.cmd: missing")
	}
	env := map[string]string{}
	for k, v := range t.env {
		env[k] = v
	}
	for k, v := range req.Process.Envs {
		env[k] = v
	}
	es := proto.ExecStart{
		Args: append([]string{req.Process.Cmd}, req.Process.Args...),
		Env:  env,
		User: t.user,
		// envd keeps no output for a process nobody reads: a background
		// command must not block on a full buffer.
		Overwrite: true,
		Stdin:     req.Stdin == nil || *req.Stdin,
	}
	if req.Process.Cwd != nil {
		es.Cwd = *req.Process.Cwd
	}
	if req.Tag != nil {
		es.Tag = *req.Tag
	}
	if req.PTY != nil {
		if req.PTY.Size == nil || req.PTY.Size.Cols == 0 || req.PTY.Size.Rows == 0 || req.PTY.Size.Cols > 0xffff || req.PTY.Size.Rows > 0xffff {
			return invalidArg("pty.size: want cols and rows in 1..65535")
		}
		es.TTY = &proto.TTYSize{Cols: uint16(req.PTY.Size.Cols), Rows: uint16(req.PTY.Size.Rows)}
	}
	p, err := t.ac.Start(ctx, es)
	if err != nil {
		return rpcError(err)
	}
	exited, err := g.pump(ctx, t, p, es.TTY != nil, st)
	if !exited {
		// The client left first (a background command, a disconnect):
		// the process goes on; forget it in the agent once it ends, as
		// envd does.
		go g.releaseWhenDone(t.ac, p.Ref())
	} else {
		t.ac.Release(context.WithoutCancel(ctx), p.Ref())
	}
	return err
}

// releaseWhenDone waits for a process to end and makes the agent forget
// it.
func (g *Gateway) releaseWhenDone(ac *agentclient.Client, ref proto.ProcessRef) {
	// Ends with the process, or with the agent's connection.
	if _, err := ac.Wait(context.Background(), ref); err == nil {
		ac.Release(context.Background(), ref)
	}
}

func (g *Gateway) connect(ctx context.Context, req *ConnectRequest, st *connect.ServerStream[ProcessStreamResponse]) error {
	t := targetOf(ctx)
	r, err := ref(req.Process)
	if err != nil {
		return err
	}
	tty := false
	ps, err := t.ac.List(ctx)
	if err != nil {
		return rpcError(err)
	}
	for _, pi := range ps {
		if (r.PID != 0 && pi.PID == r.PID) || (r.Tag != "" && pi.Tag == r.Tag) {
			tty = pi.TTY
		}
	}
	// From now on: what an earlier attachment sent is not replayed (envd
	// does not buffer output).
	p, err := t.ac.Attach(ctx, proto.ExecAttach{ProcessRef: r, From: -1})
	if err != nil {
		return rpcError(err)
	}
	_, err = g.pump(ctx, t, p, tty, st)
	return err
}

// pump sends a process's start, output and end as envd's events; exited
// says whether the end was seen.
func (g *Gateway) pump(ctx context.Context, t *target, p *agentclient.Process, tty bool, st *connect.ServerStream[ProcessStreamResponse]) (exited bool, err error) {
	defer p.Detach()
	s := &sender[ProcessStreamResponse]{st: st}
	if err := s.send(&ProcessStreamResponse{Event: &ProcessEvent{Start: &StartEvent{PID: uint32(p.PID())}}}); err != nil {
		return false, err
	}
	stop := keepalive(t, s, &ProcessStreamResponse{Event: &ProcessEvent{Keepalive: &Empty{}}})
	defer stop()
	for {
		ev, err := p.Next(ctx)
		if err != nil {
			return false, rpcError(err)
		}
		switch ev.Kind {
		case agentclient.EventOutput:
			d := &DataEvent{}
			switch {
			case tty:
				d.PTY = ev.Data
			case ev.Channel == proto.ChanStderr:
				d.Stderr = ev.Data
			default:
				d.Stdout = ev.Data
			}
			if len(ev.Data) == 0 {
				continue
			}
			if err := s.send(&ProcessStreamResponse{Event: &ProcessEvent{Data: d}}); err != nil {
				return false, err
			}
		case agentclient.EventGap:
			g.log.Debug("output dropped before it reached the gateway", "sandbox", t.id, "pid", p.PID(), "from", ev.Gap.From, "to", ev.Gap.To)
		case agentclient.EventExit:
			return true, s.send(&ProcessStreamResponse{Event: &ProcessEvent{End: endEvent(*ev.Exit)}})
		}
	}
}

// endEvent is envd's end event of an exit status: Go's
// os.ProcessState as envd reports it (a signal: exit code -1,
// exited false, status "signal: killed").
func endEvent(es proto.ExitStatus) *EndEvent {
	if es.Signal != 0 {
		return &EndEvent{ExitCode: -1, Status: "signal: " + syscall.Signal(es.Signal).String()}
	}
	return &EndEvent{ExitCode: int32(es.Code), Exited: true, Status: fmt.Sprintf("exit status %d", es.Code)}
}

func (g *Gateway) list(ctx context.Context, _ *Empty) (*ListResponse, error) {
	t := targetOf(ctx)
	ps, err := t.ac.List(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	out := &ListResponse{Processes: []ProcessInfo{}}
	for _, p := range ps {
		if p.Exit != nil || len(p.Args) == 0 {
			continue
		}
		pi := ProcessInfo{PID: uint32(p.PID), Config: &ProcessConfig{Cmd: p.Args[0], Args: p.Args[1:], Envs: p.Env}}
		if p.Cwd != "" {
			cwd := p.Cwd
			pi.Config.Cwd = &cwd
		}
		if p.Tag != "" {
			tag := p.Tag
			pi.Tag = &tag
		}
		out.Processes = append(out.Processes, pi)
	}
	return out, nil
}

func (g *Gateway) sendInput(ctx context.Context, req *SendInputRequest) (*Empty, error) {
	t := targetOf(ctx)
	r, err := ref(req.Process)
	if err != nil {
		return nil, err
	}
	if req.Input == nil {
		return nil, invalidArg("input: missing")
	}
	data := req.Input.Stdin
	if data == nil {
		data = req.Input.PTY
	}
	return &Empty{}, rpcError(t.ac.Input(ctx, r, data, false))
}

func (g *Gateway) closeStdin(ctx context.Context, req *CloseStdinRequest) (*Empty, error) {
	t := targetOf(ctx)
	r, err := ref(req.Process)
	if err != nil {
		return nil, err
	}
	return &Empty{}, rpcError(t.ac.Input(ctx, r, nil, true))
}

func (g *Gateway) sendSignal(ctx context.Context, req *SendSignalRequest) (*Empty, error) {
	t := targetOf(ctx)
	r, err := ref(req.Process)
	if err != nil {
		return nil, err
	}
	if req.Signal <= 0 || req.Signal > proto.MaxSignal {
		return nil, invalidArg("signal: %d: want SIGNAL_SIGTERM, SIGNAL_SIGKILL or 1..%d", req.Signal, proto.MaxSignal)
	}
	// envd signals the process; the agent signals its group, so what a
	// shell started ends with it (commands.kill of `bash -c "sleep"`).
	return &Empty{}, rpcError(t.ac.Signal(ctx, r, int(req.Signal), false))
}

func (g *Gateway) update(ctx context.Context, req *UpdateRequest) (*Empty, error) {
	t := targetOf(ctx)
	r, err := ref(req.Process)
	if err != nil {
		return nil, err
	}
	if req.PTY == nil || req.PTY.Size == nil {
		return &Empty{}, nil // nothing to change
	}
	if req.PTY.Size.Cols == 0 || req.PTY.Size.Rows == 0 || req.PTY.Size.Cols > 0xffff || req.PTY.Size.Rows > 0xffff {
		return nil, invalidArg("pty.size: want cols and rows in 1..65535")
	}
	return &Empty{}, rpcError(t.ac.Resize(ctx, r, proto.TTYSize{Cols: uint16(req.PTY.Size.Cols), Rows: uint16(req.PTY.Size.Rows)}))
}

// entryInfo is envd's EntryInfo of an agent Entry.
func entryInfo(e proto.Entry) *EntryInfo {
	ei := &EntryInfo{Name: e.Name, Path: e.Path, Size: e.Size, Mode: e.Mode, Permissions: e.Permissions, Owner: e.Owner, Group: e.Group}
	switch e.Type {
	case proto.TypeFile:
		ei.Type = FileTypeFile
	case proto.TypeDir:
		ei.Type = FileTypeDirectory
	case proto.TypeSymlink:
		ei.Type = FileTypeSymlink
	default:
		ei.Type = FileTypeUnspecified
	}
	if ei.Owner == "" {
		ei.Owner = strconv.FormatUint(uint64(e.UID), 10)
	}
	if ei.Group == "" {
		ei.Group = strconv.FormatUint(uint64(e.GID), 10)
	}
	if !e.ModTime.IsZero() {
		ts := Timestamp(e.ModTime)
		ei.ModifiedTime = &ts
	}
	if e.SymlinkTarget != "" {
		s := e.SymlinkTarget
		ei.SymlinkTarget = &s
	}
	return ei
}

func checkPath(field, p string) error {
	if err := proto.CheckPath(field, p); err != nil {
		return invalidArg("%v", err)
	}
	return nil
}

func (g *Gateway) stat(ctx context.Context, req *PathRequest) (*EntryResponse, error) {
	t := targetOf(ctx)
	if err := checkPath("path", req.Path); err != nil {
		return nil, err
	}
	e, err := t.ac.Stat(ctx, proto.PathRequest{Path: req.Path, User: t.user})
	if err != nil {
		return nil, rpcError(err)
	}
	return &EntryResponse{Entry: entryInfo(e)}, nil
}

func (g *Gateway) makeDir(ctx context.Context, req *PathRequest) (*EntryResponse, error) {
	t := targetOf(ctx)
	if err := checkPath("path", req.Path); err != nil {
		return nil, err
	}
	e, err := t.ac.MakeDir(ctx, proto.MkdirRequest{PathRequest: proto.PathRequest{Path: req.Path, User: t.user}})
	if err != nil {
		return nil, rpcError(err)
	}
	return &EntryResponse{Entry: entryInfo(e)}, nil
}

func (g *Gateway) move(ctx context.Context, req *MoveRequest) (*EntryResponse, error) {
	t := targetOf(ctx)
	if err := checkPath("source", req.Source); err != nil {
		return nil, err
	}
	if err := checkPath("destination", req.Destination); err != nil {
		return nil, err
	}
	e, err := t.ac.Move(ctx, proto.MoveRequest{Source: req.Source, Destination: req.Destination, User: t.user})
	if err != nil {
		return nil, rpcError(err)
	}
	return &EntryResponse{Entry: entryInfo(e)}, nil
}

func (g *Gateway) listDir(ctx context.Context, req *ListDirRequest) (*ListDirResponse, error) {
	t := targetOf(ctx)
	if err := checkPath("path", req.Path); err != nil {
		return nil, err
	}
	if req.Depth > proto.MaxDepth {
		return nil, invalidArg("depth: %d: want at most %d", req.Depth, proto.MaxDepth)
	}
	es, err := t.ac.ListDir(ctx, proto.ListRequest{PathRequest: proto.PathRequest{Path: req.Path, User: t.user}, Depth: int(req.Depth)})
	if err != nil {
		return nil, rpcError(err)
	}
	out := &ListDirResponse{Entries: make([]EntryInfo, 0, len(es))}
	for _, e := range es {
		out.Entries = append(out.Entries, *entryInfo(e))
	}
	return out, nil
}

func (g *Gateway) remove(ctx context.Context, req *PathRequest) (*Empty, error) {
	t := targetOf(ctx)
	if err := checkPath("path", req.Path); err != nil {
		return nil, err
	}
	return &Empty{}, rpcError(t.ac.Remove(ctx, proto.PathRequest{Path: req.Path, User: t.user}))
}

// eventTypes maps the agent's watch events to envd's.
var eventTypes = map[string]string{
	proto.EventCreate: EventTypeCreate,
	proto.EventWrite:  EventTypeWrite,
	proto.EventRemove: EventTypeRemove,
	proto.EventRename: EventTypeRename,
	proto.EventChmod:  EventTypeChmod,
}

func (g *Gateway) watchDir(ctx context.Context, req *WatchDirRequest, st *connect.ServerStream[WatchDirResponse]) error {
	t := targetOf(ctx)
	if err := checkPath("path", req.Path); err != nil {
		return err
	}
	w, err := t.ac.Watch(ctx, proto.WatchRequest{PathRequest: proto.PathRequest{Path: req.Path, User: t.user}, Recursive: req.Recursive})
	if err != nil {
		return rpcError(err)
	}
	defer w.Close()
	s := &sender[WatchDirResponse]{st: st}
	if err := s.send(&WatchDirResponse{Start: &Empty{}}); err != nil {
		return err
	}
	stop := keepalive(t, s, &WatchDirResponse{Keepalive: &Empty{}})
	defer stop()
	for {
		ev, err := w.Next(ctx)
		if err != nil {
			return rpcError(err)
		}
		if ev.Type == proto.EventOverflow {
			return connect.NewError(connect.CodeResourceExhausted, errors.New("events were lost: the guest's queue of changes overflowed (the client read too slowly); watch again"))
		}
		typ, ok := eventTypes[ev.Type]
		if !ok {
			continue
		}
		if err := s.send(&WatchDirResponse{Filesystem: &FilesystemEvent{Name: ev.Name, Type: typ}}); err != nil {
			return err
		}
	}
}

// signature is envd's file URL signature (the SDK's
// src/sandbox/signature.ts): "v1_" and the unpadded standard base64 of
// SHA-256("<path>:<operation>:<user>:<token>[:<expiration>]").
func signature(path, operation, user, token, expiration string) string {
	raw := path + ":" + operation + ":" + user + ":" + token
	if expiration != "" {
		raw += ":" + expiration
	}
	h := sha256.Sum256([]byte(raw))
	return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(h[:]), "=")
}

// signed says whether r's signature parameters are valid for sandbox id.
func (g *Gateway) signed(r *http.Request, id, user string) bool {
	q := r.URL.Query()
	sig, exp := q.Get("signature"), q.Get("signature_expiration")
	if sig == "" {
		return false
	}
	if exp != "" {
		n, err := strconv.ParseInt(exp, 10, 64)
		if err != nil || time.Now().Unix() > n {
			return false
		}
	}
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	}
	want := signature(q.Get("path"), op, user, g.tokens.For(id), exp)
	return subtle.ConstantTimeCompare([]byte(sig), []byte(want)) == 1
}

// signer returns the running sandbox whose token signed r's URL, or "".
func (g *Gateway) signer(r *http.Request) string {
	if r.URL.Query().Get("signature") == "" {
		return ""
	}
	user := r.URL.Query().Get("username")
	if u, _, ok := r.BasicAuth(); ok && user == "" {
		user = u
	}
	for _, id := range g.b.Running() {
		if g.signed(r, id, user) {
			return id
		}
	}
	return ""
}

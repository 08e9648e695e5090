package shim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/guest/agent"
)

// unixListener serves the agent on a unix socket (AF_VSOCK needs a VM).
type unixListener struct{ net.Listener }

func (l unixListener) Accept() (io.ReadWriteCloser, error) { return l.Listener.Accept() }

// noClock, noEntropy and noNetwork keep a restore (never sent here) off
// the host.
type (
	noClock   struct{}
	noEntropy struct{}
	noNetwork struct{}
)

func (noClock) SetRealtime(time.Time) error    { return errors.New("not in tests") }
func (noEntropy) AddAndReseed([]byte) error    { return errors.New("not in tests") }
func (noNetwork) Configure(proto.Parsed) error { return errors.New("not in tests") }

// agentVM stands in for a VM: a real ember-agent serving in the test
// process; processes really run, on the host.
type agentVM struct {
	ac       *agentclient.Client
	done     chan struct{}
	stopOnce sync.Once
	paused   bool
}

func (v *agentVM) Agent() *agentclient.Client { return v.ac }
func (v *agentVM) PID() int                   { return os.Getpid() }
func (v *agentVM) Done() <-chan struct{}      { return v.done }
func (v *agentVM) EndReason() string          { return "" }
func (v *agentVM) Pause(context.Context) error {
	v.paused = true
	return nil
}
func (v *agentVM) Resume(context.Context) error {
	v.paused = false
	return nil
}
func (v *agentVM) Stop(ctx context.Context) error {
	v.stopOnce.Do(func() {
		// Like a VM's end: every process in it goes.
		if ps, err := v.ac.List(ctx); err == nil {
			for _, p := range ps {
				if p.Exit == nil {
					v.ac.Signal(ctx, proto.ProcessRef{PID: p.PID}, 9, false)
					v.ac.Wait(ctx, proto.ProcessRef{PID: p.PID})
				}
			}
		}
		v.ac.Close()
		close(v.done)
	})
	return nil
}

// agentLauncher boots "VMs" that are connections to one test agent.
type agentLauncher struct {
	sock    string
	storage *testStorage
	mu      sync.Mutex
	got     []VMSpec
	vms     []*agentVM
}

func (l *agentLauncher) Boot(ctx context.Context, spec VMSpec) (VM, error) {
	conn, err := net.Dial("unix", l.sock)
	if err != nil {
		return nil, err
	}
	ac, err := agentclient.New(ctx, conn, agentclient.Options{Name: "shim-test"})
	if err != nil {
		return nil, err
	}
	v := &agentVM{ac: ac, done: make(chan struct{})}
	l.mu.Lock()
	l.got = append(l.got, spec)
	l.vms = append(l.vms, v)
	l.mu.Unlock()
	if spec.SpareDrives > 0 {
		return &podAgentVM{agentVM: v, storage: l.storage, slots: &spareSlots{owners: make([]string, spec.SpareDrives)}}, nil
	}
	return v, nil
}

// recorder keeps the published events.
type recorder struct {
	mu     sync.Mutex
	topics []string
	events []any
}

func (r *recorder) Publish(ctx context.Context, topic string, ev any) error {
	// As the real publisher does: the event must travel as an Any.
	if _, err := typeurl.MarshalAnyToProto(ev); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, topic)
	r.events = append(r.events, ev)
	return nil
}

func (r *recorder) exits() []*eventsapi.TaskExit {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*eventsapi.TaskExit
	for _, e := range r.events {
		if x, ok := e.(*eventsapi.TaskExit); ok {
			out = append(out, x)
		}
	}
	return out
}

func (r *recorder) has(topic string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.topics {
		if t == topic {
			return true
		}
	}
	return false
}

type env struct {
	dir      string
	client   taskapi.TTRPCTaskService
	launcher *agentLauncher
	events   *recorder
	shutdown chan struct{}
}

// newEnv serves the task service over ttrpc on a unix socket, with a
// real agent behind the launcher.
func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the agent runs processes as the spec's uid:gid)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	al, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	storage := &testStorage{layers: map[string]string{}, scratch: filepath.Join(dir, "scratch")}
	if err := os.Mkdir(storage.scratch, 0o700); err != nil {
		t.Fatal(err)
	}
	asrv := agent.New(agent.Config{
		Root: "/", RunDir: filepath.Join(dir, "run"), ResolvConf: filepath.Join(dir, "resolv.conf"),
		Env:   []string{"PATH=" + os.Getenv("PATH"), "LANG=C"},
		Clock: noClock{}, Entropy: noEntropy{}, Network: noNetwork{},
		Storage: storage,
		Log:     slog.New(slog.DiscardHandler),
	})
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- asrv.Serve(ctx, unixListener{al}) }()

	e := &env{dir: dir, launcher: &agentLauncher{sock: sock, storage: storage}, events: &recorder{}, shutdown: make(chan struct{}, 1)}
	svc := NewService(ctx, e.launcher, e.events, slog.New(slog.DiscardHandler), func() { e.shutdown <- struct{}{} })
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	taskapi.RegisterTTRPCTaskService(srv, svc)
	ssock := filepath.Join(dir, "shim.sock")
	sl, err := net.Listen("unix", ssock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ctx, sl)
	conn, err := net.Dial("unix", ssock)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	e.client = taskapi.NewTTRPCTaskClient(tc)
	t.Cleanup(func() {
		tc.Close()
		e.launcher.mu.Lock()
		vms := e.launcher.vms
		e.launcher.mu.Unlock()
		for _, v := range vms {
			v.Stop(context.Background())
		}
		srv.Close()
		cancel()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	return e
}

// bundle writes a bundle whose process is args.
func (e *env) bundle(t *testing.T, name string, p specs.Process) string {
	t.Helper()
	b := filepath.Join(e.dir, name)
	if err := os.MkdirAll(filepath.Join(b, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	s := specs.Spec{Version: specs.Version, Process: &p, Root: &specs.Root{Path: "rootfs"}, Hostname: name}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// fifoReader makes a FIFO and reads all of it in the background, as
// containerd's side does.
type fifoReader struct {
	path string
	done chan string
}

func newFifoReader(t *testing.T, path string) *fifoReader {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	r := &fifoReader{path: path, done: make(chan string, 1)}
	go func() {
		f, err := os.Open(path)
		if err != nil {
			r.done <- "open: " + err.Error()
			return
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		r.done <- string(b)
	}()
	return r
}

func (r *fifoReader) text(t *testing.T) string {
	t.Helper()
	select {
	case s := <-r.done:
		return s
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no EOF", r.path)
		return ""
	}
}

func ctx30(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRunWithPipes(t *testing.T) {
	e := newEnv(t)
	ctx := ctx30(t)
	b := e.bundle(t, "c1", specs.Process{Args: []string{"sh", "-c", `echo "out $GREETING"; echo err >&2; pwd; exit 3`},
		Env: []string{"PATH=/usr/bin:/bin", "GREETING=hi"}, Cwd: "/tmp"})
	out := newFifoReader(t, filepath.Join(b, "stdout"))
	errf := newFifoReader(t, filepath.Join(b, "stderr"))
	cr, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: b, Stdout: out.path, Stderr: errf.path})
	if err != nil {
		t.Fatal(err)
	}
	if cr.Pid == 0 {
		t.Error("Create: pid 0")
	}
	if st, err := e.client.State(ctx, &taskapi.StateRequest{ID: "c1"}); err != nil || st.Status != task.Status_CREATED {
		t.Fatalf("State after Create: %v, %v", st, err)
	}
	e.launcher.mu.Lock()
	got := e.launcher.got[0]
	e.launcher.mu.Unlock()
	if len(got.Layers) != 1 || got.Layers[0] != filepath.Join(b, "rootfs") || got.Hostname != "c1" || got.MemoryMiB != DefaultMemoryMiB {
		t.Errorf("VM spec: %+v", got)
	}
	sr, err := e.client.Start(ctx, &taskapi.StartRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := e.client.Wait(ctx, &taskapi.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus != 3 {
		t.Errorf("exit status %d, want 3", w.ExitStatus)
	}
	if s := out.text(t); s != "out hi\n/tmp\n" {
		t.Errorf("stdout %q", s)
	}
	if s := errf.text(t); s != "err\n" {
		t.Errorf("stderr %q", s)
	}
	st, err := e.client.State(ctx, &taskapi.StateRequest{ID: "c1"})
	if err != nil || st.Status != task.Status_STOPPED || st.ExitStatus != 3 || st.Pid != sr.Pid {
		t.Errorf("State after exit: %v, %v", st, err)
	}
	d, err := e.client.Delete(ctx, &taskapi.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 3 {
		t.Fatalf("Delete: %v, %v", d, err)
	}
	if _, err := e.client.State(ctx, &taskapi.StateRequest{ID: "c1"}); status.Code(err) != codes.NotFound {
		t.Errorf("State after Delete: %v, want NotFound", err)
	}
	exits := e.events.exits()
	if len(exits) != 1 || exits[0].ContainerID != "c1" || exits[0].ID != "c1" || exits[0].ExitStatus != 3 || exits[0].Pid != sr.Pid {
		t.Errorf("exit events: %v", exits)
	}
	for _, topic := range []string{TopicTaskCreate, TopicTaskStart, TopicTaskExit, TopicTaskDelete} {
		if !e.events.has(topic) {
			t.Errorf("no %s event", topic)
		}
	}
	if _, err := os.Stat(filepath.Join(b, vmDirName)); !os.IsNotExist(err) {
		t.Errorf("the VM's folder is left: %v", err)
	}
}

func TestStdinAndCloseIO(t *testing.T) {
	e := newEnv(t)
	ctx := ctx30(t)
	b := e.bundle(t, "c2", specs.Process{Args: []string{"cat"}, Env: []string{"PATH=/usr/bin:/bin"}})
	stdin := filepath.Join(b, "stdin")
	if err := syscall.Mkfifo(stdin, 0o600); err != nil {
		t.Fatal(err)
	}
	out := newFifoReader(t, filepath.Join(b, "stdout"))
	if _, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c2", Bundle: b, Stdin: stdin, Stdout: out.path}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Start(ctx, &taskapi.StartRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	// As containerd's client does: write, close its end, then CloseIO.
	w, err := os.OpenFile(stdin, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("hello through the fifo\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := e.client.CloseIO(ctx, &taskapi.CloseIORequest{ID: "c2", Stdin: true}); err != nil {
		t.Fatal(err)
	}
	wr, err := e.client.Wait(ctx, &taskapi.WaitRequest{ID: "c2"})
	if err != nil {
		t.Fatal(err)
	}
	if wr.ExitStatus != 0 {
		t.Errorf("exit %d", wr.ExitStatus)
	}
	if s := out.text(t); s != "hello through the fifo\n" {
		t.Errorf("stdout %q", s)
	}
}

func execSpec(t *testing.T, p specs.Process) *anypb.Any {
	t.Helper()
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	// containerd's type URL for a process spec (containerd 1.6 typeurl
	// registration of specs.Process).
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data}
}

func TestExecKillAndPids(t *testing.T) {
	e := newEnv(t)
	ctx := ctx30(t)
	b := e.bundle(t, "c3", specs.Process{Args: []string{"sleep", "1000"}, Env: []string{"PATH=/usr/bin:/bin"}})
	if _, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c3", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Start(ctx, &taskapi.StartRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	out := newFifoReader(t, filepath.Join(b, "exec-stdout"))
	_, err := e.client.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c3", ExecID: "x1", Stdout: out.path,
		Spec: execSpec(t, specs.Process{Args: []string{"sh", "-c", "echo exec $FOO; exit 7"}, Env: []string{"PATH=/usr/bin:/bin", "FOO=bar"}, Cwd: "/"})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c3", ExecID: "x1",
		Spec: execSpec(t, specs.Process{Args: []string{"true"}})}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second exec x1: %v, want AlreadyExists", err)
	}
	xs, err := e.client.Start(ctx, &taskapi.StartRequest{ID: "c3", ExecID: "x1"})
	if err != nil {
		t.Fatal(err)
	}
	wr, err := e.client.Wait(ctx, &taskapi.WaitRequest{ID: "c3", ExecID: "x1"})
	if err != nil || wr.ExitStatus != 7 {
		t.Fatalf("exec wait: %v, %v", wr, err)
	}
	if s := out.text(t); s != "exec bar\n" {
		t.Errorf("exec stdout %q", s)
	}
	if !e.events.has(TopicTaskExecAdded) || !e.events.has(TopicTaskExecStarted) {
		t.Error("no exec-added or exec-started event")
	}
	if _, err := e.client.Delete(ctx, &taskapi.DeleteRequest{ID: "c3", ExecID: "x1"}); err != nil {
		t.Fatal(err)
	}
	init, err := e.client.State(ctx, &taskapi.StateRequest{ID: "c3"})
	if err != nil || init.Status != task.Status_RUNNING {
		t.Fatalf("init state: %v, %v", init, err)
	}
	pids, err := e.client.Pids(ctx, &taskapi.PidsRequest{ID: "c3"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pids.Processes) != 1 || pids.Processes[0].Pid != init.Pid || init.Pid == xs.Pid {
		t.Errorf("pids %v (init %d)", pids.Processes, init.Pid)
	}
	if _, err := e.client.Delete(ctx, &taskapi.DeleteRequest{ID: "c3"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Delete of a running task: %v, want FailedPrecondition", err)
	}
	if _, err := e.client.Kill(ctx, &taskapi.KillRequest{ID: "c3", Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
		t.Fatal(err)
	}
	wr, err = e.client.Wait(ctx, &taskapi.WaitRequest{ID: "c3"})
	if err != nil || wr.ExitStatus != 128+9 {
		t.Fatalf("init wait after kill: %v, %v", wr, err)
	}
	if _, err := e.client.Kill(ctx, &taskapi.KillRequest{ID: "c3", Signal: 9}); status.Code(err) != codes.NotFound {
		t.Errorf("Kill of a finished task: %v, want NotFound", err)
	}
	if _, err := e.client.Exec(ctx, &taskapi.ExecProcessRequest{ID: "c3", ExecID: "x2",
		Spec: execSpec(t, specs.Process{Args: []string{"true"}})}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("exec in a stopped task: %v, want FailedPrecondition", err)
	}
	if _, err := e.client.Delete(ctx, &taskapi.DeleteRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Shutdown(ctx, &taskapi.ShutdownRequest{ID: "c3"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.shutdown:
	case <-ctx.Done():
		t.Fatal("Shutdown with no task left did not end the shim")
	}
}

func TestTerminal(t *testing.T) {
	e := newEnv(t)
	ctx := ctx30(t)
	b := e.bundle(t, "c4", specs.Process{Terminal: true, ConsoleSize: &specs.Box{Height: 30, Width: 100},
		Args: []string{"sh", "-c", "tty; stty size"}, Env: []string{"PATH=/usr/bin:/bin"}})
	out := newFifoReader(t, filepath.Join(b, "stdout"))
	if _, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c4", Bundle: b, Stdout: out.path, Terminal: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Start(ctx, &taskapi.StartRequest{ID: "c4"}); err != nil {
		t.Fatal(err)
	}
	wr, err := e.client.Wait(ctx, &taskapi.WaitRequest{ID: "c4"})
	if err != nil || wr.ExitStatus != 0 {
		t.Fatalf("wait: %v, %v", wr, err)
	}
	s := out.text(t)
	if !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, "30 100") {
		t.Errorf("terminal output %q: want a /dev/pts name and the size 30 100", s)
	}
}

func TestKillCreatedAndBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := ctx30(t)
	b := e.bundle(t, "c5", specs.Process{Args: []string{"true"}})
	if _, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c5", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c5", Bundle: b}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second Create: %v, want AlreadyExists", err)
	}
	if _, err := e.client.Kill(ctx, &taskapi.KillRequest{ID: "c5", Signal: 15}); err != nil {
		t.Fatal(err)
	}
	wr, err := e.client.Wait(ctx, &taskapi.WaitRequest{ID: "c5"})
	if err != nil || wr.ExitStatus != 128+15 {
		t.Fatalf("wait: %v, %v", wr, err)
	}
	if _, err := e.client.Start(ctx, &taskapi.StartRequest{ID: "c5"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Start after Kill: %v, want FailedPrecondition", err)
	}

	bad := e.bundle(t, "c6", specs.Process{Args: []string{}})
	_, err = e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c6", Bundle: bad})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "process.args is empty") {
		t.Errorf("Create with empty args: %v", err)
	}
	_, err = e.client.Create(ctx, &taskapi.CreateTaskRequest{ID: "c7", Bundle: filepath.Join(e.dir, "nothing")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "config.json") {
		t.Errorf("Create without a bundle: %v", err)
	}
	if _, err := e.client.State(ctx, &taskapi.StateRequest{ID: "c6"}); status.Code(err) != codes.NotFound {
		t.Errorf("a refused Create left task c6: %v", err)
	}
}

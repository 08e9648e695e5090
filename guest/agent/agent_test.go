package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
)

// unixListener serves the agent on a unix socket in tests (AF_VSOCK needs
// a VM).
type unixListener struct{ net.Listener }

func (l unixListener) Accept() (io.ReadWriteCloser, error) { return l.Listener.Accept() }

// fakeClock records what the agent would set: tests must not change the
// host's clock.
type fakeClock struct {
	mu  sync.Mutex
	set []time.Time
}

func (c *fakeClock) SetRealtime(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set = append(c.set, t)
	return nil
}

type fakeEntropy struct {
	mu  sync.Mutex
	got [][]byte
}

func (e *fakeEntropy) AddAndReseed(b []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, append([]byte(nil), b...))
	return nil
}

type fakeNetwork struct {
	mu  sync.Mutex
	got []proto.Parsed
}

func (n *fakeNetwork) Configure(p proto.Parsed) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.got = append(n.got, p)
	return nil
}

// fakeHost records host names instead of setting this host's.
type fakeHost struct {
	mu  sync.Mutex
	got []string
}

func (h *fakeHost) SetHostname(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, name)
	return nil
}

// testAgent is an agent serving on a unix socket in the test process.
type testAgent struct {
	sock    string
	srv     *Server
	cfg     Config
	clock   *fakeClock
	entropy *fakeEntropy
	network *fakeNetwork
	host    *fakeHost
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (processes run with credentials, files get owners)")
	}
}

func startAgent(t *testing.T, mod func(*Config)) *testAgent {
	t.Helper()
	needRoot(t)
	dir := t.TempDir()
	ta := &testAgent{sock: filepath.Join(dir, "agent.sock"), clock: &fakeClock{}, entropy: &fakeEntropy{}, network: &fakeNetwork{}, host: &fakeHost{}}
	ta.cfg = Config{
		Root: "/", RunDir: filepath.Join(dir, "run"), ResolvConf: filepath.Join(dir, "resolv.conf"),
		Env:   []string{"PATH=" + os.Getenv("PATH"), "LANG=C"},
		Clock: ta.clock, Entropy: ta.entropy, Network: ta.network, Host: ta.host,
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
	if mod != nil {
		mod(&ta.cfg)
	}
	l, err := net.Listen("unix", ta.sock)
	if err != nil {
		t.Fatal(err)
	}
	ta.srv = New(ta.cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ta.srv.Serve(ctx, unixListener{l}) }()
	t.Cleanup(func() {
		// Leave no process behind (while the reaper runs).
		for _, p := range ta.srv.procs.list() {
			if p.exitStatus() == nil {
				_ = p.signal(int(unix.SIGKILL), false)
				<-p.exited
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ta
}

func (ta *testAgent) dial(t *testing.T) *client.Client {
	t.Helper()
	return ta.dialWith(t, client.Options{Name: t.Name()})
}

func (ta *testAgent) dialWith(t *testing.T, opts client.Options) *client.Client {
	t.Helper()
	conn, err := net.Dial("unix", ta.sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(context.Background(), conn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run starts a command and collects its output and status.
func run(t *testing.T, c *client.Client, req proto.ExecStart) (stdout, stderr string, st proto.ExitStatus) {
	t.Helper()
	p, err := c.Start(context.Background(), req)
	if err != nil {
		t.Fatalf("start %q: %v", req.Args, err)
	}
	var o, e bytes.Buffer
	st, err = p.Copy(context.Background(), &o, &e)
	if err != nil {
		t.Fatalf("%q: %v", req.Args, err)
	}
	return o.String(), e.String(), st
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

// nextLine reads output events until a whole line ending in "\n" came.
func nextOutput(t *testing.T, p *client.Process, want string) {
	t.Helper()
	var got []byte
	for !bytes.Contains(got, []byte(want)) {
		ev, err := p.Next(context.Background())
		if err != nil {
			t.Fatalf("waiting for %q (have %q): %v", want, got, err)
		}
		if ev.Kind != client.EventOutput {
			t.Fatalf("waiting for %q (have %q): event %+v", want, got, ev)
		}
		got = append(got, ev.Data...)
	}
	if string(got) != want {
		t.Fatalf("output %q, want %q", got, want)
	}
}

func nextExit(t *testing.T, p *client.Process) proto.ExitStatus {
	t.Helper()
	for {
		ev, err := p.Next(context.Background())
		if err != nil {
			t.Fatalf("waiting for the exit: %v", err)
		}
		switch ev.Kind {
		case client.EventExit:
			return *ev.Exit
		case client.EventOutput:
			t.Fatalf("unexpected output %q before the exit", ev.Data)
		}
	}
}

func TestExecPipesAndExitStatus(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	out, errOut, st := run(t, c, proto.ExecStart{Args: sh("echo out; echo err >&2; exit 3")})
	if out != "out\n" || errOut != "err\n" || st.Code != 3 || st.Signal != 0 || st.Output != 8 {
		t.Errorf("got stdout %q stderr %q status %+v; want out, err, code 3, 8 bytes", out, errOut, st)
	}
	_, _, st = run(t, c, proto.ExecStart{Args: sh("kill -9 $$")})
	if st.Code != 137 || st.Signal != 9 {
		t.Errorf("killed by SIGKILL: status %+v, want code 137 signal 9", st)
	}
	_, err := c.Start(context.Background(), proto.ExecStart{Args: []string{"no-such-command-anywhere"}})
	if !proto.IsNotFound(err) || !strings.Contains(err.Error(), "no-such-command-anywhere") {
		t.Errorf("a missing command: %v, want not_found naming it", err)
	}
}

func TestExecUserCwdEnv(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} { // nobody may enter them
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, _, st := run(t, c, proto.ExecStart{
		Args: sh(`echo "$(id -u):$(id -g) $(pwd) $FOO $LANG"`),
		User: "65534:65534", Cwd: dir, Env: map[string]string{"FOO": "bar", "LANG": "C.UTF-8"},
	})
	if want := fmt.Sprintf("65534:65534 %s bar C.UTF-8\n", dir); out != want || st.Code != 0 {
		t.Errorf("got %q (status %+v), want %q", out, st, want)
	}
}

// stdin reaches cat, and closing it ends cat.
func TestExecStdinEOF(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	p, err := c.Start(context.Background(), proto.ExecStart{Args: []string{"cat"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	in := p.Stdin()
	if _, err := io.WriteString(in, "hello\n"); err != nil {
		t.Fatal(err)
	}
	nextOutput(t, p, "hello\n")
	if _, err := io.WriteString(in, "world\n"); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	nextOutput(t, p, "world\n")
	if st := nextExit(t, p); st.Code != 0 {
		t.Errorf("cat after EOF: %+v, want exit 0", st)
	}
	// The unary input path: EOF through exec.input.
	p, err = c.Start(context.Background(), proto.ExecStart{Args: []string{"cat"}, Stdin: true, Tag: "cat2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Input(context.Background(), proto.ProcessRef{Tag: "cat2"}, []byte("unary\n"), true); err != nil {
		t.Fatal(err)
	}
	nextOutput(t, p, "unary\n")
	nextExit(t, p)
	if err := c.Input(context.Background(), proto.ProcessRef{Tag: "cat2"}, []byte("late"), false); proto.CodeOf(err) != proto.CodePrecondition {
		t.Errorf("input after EOF: %v, want failed_precondition", err)
	}
	// Without stdin, input is refused.
	p, err = c.Start(context.Background(), proto.ExecStart{Args: sh("sleep 1000"), Tag: "nostdin"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Input(context.Background(), proto.ProcessRef{Tag: "nostdin"}, []byte("x"), false); proto.CodeOf(err) != proto.CodePrecondition {
		t.Errorf("input to a process without stdin: %v, want failed_precondition", err)
	}
	if err := c.Signal(context.Background(), p.Ref(), int(unix.SIGKILL), false); err != nil {
		t.Fatal(err)
	}
	nextExit(t, p)
}

// A command printing a line every 100 ms is seen line by line, in order,
// each while the process is still running: the process prints the next
// line only once the test has seen this one (it waits for a file the test
// makes), so no line can be held back until the end without the test
// hanging.
func TestExecOutputStreamsAsProduced(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	dir := t.TempDir()
	script := fmt.Sprintf(`for i in 1 2 3 4 5; do echo line$i; while [ ! -e %s/seen$i ]; do sleep 0.1; done; done`, dir)
	p, err := c.Start(context.Background(), proto.ExecStart{Args: sh(script)})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		nextOutput(t, p, fmt.Sprintf("line%d\n", i))
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seen%d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if st := nextExit(t, p); st.Code != 0 {
		t.Errorf("status %+v", st)
	}
}

func TestExecTTY(t *testing.T) {
	if _, err := os.Stat(ptmx); err != nil {
		t.Skip("no /dev/ptmx")
	}
	ta := startAgent(t, nil)
	c := ta.dial(t)
	p, err := c.Start(context.Background(), proto.ExecStart{
		Args: sh(`[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo "terminal $TERM"; stty size; read x; stty size`),
		TTY:  &proto.TTYSize{Cols: 80, Rows: 24},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A terminal's line discipline turns "\n" into "\r\n".
	nextOutput(t, p, "terminal xterm\r\n24 80\r\n")
	if err := c.Resize(context.Background(), p.Ref(), proto.TTYSize{Cols: 132, Rows: 50}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(p.Stdin(), "go\n"); err != nil {
		t.Fatal(err)
	}
	nextOutput(t, p, "go\r\n50 132\r\n") // the echo of the input, then the size
	if st := nextExit(t, p); st.Code != 0 {
		t.Errorf("status %+v", st)
	}
	// A pipe process is not on a terminal and cannot be resized.
	out, _, _ := run(t, c, proto.ExecStart{Args: sh(`[ -t 1 ] && echo terminal || echo pipe`)})
	if out != "pipe\n" {
		t.Errorf("pipes: %q", out)
	}
}

// A signal goes to the process group: the command's background children
// die with it.
func TestExecSignalProcessGroup(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	p, err := c.Start(context.Background(), proto.ExecStart{Args: sh("sleep 1000 & echo $!; wait")})
	if err != nil {
		t.Fatal(err)
	}
	var line []byte
	for !bytes.HasSuffix(line, []byte("\n")) {
		ev, err := p.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		line = append(line, ev.Data...)
	}
	var child int
	fmt.Sscanf(string(line), "%d", &child)
	if err := c.Signal(context.Background(), p.Ref(), int(unix.SIGTERM), false); err != nil {
		t.Fatal(err)
	}
	if st := nextExit(t, p); st.Signal != int(unix.SIGTERM) {
		t.Errorf("status %+v, want killed by SIGTERM", st)
	}
	waitGone(t, child)
	if err := c.Signal(context.Background(), p.Ref(), int(unix.SIGTERM), true); proto.CodeOf(err) != proto.CodePrecondition {
		t.Errorf("signal to an exited leader: %v", err)
	}
}

// waitGone waits for a process to be gone (or a zombie whose parent has
// yet to reap it): a process the test does not own.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still runs", pid)
}

// A client whose connection drops mid-stream reattaches and gets what it
// had not acknowledged, replayed from the offset it gives, then the rest
// as produced; a finished process's output waits for it.
func TestExecReattachReplay(t *testing.T) {
	ta := startAgent(t, nil)
	c1 := ta.dial(t)
	p, err := c1.Start(context.Background(), proto.ExecStart{
		Args: sh("echo first; read x; echo second; read y; echo third"), Stdin: true, Tag: "job",
	})
	if err != nil {
		t.Fatal(err)
	}
	p.SetManualAck()
	nextOutput(t, p, "first\n")
	c1.Close() // the client dies with "first" unacknowledged

	c2 := ta.dial(t)
	ref := proto.ProcessRef{Tag: "job"}
	if err := c2.Input(context.Background(), ref, []byte("go\n"), false); err != nil {
		t.Fatal(err)
	}
	p2, err := c2.Attach(context.Background(), proto.ExecAttach{ProcessRef: ref, From: 0})
	if err != nil {
		t.Fatal(err)
	}
	p2.SetManualAck()
	nextOutput(t, p2, "first\nsecond\n")
	if err := p2.Ack(6); err != nil { // "first\n" is safe now
		t.Fatal(err)
	}
	p2.Detach()

	// Resuming from the acknowledged offset misses nothing.
	p3, err := c2.Attach(context.Background(), proto.ExecAttach{ProcessRef: ref, From: 6})
	if err != nil {
		t.Fatal(err)
	}
	p3.SetManualAck()
	nextOutput(t, p3, "second\n")
	if err := c2.Input(context.Background(), ref, []byte("go\n"), true); err != nil {
		t.Fatal(err)
	}
	nextOutput(t, p3, "third\n")
	if st := nextExit(t, p3); st.Code != 0 || st.Output != 19 {
		t.Errorf("status %+v, want 0 after 19 bytes", st)
	}

	// After the exit, a new client still gets everything unacknowledged;
	// what was acknowledged is reported as a gap.
	c3 := ta.dial(t)
	p4, err := c3.Attach(context.Background(), proto.ExecAttach{ProcessRef: ref, From: 0})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p4.Next(context.Background())
	if err != nil || ev.Kind != client.EventGap || *ev.Gap != (proto.Gap{From: 0, To: 6}) {
		t.Fatalf("first event %+v, %v; want the gap [0,6)", ev, err)
	}
	nextOutput(t, p4, "second\nthird\n")
	nextExit(t, p4)

	ps, err := c3.List(context.Background())
	if err != nil || len(ps) != 1 || ps[0].Tag != "job" || ps[0].Exit == nil {
		t.Fatalf("list: %+v, %v", ps, err)
	}
	if err := c3.Release(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	if _, err := c3.Attach(context.Background(), proto.ExecAttach{ProcessRef: ref}); !proto.IsNotFound(err) {
		t.Errorf("attach after release: %v, want not_found", err)
	}
}

// With nobody reading, a process's output stops at its buffer and the
// process blocks in write(2); nothing is lost, and it finishes once a
// client reads.
func TestExecBoundedBufferBlocks(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	const total = 1 << 20
	const capacity = proto.MinOutputBuffer
	p, err := c.Start(context.Background(), proto.ExecStart{
		Args: []string{"head", "-c", fmt.Sprint(total), "/dev/zero"}, BufferSize: capacity, Tag: "big",
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Detach()
	var info proto.ProcessInfo
	for {
		ps, err := c.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		info = ps[0]
		if info.Output.End-info.Output.Start >= capacity/2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	// The process cannot have written 1 MiB into 64 KiB of buffer and a
	// 64 KiB pipe: it is blocked.
	if info.Exit != nil || info.Output.End-info.Output.Start > capacity || info.Output.End >= total {
		t.Fatalf("with no reader: %+v; want a running process and at most %d bytes buffered", info, capacity)
	}
	p, err = c.Attach(context.Background(), proto.ExecAttach{ProcessRef: proto.ProcessRef{Tag: "big"}})
	if err != nil {
		t.Fatal(err)
	}
	var n countWriter
	st, err := p.Copy(context.Background(), &n, &n)
	if err != nil || st.Code != 0 || n != total || st.Output != total {
		t.Errorf("read %d bytes, status %+v, %v; want %d bytes and exit 0", n, st, err, total)
	}
}

// With Overwrite, a process nobody reads runs to its end; the buffer
// keeps the newest output and reports the rest as a gap.
func TestExecBoundedBufferOverwrites(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	const total = 1 << 20
	p, err := c.Start(context.Background(), proto.ExecStart{
		Args:       sh(fmt.Sprintf("head -c %d /dev/zero; echo end", total)),
		BufferSize: proto.MinOutputBuffer, Overwrite: true, Tag: "chatty",
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Detach()
	ref := proto.ProcessRef{Tag: "chatty"}
	st, err := c.Wait(context.Background(), ref)
	if err != nil || st.Code != 0 {
		t.Fatalf("wait: %+v, %v", st, err)
	}
	p, err = c.Attach(context.Background(), proto.ExecAttach{ProcessRef: ref})
	if err != nil {
		t.Fatal(err)
	}
	// The exit may come before the last of the pipe is read: more may be
	// overwritten while this client reads; every byte is either received
	// or reported lost, in order.
	var out bytes.Buffer
	var lost, at int64
	for first := true; ; first = false {
		ev, err := p.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == client.EventExit {
			break
		}
		if first && (ev.Kind != client.EventGap || ev.Gap.From != 0) {
			t.Fatalf("first event %+v: want a gap from 0", ev)
		}
		if ev.Offset != at {
			t.Fatalf("event at offset %d, want %d", ev.Offset, at)
		}
		if ev.Kind == client.EventGap {
			lost += ev.Gap.To - ev.Gap.From
			at = ev.Gap.To
		} else {
			out.Write(ev.Data)
			at += int64(len(ev.Data))
		}
	}
	if !bytes.HasSuffix(out.Bytes(), []byte("\x00end\n")) || int64(out.Len())+lost != total+4 {
		t.Errorf("received %d bytes ending %q and lost %d; want %d in all, ending with \"end\"", out.Len(), out.Bytes()[max(0, out.Len()-8):], lost, total+4)
	}
}

type countWriter int

func (w *countWriter) Write(p []byte) (int, error) { *w += countWriter(len(p)); return len(p), nil }

func TestExecConcurrent(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := c.Start(context.Background(), proto.ExecStart{Args: sh(fmt.Sprintf("seq %d 3000; echo done%d >&2", i, i))})
			if err != nil {
				errs <- err
				return
			}
			var o, e bytes.Buffer
			st, err := p.Copy(context.Background(), &o, &e)
			var want strings.Builder
			for k := i; k <= 3000; k++ {
				fmt.Fprintf(&want, "%d\n", k)
			}
			if err != nil || st.Code != 0 || o.String() != want.String() || e.String() != fmt.Sprintf("done%d\n", i) {
				errs <- fmt.Errorf("exec %d: %d bytes of stdout, stderr %q, %+v, %v", i, o.Len(), e.String(), st, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Cancelling a Start's context detaches: the process goes on.
func TestExecDetachKeepsRunning(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	p, err := c.Start(ctx, proto.ExecStart{Args: sh("read x; echo after $x"), Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := p.Next(context.Background()); proto.CodeOf(err) != proto.CodeCanceled {
		t.Errorf("next after cancel: %v, want canceled", err)
	}
	if err := c.Input(context.Background(), p.Ref(), []byte("ok\n"), false); err != nil {
		t.Fatal(err)
	}
	p2, err := c.Attach(context.Background(), proto.ExecAttach{ProcessRef: p.Ref()})
	if err != nil {
		t.Fatal(err)
	}
	var o bytes.Buffer
	if st, err := p2.Copy(context.Background(), &o, &o); err != nil || o.String() != "after ok\n" || st.Code != 0 {
		t.Errorf("%q %+v %v", o.String(), st, err)
	}
}

func TestHealth(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	h, err := c.Health(context.Background())
	if err != nil || h.Agent != Name {
		t.Fatalf("%+v %v", h, err)
	}
	if !c.Hello().Supports(proto.FeatureExecTTY) || !c.Hello().Serves(proto.OpRestore) {
		t.Errorf("hello: %+v", c.Hello())
	}
}

// errors.Is works against a code.
func TestErrorCodes(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	_, err := c.Stat(context.Background(), proto.PathRequest{Path: "/no/such/path"})
	if !errors.Is(err, &proto.Error{Code: proto.CodeNotFound}) {
		t.Errorf("stat of a missing path: %v", err)
	}
}

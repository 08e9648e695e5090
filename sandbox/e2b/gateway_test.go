package e2b

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/guest/agent"
	"github.com/embervm/ember/sandbox"
)

// unixListener serves the agent on a unix socket (AF_VSOCK needs a VM).
type unixListener struct{ net.Listener }

func (l unixListener) Accept() (io.ReadWriteCloser, error) { return l.Listener.Accept() }

// testClock and testEntropy keep the agent's restore steps off the host.
type testClock struct{}

func (testClock) SetRealtime(time.Time) error { return nil }

type testEntropy struct{}

func (testEntropy) AddAndReseed([]byte) error { return nil }

type testNetwork struct{}

func (testNetwork) Configure(proto.Parsed) error { return nil }

// startAgent serves a real ember-agent in the test process, standing in
// for a sandbox's guest, and returns a client of it.
func startAgent(t *testing.T) *agentclient.Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent runs processes with credentials and gives files owners")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := agent.New(agent.Config{
		Root: "/", RunDir: filepath.Join(dir, "run"), ResolvConf: filepath.Join(dir, "resolv.conf"),
		// HOME of its own: commands run in a login shell, which would
		// otherwise read this host's dotfiles (and what they print).
		Env:   []string{"PATH=" + os.Getenv("PATH"), "LANG=C", "HOME=" + t.TempDir()},
		Clock: testClock{}, Entropy: testEntropy{}, Network: testNetwork{},
		Log: slog.New(slog.DiscardHandler),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, unixListener{l}) }()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := agentclient.New(context.Background(), conn, agentclient.Options{Name: "e2b-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Leave no process behind.
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		if ps, err := ac.List(cctx); err == nil {
			for _, p := range ps {
				if p.Exit == nil {
					ac.Signal(cctx, proto.ProcessRef{PID: p.PID}, 9, false)
					ac.Wait(cctx, proto.ProcessRef{PID: p.PID})
				}
			}
		}
		ac.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Serve: %v", err)
		}
	})
	return ac
}

// oneSandbox is a Backend with one running sandbox, whose agent is the
// stand-in: a fake of the lookup only.
type oneSandbox struct {
	id  string
	ac  *agentclient.Client
	env map[string]string
}

func (b oneSandbox) Agent(_ context.Context, id string) (*agentclient.Client, map[string]string, error) {
	if id != b.id {
		return nil, nil, &sandbox.Error{Kind: sandbox.KindNotFound, Msg: "sandbox " + id + ": no such sandbox"}
	}
	return b.ac, b.env, nil
}

func (b oneSandbox) Running() []string { return []string{b.id} }

func testTokens(t *testing.T) Tokens {
	tk, err := NewTokens(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// gatewayEnv is a gateway on an HTTP/1.1 test server in front of the
// stand-in agent, for sandbox "sb-test".
type gatewayEnv struct {
	t      *testing.T
	url    string
	tokens Tokens
	dir    string
}

const testID = "sb-test"

func startGateway(t *testing.T) *gatewayEnv {
	ac := startAgent(t)
	tk := testTokens(t)
	srv := httptest.NewServer(NewGateway(oneSandbox{id: testID, ac: ac, env: map[string]string{"FROM_SANDBOX": "yes"}}, tk, nil))
	t.Cleanup(srv.Close)
	return &gatewayEnv{t: t, url: srv.URL, tokens: tk, dir: t.TempDir()}
}

// headers are what the SDK sends to envd.
func (g *gatewayEnv) headers(id, token string) http.Header {
	h := http.Header{}
	h.Set("E2b-Sandbox-Id", id)
	h.Set("E2b-Sandbox-Port", "49983")
	if token != "" {
		h.Set("X-Access-Token", token)
	}
	return h
}

// unary calls an RPC with connect-go's client (the Connect protocol with
// JSON, as the SDK speaks it).
func unary[Req, Res any](g *gatewayEnv, procedure string, req *Req, h http.Header) (*Res, error) {
	c := connect.NewClient[Req, Res](http.DefaultClient, g.url+procedure, connect.WithCodec(jsonCodec{}))
	r := connect.NewRequest(req)
	for k, v := range h {
		r.Header()[k] = v
	}
	resp, err := c.CallUnary(context.Background(), r)
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// stream calls a server-streaming RPC and returns its stream.
func stream[Req, Res any](g *gatewayEnv, ctx context.Context, procedure string, req *Req, h http.Header) (*connect.ServerStreamForClient[Res], error) {
	c := connect.NewClient[Req, Res](http.DefaultClient, g.url+procedure, connect.WithCodec(jsonCodec{}))
	r := connect.NewRequest(req)
	for k, v := range h {
		r.Header()[k] = v
	}
	return c.CallServerStream(ctx, r)
}

func ptr[T any](v T) *T { return &v }

func (g *gatewayEnv) ok() http.Header { return g.headers(testID, g.tokens.For(testID)) }

// run starts cmd with bash as commands.run does and collects its events.
func (g *gatewayEnv) run(cmd string, stdin bool) (pid uint32, stdout, stderr string, end *EndEvent) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := stream[StartRequest, ProcessStreamResponse](g, ctx, "/process.Process/Start",
		&StartRequest{Process: &ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", cmd}, Envs: map[string]string{"FROM_CALL": "1"}}, Stdin: ptr(stdin)}, g.ok())
	if err != nil {
		g.t.Fatal(err)
	}
	defer st.Close()
	first := true
	for st.Receive() {
		ev := st.Msg().Event
		switch {
		case first && (ev == nil || ev.Start == nil):
			g.t.Fatalf("first event %+v, want start", ev)
		case ev.Start != nil:
			pid = ev.Start.PID
		case ev.Data != nil:
			stdout += string(ev.Data.Stdout)
			stderr += string(ev.Data.Stderr)
		case ev.End != nil:
			end = ev.End
		}
		first = false
	}
	if err := st.Err(); err != nil {
		g.t.Fatal(err)
	}
	return
}

// TestGatewayCommands: a command's output, stderr, exit code and
// environment; a process read with Connect, fed with SendInput and
// CloseStdin; SendSignal; List.
func TestGatewayCommands(t *testing.T) {
	g := startGateway(t)
	pid, out, errOut, end := g.run(`echo hi; echo oops >&2; echo "$FROM_SANDBOX $FROM_CALL"; exit 3`, false)
	if pid == 0 || out != "hi\nyes 1\n" || errOut != "oops\n" {
		t.Fatalf("pid %d stdout %q stderr %q", pid, out, errOut)
	}
	if end == nil || end.ExitCode != 3 || !end.Exited || end.Status != "exit status 3" {
		t.Fatalf("end %+v", end)
	}
	if _, _, _, end := g.run("true", false); end == nil || end.ExitCode != 0 || !end.Exited {
		t.Fatalf("end %+v", end)
	}

	// A background cat: its stream is read through Connect while input
	// comes through SendInput, and CloseStdin ends it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := stream[StartRequest, ProcessStreamResponse](g, ctx, "/process.Process/Start",
		&StartRequest{Process: &ProcessConfig{Cmd: "cat"}, Tag: ptr("cat-1"), Stdin: ptr(true)}, g.ok())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() || st.Msg().Event.Start == nil {
		t.Fatalf("no start event: %v", st.Err())
	}
	catPID := st.Msg().Event.Start.PID
	st.Close() // the SDK's disconnect: the process goes on

	list, err := unary[Empty, ListResponse](g, "/process.Process/List", &Empty{}, g.ok())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range list.Processes {
		if p.PID == catPID && p.Tag != nil && *p.Tag == "cat-1" && p.Config.Cmd == "cat" {
			found = true
		}
	}
	if !found {
		t.Fatalf("List %+v lacks cat (pid %d)", list.Processes, catPID)
	}
	cs, err := stream[ConnectRequest, ProcessStreamResponse](g, ctx, "/process.Process/Connect", &ConnectRequest{Process: &ProcessSelector{Tag: ptr("cat-1")}}, g.ok())
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if !cs.Receive() || cs.Msg().Event.Start == nil || cs.Msg().Event.Start.PID != catPID {
		t.Fatalf("Connect's first event: %+v %v", cs.Msg(), cs.Err())
	}
	if _, err := unary[SendInputRequest, Empty](g, "/process.Process/SendInput", &SendInputRequest{Process: &ProcessSelector{PID: &catPID}, Input: &ProcessInput{Stdin: []byte("meow\n")}}, g.ok()); err != nil {
		t.Fatal(err)
	}
	var got string
	for got != "meow\n" && cs.Receive() {
		if d := cs.Msg().Event.Data; d != nil {
			got += string(d.Stdout)
		}
	}
	if got != "meow\n" {
		t.Fatalf("cat echoed %q (%v)", got, cs.Err())
	}
	if _, err := unary[CloseStdinRequest, Empty](g, "/process.Process/CloseStdin", &CloseStdinRequest{Process: &ProcessSelector{PID: &catPID}}, g.ok()); err != nil {
		t.Fatal(err)
	}
	var catEnd *EndEvent
	for cs.Receive() {
		if e := cs.Msg().Event.End; e != nil {
			catEnd = e
		}
	}
	if catEnd == nil || catEnd.ExitCode != 0 {
		t.Fatalf("cat's end %+v (%v)", catEnd, cs.Err())
	}

	// SendSignal SIGKILL ends a sleep: exit code -1, "signal: killed".
	sl, err := stream[StartRequest, ProcessStreamResponse](g, ctx, "/process.Process/Start",
		&StartRequest{Process: &ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "sleep 600"}}, Stdin: ptr(false)}, g.ok())
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	if !sl.Receive() || sl.Msg().Event.Start == nil {
		t.Fatal("no start")
	}
	slPID := sl.Msg().Event.Start.PID
	body := `{"process":{"pid":` + jsonNum(slPID) + `},"signal":"SIGNAL_SIGKILL"}`
	var sig SendSignalRequest
	if err := json.Unmarshal([]byte(body), &sig); err != nil || sig.Signal != 9 {
		t.Fatalf("decoding %s: %v %+v", body, err, sig)
	}
	if _, err := unary[SendSignalRequest, Empty](g, "/process.Process/SendSignal", &sig, g.ok()); err != nil {
		t.Fatal(err)
	}
	var slEnd *EndEvent
	for sl.Receive() {
		if e := sl.Msg().Event.End; e != nil {
			slEnd = e
		}
	}
	if slEnd == nil || slEnd.ExitCode != -1 || slEnd.Exited || slEnd.Status != "signal: killed" {
		t.Fatalf("killed sleep's end %+v", slEnd)
	}

	// An unknown pid is not_found (the SDK's commands.kill returns false).
	_, err = unary[SendSignalRequest, Empty](g, "/process.Process/SendSignal", &SendSignalRequest{Process: &ProcessSelector{PID: ptr(uint32(999999))}, Signal: 9}, g.ok())
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("signal to an unknown pid: %v", err)
	}
	// A missing command is invalid_argument.
	st2, err := stream[StartRequest, ProcessStreamResponse](g, ctx, "/process.Process/Start", &StartRequest{}, g.ok())
	if err == nil {
		for st2.Receive() {
		}
		err = st2.Err()
	}
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("start without a command: %v", err)
	}
}

func jsonNum(n uint32) string { b, _ := json.Marshal(n); return string(b) }

// TestGatewayAuth: no token, a wrong token and another sandbox's token
// are refused (401); an unknown sandbox is 502; no sandbox ID is 400.
func TestGatewayAuth(t *testing.T) {
	g := startGateway(t)
	for name, h := range map[string]http.Header{
		"no token":              g.headers(testID, ""),
		"wrong token":           g.headers(testID, "0123"),
		"other sandbox's token": g.headers(testID, g.tokens.For("sb-other")),
	} {
		_, err := unary[PathRequest, EntryResponse](g, "/filesystem.Filesystem/Stat", &PathRequest{Path: "/"}, h)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("%s: Stat: %v, want unauthenticated", name, err)
		}
		req, _ := http.NewRequest("GET", g.url+"/files?path=/etc/hostname", nil)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: GET /files: %d, want 401", name, resp.StatusCode)
		}
	}
	_, err := unary[PathRequest, EntryResponse](g, "/filesystem.Filesystem/Stat", &PathRequest{Path: "/"}, g.headers("sb-gone", g.tokens.For("sb-gone")))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("unknown sandbox: %v, want unavailable (502)", err)
	}
	for _, c := range []struct {
		h    http.Header
		want int
	}{{g.headers(testID, ""), http.StatusNoContent}, {g.headers("sb-gone", ""), http.StatusBadGateway}, {http.Header{}, http.StatusBadRequest}} {
		req, _ := http.NewRequest("GET", g.url+"/health", nil)
		req.Header = c.h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("GET /health %v: %d, want %d", c.h, resp.StatusCode, c.want)
		}
	}
}

// TestGatewayFiles: upload (multipart, octet-stream with gzip), download,
// a signed download URL without a sandbox ID, Stat, ListDir, MakeDir,
// Move, Remove and WatchDir.
func TestGatewayFiles(t *testing.T) {
	g := startGateway(t)
	dir := g.dir
	a := filepath.Join(dir, "sub", "a.txt")

	// Multipart, as files.write sends it.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	fw, _ := mw.CreateFormFile("file", a)
	fw.Write([]byte("x"))
	mw.Close()
	req, _ := http.NewRequest("POST", g.url+"/files?path="+url.QueryEscape(a), &mp)
	req.Header = g.ok()
	req.Header.Set("Content-Type", mw.FormDataContentType())
	var infos []WriteInfo
	doJSON(t, req, http.StatusOK, &infos)
	if len(infos) != 1 || infos[0].Path != a || infos[0].Name != "a.txt" || infos[0].Type != "file" {
		t.Fatalf("write answer %+v", infos)
	}
	if data, _ := os.ReadFile(a); string(data) != "x" {
		t.Fatalf("file holds %q", data)
	}

	// Octet-stream with gzip.
	b := filepath.Join(dir, "b.bin")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte("ember"), 1000))
	zw.Close()
	req, _ = http.NewRequest("POST", g.url+"/files?path="+url.QueryEscape(b), &gz)
	req.Header = g.ok()
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Encoding", "gzip")
	doJSON(t, req, http.StatusOK, &infos)
	if data, _ := os.ReadFile(b); len(data) != 5000 {
		t.Fatalf("gzip upload wrote %d bytes", len(data))
	}

	// Download, and a missing file's 404 in envd's error body.
	req, _ = http.NewRequest("GET", g.url+"/files?path="+url.QueryEscape(a), nil)
	req.Header = g.ok()
	if got := doBytes(t, req, http.StatusOK); string(got) != "x" {
		t.Fatalf("download %q", got)
	}
	req, _ = http.NewRequest("GET", g.url+"/files?path="+url.QueryEscape(filepath.Join(dir, "none")), nil)
	req.Header = g.ok()
	var eb errorBody
	doJSON(t, req, http.StatusNotFound, &eb)
	if eb.Code != 404 {
		t.Fatalf("404 body %+v", eb)
	}

	// A signed URL (downloadUrl): no header, no sandbox ID.
	exp := time.Now().Add(time.Minute).Unix()
	expS := jsonNum(uint32(exp))
	sig := signature(a, "read", "", g.tokens.For(testID), expS)
	resp, err := http.Get(g.url + "/files?path=" + url.QueryEscape(a) + "&signature=" + url.QueryEscape(sig) + "&signature_expiration=" + expS)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(got) != "x" {
		t.Fatalf("signed download: %d %q", resp.StatusCode, got)
	}
	resp, _ = http.Get(g.url + "/files?path=" + url.QueryEscape(a) + "&signature=v1_forged")
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged signature: %d", resp.StatusCode)
	}

	// Stat, ListDir, MakeDir (twice: already_exists), Move, Remove.
	st, err := unary[PathRequest, EntryResponse](g, "/filesystem.Filesystem/Stat", &PathRequest{Path: a}, g.ok())
	if err != nil || st.Entry.Type != FileTypeFile || st.Entry.Size != 1 || st.Entry.Name != "a.txt" || st.Entry.ModifiedTime == nil {
		t.Fatalf("Stat: %+v %v", st, err)
	}
	if _, err := unary[PathRequest, EntryResponse](g, "/filesystem.Filesystem/Stat", &PathRequest{Path: filepath.Join(dir, "none")}, g.ok()); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("Stat of a missing file: %v", err)
	}
	ls, err := unary[ListDirRequest, ListDirResponse](g, "/filesystem.Filesystem/ListDir", &ListDirRequest{Path: dir, Depth: 1}, g.ok())
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, e := range ls.Entries {
		names[e.Name] = e.Type
	}
	if names["sub"] != FileTypeDirectory || names["b.bin"] != FileTypeFile || len(names) != 2 {
		t.Fatalf("ListDir: %v", names)
	}
	nd := filepath.Join(dir, "new", "deep")
	if _, err := unary[PathRequest, EntryResponse](g, "/filesystem.Filesystem/MakeDir", &PathRequest{Path: nd}, g.ok()); err != nil {
		t.Fatal(err)
	}
	if _, err := unary[PathRequest, EntryResponse](g, "/filesystem.Filesystem/MakeDir", &PathRequest{Path: nd}, g.ok()); connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("MakeDir again: %v", err)
	}
	mv, err := unary[MoveRequest, EntryResponse](g, "/filesystem.Filesystem/Move", &MoveRequest{Source: b, Destination: filepath.Join(nd, "c.bin")}, g.ok())
	if err != nil || mv.Entry.Path != filepath.Join(nd, "c.bin") {
		t.Fatalf("Move: %+v %v", mv, err)
	}
	if _, err := unary[PathRequest, Empty](g, "/filesystem.Filesystem/Remove", &PathRequest{Path: filepath.Join(dir, "new")}, g.ok()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after Remove: %v", err)
	}

	// WatchDir: the start event, then a created file.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := g.ok()
	h.Set("Keepalive-Ping-Interval", "1")
	ws, err := stream[WatchDirRequest, WatchDirResponse](g, ctx, "/filesystem.Filesystem/WatchDir", &WatchDirRequest{Path: dir}, h)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if !ws.Receive() || ws.Msg().Start == nil {
		t.Fatalf("WatchDir's first event: %+v %v", ws.Msg(), ws.Err())
	}
	if err := os.WriteFile(filepath.Join(dir, "watched.txt"), []byte("w"), 0o644); err != nil {
		t.Fatal(err)
	}
	for ws.Receive() {
		if ev := ws.Msg().Filesystem; ev != nil && ev.Name == "watched.txt" && ev.Type == EventTypeCreate {
			return
		}
	}
	t.Fatalf("no create event for watched.txt: %v", ws.Err())
}

func doJSON(t *testing.T, req *http.Request, status int, v any) {
	t.Helper()
	data := doBytes(t, req, status)
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s %s: %v: %s", req.Method, req.URL, err, data)
	}
}

func doBytes(t *testing.T, req *http.Request, status int) []byte {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("%s %s: %d %s, want %d", req.Method, req.URL, resp.StatusCode, strings.TrimSpace(string(data)), status)
	}
	return data
}

package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	pemlib "encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testbin"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/client"
)

// bins holds the ember and emberd binaries the tests build (static, as
// ember's seccomp filters need).
var bins string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "emberd-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, name := range []string{"ember", "emberd"} {
		if _, err := testbin.Build(dir, name, "github.com/embervm/ember/cmd/"+name); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	bins = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is an emberd process of a test.
type daemon struct {
	t     *testing.T
	state string
	sock  string
	cmd   *exec.Cmd
	log   bytes.Buffer
	c     *client.Client
}

// startDaemon starts emberd on state and waits until it answers.
func startDaemon(t *testing.T, state string, extra ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, state: state, sock: filepath.Join(state, "emberd.sock")}
	d.cmd = exec.Command(filepath.Join(bins, "emberd"), append([]string{"--state-dir", state, "--socket", d.sock, "--level", "debug"}, extra...)...)
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.c = client.New(d.sock)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.c.Templates(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			d.kill9()
			t.Fatalf("emberd did not answer: %v; its log:\n%s", err, &d.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return d
}

// kill9 kills emberd with SIGKILL, as a crash would.
func (d *daemon) kill9() {
	d.cmd.Process.Kill()
	d.cmd.Wait()
	d.c.Close()
}

// cleanupVMs kills, at the test's end, every ember the state's sandboxes
// recorded (the VMs outlive emberd by design), then emberd.
func cleanupVMs(t *testing.T, state string, d **daemon) {
	t.Cleanup(func() {
		if *d != nil && (*d).cmd.ProcessState == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			sbs, err := (*d).c.Sandboxes(ctx)
			if err == nil {
				for _, sb := range sbs {
					if sb.State != sandbox.StateExited {
						(*d).c.Kill(ctx, sb.ID)
					}
				}
			}
			(*d).kill9()
			if t.Failed() {
				t.Logf("emberd's log:\n%s", &(*d).log)
			}
		}
	})
}

// tinyTemplate writes the tiny sandbox guest and returns its template
// request.
func tinyTemplate(t *testing.T, name string) sandbox.TemplateSpec {
	t.Helper()
	k := filepath.Join(t.TempDir(), "sandbox.elf")
	if err := os.WriteFile(k, tiny.Sandbox(), 0o644); err != nil {
		t.Fatal(err)
	}
	return sandbox.TemplateSpec{Name: name, Kernel: k, MemoryMiB: 16, Ready: sandbox.ReadyCheck{Kind: sandbox.ReadyBootTimer}}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// byID lists the sandboxes by ID.
func byID(t *testing.T, c *client.Client) map[string]sandbox.Sandbox {
	t.Helper()
	sbs, err := c.Sandboxes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]sandbox.Sandbox{}
	for _, sb := range sbs {
		m[sb.ID] = sb
	}
	return m
}

// waitExit waits until sandbox id has ended and returns it.
func waitExit(t *testing.T, c *client.Client, id string) sandbox.Sandbox {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		sb, err := c.Sandbox(ctxT(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if sb.State == sandbox.StateExited {
			return sb
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s is still %s", id, sb.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSandboxesSurviveEmberdCrash: a template from the tiny guest, four
// sandboxes from it, one killed (reason "killed"); emberd is killed with
// SIGKILL and one sandbox's ember while it is down; the restarted emberd
// lists the running ones as running (adopted: they pause, resume and die
// as before) and the other as a VMM crash.
func TestSandboxesSurviveEmberdCrash(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state)
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)

	tpl, err := d.c.BuildTemplate(ctx, tinyTemplate(t, "tiny"))
	if err != nil {
		t.Fatal(err)
	}
	if tpl.State != sandbox.TemplateReady {
		t.Fatalf("template state %q", tpl.State)
	}
	var ids []string
	for range 4 {
		sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny", Metadata: map[string]string{"k": "v"}})
		if err != nil {
			t.Fatal(err)
		}
		if sb.State != sandbox.StateRunning || sb.PID == 0 || sb.Timings.RestoreMS <= 0 || sb.Timings.TotalMS < sb.Timings.RestoreMS {
			t.Fatalf("created sandbox %+v", sb)
		}
		ids = append(ids, sb.ID)
	}
	list := byID(t, d.c)
	for _, id := range ids {
		if list[id].State != sandbox.StateRunning {
			t.Errorf("sandbox %s listed as %q", id, list[id].State)
		}
	}
	var console bytes.Buffer
	if err := d.c.Logs(ctx, ids[0], "", &console); err != nil {
		t.Fatal(err)
	}
	if console.String() != tiny.SandboxReadyLine {
		t.Errorf("console of a restored sandbox %q, want %q (the template's boot line is not repeated)", console.String(), tiny.SandboxReadyLine)
	}

	killed, err := d.c.Kill(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if killed.State != sandbox.StateExited || killed.Exit == nil || killed.Exit.Reason != sandbox.ExitKilled {
		t.Fatalf("killed sandbox: %+v", killed)
	}
	if _, err := os.Stat(killed.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a killed sandbox's API socket is still there: %v", err)
	}

	d.kill9()
	crashed := list[ids[1]]
	if err := syscall.Kill(crashed.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[2:] {
		if err := syscall.Kill(list[id].PID, 0); err != nil {
			t.Fatalf("sandbox %s's ember (pid %d) did not outlive emberd: %v", id, list[id].PID, err)
		}
	}

	d = startDaemon(t, state)
	list = byID(t, d.c)
	if sb := list[ids[0]]; sb.Exit == nil || sb.Exit.Reason != sandbox.ExitKilled {
		t.Errorf("the killed sandbox after the restart: %+v", sb)
	}
	if sb := list[ids[1]]; sb.State != sandbox.StateExited || sb.Exit == nil || sb.Exit.Reason != sandbox.ExitVMMCrash {
		t.Errorf("the sandbox whose ember was killed while emberd was down: %+v, want exited with reason %q", sb, sandbox.ExitVMMCrash)
	}
	for _, id := range ids[2:] {
		if sb := list[id]; sb.State != sandbox.StateRunning {
			t.Errorf("sandbox %s after the restart: %q, want running (adopted)", id, sb.State)
		}
	}
	if _, err := d.c.Pause(ctx, ids[2]); err != nil {
		t.Fatalf("pausing an adopted sandbox: %v", err)
	}
	if _, err := d.c.Pause(ctx, ids[2]); client.StatusOf(err) != http.StatusConflict {
		t.Errorf("pausing a paused sandbox: %v, want 409", err)
	}
	if sb, err := d.c.Resume(ctx, ids[2]); err != nil || sb.State != sandbox.StateRunning {
		t.Fatalf("resuming an adopted sandbox: %+v, %v", sb, err)
	}
	if sb, err := d.c.Kill(ctx, ids[2]); err != nil || sb.Exit == nil || sb.Exit.Reason != sandbox.ExitKilled {
		t.Fatalf("killing an adopted sandbox: %+v, %v", sb, err)
	}
	// An adopted ember that dies is noticed (through its pidfd).
	if err := syscall.Kill(list[ids[3]].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if sb := waitExit(t, d.c, ids[3]); sb.Exit.Reason != sandbox.ExitVMMCrash {
		t.Errorf("an adopted sandbox whose ember died: %+v, want %q", sb.Exit, sandbox.ExitVMMCrash)
	}
	// Killing an ended sandbox forgets it.
	if _, err := d.c.Kill(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Sandbox(ctx, ids[0]); client.StatusOf(err) != http.StatusNotFound {
		t.Errorf("a forgotten sandbox: %v, want 404", err)
	}
	if _, err := os.Stat(killed.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a forgotten sandbox's folder is still there: %v", err)
	}
}

// TestVMMCrashWhileRunning: an ember that dies under a running emberd
// ends its sandbox with reason vmm_crash and its signal.
func TestVMMCrashWhileRunning(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state)
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	if _, err := d.c.BuildTemplate(ctx, tinyTemplate(t, "tiny")); err != nil {
		t.Fatal(err)
	}
	sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(sb.PID, syscall.SIGKILL)
	got := waitExit(t, d.c, sb.ID)
	if got.Exit.Reason != sandbox.ExitVMMCrash || got.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("exit %+v, want %q by signal 9", got.Exit, sandbox.ExitVMMCrash)
	}
}

// TestTimeoutSurvivesRestart: a sandbox's deadline is kept across a
// kill -9 of emberd; a pause stops the clock.
func TestTimeoutSurvivesRestart(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state)
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	if _, err := d.c.BuildTemplate(ctx, tinyTemplate(t, "tiny")); err != nil {
		t.Fatal(err)
	}
	short, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny", TimeoutS: 1})
	if err != nil {
		t.Fatal(err)
	}
	paused, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny", TimeoutS: 1})
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.c.Pause(ctx, paused.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Deadline != nil || p.RemainingMS <= 0 {
		t.Errorf("a paused sandbox with a timeout: deadline %v, remaining %d ms; want no deadline and the time left", p.Deadline, p.RemainingMS)
	}
	d.kill9()
	d = startDaemon(t, state)
	if sb := waitExit(t, d.c, short.ID); sb.Exit.Reason != sandbox.ExitTimeout {
		t.Errorf("exit %+v, want %q", sb.Exit, sandbox.ExitTimeout)
	}
	if sb, err := d.c.Sandbox(ctx, paused.ID); err != nil || sb.State != sandbox.StatePaused {
		t.Fatalf("the paused sandbox after its timeout's time: %+v, %v; want still paused", sb, err)
	}
	if _, err := d.c.Resume(ctx, paused.ID); err != nil {
		t.Fatal(err)
	}
	if sb := waitExit(t, d.c, paused.ID); sb.Exit.Reason != sandbox.ExitTimeout {
		t.Errorf("exit %+v, want %q", sb.Exit, sandbox.ExitTimeout)
	}
}

// TestTemplateDriveCopyOnWrite: a template with a root filesystem gives
// each sandbox its own overlay over the template's, removed at its end.
func TestTemplateDriveCopyOnWrite(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state)
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	spec := tinyTemplate(t, "disk")
	spec.Rootfs = filepath.Join(t.TempDir(), "rootfs.img")
	if err := os.WriteFile(spec.Rootfs, bytes.Repeat([]byte{0xab}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	tpl, err := d.c.BuildTemplate(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(tpl.Drives) != 1 {
		t.Fatalf("template drives %+v", tpl.Drives)
	}
	var sbs []sandbox.Sandbox
	for range 2 {
		sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "disk"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(sb.Dir, "rootfs.cow")); err != nil {
			t.Errorf("sandbox %s has no overlay of its own: %v", sb.ID, err)
		}
		sbs = append(sbs, sb)
	}
	if _, err := d.c.Kill(ctx, sbs[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(sbs[0].Dir, "rootfs.cow")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a killed sandbox's overlay is still there: %v", err)
	}
	if err := d.c.DeleteTemplate(ctx, "disk"); client.StatusOf(err) != http.StatusConflict {
		t.Errorf("deleting a template with a running sandbox: %v, want 409", err)
	}
	if _, err := d.c.Kill(ctx, sbs[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := d.c.DeleteTemplate(ctx, "disk"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tpl.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a removed template's folder is still there: %v", err)
	}
}

// TestBadRequests: each bad request gets one clear error (400 naming the
// field, 404 for an unknown ID, 409 for a state that refuses) and leaves
// nothing behind.
func TestBadRequests(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state, "--image-home", t.TempDir())
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	good := tinyTemplate(t, "tiny")
	if _, err := d.c.BuildTemplate(ctx, good); err != nil {
		t.Fatal(err)
	}
	sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*sandbox.TemplateSpec)) sandbox.TemplateSpec {
		s := good
		s.Name = "other"
		f(&s)
		return s
	}
	for _, tc := range []struct {
		name   string
		call   func() error
		status int
		want   string
	}{
		{"no kernel", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.Kernel = "" }))
			return err
		}, 400, "kernel: missing"},
		{"missing kernel file", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.Kernel = "/nonexistent/k" }))
			return err
		}, 400, "kernel: stat /nonexistent/k"},
		{"bad ready kind", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.Ready.Kind = "ping" }))
			return err
		}, 400, `ready.kind: "ping"`},
		{"too many vcpus", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.VCPUs = 99 }))
			return err
		}, 400, "vcpus: 99"},
		{"bad name", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.Name = "../x" }))
			return err
		}, 400, `name: "../x"`},
		{"start without agent", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.Start = []string{"x"} }))
			return err
		}, 400, "start: a start command needs the agent"},
		{"unknown image", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.Image, s.Ready.Kind = "nope:latest", "" }))
			return err
		}, 400, "image: "},
		{"image with rootfs", func() error {
			_, err := d.c.BuildTemplate(ctx, mod(func(s *sandbox.TemplateSpec) { s.Image, s.Rootfs = "x", s.Kernel }))
			return err
		}, 400, "image: an image brings its own initrd and drives"},
		{"template exists", func() error { _, err := d.c.BuildTemplate(ctx, good); return err }, 409, `template "tiny" exists`},
		{"no template field", func() error { _, err := d.c.Create(ctx, sandbox.SandboxSpec{}); return err }, 400, "template: missing"},
		{"unknown template", func() error { _, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "nope"}); return err }, 404, `template "nope": no such template`},
		{"negative timeout", func() error {
			_, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny", TimeoutS: -1})
			return err
		}, 400, "timeout_s: -1"},
		{"bad env key", func() error {
			_, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny", Env: map[string]string{"A=B": "c"}})
			return err
		}, 400, `env: "A=B"`},
		{"unknown sandbox", func() error { _, err := d.c.Sandbox(ctx, "sb-nope"); return err }, 404, `sandbox "sb-nope": no such sandbox`},
		{"kill unknown sandbox", func() error { _, err := d.c.Kill(ctx, "sb-nope"); return err }, 404, "no such sandbox"},
		{"pause unknown sandbox", func() error { _, err := d.c.Pause(ctx, "sb-nope"); return err }, 404, "no such sandbox"},
		{"unknown template id", func() error { _, err := d.c.Template(ctx, "nope"); return err }, 404, `template "nope": no such template`},
		{"resume a running sandbox", func() error { _, err := d.c.Resume(ctx, sb.ID); return err }, 409, "is running, not paused"},
		{"exec without agent", func() error {
			_, err := d.c.Exec(ctx, sb.ID, sandbox.ExecRequest{Args: []string{"true"}}, os.Stdout, os.Stderr)
			return err
		}, 409, "has no agent"},
		{"exec without command", func() error {
			_, err := d.c.Exec(ctx, sb.ID, sandbox.ExecRequest{}, os.Stdout, os.Stderr)
			return err
		}, 400, "args: empty command"},
		{"bad log source", func() error { return d.c.Logs(ctx, sb.ID, "kernel", os.Stdout) }, 400, `source: "kernel"`},
		{"upload without path", func() error { return d.c.Upload(ctx, sb.ID, "", strings.NewReader("x")) }, 400, "path: missing"},
	} {
		err := tc.call()
		if client.StatusOf(err) != tc.status || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %d with %q", tc.name, err, tc.status, tc.want)
		}
	}
	// Raw bodies and routes.
	for _, tc := range []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/sandboxes", `{"template": 5}`, 400, "template: want a JSON string"},
		{"POST", "/sandboxes", `{"template": "tiny", "memory": 5}`, 400, "memory: unknown field"},
		{"POST", "/sandboxes", `{"template": `, 400, "body: truncated JSON"},
		{"POST", "/templates", `{"kernel": "/k", "vcpus": "two"}`, 400, "vcpus: want a JSON number"},
		{"PATCH", "/sandboxes", ``, 405, "method not allowed"},
		{"GET", "/nothing", ``, 404, "no such route"},
	} {
		status, body := rawRequest(t, d.sock, tc.method, tc.path, tc.body)
		if status != tc.status || !strings.Contains(body, tc.want) || !strings.HasPrefix(body, `{"error":`) {
			t.Errorf("%s %s %s: %d %s; want %d with %q", tc.method, tc.path, tc.body, status, body, tc.status, tc.want)
		}
	}
	// Nothing was left behind: one template, one sandbox.
	ts, _ := d.c.Templates(ctx)
	sbs, _ := d.c.Sandboxes(ctx)
	if len(ts) != 1 || len(sbs) != 1 {
		t.Errorf("after the bad requests: %d templates, %d sandboxes; want 1 and 1", len(ts), len(sbs))
	}
	entries, _ := os.ReadDir(filepath.Join(state, "templates"))
	if len(entries) != 1 {
		t.Errorf("template folders: %d, want 1", len(entries))
	}
}

// rawRequest sends a raw request to emberd's socket.
func rawRequest(t *testing.T, sock, method, path, body string) (int, string) {
	t.Helper()
	var dialer net.Dialer
	tr := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequest(method, "http://emberd"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(b.String())
}

// TestTCPNeedsToken: the TCP address answers with the token only; the
// unix socket needs none.
func TestTCPNeedsToken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	state := t.TempDir()
	d := startDaemon(t, state, "--tcp", addr, "--token", "secret")
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	if _, err := client.NewTCP(addr, "secret").Templates(ctx); err != nil {
		t.Errorf("with the token: %v", err)
	}
	for _, tok := range []string{"", "wrong"} {
		if _, err := client.NewTCP(addr, tok).Templates(ctx); client.StatusOf(err) != http.StatusUnauthorized {
			t.Errorf("token %q: %v, want 401", tok, err)
		}
	}
}

// TestTCPWithoutToken: --tcp without --token is refused at start.
func TestTCPWithoutToken(t *testing.T) {
	out, err := exec.Command(filepath.Join(bins, "emberd"), "--state-dir", t.TempDir(), "--tcp", "127.0.0.1:0").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(string(out), "--tcp needs --token") {
		t.Errorf("emberd --tcp without --token: %v: %s", err, out)
	}
}

// TestE2BTLS: --e2b-tls-cert and --e2b-tls-key serve the E2B listener
// over TLS with HTTP/2 and `ember e2b env` prints https URLs; a missing
// half, a listener-less pair and an unreadable certificate are refused at
// start with the flag named.
func TestE2BTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeTestCert(t, cert, key)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--e2b-addr", "127.0.0.1:0", "--e2b-tls-cert", cert}, "--e2b-tls-cert and --e2b-tls-key go together"},
		{[]string{"--e2b-tls-cert", cert, "--e2b-tls-key", key}, "need --e2b-addr"},
		{[]string{"--e2b-addr", "127.0.0.1:0", "--e2b-tls-cert", filepath.Join(dir, "none.pem"), "--e2b-tls-key", key}, "none.pem"},
		{[]string{"--e2b-addr", "127.0.0.1:0", "--e2b-tls-cert", key, "--e2b-tls-key", cert}, "--e2b-tls-cert"},
	} {
		out, err := exec.Command(filepath.Join(bins, "emberd"), append([]string{"--state-dir", t.TempDir(), "--socket", filepath.Join(t.TempDir(), "s")}, c.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) || strings.Count(strings.TrimSpace(string(out)), "\n") > 0 {
			t.Errorf("emberd %q: %v: %s (want one line naming %q)", c.args, err, out, c.want)
		}
	}

	state := t.TempDir()
	d := startDaemon(t, state, "--e2b-addr", "127.0.0.1:0", "--e2b-tls-cert", cert, "--e2b-tls-key", key)
	cleanupVMs(t, state, &d)
	cmd := exec.Command(filepath.Join(bins, "ember"), "e2b", "env")
	cmd.Env = append(os.Environ(), "EMBERD_SOCKET="+d.sock)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ember e2b env: %v: %s", err, out)
	}
	var apiURL string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "export E2B_API_URL="); ok {
			apiURL = v
		}
	}
	if !strings.HasPrefix(apiURL, "https://127.0.0.1:") {
		t.Fatalf("ember e2b env printed %q", out)
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(cert)
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := c.Get(apiURL + "/v2/sandboxes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Proto != "HTTP/2.0" {
		t.Errorf("GET /v2/sandboxes without a key over TLS: %s %s, want 401 over HTTP/2.0", resp.Proto, resp.Status)
	}
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key.
func writeTestCert(t *testing.T, certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "emberd test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pemlib.EncodeToMemory(&pemlib.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pemlib.EncodeToMemory(&pemlib.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCLI: ember template and ember sandbox drive emberd.
func TestCLI(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state)
	cleanupVMs(t, state, &d)
	ember := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bins, "ember"), args...)
		cmd.Env = append(os.Environ(), "EMBERD_SOCKET="+d.sock)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String() + errb.String(), code
	}
	spec := tinyTemplate(t, "")
	out, code := ember("template", "build", "--name", "tiny", "--kernel", spec.Kernel, "--mem-mib", "16", "--ready", "boot-timer")
	if code != 0 || !strings.HasPrefix(out, "tiny\n") {
		t.Fatalf("ember template build: %d: %s", code, out)
	}
	if out, code := ember("template", "ls"); code != 0 || !strings.Contains(out, "tiny") || !strings.Contains(out, "ready") {
		t.Errorf("ember template ls: %d: %s", code, out)
	}
	out, code = ember("sandbox", "create", "--timeout", "1m", "tiny")
	if code != 0 || !strings.HasPrefix(out, sandbox.IDPrefix) {
		t.Fatalf("ember sandbox create: %d: %s", code, out)
	}
	id := strings.Fields(out)[0]
	if out, code := ember("sandbox", "ls"); code != 0 || !strings.Contains(out, id+"  tiny      running") {
		t.Errorf("ember sandbox ls: %d: %s", code, out)
	}
	for _, verb := range []string{"pause", "resume"} {
		if out, code := ember("sandbox", verb, id); code != 0 {
			t.Errorf("ember sandbox %s: %d: %s", verb, code, out)
		}
	}
	if out, code := ember("sandbox", "logs", id); code != 0 || out != tiny.SandboxReadyLine {
		t.Errorf("ember sandbox logs: %d: %q", code, out)
	}
	if out, code := ember("sandbox", "exec", id, "--", "true"); code != 1 || !strings.Contains(out, "has no agent") {
		t.Errorf("ember sandbox exec without an agent: %d: %s", code, out)
	}
	if out, code := ember("sandbox", "kill", id); code != 0 || out != id+" killed\n" {
		t.Errorf("ember sandbox kill: %d: %s", code, out)
	}
	if out, code := ember("sandbox", "create", "nope"); code != 1 || !strings.Contains(out, `template "nope": no such template`) {
		t.Errorf("ember sandbox create nope: %d: %s", code, out)
	}
	if out, code := ember("sandbox", "create"); code != 2 || !strings.Contains(out, "want one argument") {
		t.Errorf("ember sandbox create without a template: %d: %s", code, out)
	}
	if out, code := ember("template", "rm", "tiny"); code != 0 {
		t.Errorf("ember template rm: %d: %s", code, out)
	}
}

// TestE2BListener: --e2b-addr serves E2B's API; `ember e2b env` prints
// where (with a new key), `ember apikey` lists and removes keys, a
// removed key is refused, and a sandbox's envd access token is the same
// after emberd restarts (it derives from a secret in the database).
func TestE2BListener(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state, "--e2b-addr", "127.0.0.1:0")
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	ember := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bins, "ember"), args...)
		cmd.Env = append(os.Environ(), "EMBERD_SOCKET="+d.sock)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	out, code := ember("e2b", "env")
	if code != 0 {
		t.Fatalf("ember e2b env: %d: %s", code, out)
	}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		env[k] = v
	}
	apiURL, key := env["E2B_API_URL"], env["E2B_API_KEY"]
	if !strings.HasPrefix(apiURL, "http://127.0.0.1:") || env["E2B_SANDBOX_URL"] != apiURL || env["E2B_DOMAIN"] != "localhost:"+apiURL[len("http://127.0.0.1:"):] || !strings.HasPrefix(key, "e2b_") {
		t.Fatalf("ember e2b env printed %q", out)
	}
	out, code = ember("apikey", "ls")
	if code != 0 || !strings.Contains(out, key[:10]) || strings.Contains(out, key) {
		t.Fatalf("ember apikey ls: %d: %s (want the key's start, never the key)", code, out)
	}
	keyID := strings.Fields(strings.Split(out, "\n")[1])[0]

	if _, err := d.c.BuildTemplate(ctx, tinyTemplate(t, "tiny")); err != nil {
		t.Fatal(err)
	}
	e2b := func(method, url, key, body string, hdr ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		req.Header.Set("X-API-KEY", key)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	st, body := e2b("POST", apiURL+"/v2/sandboxes", key, `{"templateID":"tiny","timeout":60}`)
	if st != http.StatusCreated {
		t.Fatalf("create: %d %s", st, body)
	}
	var sb struct {
		SandboxID, EnvdAccessToken string
	}
	if err := json.Unmarshal([]byte(body), &sb); err != nil || sb.EnvdAccessToken == "" {
		t.Fatalf("create answer %s: %v", body, err)
	}
	// The tiny guest has no agent: its envd answers 502, as a sandbox
	// whose envd is gone does.
	if st, body := e2b("GET", apiURL+"/health", "", "", "E2b-Sandbox-Id", sb.SandboxID); st != http.StatusBadGateway {
		t.Errorf("envd health of a guest without an agent: %d %s", st, body)
	}

	d.kill9()
	d = startDaemon(t, state, "--e2b-addr", "127.0.0.1:0")
	info, err := d.c.E2B(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, body = e2b("GET", info.APIURL+"/sandboxes/"+sb.SandboxID, key, "")
	if st != http.StatusOK || !strings.Contains(body, `"envdAccessToken":"`+sb.EnvdAccessToken+`"`) {
		t.Fatalf("after a restart: %d %s, want the same access token %s", st, body, sb.EnvdAccessToken)
	}
	if out, code := ember("apikey", "rm", keyID); code != 0 {
		t.Fatalf("ember apikey rm: %d: %s", code, out)
	}
	if st, body := e2b("GET", info.APIURL+"/v2/sandboxes", key, ""); st != http.StatusUnauthorized || !strings.Contains(body, `"code":401`) {
		t.Errorf("a removed key: %d %s, want 401", st, body)
	}
	if out, code := ember("apikey", "rm", keyID); code != 1 || !strings.Contains(out, "no such key") {
		t.Errorf("ember apikey rm of a removed key: %d: %s", code, out)
	}
}

// TestE2BEnvWithoutListener: `ember e2b env` against an emberd without
// --e2b-addr says how to turn it on.
func TestE2BEnvWithoutListener(t *testing.T) {
	state := t.TempDir()
	d := startDaemon(t, state)
	cleanupVMs(t, state, &d)
	cmd := exec.Command(filepath.Join(bins, "ember"), "e2b", "env")
	cmd.Env = append(os.Environ(), "EMBERD_SOCKET="+d.sock)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "--e2b-addr") {
		t.Errorf("ember e2b env without --e2b-addr: %v: %s", err, out)
	}
}

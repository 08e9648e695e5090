package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/client"
	"github.com/embervm/ember/sandbox/network"
)

// The sandbox tests run emberd in the lab as a user would: it builds a
// template from the Debian image (mmdebstrap's, with python3; make guest
// imports it into build/guest/debian-home), restores sandboxes from it and
// drives their guests through ember-agent, all through emberd's API
// client (sandbox/client).

const (
	// sandboxTemplateMiB is the template guest's memory: Debian's python3
	// runs in well under it.
	sandboxTemplateMiB = 256
	// sandboxOpTimeout bounds one create in the lab, sandboxExecTimeout
	// one exec (python3 starts in about a second there).
	sandboxOpTimeout   = 2 * time.Minute
	sandboxExecTimeout = time.Minute
	// templateAttempts: a template build whose guest hung (a lab fault)
	// is tried again this many times in all before the lab is blamed.
	templateAttempts = 2
)

// emberd is an emberd the test runs in the lab.
type emberd struct {
	t     *testing.T
	vms   *vmPIDs
	state string
	sock  string
	cmd   *exec.Cmd
	log   *syncBuffer
	c     *client.Client
}

// startEmberd starts emberd on state with the image store home and waits
// until its API answers.
func startEmberd(t *testing.T, state, home string, vms *vmPIDs, extra ...string) *emberd {
	t.Helper()
	bin, err := exec.LookPath("emberd")
	if err != nil {
		t.Fatalf("emberd not on PATH: %v", err)
	}
	d := &emberd{t: t, vms: vms, state: state, sock: filepath.Join(state, "emberd.sock"), log: &syncBuffer{}}
	args := append([]string{"--state-dir", state, "--socket", d.sock, "--ember", emberBinary(t), "--image-home", home,
		"--network", "--network-prefix", "embe", "--network-pool", "2"}, extra...)
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("emberd's log:\n%s", tailString(d.log.String()))
		}
	})
	d.c = client.New(d.sock)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if _, err := d.c.Sandboxes(ctx); err == nil {
			return d
		}
		select {
		case <-ctx.Done():
			d.kill()
			t.Fatalf("emberd did not answer within 30s:\n%s", d.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kill ends emberd with SIGKILL (its VMs go on).
func (d *emberd) kill() {
	d.cmd.Process.Kill()
	d.cmd.Wait()
	d.c.Close()
}

// vmPIDs are the ember processes of the sandboxes the test made: the VMs
// outlive emberd by design, so the test ends them. By pid, with kill(2):
// pkill -f reads every process's /proc/PID/cmdline, which blocks for good
// on an ember whose vCPU is stuck in the lab's KVM (a lab fault).
type vmPIDs struct {
	mu   sync.Mutex
	pids []int
}

func (v *vmPIDs) add(pid int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pids = append(v.pids, pid)
}

// kill ends them all.
func (v *vmPIDs) kill() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, pid := range v.pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// buildTemplate builds the python3 template, again after a lab fault.
func (d *emberd) buildTemplate(ctx context.Context, home string) sandbox.Template {
	t := d.t
	t.Helper()
	var err error
	for attempt := 1; attempt <= templateAttempts; attempt++ {
		spec := sandbox.TemplateSpec{Name: fmt.Sprintf("py%d", attempt), Image: "e2e/debian:12", MemoryMiB: sandboxTemplateMiB, Network: true}
		var tpl sandbox.Template
		tpl, err = d.c.BuildTemplate(ctx, spec)
		if err == nil {
			t.Logf("template %s from %s built in %.0f ms", tpl.ID, spec.Image, tpl.BuildMS)
			return tpl
		}
		t.Logf("template build %d: %v (a lab fault?)", attempt, err)
	}
	labFault(t, fmt.Sprintf("TestSandboxes: the template build failed %d times: %v", templateAttempts, err))
	return sandbox.Template{}
}

// create makes a sandbox, once more if the first restore failed (a lab
// fault).
func (d *emberd) create(ctx context.Context, spec sandbox.SandboxSpec) sandbox.Sandbox {
	t := d.t
	t.Helper()
	var err error
	for attempt := 1; attempt <= 2; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, sandboxOpTimeout)
		var sb sandbox.Sandbox
		sb, err = d.c.Create(cctx, spec)
		cancel()
		if err == nil {
			d.vms.add(sb.PID)
			return sb
		}
		t.Logf("create %d: %v", attempt, err)
	}
	labFault(t, fmt.Sprintf("TestSandboxes: a create failed twice: %v", err))
	return sandbox.Sandbox{}
}

// run runs a command in a sandbox and returns its output and exit code.
// An exec that does not end in sandboxExecTimeout, in a guest that then
// does not answer a plain echo either, is a hung guest: a lab fault
// (package doc of the harness), reported as one so that ember-lab runs
// the test again in a fresh lab.
func (d *emberd) run(ctx context.Context, id string, req sandbox.ExecRequest) (stdout, stderr string, code int) {
	d.t.Helper()
	var o, e bytes.Buffer
	cctx, cancel := context.WithTimeout(ctx, sandboxExecTimeout)
	defer cancel()
	st, err := d.c.Exec(cctx, id, req, &o, &e)
	if err != nil && cctx.Err() != nil {
		actx, acancel := context.WithTimeout(ctx, sandboxExecTimeout/2)
		_, aerr := d.c.Exec(actx, id, sandbox.ExecRequest{Args: []string{"echo", "alive"}}, io.Discard, io.Discard)
		acancel()
		if aerr != nil {
			d.hungGuest(id)
			labFault(d.t, fmt.Sprintf("TestSandboxes: sandbox %s stopped answering (its guest hung): exec %q: %v; then echo: %v", id, req.Args, err, aerr))
		}
	}
	if err != nil {
		d.t.Fatalf("exec %q in %s: %v\nstdout: %s\nstderr: %s", req.Args, id, err, o.String(), e.String())
	}
	return o.String(), e.String(), st.Code
}

// hungGuest logs what a hung sandbox's ember says of its vCPUs: SIGTERM
// makes ember log each vCPU's registers as it stops ("vCPU state at
// stop"), which tells a lab fault (cr3 and rip in the lab's own memory)
// from a guest that hung by itself.
func (d *emberd) hungGuest(id string) {
	sb, err := d.c.Sandbox(context.Background(), id)
	if err != nil {
		return
	}
	syscall.Kill(sb.PID, syscall.SIGTERM)
	time.Sleep(2 * time.Second)
	for _, f := range []string{"ember.log", "console.log"} {
		b, _ := os.ReadFile(filepath.Join(sb.Dir, f))
		d.t.Logf("sandbox %s's %s:\n%s", id, f, tailString(string(b)))
	}
}

func shArgs(cmd string) []string { return []string{"/bin/sh", "-c", cmd} }

// arrivals records each write with its time.
type arrivals struct {
	mu     sync.Mutex
	writes []string
	at     []time.Time
	buf    bytes.Buffer
}

func (a *arrivals) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.writes = append(a.writes, string(p))
	a.at = append(a.at, time.Now())
	a.buf.Write(p)
	return len(p), nil
}

func (a *arrivals) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.String()
}

// TestSandboxes is issue 11's acceptance in the lab: a template from the
// Debian image with python3; 10 sandboxes restored from it draw distinct
// random numbers, have distinct restore generations and the host's time;
// a file uploaded into one is absent from the others; output streams line
// by line as produced; stdin reaches cat and EOF ends it; a TTY exec has a
// terminal; pause and resume; then a `kill -9` of emberd while 5
// sandboxes run and an exec streams: the restarted emberd lists all 5,
// each accepts exec, and the exec's output is whole when attached again.
func TestSandboxes(t *testing.T) {
	home := guestFile(t, "debian-home")
	state := scratchDir(t)
	vms := &vmPIDs{}
	t.Cleanup(func() { vms.kill(); cleanupNetwork() })
	ctx := context.Background()
	d := startEmberd(t, state, home, vms)
	t.Cleanup(func() { d.kill() })

	tpl := d.buildTemplate(ctx, home)

	const n = 10
	sbs := make([]sandbox.Sandbox, n)
	for i := range sbs {
		sbs[i] = d.create(ctx, sandbox.SandboxSpec{Template: tpl.ID, Metadata: map[string]string{"index": strconv.Itoa(i)}})
		tm := sbs[i].Timings
		t.Logf("sandbox %d %s: restore %.0f ms, agent ready %.0f ms, total %.0f ms", i, sbs[i].ID, tm.RestoreMS, tm.AgentReadyMS, tm.TotalMS)
	}

	// Distinct random numbers, generations and metadata; the host's time.
	lines, gens := map[string]int{}, map[string]int{}
	for i, sb := range sbs {
		out, errOut, code := d.run(ctx, sb.ID, sandbox.ExecRequest{Args: []string{"python3", "-c", "import uuid,random; print(uuid.uuid4(), random.random())"}})
		line := strings.TrimSpace(out)
		if code != 0 || !regexp.MustCompile(`^[0-9a-f-]{36} 0\.\d+$`).MatchString(line) {
			t.Errorf("sandbox %d: python3: exit %d, %q, stderr %q", i, code, out, errOut)
		}
		if j, dup := lines[line]; dup {
			t.Errorf("sandboxes %d and %d printed the same %q", j, i, line)
		}
		lines[line] = i

		out, _, _ = d.run(ctx, sb.ID, sandbox.ExecRequest{Args: shArgs("cat /run/ember/generation; echo; cat /run/ember/metadata.json")})
		gen, meta, _ := strings.Cut(out, "\n")
		gen = strings.TrimSpace(gen)
		if _, err := strconv.ParseUint(gen, 10, 64); err != nil {
			t.Errorf("sandbox %d: generation %q", i, gen)
		}
		if j, dup := gens[gen]; dup {
			t.Errorf("sandboxes %d and %d have the same generation %s", j, i, gen)
		}
		gens[gen] = i
		var md map[string]string
		if err := json.Unmarshal([]byte(meta), &md); err != nil || md["index"] != strconv.Itoa(i) {
			t.Errorf("sandbox %d: metadata %q (%v)", i, meta, err)
		}

		before := time.Now()
		out, _, _ = d.run(ctx, sb.ID, sandbox.ExecRequest{Args: []string{"date", "+%s.%N"}})
		after := time.Now()
		secs, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
		if err != nil {
			t.Errorf("sandbox %d: date printed %q", i, out)
			continue
		}
		guest := time.Unix(0, int64(secs*1e9))
		if guest.Before(before.Add(-time.Second)) || guest.After(after.Add(time.Second)) {
			t.Errorf("sandbox %d: the guest's clock says %s; the host's was between %s and %s", i, guest, before, after)
		}
		t.Logf("sandbox %d: %s, generation %s, clock within [%v, %v] of the host's", i, line, gen, guest.Sub(after), guest.Sub(before))
	}

	serverURL := checkSandboxNetwork(ctx, t, d, sbs)

	// A file uploaded into one sandbox is in it only.
	a, b := sbs[0], sbs[1]
	if err := d.c.Upload(ctx, a.ID, "/root/only-here.txt", strings.NewReader("uploaded\n")); err != nil {
		t.Fatalf("upload: %v", err)
	}
	var got bytes.Buffer
	if err := d.c.Download(ctx, a.ID, "/root/only-here.txt", &got); err != nil || got.String() != "uploaded\n" {
		t.Errorf("download from %s: %q, %v", a.ID, got.String(), err)
	}
	for _, sb := range sbs[1:] {
		if out, _, code := d.run(ctx, sb.ID, sandbox.ExecRequest{Args: shArgs("test -e /root/only-here.txt && echo present || echo absent")}); code != 0 || strings.TrimSpace(out) != "absent" {
			t.Errorf("sandbox %s: the file uploaded into %s is %q", sb.ID, a.ID, out)
		}
	}
	if err := d.c.Download(ctx, b.ID, "/root/only-here.txt", &got); client.StatusOf(err) != 404 {
		t.Errorf("download of the file from %s: %v, want a 404", b.ID, err)
	}

	// Output streams as it is produced: one line every 300 ms arrives as
	// five writes spread over the run, not at the end.
	var arr arrivals
	st, err := d.c.Exec(ctx, a.ID, sandbox.ExecRequest{Args: shArgs("for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done")}, &arr, &arr)
	if err != nil || st.Code != 0 || arr.String() != "line1\nline2\nline3\nline4\nline5\n" {
		t.Errorf("streaming exec: %v, exit %d, output %q", err, st.Code, arr.String())
	} else if len(arr.writes) < 5 || arr.at[len(arr.at)-1].Sub(arr.at[0]) < 600*time.Millisecond {
		t.Errorf("the lines came in %d writes within %v: not as produced", len(arr.writes), arr.at[len(arr.at)-1].Sub(arr.at[0]))
	}

	// stdin reaches cat; its EOF ends it. A failing command's code.
	if out, _, code := d.run(ctx, a.ID, sandbox.ExecRequest{Args: []string{"cat"}, Stdin: []byte("to cat\nand more\n")}); code != 0 || out != "to cat\nand more\n" {
		t.Errorf("cat: exit %d, %q", code, out)
	}
	if _, _, code := d.run(ctx, a.ID, sandbox.ExecRequest{Args: shArgs("echo failing >&2; exit 7")}); code != 7 {
		t.Errorf("exit 7 came back as %d", code)
	}

	// A TTY exec sees a terminal of the size asked for.
	out, _, code := d.run(ctx, a.ID, sandbox.ExecRequest{Args: shArgs("tty; stty size; test -t 0 && echo is-a-tty"), TTY: &proto.TTYSize{Cols: 100, Rows: 30}})
	if code != 0 || !regexp.MustCompile(`/dev/pts/\d+\r?\n30 100\r?\nis-a-tty`).MatchString(out) {
		t.Errorf("tty exec: exit %d, %q", code, out)
	}

	// A server on the sandbox's loopback is reached through emberd's API
	// (POST /sandboxes/{id}/ports/{port}, through the agent: no network
	// needed) and through `ember sandbox port-forward`; a closed port is a
	// 502.
	if _, _, code := d.run(ctx, a.ID, sandbox.ExecRequest{Args: shArgs("cd /etc && setsid python3 -m http.server 8000 --bind 127.0.0.1 </dev/null >/dev/null 2>&1 &")}); code != 0 {
		t.Errorf("starting an HTTP server: exit %d", code)
	} else {
		deadline := time.Now().Add(time.Minute)
		for {
			conn, err := d.c.DialPort(ctx, a.ID, 8000)
			if err == nil {
				io.WriteString(conn, "GET /os-release HTTP/1.0\r\n\r\n")
				b, err := io.ReadAll(conn)
				conn.Close()
				if err != nil || !strings.HasPrefix(string(b), "HTTP/1.0 200") || !strings.Contains(string(b), "Debian") {
					t.Errorf("GET /os-release through the port: %v\n%s", err, b)
				}
				break
			}
			if client.StatusOf(err) != http.StatusBadGateway || time.Now().After(deadline) {
				t.Fatalf("connecting to port 8000: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		pf := exec.Command(emberBinary(t), "sandbox", "port-forward", "--socket", d.sock, a.ID, "0:8000")
		out, _ := pf.StdoutPipe()
		if err := pf.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		f := strings.Fields(line) // "forwarding 127.0.0.1:PORT to port 8000 of sandbox ID"
		if len(f) < 2 {
			t.Errorf("ember sandbox port-forward printed %q", line)
		} else if resp, err := http.Get("http://" + f[1] + "/os-release"); err != nil {
			t.Errorf("GET through ember sandbox port-forward: %v", err)
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), "Debian") {
				t.Errorf("GET through ember sandbox port-forward: %s %q", resp.Status, b)
			}
		}
		pf.Process.Signal(syscall.SIGTERM)
		if err := pf.Wait(); err != nil {
			t.Errorf("ember sandbox port-forward after SIGTERM: %v", err)
		}
	}
	if _, err := d.c.DialPort(ctx, a.ID, 8001); client.StatusOf(err) != http.StatusBadGateway {
		t.Errorf("a closed port: %v, want 502", err)
	}

	// A workload that exhausts the guest's memory is ended by the guest's
	// OOM killer: its exit says so (reason oom); the sandbox goes on.
	{
		cctx, cancel := context.WithTimeout(ctx, sandboxOpTimeout)
		st, err := d.c.Exec(cctx, a.ID, sandbox.ExecRequest{Args: []string{"python3", "-c", "a = []\nwhile True: a.append(bytearray(1 << 20))"}}, io.Discard, io.Discard)
		cancel()
		if err != nil || !st.OOMKilled || st.Reason != "oom" || st.Signal != int(syscall.SIGKILL) {
			t.Errorf("a workload exhausting memory: %+v, %v; want signal 9, reason oom", st, err)
		}
		if out, _, code := d.run(ctx, a.ID, sandbox.ExecRequest{Args: []string{"echo", "still-here"}}); code != 0 || out != "still-here\n" {
			t.Errorf("after the OOM kill: exit %d, %q", code, out)
		}
	}

	// Pause and resume: a paused sandbox refuses exec; a resumed one runs.
	if _, err := d.c.Pause(ctx, b.ID); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if _, err := d.c.Exec(ctx, b.ID, sandbox.ExecRequest{Args: []string{"true"}}, &got, &got); client.StatusOf(err) != 409 {
		t.Errorf("exec in a paused sandbox: %v, want a 409", err)
	}
	if _, err := d.c.Usage(ctx, b.ID); client.StatusOf(err) != 409 {
		t.Errorf("metrics of a paused sandbox: %v, want a 409", err)
	}
	if _, err := d.c.Resume(ctx, b.ID); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if out, _, code := d.run(ctx, b.ID, sandbox.ExecRequest{Args: []string{"echo", "resumed"}}); code != 0 || out != "resumed\n" {
		t.Errorf("after resume: exit %d, %q", code, out)
	}

	checkMetrics(ctx, t, d, tpl.ID, n)

	// One sandbox's own sample, through the CLI: the guest's CPUs, CPU
	// time since it booted, memory and root filesystem.
	{
		out, err := exec.CommandContext(ctx, emberBinary(t), "sandbox", "stats", "--json", "--socket", d.sock, a.ID).Output()
		var u sandbox.Usage
		if err == nil {
			err = json.Unmarshal(out, &u)
		}
		if err != nil || u.CPUs < 1 || u.CPUUserNS+u.CPUSystemNS == 0 || u.MemTotal == 0 || u.MemUsed == 0 ||
			u.MemUsed > u.MemTotal || u.DiskTotal == 0 || u.DiskUsed > u.DiskTotal || u.Time.IsZero() {
			t.Errorf("ember sandbox stats: %s, %+v, %v", out, u, err)
		}
	}

	// Five sandboxes go; kill -9 emberd while an exec streams in one of
	// the other five.
	for _, sb := range sbs[5:] {
		if _, err := d.c.Kill(ctx, sb.ID); err != nil {
			t.Errorf("kill %s: %v", sb.ID, err)
		}
	}
	sbs = sbs[:5]
	var want strings.Builder
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&want, "n%d\n", i)
	}
	var first arrivals
	streamErr := make(chan error, 1)
	ectx, ecancel := context.WithCancel(ctx)
	defer ecancel()
	go func() {
		_, err := d.c.Exec(ectx, a.ID, sandbox.ExecRequest{Tag: "counter", Args: shArgs("for i in $(seq 1 40); do echo n$i; sleep 0.1; done")}, &first, &first)
		streamErr <- err
	}()
	for deadline := time.Now().Add(sandboxOpTimeout); !strings.Contains(first.String(), "n5\n"); {
		if time.Now().After(deadline) {
			t.Fatalf("the counter printed %q", first.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.kill()
	select {
	case err := <-streamErr:
		t.Logf("the exec's stream ended with emberd: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the exec's stream outlived emberd")
	}
	had := first.String()
	t.Logf("kill -9 emberd after %d bytes of the counter's output", len(had))

	d = startEmberd(t, state, home, vms)
	list, err := d.c.Sandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	running := map[string]bool{}
	for _, sb := range list {
		if sb.State == sandbox.StateRunning {
			running[sb.ID] = true
		}
	}
	for _, sb := range sbs {
		if !running[sb.ID] {
			t.Errorf("after the restart, sandbox %s is not listed as running", sb.ID)
			continue
		}
		if out, _, code := d.run(ctx, sb.ID, sandbox.ExecRequest{Args: []string{"echo", "adopted"}}); code != 0 || out != "adopted\n" {
			t.Errorf("sandbox %s after the restart: exit %d, %q", sb.ID, code, out)
		}
		if got := d.fetch(ctx, sb.ID, serverURL); got == "" {
			t.Errorf("sandbox %s lost its network with the restart", sb.ID)
		}
	}
	var rest bytes.Buffer
	actx, acancel := context.WithTimeout(ctx, sandboxOpTimeout)
	defer acancel()
	st, err = d.c.Attach(actx, a.ID, "counter", int64(len(had)), nil, &rest, &rest)
	if err != nil || st.Code != 0 {
		t.Errorf("attach to the counter: %v, exit %d", err, st.Code)
	}
	if whole := had + rest.String(); whole != want.String() {
		t.Errorf("the counter's output, before the kill and after the attach:\n%q\nwant\n%q", whole, want.String())
	}
	if _, err := d.c.Attach(actx, a.ID, "counter", 0, nil, &rest, &rest); client.StatusOf(err) != 404 {
		t.Errorf("a second attach to the finished and delivered counter: %v, want a 404", err)
	}
	// A guest made to panic ends with reason guest_panic and a crash
	// record that holds the panic.
	doomed := sbs[4]
	sbs = sbs[:4]
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	d.c.Exec(pctx, doomed.ID, sandbox.ExecRequest{Args: shArgs("echo c > /proc/sysrq-trigger")}, io.Discard, io.Discard)
	pcancel()
	ended := waitEnded(ctx, t, d, doomed.ID)
	if ended.Exit == nil || ended.Exit.Reason != sandbox.ExitGuestPanic {
		t.Errorf("the panicked sandbox ended with %+v, want reason %s", ended.Exit, sandbox.ExitGuestPanic)
	}
	if cr, err := d.c.Crash(ctx, doomed.ID); err != nil || !strings.Contains(cr.Console, "Kernel panic") || !strings.Contains(cr.Console, "sysrq") {
		t.Errorf("crash record of the panicked sandbox: %v; console tail %q", err, tailString(cr.Console))
	}

	// Admission: emberd again, with a memory budget for five sandboxes of
	// the template (guest memory plus ember's share); the four that run are
	// adopted and counted; one more fits, the next is refused with 429
	// and Retry-After, and fits once one is killed.
	d.kill()
	per := sandboxTemplateMiB + sandbox.VMOverheadMiB
	d = startEmberd(t, state, home, vms, "--budget-memory-mib", strconv.Itoa(5*per), "--retry-after", "7s")
	fifth := d.create(ctx, sandbox.SandboxSpec{Template: tpl.ID})
	sbs = append(sbs, fifth)
	cctx, ccancel := context.WithTimeout(ctx, sandboxOpTimeout)
	_, err = d.c.Create(cctx, sandbox.SandboxSpec{Template: tpl.ID})
	ccancel()
	if budget, retry, ok := client.Exhausted(err); !ok || budget != "memory" || retry <= 0 {
		t.Errorf("a create over the memory budget: %v (budget %q, Retry-After %v), want a 429 naming memory", err, budget, retry)
	}
	if _, err := d.c.Kill(ctx, sbs[0].ID); err != nil {
		t.Errorf("kill: %v", err)
	}
	sbs = append(sbs[1:], d.create(ctx, sandbox.SandboxSpec{Template: tpl.ID}))

	for _, sb := range sbs {
		if _, err := d.c.Kill(ctx, sb.ID); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("kill %s: %v", sb.ID, err)
		}
	}
	// Every sandbox ended: what is left is the pool (--network-pool 2):
	// no sandbox's chains in the nftables table, no host veth still tagged
	// with a sandbox.
	if n := embeNamespaces(t); n > 2 {
		out, _ := exec.Command("ip", "netns", "list").Output()
		t.Errorf("%d namespaces left after every sandbox ended (the pool is 2):\n%s", n, out)
	}
	nc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := nc.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("listing nftables chains: %v", err)
	}
	for _, c := range chains {
		if c.Table.Name == "ember" && (strings.HasPrefix(c.Name, "out-") || strings.HasPrefix(c.Name, "in-")) {
			t.Errorf("nftables chain %s left after every sandbox ended", c.Name)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "embeh") && l.Attrs().Alias != "" {
			t.Errorf("host veth %s still tagged %q after every sandbox ended", l.Attrs().Name, l.Attrs().Alias)
		}
	}
}

// serverNamespace makes a network namespace joined to the host by a veth
// pair (host 10.98.0.1/24, namespace 10.98.0.2/24) with an HTTP echo
// server on 10.98.0.2:8000 and another on :8001, and returns their URLs.
func serverNamespace(t *testing.T) (url8000, url8001 string) {
	t.Helper()
	ns := fmt.Sprintf("embsrv%d", os.Getpid())
	host := fmt.Sprintf("esrv%d", os.Getpid()%100000)
	sh(t, "ip netns add "+ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	in := "ip netns exec " + ns + " "
	sh(t, "ip link add "+host+" type veth peer name eth0 netns "+ns+" && ip addr add 10.98.0.1/24 dev "+host+" && ip link set "+host+" up && "+
		in+"ip link set lo up && "+in+"ip addr add 10.98.0.2/24 dev eth0 && "+in+"ip link set eth0 up && "+in+"ip route add default via 10.98.0.1")
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	for _, port := range []string{"8000", "8001"} {
		out := startHelper(t, ns, "http-echo", "10.98.0.2:"+port)
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "listening="); {
			if time.Now().After(deadline) {
				t.Fatalf("the echo server did not start: %s", out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return "http://10.98.0.2:8000/", "http://10.98.0.2:8001/"
}

// fetch runs an HTTP GET of url in the sandbox (python3's urllib, 3 s
// timeout) and returns the body, or "" if it failed.
func (d *emberd) fetch(ctx context.Context, id, url string) string {
	d.t.Helper()
	out, _, code := d.run(ctx, id, sandbox.ExecRequest{Args: []string{"python3", "-c",
		"import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end='')", url}})
	if code != 0 {
		return ""
	}
	return out
}

// checkSandboxNetwork: each sandbox has its own address; two reach a
// server in a test namespace; egress policy (deny-all, an allowlist of one
// port, allow-all again) changes what one reaches while it runs; a sandbox
// reaches neither another sandbox nor the host's own addresses.
func checkSandboxNetwork(ctx context.Context, t *testing.T, d *emberd, sbs []sandbox.Sandbox) (url string) {
	addrs := map[string]string{}
	for _, sb := range sbs {
		if sb.Network == nil {
			t.Fatalf("sandbox %s has no network", sb.ID)
		}
		if other, dup := addrs[sb.Network.Address]; dup {
			t.Errorf("sandboxes %s and %s both have %s", other, sb.ID, sb.Network.Address)
		}
		addrs[sb.Network.Address] = sb.ID
		out, _, _ := d.run(ctx, sb.ID, sandbox.ExecRequest{Args: []string{"cat", "/sys/class/net/eth0/address", "/proc/net/fib_trie"}})
		if ip, _, _ := strings.Cut(sb.Network.Address, "/"); !strings.Contains(out, ip) {
			t.Errorf("sandbox %s: the guest does not have its address %s", sb.ID, ip)
		}
	}
	u8000, u8001 := serverNamespace(t)
	a, b := sbs[0], sbs[1]
	for _, sb := range []sandbox.Sandbox{a, b} {
		if got := d.fetch(ctx, sb.ID, u8000); !strings.HasPrefix(got, "echo 10.98.0.2:8000 to ") {
			t.Errorf("sandbox %s (%s) could not reach the test namespace's server: %q", sb.ID, sb.Network.Address, got)
		} else {
			t.Logf("sandbox %s (%s): %s", sb.ID, sb.Network.Address, strings.TrimSpace(got))
		}
	}
	// Another sandbox's address and the host's own are out of reach.
	bIP, _, _ := strings.Cut(b.Network.Address, "/")
	for _, target := range []string{bIP, "10.98.0.1", a.Network.Gateway} {
		if out, _, code := d.run(ctx, a.ID, sandbox.ExecRequest{Args: shArgs("ping -c 1 -W 1 " + target + " >/dev/null 2>&1 && echo reached || echo blocked")}); code != 0 || strings.TrimSpace(out) != "blocked" {
			// ping may be missing from the image: then python's connect.
			if got := d.fetch(ctx, a.ID, "http://"+target+":8000/"); got != "" {
				t.Errorf("sandbox %s reached %s: %q", a.ID, target, got)
			}
		}
	}
	policy := func(p network.Policy, want8000, want8001 bool) {
		if _, err := d.c.SetPolicy(ctx, b.ID, p); err != nil {
			t.Fatalf("policy %s: %v", p.Mode, err)
		}
		got8000, got8001 := d.fetch(ctx, b.ID, u8000) != "", d.fetch(ctx, b.ID, u8001) != ""
		if got8000 != want8000 || got8001 != want8001 {
			t.Errorf("policy %+v: port 8000 reached %v (want %v), port 8001 reached %v (want %v)", p, got8000, want8000, got8001, want8001)
		}
	}
	policy(network.Policy{Mode: network.DenyAll}, false, false)
	policy(network.Policy{Mode: network.Allowlist, Allow: []network.Rule{{CIDR: netip.MustParsePrefix("10.98.0.2/32"), Proto: network.ProtoTCP, Port: 8000}}}, true, false)
	policy(network.Policy{Mode: network.AllowAll}, true, true)
	st, err := d.c.Network(ctx, b.ID)
	if err != nil || st.BytesOut == 0 || st.BytesIn == 0 {
		t.Errorf("sandbox %s's network counters: %+v, %v", b.ID, st, err)
	}
	return u8000
}

// cleanupNetwork removes what emberd's networking (prefix embe) left in
// the lab: pooled namespaces, the bridge, the nftables table.
func cleanupNetwork() {
	exec.Command("sh", "-c", "for n in $(ip netns list | awk '/^embe-/ {print $1}'); do ip netns del $n; done; "+
		"ip link del embebr0; nft delete table inet ember").Run()
}

// embeNamespaces counts the namespaces of emberd's networking.
func embeNamespaces(t *testing.T) int {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	return strings.Count("\n"+string(out), "\nembe-")
}

// waitEnded waits until sandbox id has ended and returns its record.
func waitEnded(ctx context.Context, t *testing.T, d *emberd, id string) sandbox.Sandbox {
	t.Helper()
	deadline := time.Now().Add(sandboxOpTimeout)
	for {
		sb, err := d.c.Sandbox(ctx, id)
		if err == nil && sb.State == sandbox.StateExited {
			return sb
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s did not end: %+v, %v", id, sb, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkMetrics scrapes emberd's /metrics after n creates and execs: it
// parses with Prometheus' text parser and holds the families of issue 12
// with plausible values.
func checkMetrics(ctx context.Context, t *testing.T, d *emberd, template string, n int) {
	t.Helper()
	var scrape bytes.Buffer
	if err := d.c.Metrics(ctx, &scrape); err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(scrape.Bytes()))
	if err != nil {
		t.Fatalf("parsing the scrape: %v", err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f, ok := fams[name]
		if !ok {
			return 0, false
		}
		var sum float64
		found := false
	metrics:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				match := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						match = true
					}
				}
				if !match {
					continue metrics
				}
			}
			found = true
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
		return sum, found
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		ok     func(float64) bool
		want   string
	}{
		{"emberd_sandboxes", map[string]string{"state": "running", "template": template}, func(v float64) bool { return v == float64(n) }, fmt.Sprint(n)},
		{"emberd_creates_total", nil, func(v float64) bool { return v >= float64(n) }, fmt.Sprintf(">= %d", n)},
		{"emberd_create_phase_seconds", map[string]string{"phase": "restore"}, func(v float64) bool { return v >= float64(n) }, fmt.Sprintf(">= %d samples", n)},
		{"emberd_create_phase_seconds", map[string]string{"phase": "network"}, func(v float64) bool { return v >= float64(n) }, fmt.Sprintf(">= %d samples", n)},
		{"emberd_execs_total", nil, func(v float64) bool { return v >= float64(n) }, fmt.Sprintf(">= %d", n)},
		{"emberd_exec_duration_seconds", nil, func(v float64) bool { return v >= float64(n) }, fmt.Sprintf(">= %d samples", n)},
		{"emberd_host_memory_held_bytes", nil, func(v float64) bool { return v >= float64(n*sandboxTemplateMiB)*(1<<20) }, "the sandboxes' memory"},
		{"emberd_sandbox_rss_bytes", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"emberd_sandbox_network_bytes_total", map[string]string{"direction": "out"}, func(v float64) bool { return v > 0 }, "> 0 (two sandboxes fetched a page)"},
		{"emberd_sandbox_guest_memory_bytes", nil, func(v float64) bool { return v >= float64(n*sandboxTemplateMiB)*(1<<20) }, "the guests' memory"},
	} {
		v, ok := value(c.name, c.labels)
		if !ok || !c.ok(v) {
			t.Errorf("/metrics: %s%v = %v (found %v), want %s", c.name, c.labels, v, ok, c.want)
		}
	}
}

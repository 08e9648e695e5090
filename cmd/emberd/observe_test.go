package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/client"
)

// TestAdmission: with a memory budget that fits three sandboxes of the
// tiny template, the fourth create answers 429 with Retry-After and the
// budget named, and leaves no record, folder or process; GET /host shows
// the budgets and their use; after a kill the next create succeeds.
func TestAdmission(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	per := sandbox.Holds(sandbox.Template{Spec: tinyTemplate(t, "x")})
	budget := 3*per.MemoryMiB + per.MemoryMiB/2
	d := startDaemon(t, state, "--budget-memory-mib", strconv.FormatInt(budget, 10), "--budget-vcpus", "64", "--retry-after", "7s")
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	if _, err := d.c.BuildTemplate(ctx, tinyTemplate(t, "tiny")); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 3 {
		sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sb.ID)
	}
	embers := emberProcesses(t)
	_, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
	budgetName, retry, ok := client.Exhausted(err)
	if !ok || budgetName != sandbox.BudgetMemory || retry.Seconds() != 7 || !strings.Contains(err.Error(), "memory budget exhausted") {
		t.Fatalf("the 4th create: %v (budget %q, retry %v); want 429 naming the memory budget, Retry-After 7", err, budgetName, retry)
	}
	// The raw answer: status, header, body.
	status, hdr, body := rawAnswer(t, d.sock, "POST", "/sandboxes", `{"template": "tiny"}`)
	var eb struct {
		Error       string `json:"error"`
		Budget      string `json:"budget"`
		RetryAfterS int    `json:"retry_after_s"`
	}
	if status != http.StatusTooManyRequests || hdr.Get("Retry-After") != "7" || json.Unmarshal([]byte(body), &eb) != nil || eb.Budget != "memory" || eb.RetryAfterS != 7 {
		t.Errorf("raw 4th create: %d Retry-After %q %s", status, hdr.Get("Retry-After"), body)
	}
	// Nothing half-made.
	if n := len(byID(t, d.c)); n != 3 {
		t.Errorf("%d sandboxes after the refusals, want 3", n)
	}
	if dirs, _ := os.ReadDir(filepath.Join(state, "sandboxes")); len(dirs) != 3 {
		t.Errorf("%d sandbox folders after the refusals, want 3", len(dirs))
	}
	if now := emberProcesses(t); now != embers {
		t.Errorf("%d ember processes after the refusals, %d before", now, embers)
	}
	h, err := d.c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Budgets.MemoryMiB != budget || h.Used.MemoryMiB != 3*per.MemoryMiB || h.Free.MemoryMiB != budget-3*per.MemoryMiB ||
		h.Sandboxes != 3 || h.Used.VCPUs != 3 || h.Budgets.VCPUs != 64 || h.MemoryOvercommit != 1 || h.Overhead.MemoryMiB != sandbox.VMOverheadMiB {
		t.Errorf("GET /host: %+v", h)
	}
	if _, err := d.c.Kill(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"}); err != nil {
		t.Errorf("a create after a kill: %v", err)
	}
}

// emberProcesses counts this host's processes running the test's ember.
func emberProcesses(t *testing.T) int {
	t.Helper()
	ember := filepath.Join(bins, "ember")
	procs, err := filepath.Glob("/proc/[0-9]*/exe")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range procs {
		if target, err := os.Readlink(p); err == nil && target == ember {
			n++
		}
	}
	return n
}

// rawAnswer sends a raw request to emberd's socket and returns the
// status, header and body.
func rawAnswer(t *testing.T, sock, method, path, body string) (int, http.Header, string) {
	t.Helper()
	var dialer net.Dialer
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dialer.DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequest(method, "http://emberd"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header, strings.TrimSpace(b.String())
}

// TestMetrics: after 10 creates (and an exec, a kill, a refusal) a
// scrape of /metrics parses with Prometheus' text parser and holds the
// families with plausible values.
func TestMetrics(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	const n = 10
	per := sandbox.Holds(sandbox.Template{Spec: tinyTemplate(t, "x")})
	d := startDaemon(t, state, "--budget-memory-mib", strconv.FormatInt(n*per.MemoryMiB, 10), "--budget-vcpus", "64")
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	if _, err := d.c.BuildTemplate(ctx, tinyTemplate(t, "tiny")); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range n {
		sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sb.ID)
	}
	if _, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"}); client.StatusOf(err) != http.StatusTooManyRequests {
		t.Fatalf("the 11th create: %v, want 429", err)
	}
	// The tiny guest has no agent: the exec fails, and is counted.
	if _, err := d.c.Exec(ctx, ids[0], sandbox.ExecRequest{Args: []string{"true"}}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("an exec without an agent worked")
	}
	if _, err := d.c.Kill(ctx, ids[n-1]); err != nil {
		t.Fatal(err)
	}
	var scrape bytes.Buffer
	if err := d.c.Metrics(ctx, &scrape); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(scrape.Bytes()))
	if err != nil {
		t.Fatalf("parsing the scrape: %v\n%s", err, &scrape)
	}
	running := float64(n - 1)
	mib := float64(1 << 20)
	checks := []struct {
		family string
		labels map[string]string
		check  func(float64) bool
		want   string
	}{
		{"emberd_host_memory_budget_bytes", nil, eq(n * float64(per.MemoryMiB) * mib), "the budget"},
		{"emberd_host_memory_held_bytes", nil, eq(running * float64(per.MemoryMiB) * mib), "9 sandboxes' memory"},
		{"emberd_host_vcpus_budget", nil, eq(64), "64"},
		{"emberd_host_vcpus_held", nil, eq(running), "9"},
		{"emberd_host_processes_held", nil, eq(running * float64(per.Processes)), "9 sandboxes' tasks"},
		{"emberd_host_files_budget", nil, gt(0), "> 0"},
		{"emberd_host_taps_held", nil, eq(running), "9"},
		{"emberd_host_sandboxes_holding", nil, eq(running), "9"},
		{"emberd_sandboxes", map[string]string{"state": "running", "template": "tiny"}, eq(running), "9"},
		{"emberd_sandboxes", map[string]string{"state": "exited", "template": "tiny"}, eq(1), "1"},
		{"emberd_creates_total", map[string]string{"result": "ok"}, eq(n), "10"},
		{"emberd_creates_total", map[string]string{"result": "refused"}, eq(1), "1"},
		{"emberd_admission_refusals_total", map[string]string{"budget": "memory"}, eq(1), "1"},
		{"emberd_admission_refusals_total", map[string]string{"budget": "vcpus"}, eq(0), "0"},
		{"emberd_execs_total", map[string]string{"result": "failed"}, eq(1), "1"},
		{"emberd_sandbox_ends_total", map[string]string{"reason": "killed"}, eq(1), "1"},
	}
	for _, c := range checks {
		v, ok := value(fams, c.family, c.labels)
		if !ok || !c.check(v) {
			t.Errorf("%s%v = %v (found %v); want %s", c.family, c.labels, v, ok, c.want)
		}
	}
	for _, phase := range []string{"restore", "agent_ready", "network", "total"} {
		h := histogram(fams, "emberd_create_phase_seconds", map[string]string{"phase": phase})
		if h == nil || h.GetSampleCount() != n || h.GetSampleSum() < 0 || (phase == "restore" || phase == "total") && (h.GetSampleSum() <= 0 || h.GetSampleSum() > n*30) {
			t.Errorf("create phase %s: %v", phase, h)
		}
	}
	if h := histogram(fams, "emberd_exec_duration_seconds", nil); h == nil || h.GetSampleCount() != 1 {
		t.Errorf("exec durations: %v", h)
	}
	rss, guest := fams["emberd_sandbox_rss_bytes"], fams["emberd_sandbox_guest_memory_bytes"]
	if rss == nil || guest == nil || len(rss.Metric) != n-1 || len(guest.Metric) != n-1 {
		t.Fatalf("per-VM memory: %v %v", rss, guest)
	}
	for _, mt := range rss.Metric {
		// An ember's RSS: its binary's pages and the few guest pages the
		// tiny guest touched; more than 1 MiB, less than 64 MiB.
		if v := mt.GetGauge().GetValue(); v < mib || v > 64*mib {
			t.Errorf("RSS of %v: %v bytes", mt.Label, v)
		}
	}
	for _, mt := range guest.Metric {
		if v := mt.GetGauge().GetValue(); v != 16*mib {
			t.Errorf("guest memory of %v: %v bytes, want 16 MiB", mt.Label, v)
		}
	}
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
func gt(min float64) func(float64) bool  { return func(v float64) bool { return v > min } }

// series returns the metric of family with labels.
func series(fams map[string]*dto.MetricFamily, family string, labels map[string]string) *dto.Metric {
	f := fams[family]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.Metric {
		for k, v := range labels {
			found := false
			for _, lp := range m.Label {
				found = found || lp.GetName() == k && lp.GetValue() == v
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

func value(fams map[string]*dto.MetricFamily, family string, labels map[string]string) (float64, bool) {
	m := series(fams, family, labels)
	switch {
	case m == nil:
		return 0, false
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	}
	return 0, false
}

func histogram(fams map[string]*dto.MetricFamily, family string, labels map[string]string) *dto.Histogram {
	if m := series(fams, family, labels); m != nil {
		return m.GetHistogram()
	}
	return nil
}

// TestCrashRecord: an ember ended by SIGSEGV or SIGKILL ends its sandbox
// with reason vmm_crash and a crash record holding its status, the
// console's tail and ember's log; GET /sandboxes/{id}/crash and `ember
// sandbox logs --crash` serve it, and say so plainly when there is none.
// Every line of emberd's (JSON) log parses, and those about a sandbox
// name it.
func TestCrashRecord(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	d := startDaemon(t, state)
	cleanupVMs(t, state, &d)
	ctx := ctxT(t)
	if _, err := d.c.BuildTemplate(ctx, tinyTemplate(t, "tiny")); err != nil {
		t.Fatal(err)
	}
	ember := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bins, "ember"), args...)
		cmd.Env = append(os.Environ(), "EMBERD_SOCKET="+d.sock)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	for _, sig := range []syscall.Signal{syscall.SIGSEGV, syscall.SIGKILL} {
		sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.Crash(ctx, sb.ID); client.StatusOf(err) != http.StatusNotFound || !strings.Contains(err.Error(), "it is running") {
			t.Errorf("the crash record of a running sandbox: %v; want 404, it is running", err)
		}
		if err := syscall.Kill(sb.PID, sig); err != nil {
			t.Fatal(err)
		}
		got := waitExit(t, d.c, sb.ID)
		if got.Exit.Reason != sandbox.ExitVMMCrash || !got.Exit.Crash {
			t.Errorf("%v: exit %+v; want %q with a crash record", sig, got.Exit, sandbox.ExitVMMCrash)
		}
		c, err := d.c.Crash(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.Reason != sandbox.ExitVMMCrash || c.Sandbox != sb.ID || c.PID != sb.PID || !strings.Contains(c.Console, "ready") || len(c.EmberLog) == 0 {
			t.Errorf("%v: crash record %+v", sig, c)
		}
		switch sig {
		case syscall.SIGKILL:
			if c.Signal != int(sig) || c.SignalName != "SIGKILL" || c.Code != nil {
				t.Errorf("SIGKILL: record's status: code %v, signal %d %q", c.Code, c.Signal, c.SignalName)
			}
		case syscall.SIGSEGV:
			// Go's runtime takes a SIGSEGV sent by kill as a crash: it
			// reports it on stderr (ember's log) and exits 2.
			segv := c.Signal == int(sig) || (c.Code != nil && *c.Code != 0 && strings.Contains(strings.Join(c.EmberLog, "\n"), "SIGSEGV"))
			if !segv || !strings.Contains(c.Message, "SIGSEGV") {
				t.Errorf("SIGSEGV: record's status: code %v, signal %d, message %q, log %d lines", c.Code, c.Signal, c.Message, len(c.EmberLog))
			}
		}
		out, code := ember("sandbox", "logs", "--crash", sb.ID)
		if code != 0 || !strings.Contains(out, "reason:   vmm_crash") || !strings.Contains(out, "== console") || !strings.Contains(out, "ready") {
			t.Errorf("ember sandbox logs --crash: %d: %s", code, out)
		}
	}
	sb, err := d.c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Kill(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Crash(ctx, sb.ID); client.StatusOf(err) != http.StatusNotFound || !strings.Contains(err.Error(), `reason "killed", which is not a crash`) {
		t.Errorf("the crash record of a killed sandbox: %v", err)
	}
	if out, code := ember("sandbox", "logs", "--crash", sb.ID); code != 1 || !strings.Contains(out, "not a crash") {
		t.Errorf("ember sandbox logs --crash of a killed sandbox: %d: %s", code, out)
	}
	if out, code := ember("sandbox", "logs", "--crash", "--vmm", sb.ID); code != 2 {
		t.Errorf("ember sandbox logs --crash --vmm: %d: %s", code, out)
	}

	// emberd's log: JSON lines; those about a sandbox carry its ID.
	d.kill9()
	for _, line := range strings.Split(strings.TrimSpace(d.log.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("a log line that is not JSON: %q", line)
			continue
		}
		msg, _ := rec["msg"].(string)
		if strings.HasPrefix(msg, "sandbox ") && rec["sandbox"] == nil {
			t.Errorf("a log line about a sandbox without its ID: %q", line)
		}
	}
}

// TestBadBudgetFlags: a bad budget or log flag stops emberd at start with
// one message naming it.
func TestBadBudgetFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--log-format", "xml"}, exitUsage, `--log-format "xml"`},
		{[]string{"--memory-overcommit", "0"}, exitUsage, "--memory-overcommit"},
		{[]string{"--budget-memory-mib", "-5"}, 1, "memory budget -5: negative"},
		{[]string{"--memory-reserve-mib", "1099511627776"}, 1, "no more than the reserve"},
	} {
		args := append([]string{"--state-dir", t.TempDir(), "--socket", filepath.Join(t.TempDir(), "s.sock")}, tc.args...)
		out, err := exec.Command(filepath.Join(bins, "emberd"), args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != tc.code || !strings.Contains(string(out), tc.want) {
			t.Errorf("emberd %v: %v: %s; want exit %d with %q", tc.args, err, out, tc.code, tc.want)
		}
	}
}

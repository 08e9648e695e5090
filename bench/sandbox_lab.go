package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/client"
)

// LabSandboxResult holds the in-lab sandbox figures.
type LabSandboxResult struct {
	Creates int
	// CreateToExecP50MS and P99: from the create request until the first
	// byte of `echo`'s output through emberd (restore, the agent's restore
	// transaction, the exec).
	CreateToExecP50MS, CreateToExecP99MS float64
	// RestorePhaseP50MS, AgentReadyP50MS: emberd's own phases.
	RestorePhaseP50MS, AgentReadyP50MS float64
	// ColdBootMS is the median of `ember run --image` of the same image
	// from exec until `echo`'s output.
	ColdBootMS float64
	// QEMURestoreMS and EmberRestoreMS are LabRestore's medians (the
	// minimal kernel's guest restored from a migration file or a snapshot).
	QEMURestoreMS, EmberRestoreMS float64
	// E2BCreateToExecP50MS is a create and `commands.run('echo ready')`
	// through E2B's JS SDK against emberd's E2B listener (0: not
	// measured); LoginBashP50MS the same work through Ember's Go client:
	// the command E2B's SDK runs, `/bin/bash -l -c 'echo ready'`.
	E2BCreateToExecP50MS, LoginBashP50MS float64
}

// Lines prints the figures as NAME VALUE UNIT.
func (r LabSandboxResult) Lines(w io.Writer) {
	Line(w, "sandbox_create_to_exec_p50_ms", r.CreateToExecP50MS, "ms")
	Line(w, "sandbox_create_to_exec_p99_ms", r.CreateToExecP99MS, "ms")
	Line(w, "sandbox_restore_phase_p50_ms", r.RestorePhaseP50MS, "ms")
	Line(w, "sandbox_agent_ready_p50_ms", r.AgentReadyP50MS, "ms")
	Line(w, "sandbox_cold_boot_ms", r.ColdBootMS, "ms")
	Line(w, "sandbox_vs_cold_boot_ratio", r.CreateToExecP50MS/r.ColdBootMS, "ratio")
	Line(w, "sandbox_qemu_restore_ms", r.QEMURestoreMS, "ms")
	Line(w, "sandbox_vs_qemu_restore_ratio", r.CreateToExecP50MS/r.QEMURestoreMS, "ratio")
	if r.E2BCreateToExecP50MS > 0 {
		Line(w, "e2b_sdk_create_to_exec_p50_ms", r.E2BCreateToExecP50MS, "ms")
		Line(w, "sandbox_create_to_login_bash_p50_ms", r.LoginBashP50MS, "ms")
		Line(w, "e2b_sdk_vs_ember_client_ratio", r.E2BCreateToExecP50MS/r.LoginBashP50MS, "ratio")
	}
}

// LabSandboxOptions say what LabSandbox measures.
type LabSandboxOptions struct {
	// Emberd and Ember are the binaries; Home the image store, Ref the
	// image (with the agent's template); Kernel the guest kernel.
	Emberd, Ember, Home, Ref, Kernel string
	// Initrd is the minimal initramfs of LabRestore's QEMU comparison.
	Initrd string
	// SDKDir, if set, holds E2B's JS SDK (node_modules) and bench.mjs:
	// the same creates then go through it too.
	SDKDir string
	// Creates is the number of sandboxes; ColdRuns the cold boots;
	// RestoreRuns LabRestore's runs.
	Creates, ColdRuns, RestoreRuns int
}

// coldMarker is what the cold boot's workload prints.
const coldMarker = "ember-bench-cold-echo"

// sandboxMemMiB is the memory of the benchmark's template and of the cold
// boots (Debian's python3 runs in it).
const sandboxMemMiB = 256

// sandboxOpTimeout bounds one create or exec in the lab.
const sandboxOpTimeout = 2 * time.Minute

// LabSandbox measures, in the lab, creates of sandboxes through emberd
// from a template of the image (request until the first byte of an exec's
// output), one after the other, against booting the same image cold with
// `ember run --image` (exec until the same output), and against QEMU's
// restore from a migration file (LabRestore's guest: the same kernel with
// the minimal initramfs; QEMU cannot restore Ember's snapshot of the
// image's guest, whose agent talks over Ember's vsock).
func LabSandbox(ctx context.Context, o LabSandboxOptions, progress io.Writer) (r LabSandboxResult, err error) {
	r.Creates = o.Creates
	dir, err := os.MkdirTemp("", "ember-bench-labsandbox-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	c, stop, err := startEmberd(ctx, o.Emberd, dir, progress, "--ember", o.Ember, "--image-home", o.Home, "--e2b-addr", benchE2BAddr)
	if err != nil {
		return r, err
	}
	defer stop()
	var tpl string
	if err := attempts(ctx, progress, "template build", func() error {
		t, err := c.BuildTemplate(ctx, sandbox.TemplateSpec{Image: o.Ref, Kernel: o.Kernel, MemoryMiB: sandboxMemMiB})
		if err == nil {
			fmt.Fprintf(progress, "template %s from %s: built in %.0f ms\n", t.ID, o.Ref, t.BuildMS)
			tpl = t.ID
		}
		return err
	}); err != nil {
		return r, err
	}
	var toExec, restores, agents []float64
	for i := range o.Creates {
		var d time.Duration
		var sb sandbox.Sandbox
		if err := attempts(ctx, progress, fmt.Sprintf("sandbox %d", i), func() error {
			var err error
			d, sb, err = createToExec(ctx, c, tpl, echoArgs)
			return err
		}); err != nil {
			return r, err
		}
		toExec = append(toExec, ms(d))
		restores = append(restores, sb.Timings.RestoreMS)
		agents = append(agents, sb.Timings.AgentReadyMS)
		fmt.Fprintf(progress, "sandbox %d: create to exec output %.1f ms (restore %.1f, agent ready %.1f)\n", i, ms(d), sb.Timings.RestoreMS, sb.Timings.AgentReadyMS)
	}
	r.CreateToExecP50MS, r.CreateToExecP99MS = percentile(toExec, 50), percentile(toExec, 99)
	r.RestorePhaseP50MS, r.AgentReadyP50MS = Median(restores), Median(agents)
	if o.SDKDir != "" {
		// By turns, one through the SDK and one through Ember's client, so
		// that the lab's drift (it slows over a run) weighs on both alike.
		key, err := c.CreateAPIKey(ctx, "bench")
		if err != nil {
			return r, err
		}
		var sdk, bash []float64
		var runner *sdkRunner
		defer func() {
			if runner != nil {
				runner.stop()
			}
		}()
		for i := range o.Creates {
			var f float64
			if err := attempts(ctx, progress, fmt.Sprintf("E2B SDK sandbox %d", i), func() error {
				var err error
				if runner == nil {
					if runner, err = startSDK(ctx, o, key.Key, tpl); err != nil {
						return err
					}
				}
				cctx, cancel := context.WithTimeout(ctx, sandboxOpTimeout)
				defer cancel()
				if f, err = runner.create(cctx); err != nil {
					runner.stop() // a fresh one on the next attempt
					runner = nil
				}
				return err
			}); err != nil {
				return r, err
			}
			sdk = append(sdk, f)
			var d time.Duration
			if err := attempts(ctx, progress, fmt.Sprintf("sandbox %d (login bash)", i), func() error {
				var err error
				d, _, err = createToExec(ctx, c, tpl, loginBashArgs)
				return err
			}); err != nil {
				return r, err
			}
			bash = append(bash, ms(d))
			fmt.Fprintf(progress, "sandbox %d: create to the login bash's echo: E2B SDK %.1f ms, Ember's client %.1f ms\n", i, f, ms(d))
		}
		r.E2BCreateToExecP50MS, r.LoginBashP50MS = Median(sdk), Median(bash)
	}

	var colds []float64
	argv := []string{o.Ember, "run", "--image", o.Ref, "--home", o.Home, "--kernel", o.Kernel,
		"--mem-mib", fmt.Sprint(sandboxMemMiB), "--", "/bin/echo", coldMarker}
	for i := range o.ColdRuns {
		var d time.Duration
		if err := attempts(ctx, progress, fmt.Sprintf("cold boot %d", i), func() error {
			var err error
			d, _, err = RunToMarker(ctx, argv, coldMarker, sandboxOpTimeout)
			return err
		}); err != nil {
			return r, err
		}
		colds = append(colds, ms(d))
		fmt.Fprintf(progress, "cold boot %d: %.1f ms to the echo\n", i, ms(d))
	}
	r.ColdBootMS = Median(colds)

	rr, err := LabRestore(ctx, o.Ember, o.Kernel, o.Initrd, o.RestoreRuns, progress)
	if err != nil {
		return r, fmt.Errorf("QEMU's restore: %w", err)
	}
	r.QEMURestoreMS, r.EmberRestoreMS = rr.QEMUMS, rr.EmberMS
	return r, nil
}

// The commands createToExec runs: echo itself, and what E2B's SDK runs
// for commands.run('echo ready') (a login bash: src/sandbox/commands).
var (
	echoArgs      = []string{"/bin/echo", "ready"}
	loginBashArgs = []string{"/bin/bash", "-l", "-c", "echo ready"}
)

// createToExec creates a sandbox from tpl, runs args in it, and returns
// the time from the create request until the first output byte; the
// sandbox is killed.
func createToExec(ctx context.Context, c *client.Client, tpl string, args []string) (time.Duration, sandbox.Sandbox, error) {
	ctx, cancel := context.WithTimeout(ctx, sandboxOpTimeout)
	defer cancel()
	t0 := time.Now()
	sb, err := c.Create(ctx, sandbox.SandboxSpec{Template: tpl})
	if err != nil {
		return 0, sb, err
	}
	defer c.Kill(context.Background(), sb.ID)
	first := &firstByte{}
	st, err := c.Exec(ctx, sb.ID, sandbox.ExecRequest{Args: args}, first, io.Discard)
	if err != nil {
		return 0, sb, err
	}
	if st.Code != 0 || first.at.IsZero() {
		return 0, sb, fmt.Errorf("%q: exit %d, output: %v", args, st.Code, !first.at.IsZero())
	}
	return first.at.Sub(t0), sb, nil
}

// firstByte records when its first byte came.
type firstByte struct {
	mu sync.Mutex
	at time.Time
}

func (f *firstByte) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.at.IsZero() && len(p) > 0 {
		f.at = time.Now()
	}
	return len(p), nil
}

// benchE2BAddr is where the benchmark's emberd serves E2B's protocol.
const benchE2BAddr = "127.0.0.1:3998"

// sdkRunner is bench.mjs (E2B's JS SDK) in one warm node process: it
// makes one create of the template and its `commands.run('echo ready')`
// through emberd's E2B listener for each line it is sent, and prints the
// time from the create call until the first output byte.
type sdkRunner struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
	out   *bytes.Buffer // everything it printed, for errors
}

// startSDK starts bench.mjs and waits for its warm-up create.
func startSDK(ctx context.Context, o LabSandboxOptions, key, tpl string) (*sdkRunner, error) {
	cmd := exec.CommandContext(ctx, "node", "bench.mjs")
	cmd.Dir = o.SDKDir
	cmd.Env = append(os.Environ(), "E2B_API_URL=http://"+benchE2BAddr, "E2B_SANDBOX_URL=http://"+benchE2BAddr,
		"E2B_API_KEY="+key, "EMBER_TEMPLATE="+tpl, "EMBER_CREATES=stdin")
	r := &sdkRunner{cmd: cmd, out: &bytes.Buffer{}}
	cmd.Stderr = r.out
	var err error
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	r.lines = bufio.NewScanner(io.TeeReader(stdout, r.out))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("node bench.mjs: %w", err)
	}
	if _, err := r.next("warm"); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

// next reads the next line with prefix and returns what follows it.
func (r *sdkRunner) next(prefix string) (string, error) {
	for r.lines.Scan() {
		if v, ok := strings.CutPrefix(r.lines.Text(), prefix); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("node bench.mjs ended before %q:\n%s", prefix, r.out)
}

// create makes one sandbox through the SDK and returns its time, ms.
func (r *sdkRunner) create(ctx context.Context) (float64, error) {
	if _, err := io.WriteString(r.stdin, "create\n"); err != nil {
		return 0, fmt.Errorf("node bench.mjs: %w\n%s", err, r.out)
	}
	stop := context.AfterFunc(ctx, func() { r.cmd.Process.Kill() })
	defer stop()
	v, err := r.next("create_to_exec_ms ")
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(v, 64)
}

// stop ends bench.mjs.
func (r *sdkRunner) stop() {
	r.stdin.Close()
	r.cmd.Process.Kill()
	r.cmd.Wait()
}

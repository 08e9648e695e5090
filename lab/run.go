package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Lab VM parameters.
const (
	qemuBinary = "qemu-system-x86_64"
	// labMemory leaves room for a 4 GiB nested guest; TCG allocates lazily.
	labMemory = "8G"
	labCPUs   = "2"
	// labCmdline keeps the console quiet so that only the job's output and
	// rare emergencies reach it. panic=-1 with -no-reboot ends QEMU on panic.
	// transparent_hugepage=never: nested guests under TCG's emulated SVM
	// sometimes spin on a page fault that should not happen (rip == cr2) or
	// die of triple faults, which looks like stale nested translations; THP
	// collapse and compaction move guest pages and rewrite the nested page
	// tables, so the lab keeps its guests' memory where it is.
	//
	labCmdline = "console=ttyS0 panic=-1 quiet loglevel=1 transparent_hugepage=never lpj=" + labLPJ
	// labLPJ skips the delay-loop calibration (a guess is fine under TCG).
	labLPJ = "10000000"
	// hostRootTag is the 9p tag of the read-only host root.
	hostRootTag = "hostroot"
	// jobParam is the kernel parameter (an env var of the init) naming the
	// job directory.
	jobParam = "ember_lab_job"
	// DefaultRetries is how often ember-lab run repeats a command whose lab
	// VM hung or crashed (RunOptions.Retries). A fault costs about 1.5 min
	// (a fresh lab, then the tests that had not ended); a full e2e run has
	// met up to 5, so 6 keeps such a run green and within 15 minutes of a
	// clean one.
	DefaultRetries = 6
	// DefaultTimeout bounds a lab run.
	DefaultTimeout = 30 * time.Minute
	// DefaultSilence is how long a running command's lab may print nothing
	// before it counts as hung (RunOptions.Silence). The lab's init prints
	// a heartbeat every HeartbeatInterval whatever the command does; a lab
	// whose two CPUs are both stuck in the emulated SVM prints nothing at
	// all, and its kernel cannot report it.
	DefaultSilence = time.Minute
	// qemuWaitDelay is how long to wait for QEMU's output after killing it.
	qemuWaitDelay = 5 * time.Second
	// jobMaxAge is the age after which a leftover job directory (from a
	// killed ember-lab) is removed by the next run.
	jobMaxAge = 24 * time.Hour
)

// RunOptions describe one lab run.
type RunOptions struct {
	// Argv is the command to run inside the lab.
	Argv []string
	// Dir is the working directory inside the lab (default: the current one).
	Dir string
	// Env is the host environment to select from (default: os.Environ()).
	Env []string
	// BinDir is put first on PATH (default: the directory of the running
	// executable).
	BinDir string
	// Add lists host paths made writable inside the lab (see SharesFor).
	Add []string
	// Timeout kills QEMU after this long (default DefaultTimeout).
	Timeout time.Duration
	// Stdout receives the command's output (stdout and stderr, merged).
	Stdout io.Writer
	// Stderr receives diagnostics, and the raw console if Verbose.
	Stderr io.Writer
	// Verbose copies the whole console, kernel messages included, to Stderr.
	Verbose bool
	// Silence: a lab that prints nothing for this long while the command
	// runs has hung, a lab fault like a stall report (0: DefaultSilence;
	// negative: never).
	Silence time.Duration
	// Retries is how many times the command is run again when the lab VM
	// itself hangs (its kernel reports a soft lockup or an RCU stall: a
	// fault of TCG's nested SVM, seen with QEMU's own guests too). The
	// command must be safe to run again. Negative means never.
	Retries int
}

// Run boots the lab, runs opts.Argv inside and returns its exit status. An
// error means the lab itself failed (the status is then ExitSetupFailed).
func Run(ctx context.Context, cfg Config, opts RunOptions) (int, error) {
	if len(opts.Argv) == 0 {
		return ExitSetupFailed, fmt.Errorf("no command to run")
	}
	if err := checkVisible(cfg.cacheDir()); err != nil {
		return ExitSetupFailed, fmt.Errorf("cache directory: %w", err)
	}
	assets, err := Prepare(ctx, cfg)
	if err != nil {
		return ExitSetupFailed, fmt.Errorf("preparing the lab: %w", err)
	}
	job, err := defaultJob(opts)
	if err != nil {
		return ExitSetupFailed, err
	}
	// What lies under the lab's own fresh /tmp or /run (a checkout in
	// /tmp/x, a test binary of go test -exec without GOTMPDIR) would not
	// exist inside: share it, from its top directory under that mount, so
	// that a checkout's build/ and bin/ come along with its package
	// directories.
	add := slices.Clone(opts.Add)
	for _, p := range []string{job.Dir, opts.Argv[0], job.BinDir} {
		if root := shadowRoot(p); root != "" {
			add = append(add, root)
		}
	}
	shares, err := SharesFor(add, func(p string) (bool, error) {
		st, err := os.Stat(p)
		if err != nil {
			return false, err
		}
		return st.IsDir(), nil
	})
	if err != nil {
		return ExitSetupFailed, err
	}
	attempts := 1 + opts.Retries
	if opts.Retries < 0 {
		attempts = 1
	}
	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	var progress *testProgress
	if isGoTestBinary(opts.Argv) {
		progress = &testProgress{}
		opts.Stdout = io.MultiWriter(stdout, progress)
	}
	for attempt := 1; ; attempt++ {
		code, fault, err := runOnce(ctx, cfg, opts, assets, job, shares)
		if fault == "" || attempt >= attempts || ctx.Err() != nil {
			if fault != "" && err == nil {
				err = fmt.Errorf("the lab VM hung or crashed (%s)", fault)
			}
			if progress != nil && code == 0 && err == nil {
				// A test that failed before a lab fault fails the run,
				// although the attempt that finished did not run it.
				if _, failed := progress.Ended(); len(failed) > 0 {
					fmt.Fprintf(stderr, "ember-lab: failed in an earlier attempt: %s\n", strings.Join(failed, " "))
					code = 1
				}
			}
			return code, err
		}
		again := "the command"
		if progress != nil {
			ended, _ := progress.Ended()
			if argv, ok := skipEnded(opts.Argv, ended); ok && len(ended) > 0 {
				job.Argv = argv
				again = fmt.Sprintf("the tests that had not ended (%d ended before)", len(ended))
			}
		}
		fmt.Fprintf(stderr, "ember-lab: the lab VM hung or crashed (%s), a fault of QEMU's emulated nested virtualization rather than of the command; running %s again (attempt %d of %d)\n",
			fault, again, attempt+1, attempts)
	}
}

// runOnce boots the lab once and runs the job. fault is non-empty when the
// lab's kernel reported a hung CPU or crashed, in which case QEMU was
// stopped early.
func runOnce(ctx context.Context, cfg Config, opts RunOptions, assets Assets, job Job, shares []Share) (code int, fault string, err error) {
	log := cfg.logger()
	markers, err := NewMarkers()
	if err != nil {
		return ExitSetupFailed, "", err
	}
	jobDir, err := writeJobDir(cfg.cacheDir(), job, markers, shares)
	if err != nil {
		return ExitSetupFailed, "", err
	}
	defer os.RemoveAll(jobDir)

	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		faultMu   sync.Mutex
		faultLine string
	)
	faultCtx, stopForFault := context.WithCancel(ctx)
	defer stopForFault()
	labFault := func(why string) {
		faultMu.Lock()
		defer faultMu.Unlock()
		if faultLine == "" {
			faultLine = why
			stopForFault()
		}
	}

	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	filter := NewOutputFilter(stdout, markers)
	filter.OnLabFault = func(line string) { labFault(strings.TrimSpace(line)) }
	if opts.Verbose {
		filter.Raw = stderr
	}
	var qemuStderr bytes.Buffer
	cmd := exec.CommandContext(faultCtx, qemuBinary, QEMUArgs(assets, jobDir, shares)...)
	cmd.Stdin = nil // /dev/null: the lab is not interactive
	silence := opts.Silence
	if silence == 0 {
		silence = DefaultSilence
	}
	heard := &lastWrite{w: filter}
	heard.mark()
	cmd.Stdout = heard
	if silence > 0 {
		go watchSilence(faultCtx, heard, silence, labFault)
	}
	cmd.Stderr = &qemuStderr
	cmd.WaitDelay = qemuWaitDelay
	// QEMU must not outlive ember-lab, even if ember-lab is SIGKILLed (go
	// test does that to a test binary that overruns its timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	log.Debug("starting the lab", "qemu", cmd.Args)
	start := time.Now()
	runErr := cmd.Run()
	log.Debug("lab finished", "took", time.Since(start).Round(time.Millisecond))
	if err := filter.Flush(); err != nil {
		return ExitSetupFailed, "", err
	}

	code, ended := filter.Result()
	if ended {
		return code, "", nil
	}
	faultMu.Lock()
	fault = faultLine
	faultMu.Unlock()
	if fault != "" && ctx.Err() == nil {
		return ExitSetupFailed, fault, nil
	}
	var why string
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		why = fmt.Sprintf("timed out after %v", timeout)
	case ctx.Err() != nil:
		why = "interrupted"
	case runErr != nil:
		why = fmt.Sprintf("QEMU failed (%v)", runErr)
	case !filter.Started():
		why = "the lab VM stopped before the command started"
	default:
		why = "the lab VM stopped before the command finished"
	}
	if msg := strings.TrimSpace(qemuStderr.String()); msg != "" && runErr != nil {
		why += ": " + lastLine(msg)
	}
	if tail := filter.NoiseTail(); len(tail) > 0 && !filter.Started() {
		why += "; last console line: " + strings.TrimSpace(tail[len(tail)-1])
	}
	return ExitSetupFailed, "", errors.New(why)
}

// lastWrite passes writes on to w and notes when the last one came.
type lastWrite struct {
	w  io.Writer
	at atomic.Int64 // UnixNano
}

func (l *lastWrite) mark() { l.at.Store(time.Now().UnixNano()) }

func (l *lastWrite) Write(p []byte) (int, error) {
	l.mark()
	return l.w.Write(p)
}

// watchSilence reports a lab fault when the lab has printed nothing for
// silence (it boots in seconds, so this holds from QEMU's start).
func watchSilence(ctx context.Context, heard *lastWrite, silence time.Duration, fault func(string)) {
	tick := time.NewTicker(min(silence/10, 10*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		quiet := time.Since(time.Unix(0, heard.at.Load()))
		if quiet >= silence {
			fault(fmt.Sprintf("no output from the lab for %v: its CPUs hung", quiet.Round(time.Second)))
			return
		}
	}
}

// labShadowedDirs are mounted afresh inside the lab, hiding the host's.
const labShadowedDirs = "/tmp /run /dev /proc /sys"

// shadowedInLab reports whether host path p is hidden inside the lab by one
// of its own mounts (unless shared with --add).
func shadowedInLab(p string) bool {
	p = filepath.Clean(p)
	for _, d := range strings.Fields(labShadowedDirs) {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// shadowRoot returns the top directory under a lab mount that hides host
// path p (/tmp/x for /tmp/x/e2e), or "" if p is visible inside the lab or
// not an absolute path. Paths under /dev, /proc and /sys are not shared.
func shadowRoot(p string) string {
	if !filepath.IsAbs(p) {
		return ""
	}
	p = filepath.Clean(p)
	for _, d := range strings.Fields(labSharableShadowedDirs) {
		if rest, ok := strings.CutPrefix(p, d+"/"); ok {
			top, _, _ := strings.Cut(rest, "/")
			return d + "/" + top
		}
	}
	return ""
}

// labSharableShadowedDirs are the lab's own mounts under which host
// directories can be shared in.
const labSharableShadowedDirs = "/tmp /run"

// checkVisible fails if the lab cannot see dir through the host root.
func checkVisible(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("resolving %s: %w", dir, err)
	}
	if shadowedInLab(abs) {
		return fmt.Errorf("%s is not visible inside the lab (%s are the lab's own); set EMBER_CACHE elsewhere", abs, labShadowedDirs)
	}
	return checkCmdlineSafe(abs)
}

// defaultJob fills in the job from opts and the process's own state.
func defaultJob(opts RunOptions) (Job, error) {
	dir := opts.Dir
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return Job{}, fmt.Errorf("getting the working directory: %w", err)
		}
		dir = wd
	}
	env := opts.Env
	if env == nil {
		env = os.Environ()
	}
	binDir := opts.BinDir
	if binDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return Job{}, fmt.Errorf("locating ember-lab: %w", err)
		}
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		binDir = filepath.Dir(exe)
	}
	return Job{Dir: dir, Argv: opts.Argv, Env: SelectEnv(env, binDir), BinDir: binDir}, nil
}

// writeJobDir creates a job directory under the cache with job.sh and
// mounts.sh; the lab sees it through the read-only host root.
func writeJobDir(cache string, job Job, m Markers, shares []Share) (string, error) {
	jobs := filepath.Join(cache, "lab", "jobs")
	if err := os.MkdirAll(jobs, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", jobs, err)
	}
	removeStaleJobs(jobs)
	dir, err := os.MkdirTemp(jobs, "job-")
	if err != nil {
		return "", fmt.Errorf("creating a job directory: %w", err)
	}
	if err := checkCmdlineSafe(dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	script, err := job.Script(m)
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "job.sh"), []byte(script), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("writing the job script: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mounts.sh"), []byte(MountScript(shares, m)), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("writing the mount script: %w", err)
	}
	return dir, nil
}

// removeStaleJobs removes job directories left behind by killed runs.
func removeStaleJobs(jobs string) {
	ents, err := os.ReadDir(jobs)
	if err != nil {
		return
	}
	for _, e := range ents {
		info, err := e.Info()
		if err == nil && e.IsDir() && time.Since(info.ModTime()) > jobMaxAge {
			_ = os.RemoveAll(filepath.Join(jobs, e.Name()))
		}
	}
}

// QEMUArgs returns the arguments of qemu-system-x86_64 for a lab run.
func QEMUArgs(a Assets, jobDir string, shares []Share) []string {
	cpu := "max"
	if c := os.Getenv("EMBER_LAB_CPU"); c != "" {
		cpu = c
	}
	args := []string{
		"-accel", "tcg", "-cpu", cpu, "-smp", labCPUs, "-m", labMemory,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", a.Kernel, "-initrd", a.Initrd,
		"-append", labCmdline + " " + os.Getenv("EMBER_LAB_APPEND") + " " + jobParam + "=" + jobDir,
		"-virtfs", "local,path=/,mount_tag=" + hostRootTag + ",security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-rng-pci",
	}
	for _, s := range shares {
		args = append(args, "-virtfs", "local,path="+s.Path+",mount_tag="+s.Tag+",security_model=none,multidevs=remap")
	}
	return args
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

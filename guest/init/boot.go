package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/guest/ociuser"
	"github.com/embervm/ember/guest/workload"
)

// exitInitFailure is the status reported when the init itself fails, as
// OCI runtimes report their own failures (docker run: 125).
const exitInitFailure = 125

// shutdownWait bounds the wait for the processes killed at the end to be
// reaped before the file systems are synced; one stuck in the kernel must
// not keep the VM from ending.
const shutdownWait = 5 * time.Second

// forwardedSignals are the signals PID 1 passes on to the workload (those
// a user sends to stop or poke a program, as tini forwards them). The
// kernel turns Ctrl-Alt-Del into SIGINT for PID 1 (see
// reboot(LINUX_REBOOT_CMD_CAD_OFF) in prepare).
func forwardedSignals() []os.Signal {
	return []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2}
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "ember-init: not PID 1: this is the init of an Ember image VM and runs only as one")
		os.Exit(exitInitFailure)
	}
	in := &initProcess{out: os.Stderr, started: bootTime()}
	in.shutdown(in.boot())
}

// initProcess is PID 1's state.
type initProcess struct {
	out     io.Writer // the console, for the init's own lines
	debug   bool
	started string          // CLOCK_BOOTTIME when main began, for the trace
	trace   []string        // debug lines not yet printed (see debugf)
	reg     *statusRegister // nil if the register could not be mapped
}

// logf prints one line of the init on the console, after the trace lines
// waiting.
func (in *initProcess) logf(format string, args ...any) {
	in.flushTrace()
	fmt.Fprintf(in.out, "ember-init: "+format+"\n", args...)
}

// debugf records a line only when the config asks for a trace, with the
// time since the kernel started (CLOCK_BOOTTIME, as the kernel's own
// printk times), so a slow step shows. The lines are printed together
// when the workload or the agent starts, or before any other line:
// printing each at once would time the console (a serial port, slow
// under emulation) rather than the steps.
func (in *initProcess) debugf(format string, args ...any) {
	if in.debug {
		in.trace = append(in.trace, "["+bootTime()+"] "+fmt.Sprintf(format, args...))
	}
}

// bootTime is CLOCK_BOOTTIME as the kernel prints its times: seconds and
// microseconds.
func bootTime() string {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return fmt.Sprintf("%d.%06d", ts.Sec, ts.Nsec/1000)
}

// flushTrace prints the trace lines recorded so far.
func (in *initProcess) flushTrace() {
	for _, l := range in.trace {
		fmt.Fprintf(in.out, "ember-init: %s\n", l)
	}
	in.trace = in.trace[:0]
}

// boot does everything up to the workload's end and returns the status to
// report. Nothing in it may take PID 1 down: a panic becomes 125.
func (in *initProcess) boot() (status int) {
	defer func() {
		if r := recover(); r != nil {
			in.logf("internal error: %v", r)
			status = exitInitFailure
		}
	}()
	cfg, err := in.prepare()
	if err != nil {
		in.logf("%v", err)
		return exitInitFailure
	}
	switch cfg.Mode {
	case initconfig.ModeRun:
		return in.runWorkload(cfg)
	case initconfig.ModeAgent:
		return in.runAgent(cfg)
	}
	in.logf("mode %q: unknown", cfg.Mode) // Parse refuses it; kept for safety
	return exitInitFailure
}

// prepare does everything both modes need: the initramfs's own mounts,
// the exit-status register, the config, the root, the hostname.
func (in *initProcess) prepare() (*initconfig.Config, error) {
	// The register first: its node lives in the initramfs itself, so even
	// a failure to mount /dev below reaches the host as 125.
	reg, err := openStatusRegister(memNode, exitStatusAddr)
	if err != nil {
		in.logf("cannot reach Ember's exit-status register (%v); the host will not learn the exit status", err)
	}
	in.reg = reg
	if err := execute("/", earlyPlan(), func(string) {}); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	ensureStdio()
	// Ctrl-Alt-Del: SIGINT to PID 1 (forwarded) rather than an immediate
	// reboot. Failure leaves the kernel's default, which is no worse.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)

	cfg, err := readConfig(initconfig.Path)
	if err != nil {
		return nil, err
	}
	in.debug = cfg.Debug
	in.debugf("config: mode %s, %d layers, args %q (init started at %s)", cfg.Mode, len(cfg.Layers), cfg.Args, in.started)

	drives, err := findDrives(sysBlock, devDir, wantedDrives(cfg), driveWait)
	if err != nil {
		return nil, err
	}
	plan, err := rootPlan(cfg, drives)
	if err != nil {
		return nil, err
	}
	if err := execute("/", plan, func(s string) { in.debugf("%s", s) }); err != nil {
		return nil, err
	}
	if err := switchRoot(newRoot); err != nil {
		return nil, err
	}
	if err := execute("/", systemPlan(cfg), func(s string) { in.debugf("%s", s) }); err != nil {
		return nil, err
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return nil, fmt.Errorf("sethostname %q: %w", cfg.Hostname, err)
		}
	}
	if err := writeEtc("/", cfg); err != nil {
		return nil, err
	}
	in.debugf("/etc written")
	if err := loopbackUp(); err != nil {
		in.logf("%v: programs cannot use localhost", err) // a kernel without networking
	}
	in.debugf("loopback up")
	return cfg, nil
}

// readConfig reads and checks the config; a missing file means the
// initramfs was not made for an image VM.
func readConfig(p string) (*initconfig.Config, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("%w (the host appends it to the initrd of an image VM)", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, initconfig.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return initconfig.Parse(data)
}

// runWorkload runs the config's command as its user and returns its
// status, or the code of what kept it from running.
func (in *initProcess) runWorkload(cfg *initconfig.Config) int {
	id, err := ociuser.Resolve("/", cfg.User)
	if err != nil {
		in.logf("%v", err)
		return exitInitFailure
	}
	in.debugf("user %q resolved", cfg.User)
	dir := cfg.WorkingDir
	if dir == "" {
		dir = "/"
	}
	// A working directory the image lacks is created, as runc does.
	if err := os.MkdirAll(dir, modeDir); err != nil {
		in.logf("working directory: %v", err)
		return exitInitFailure
	}
	console, tty, err := openConsole(cfg.Terminal)
	if err != nil {
		in.logf("console: %v", err)
		return exitInitFailure
	}
	defer console.Close()

	// Registered before the start, so that no SIGCHLD is missed.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, append(forwardedSignals(), unix.SIGCHLD)...)
	defer signal.Stop(sigs)

	env := workloadEnv(cfg, id)
	in.debugf("running %q as %d:%d (groups %v) in %s", cfg.Args, id.UID, id.GID, id.Groups, dir)
	in.flushTrace()
	pid, err := workload.Start(workload.Spec{
		Args: cfg.Args, Env: env, Dir: dir,
		UID: id.UID, GID: id.GID, Groups: id.Groups,
		Console: console, Ctty: tty,
	})
	if err != nil {
		in.logf("%v", err)
		var se *workload.StartError
		if errors.As(err, &se) {
			return se.Code
		}
		return exitInitFailure
	}
	ws, err := workload.Supervise(pid, sigs)
	if err != nil {
		in.logf("%v", err)
		return exitInitFailure
	}
	status := workload.ExitCode(ws)
	in.debugf("workload exited: status %d", status)
	return status
}

// shutdown ends the VM: everything left is killed and reaped, the file
// systems synced, the status reported, the machine reset (see the package
// documentation for why a reset rather than a power-off).
func (in *initProcess) shutdown(status int) {
	_ = unix.Kill(-1, unix.SIGKILL) // every process but PID 1
	if !workload.ReapRemaining(shutdownWait) {
		in.logf("processes still there %v after SIGKILL; syncing anyway", shutdownWait)
	}
	unix.Sync()
	if in.reg != nil {
		in.reg.write(status)
	}
	in.debugf("exit status %d; resetting", status)
	in.flushTrace()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	// Not reached unless the reboot failed. PID 1 exiting panics the
	// kernel, which resets after panic=N seconds.
	in.logf("reboot: %v", err)
	os.Exit(status)
}

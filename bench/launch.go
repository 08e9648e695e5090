package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/tiny"
)

// Settings of the launch benchmark.
const (
	// launchTimeout bounds one launch or restore.
	launchTimeout = 30 * time.Second
	// counterHeadersLen is the length of the Counter image's ELF header and
	// two program headers (64 + 2 x 56 bytes), which open its page in guest
	// RAM (the image is loaded from file offset 0): how the page is found
	// in a QEMU migration stream.
	counterHeadersLen = 64 + 2*56
	// qemuCountTime lets the Counter guest run before QEMU saves it.
	qemuCountTime = 20 * time.Millisecond
)

// LaunchOptions configures Launch.
type LaunchOptions struct {
	Ember string
	// Launches is how many VMs each figure launches (after Parallel
	// warm-up launches that are not counted), Parallel of them at a time.
	Launches, Parallel int
	MemMiB             int
}

// LaunchRate is one rate figure.
type LaunchRate struct {
	// PerS is the VMs whose guest ran, per second of wall time.
	PerS float64
	// CPUMS is the VMM processes' user+sys CPU per VM (rusage), BenchCPUMS
	// the benchmark's own per VM (starting them, reading their output).
	CPUMS, BenchCPUMS float64
	// WallMS is the median time of one launch, exec to exit.
	WallMS float64
	// OtherCPUs is how many CPUs' worth of busy time (/proc/stat) was
	// not spent in these VMM processes or the benchmark: other work on
	// the host, and kernel threads working for the launches (RCU and
	// SRCU callbacks, exits). On a shared host it says how much CPU the
	// launches did not have.
	OtherCPUs float64
}

// ceiling is the rate the host's CPUs would allow if CPU were all a
// launch needed.
func (r LaunchRate) ceiling() float64 {
	return float64(runtime.NumCPU()) * 1000 / (r.CPUMS + r.BenchCPUMS)
}

func (r LaunchRate) describe(what string, n, parallel int) string {
	return fmt.Sprintf("%s: %d, %d at a time: %.0f/s; per VM %.2f ms CPU in the VMM + %.2f ms in ember-bench (all %d CPUs on it would allow %.0f/s), %.2f ms wall (median); %.2f CPUs busy outside these processes meanwhile",
		what, n, parallel, r.PerS, r.CPUMS, r.BenchCPUMS, runtime.NumCPU(), r.ceiling(), r.WallMS, r.OtherCPUs)
}

// LaunchResult holds the launch benchmark's figures.
type LaunchResult struct {
	Launches, Parallel  int
	Launch, Restore     LaunchRate
	QEMULaunch, QEMURes LaunchRate
}

// Lines prints the figures as NAME VALUE UNIT.
func (r LaunchResult) Lines(w io.Writer) {
	for _, f := range []struct {
		prefix string
		r      LaunchRate
	}{{"launch", r.Launch}, {"restore", r.Restore}, {"qemu_launch", r.QEMULaunch}, {"qemu_restore", r.QEMURes}} {
		Line(w, f.prefix+"_rate_per_s", f.r.PerS, "/s")
		Line(w, f.prefix+"_cpu_ms_per_vm", f.r.CPUMS, "ms")
		Line(w, f.prefix+"_wall_ms", f.r.WallMS, "ms")
		LineNote(w, f.prefix+"_cpu_ceiling_per_s", f.r.ceiling(), "/s", "the rate if every CPU ran only these launches (CPU count / CPU per VM)")
		Line(w, f.prefix+"_other_cpus", f.r.OtherCPUs, "CPUs")
	}
	LineNote(w, "launch_rate_ratio_vs_qemu", r.Launch.PerS/r.QEMULaunch.PerS, "ratio", "Ember/QEMU launches per second: > 1 means Ember is better")
	LineNote(w, "restore_rate_ratio_vs_qemu", r.Restore.PerS/r.QEMURes.PerS, "ratio", "Ember/QEMU restores per second: > 1 means Ember is better")
}

// Launch measures on this host how many tiny guests per second Ember and
// QEMU's microvm machine launch, and restore from a snapshot, with
// o.Parallel at a time:
//   - launch: `ember run` of the tiny guest (guest/tiny Image), which
//     writes the boot timer as its first action and resets: a launch
//     counts when Ember logged the boot timer and exited 0. QEMU boots the
//     same image and exits through isa-debug-exit.
//   - restore: a fresh `ember --api-sock` per VM loads a Full snapshot of
//     the Counter guest with its exit flag set (PUT /snapshot/load,
//     resume_vm), whose guest signals the boot timer and resets as soon
//     as it runs. QEMU restores a migration file of the same guest, with
//     the flag set in the stream, through -incoming fd:3, and exits when
//     the guest resets it through an i8042.
func Launch(ctx context.Context, o LaunchOptions, progress io.Writer) (LaunchResult, error) {
	r := LaunchResult{Launches: o.Launches, Parallel: o.Parallel}
	g, err := newProcGroup(ctx, "launch")
	if err != nil {
		return r, err
	}
	defer g.close()
	img := filepath.Join(g.dir, "tiny.elf")
	if err := os.WriteFile(img, tiny.Image(), 0o644); err != nil {
		return r, err
	}
	mem := fmt.Sprint(o.MemMiB)
	qemuBase := []string{QEMUBinary, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
		"-m", mem, "-nodefaults", "-no-user-config", "-display", "none"}

	emberLaunch := func(ctx context.Context, _ int) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, o.Ember, "run", "--kernel", img, "--mem-mib", mem, "--boot-timer")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := g.run(cmd); err != nil {
			return cmd, fmt.Errorf("ember run: %w\n%s", err, tail(out.Bytes()))
		}
		if !bootUS.Match(out.Bytes()) {
			return cmd, fmt.Errorf("ember run: no boot timer line\n%s", tail(out.Bytes()))
		}
		return cmd, nil
	}
	qemuLaunch := func(ctx context.Context, _ int) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, qemuBase[0], append(qemuBase[1:],
			"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=4", tiny.DebugExitPort), "-kernel", img)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := g.run(cmd)
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != qemuDebugExitOK {
			return cmd, fmt.Errorf("qemu: %v (want exit status %d from isa-debug-exit)\n%s", err, qemuDebugExitOK, tail(out.Bytes()))
		}
		return cmd, nil
	}
	if r.Launch, err = launchRate(ctx, o, emberLaunch); err != nil {
		return r, err
	}
	fmt.Fprintln(progress, r.Launch.describe("ember launch", o.Launches, o.Parallel))
	if r.QEMULaunch, err = launchRate(ctx, o, qemuLaunch); err != nil {
		return r, err
	}
	fmt.Fprintln(progress, r.QEMULaunch.describe("qemu launch", o.Launches, o.Parallel))

	snap, memFile, _, err := exitingSnapshot(ctx, o.Ember, g.dir, o.MemMiB)
	if err != nil {
		return r, err
	}
	emberRestore := func(ctx context.Context, worker int) (*exec.Cmd, error) {
		return emberRestoreOnce(ctx, g, o.Ember, filepath.Join(g.dir, fmt.Sprintf("restore%d.sock", worker)), snap, memFile)
	}
	if r.Restore, err = launchRate(ctx, o, emberRestore); err != nil {
		return r, err
	}
	fmt.Fprintln(progress, r.Restore.describe("ember restore", o.Launches, o.Parallel))

	// QEMU: the same guest, with an i8042 so that its reset ends QEMU
	// (-no-reboot); the restore needs the same devices as the save.
	qemuCounter := append(append([]string{}, qemuBase...), "-no-reboot", "-device", "i8042")
	mig := filepath.Join(g.dir, "qemu.mig")
	if err := qemuExitingMigration(ctx, g, qemuCounter, mig); err != nil {
		return r, fmt.Errorf("saving the QEMU guest: %w", err)
	}
	counter := filepath.Join(g.dir, "counter.elf") // written by exitingSnapshot
	qemuRestore := func(ctx context.Context, _ int) (*exec.Cmd, error) {
		f, err := os.Open(mig)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cmd := exec.CommandContext(ctx, qemuCounter[0], append(qemuCounter[1:], "-kernel", counter, "-incoming", "fd:3")...)
		cmd.ExtraFiles = []*os.File{f}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := g.run(cmd); err != nil {
			return cmd, fmt.Errorf("qemu -incoming: %w\n%s", err, tail(out.Bytes()))
		}
		return cmd, nil
	}
	if r.QEMURes, err = launchRate(ctx, o, qemuRestore); err != nil {
		return r, err
	}
	fmt.Fprintln(progress, r.QEMURes.describe("qemu restore", o.Launches, o.Parallel))
	return r, nil
}

// launchRate runs one o.Parallel times to warm up, then o.Launches times
// with o.Parallel workers (each passes its worker number), and measures
// the rate and the CPU spent.
func launchRate(ctx context.Context, o LaunchOptions, one func(ctx context.Context, worker int) (*exec.Cmd, error)) (LaunchRate, error) {
	var r LaunchRate
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	run := func(count int, record bool) (time.Duration, []float64, time.Duration) {
		var (
			mu    sync.Mutex
			walls []float64
			cpu   time.Duration
			wg    sync.WaitGroup
		)
		next := make(chan struct{}, count)
		for range count {
			next <- struct{}{}
		}
		close(next)
		t0 := time.Now()
		for w := range o.Parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range next {
					if ctx.Err() != nil {
						return
					}
					lctx, lcancel := context.WithTimeout(ctx, launchTimeout)
					s := time.Now()
					cmd, err := one(lctx, w)
					d := time.Since(s)
					lcancel()
					if err != nil {
						cancel(err)
						return
					}
					if record {
						mu.Lock()
						walls = append(walls, ms(d))
						cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(t0), walls, cpu
	}
	run(o.Parallel, false)
	self0 := selfCPU()
	busy0, err := hostBusy()
	if err != nil {
		return r, err
	}
	wall, walls, cpu := run(o.Launches, true)
	self := selfCPU() - self0
	busy1, err := hostBusy()
	if err != nil {
		return r, err
	}
	if err := context.Cause(ctx); err != nil {
		return r, err
	}
	n := float64(o.Launches)
	r.PerS = n / wall.Seconds()
	r.CPUMS, r.BenchCPUMS = ms(cpu)/n, ms(self)/n
	r.WallMS = Median(walls)
	r.OtherCPUs = max(0, (busy1-busy0-cpu-self).Seconds()/wall.Seconds())
	return r, nil
}

// hostBusy is the CPU time all CPUs have spent busy since boot: the
// first line of /proc/stat less idle and iowait, in USER_HZ ticks.
func hostBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var total, idle int64
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q", line)
		}
		if i == 7 { // steal is time the CPU was not ours; guest times are in user
			break
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return time.Duration(total-idle) * time.Second / clockTicks, nil
}

// selfCPU is this process's user+sys CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// emberRestoreOnce starts `ember --api-sock sock`, loads the snapshot
// with resume_vm and waits for the restored guest to signal the boot
// timer and reset.
func emberRestoreOnce(ctx context.Context, g *procGroup, ember, sock, snap, mem string) (*exec.Cmd, error) {
	os.Remove(sock)
	cmd := exec.CommandContext(ctx, ember, "--api-sock", sock)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := g.start(cmd); err != nil {
		return nil, err
	}
	err := waitSocket(ctx, sock)
	if err == nil {
		c := client.New(sock)
		err = c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap, ResumeVM: true,
			MemBackend: &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: mem}})
		c.Close()
	}
	if err != nil {
		cmd.Process.Kill()
	}
	werr := g.wait(cmd)
	switch {
	case err != nil:
		return cmd, fmt.Errorf("restore: %w\n%s", err, tail(out.Bytes()))
	case werr != nil:
		return cmd, fmt.Errorf("restored ember: %w\n%s", werr, tail(out.Bytes()))
	case !strings.Contains(out.String(), bootTimerMarker):
		return cmd, fmt.Errorf("restored ember exited without the guest's boot timer line\n%s", tail(out.Bytes()))
	}
	return cmd, nil
}

// qemuExitingMigration boots the Counter guest in QEMU (argv, without
// -kernel), saves it to the migration file mig through QMP, and sets the
// guest's exit flag in every copy of its page in the stream, so that a
// restored guest resets as soon as it runs.
func qemuExitingMigration(ctx context.Context, g *procGroup, argv []string, mig string) error {
	counter := filepath.Join(g.dir, "counter.elf")
	sock := filepath.Join(g.dir, "qmp-save.sock")
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], "-kernel", counter, "-qmp", "unix:"+sock+",server=on,wait=off")...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := g.start(cmd); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); g.wait(cmd) }()
	if err := waitSocket(ctx, sock); err != nil {
		return fmt.Errorf("%w\n%s", err, tail(out.Bytes()))
	}
	time.Sleep(qemuCountTime)
	if err := qmpMigrateToFile(sock, mig, launchTimeout); err != nil {
		return fmt.Errorf("%w\n%s", err, tail(out.Bytes()))
	}
	return setExitFlagInStream(mig, tiny.Counter())
}

// setExitFlagInStream finds the Counter guest's first page in a QEMU
// migration stream (RAM pages are stored whole and uncompressed, a page
// resent during precopy appears once per round) by its ELF headers, and
// sets the exit flag byte in each copy.
func setExitFlagInStream(mig string, counter []byte) error {
	b, err := os.ReadFile(mig)
	if err != nil {
		return err
	}
	head := counter[:counterHeadersLen]
	flag := tiny.ExitFlagAddr - tiny.LoadAddr
	found := 0
	for i := 0; ; {
		j := bytes.Index(b[i:], head)
		if j < 0 {
			break
		}
		at := i + j + flag
		if at >= len(b) {
			break
		}
		b[at] = 1
		found++
		i += j + 1
	}
	if found == 0 {
		return errors.New("the guest's page is not in the migration stream")
	}
	return os.WriteFile(mig, b, 0o644)
}

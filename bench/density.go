package bench

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/tiny"
)

// Settings of the density benchmark.
const (
	// densityP99Limit: a step counts only if every VM's management API
	// answered and the 99th percentile of those answers was within it.
	densityP99Limit = 100 * time.Millisecond
	// densityPingTimeout bounds one VM's answer before it counts as dead.
	densityPingTimeout = 5 * time.Second
	// densityCPUWindow is how long the idle VMs' CPU use is sampled.
	densityCPUWindow = time.Second
	// densitySpareMiB is the memory the ramp leaves available: a step that
	// would take MemAvailable below it (at the per-VM cost measured so
	// far) is not started.
	densitySpareMiB = 2048
	// densitySteps is the default number of steps of the ramp to --max.
	densitySteps = 8
	// densityShownFailures is how many failed VMs a report details.
	densityShownFailures = 3
)

// DensityOptions configures Density.
type DensityOptions struct {
	// QEMU measures QEMU's microvm machine instead of Ember.
	QEMU bool
	// Ember is the ember binary (unused with QEMU).
	Ember string
	// Max is the largest VM count tried; Step VMs are added per step.
	Max, Step int
	// Parallel is how many VMs are started at once.
	Parallel int
	// MemMiB is each guest's memory.
	MemMiB int
	// P99Limit replaces densityP99Limit when set (a test that checks the
	// ramp works, not how fast the host answers, sets a generous one).
	P99Limit time.Duration
}

// DensityResult holds the figures at the largest good step.
type DensityResult struct {
	VMM string // "ember" or "qemu"
	// VMs is the largest count at which every VM answered its management
	// API (Ember: GET /; QEMU: QMP query-status) with a p99 within
	// densityP99Limit and every guest had printed its line.
	VMs int
	// Limit says why the ramp stopped.
	Limit string
	// PingP50MS and PingP99MS are the answers' latencies at VMs (a fresh
	// connection each, as a manager polling its VMs makes).
	PingP50MS, PingP99MS float64
	// HostMiBPerVM is the drop of MemAvailable per VM; PSSMiBPerVM the
	// sum of the VMM processes' proportional set sizes per VM.
	HostMiBPerVM, PSSMiBPerVM float64
	// ThreadsPerVM, FDsPerVM and MapsPerVM are means over the VMM
	// processes; ThreadsMax is the most threads one had.
	ThreadsPerVM, FDsPerVM, MapsPerVM float64
	ThreadsMax                        int64
	// IdleCPUPct is the CPU all VMs used together while idle, in percent
	// of one CPU.
	IdleCPUPct float64
	// StartsPerS is how fast the VMs were started and booted (the ramp's
	// VMs over the time spent starting them).
	StartsPerS float64
}

// Lines prints the figures as NAME VALUE UNIT, prefixed "qemu_" for QEMU.
func (r DensityResult) Lines(w io.Writer) {
	p := ""
	if r.VMM == "qemu" {
		p = "qemu_"
	}
	LineNote(w, p+"density_vms", float64(r.VMs), "vms", "stopped: "+r.Limit)
	Line(w, p+"density_ping_p50_ms", r.PingP50MS, "ms")
	Line(w, p+"density_ping_p99_ms", r.PingP99MS, "ms")
	Line(w, p+"density_host_mib_per_vm", r.HostMiBPerVM, "MiB")
	Line(w, p+"density_pss_mib_per_vm", r.PSSMiBPerVM, "MiB")
	Line(w, p+"density_threads_per_vm", r.ThreadsPerVM, "threads")
	Line(w, p+"density_threads_max", float64(r.ThreadsMax), "threads")
	Line(w, p+"density_fds_per_vm", r.FDsPerVM, "fds")
	Line(w, p+"density_maps_per_vm", r.MapsPerVM, "maps")
	Line(w, p+"density_idle_cpu_pct", r.IdleCPUPct, "%")
	Line(w, p+"density_starts_per_s", r.StartsPerS, "/s")
}

// densityVM is one running VM of the benchmark.
type densityVM struct {
	cmd                 *exec.Cmd
	sock, console, logf string
}

// densityDriver starts one kind of VMM and asks it whether it is alive.
type densityDriver interface {
	start(ctx context.Context, g *procGroup, i int, kernel string) (*densityVM, error)
	ping(ctx context.Context, vm *densityVM) error
}

// Density starts idle tiny guests (guest/tiny Idle: prints a line, halts
// forever) in steps up to o.Max, each in its own VMM process, and after
// each step checks that every VM answers its management API and that
// every guest printed its line. It stops at the first step that fails,
// and reports the figures of the last good one. Everything it starts is
// in one process group, killed when ctx ends or Density returns.
func Density(ctx context.Context, o DensityOptions, progress io.Writer) (r DensityResult, err error) {
	r.VMM = "ember"
	var drv densityDriver = emberDensity{ember: o.Ember, memMiB: o.MemMiB}
	if o.QEMU {
		r.VMM, drv = "qemu", qemuDensity{memMiB: o.MemMiB}
	}
	if o.Step <= 0 {
		o.Step = max(1, (o.Max+densitySteps-1)/densitySteps)
	}
	g, err := newProcGroup(ctx, "density-"+r.VMM)
	if err != nil {
		return r, err
	}
	defer g.close()
	kernel := filepath.Join(g.dir, "idle.elf")
	if err := os.WriteFile(kernel, tiny.Idle(), 0o644); err != nil {
		return r, err
	}
	base, err := memAvailableMiB()
	if err != nil {
		return r, err
	}
	var (
		vms      []*densityVM
		startDur time.Duration
		perVMMiB float64
	)
	r.Limit = fmt.Sprintf("reached --max %d", o.Max)
	for len(vms) < o.Max {
		n := len(vms)
		target := min(n+o.Step, o.Max)
		if perVMMiB > 0 {
			avail, err := memAvailableMiB()
			if err != nil {
				return r, err
			}
			if need := float64(target-n) * perVMMiB; avail-need < densitySpareMiB {
				r.Limit = fmt.Sprintf("memory: %d more VMs at %.1f MiB each would leave %.0f MiB of %.0f available (keeping %d MiB spare)",
					target-n, perVMMiB, avail-need, avail, densitySpareMiB)
				break
			}
		}
		t0 := time.Now()
		started, err := startVMs(ctx, g, drv, kernel, n, target, o.Parallel)
		startDur += time.Since(t0)
		vms = append(vms, started...)
		if ctx.Err() != nil {
			return r, fmt.Errorf("interrupted at %d VMs", len(vms))
		}
		if err != nil {
			r.Limit = fmt.Sprintf("starting VMs %d to %d (%d of them started): %v", n, target-1, len(vms)-n, err)
			if hint := hostLimitHint(o.Max - len(vms)); hint != "" {
				r.Limit += "; host limits: " + hint
			}
			break
		}
		step, err := checkVMs(ctx, drv, vms)
		if ctx.Err() != nil {
			return r, fmt.Errorf("interrupted at %d VMs", len(vms))
		}
		if err != nil {
			r.Limit = fmt.Sprintf("at %d VMs: %v", len(vms), err)
			if hint := hostLimitHint(0); hint != "" {
				r.Limit += "; host limits: " + hint
			}
			break
		}
		if limit := cmp.Or(o.P99Limit, densityP99Limit); step.p99 > limit {
			r.Limit = fmt.Sprintf("at %d VMs the p99 answer took %.1f ms, over %v", len(vms), ms(step.p99), limit)
			break
		}
		avail, err := memAvailableMiB()
		if err != nil {
			return r, err
		}
		u, err := usage(vms)
		if err != nil {
			return r, err
		}
		nf := float64(len(vms))
		perVMMiB = (base - avail) / nf
		r.VMs = len(vms)
		r.PingP50MS, r.PingP99MS = ms(step.p50), ms(step.p99)
		r.HostMiBPerVM, r.PSSMiBPerVM = perVMMiB, float64(u.pssKiB)/1024/nf
		r.ThreadsPerVM, r.FDsPerVM, r.MapsPerVM = float64(u.threads)/nf, float64(u.fds)/nf, float64(u.maps)/nf
		r.ThreadsMax = u.threadsMax
		r.IdleCPUPct, r.StartsPerS = u.idleCPUPct, nf/startDur.Seconds()
		fmt.Fprintf(progress, "%s: %d VMs up, ping p50 %.2f ms p99 %.2f ms; MemAvailable -%.1f MiB/VM, PSS %.2f MiB/VM; idle CPU %.1f%% of one core; %d threads max per VMM\n",
			r.VMM, len(vms), r.PingP50MS, r.PingP99MS, r.HostMiBPerVM, r.PSSMiBPerVM, r.IdleCPUPct, u.threadsMax)
	}
	if r.VMs == 0 {
		return r, fmt.Errorf("%s density: no step passed: %s", r.VMM, r.Limit)
	}
	return r, nil
}

// startVMs starts VMs first..last-1 with parallel workers and returns
// those that started, in order. The first failure stops the rest.
func startVMs(ctx context.Context, g *procGroup, drv densityDriver, kernel string, first, last, parallel int) ([]*densityVM, error) {
	out := make([]*densityVM, last-first)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(1, parallel) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				vm, err := drv.start(ctx, g, i, kernel)
				if err != nil {
					cancel(fmt.Errorf("VM %d: %w", i, err))
					continue
				}
				out[i-first] = vm
			}
		}()
	}
feed:
	for i := first; i < last; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	var started []*densityVM
	for _, vm := range out {
		if vm != nil {
			started = append(started, vm)
		}
	}
	return started, context.Cause(ctx)
}

// stepCheck is one health check of all VMs.
type stepCheck struct{ p50, p99 time.Duration }

// checkVMs pings every VM once, one after the other, and checks that
// every guest printed its line.
func checkVMs(ctx context.Context, drv densityDriver, vms []*densityVM) (stepCheck, error) {
	var lat []float64
	var failures []string
	nFailed := 0
	for i, vm := range vms {
		pctx, cancel := context.WithTimeout(ctx, densityPingTimeout)
		t0 := time.Now()
		err := drv.ping(pctx, vm)
		d := time.Since(t0)
		cancel()
		if err == nil {
			err = waitConsole(ctx, vm.console)
		}
		if err != nil {
			if ctx.Err() != nil {
				return stepCheck{}, ctx.Err()
			}
			nFailed++
			if len(failures) < densityShownFailures {
				failures = append(failures, fmt.Sprintf("VM %d: %v%s", i, err, logTail(vm.logf)))
			}
			continue
		}
		lat = append(lat, float64(d))
	}
	if nFailed > 0 {
		return stepCheck{}, fmt.Errorf("%d of %d VMs failed the check: %s", nFailed, len(vms), strings.Join(failures, "; "))
	}
	return stepCheck{p50: time.Duration(percentile(lat, 50)), p99: time.Duration(percentile(lat, 99))}, nil
}

// consolePoll is how often waitConsole reads a console file again.
const consolePoll = 5 * time.Millisecond

// waitConsole waits until the guest's console file holds its line: a
// VMM's API may answer before its guest has run (QEMU's QMP socket is up
// before the machine starts).
func waitConsole(ctx context.Context, path string) error {
	deadline := time.Now().Add(densityPingTimeout)
	for {
		con, err := os.ReadFile(path)
		switch {
		case err != nil:
			return err
		case strings.Contains(string(con), tiny.IdleLine):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return fmt.Errorf("the guest printed %q within %v, not %q", con, densityPingTimeout, tiny.IdleLine)
		}
		time.Sleep(consolePoll)
	}
}

// logTail is the last line of a VM's log, for an error message.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if last := lines[len(lines)-1]; last != "" {
		return " (its log: " + last + ")"
	}
	return ""
}

// densityUsage sums what /proc says of the VMs' processes.
type densityUsage struct {
	procUsage  // sums
	threadsMax int64
	idleCPUPct float64
}

// usage reads every VM process's PSS, threads, files and mappings, and
// their CPU use over densityCPUWindow.
func usage(vms []*densityVM) (densityUsage, error) {
	var u densityUsage
	var ticks0 int64
	for _, vm := range vms {
		p, err := readUsage(vm.cmd.Process.Pid)
		if err != nil {
			return u, fmt.Errorf("reading VM process %d: %w", vm.cmd.Process.Pid, err)
		}
		u.pssKiB += p.pssKiB
		u.fds += p.fds
		u.maps += p.maps
		u.threads += p.threads
		u.threadsMax = max(u.threadsMax, p.threads)
		ticks0 += p.cpuTicks
	}
	t0 := time.Now()
	time.Sleep(densityCPUWindow)
	var ticks1 int64
	for _, vm := range vms {
		t, err := cpuTicks(vm.cmd.Process.Pid)
		if err != nil {
			return u, err
		}
		ticks1 += t
	}
	u.idleCPUPct = float64(ticks1-ticks0) / clockTicks / time.Since(t0).Seconds() * 100
	return u, nil
}

// vmFiles creates VM i's console and log files in the group's directory
// and returns them with its socket path.
func vmFiles(g *procGroup, i int) (vm *densityVM, console, logf *os.File, err error) {
	vm = &densityVM{
		sock:    filepath.Join(g.dir, fmt.Sprintf("vm%d.sock", i)),
		console: filepath.Join(g.dir, fmt.Sprintf("vm%d.console", i)),
		logf:    filepath.Join(g.dir, fmt.Sprintf("vm%d.log", i)),
	}
	if console, err = os.Create(vm.console); err != nil {
		return nil, nil, nil, err
	}
	if logf, err = os.Create(vm.logf); err != nil {
		console.Close()
		return nil, nil, nil, err
	}
	return vm, console, logf, nil
}

// emberDensity runs each VM in `ember --api-sock`, configured and started
// through the API.
type emberDensity struct {
	ember  string
	memMiB int
}

func (e emberDensity) start(ctx context.Context, g *procGroup, i int, kernel string) (*densityVM, error) {
	vm, console, logf, err := vmFiles(g, i)
	if err != nil {
		return nil, err
	}
	vm.cmd = exec.Command(e.ember, "--api-sock", vm.sock, "--id", fmt.Sprintf("vm%d", i), "--level", "Warning")
	vm.cmd.Stdout, vm.cmd.Stderr = console, logf
	err = g.start(vm.cmd)
	console.Close()
	logf.Close()
	if err != nil {
		return nil, err
	}
	if err := waitSocket(ctx, vm.sock); err != nil {
		return vm, fmt.Errorf("%w%s", err, logTail(vm.logf))
	}
	c := client.New(vm.sock)
	defer c.Close()
	vcpus, mem := 1, e.memMiB
	if err := c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mem}); err != nil {
		return vm, err
	}
	if err := c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel}); err != nil {
		return vm, err
	}
	if err := c.InstanceStart(ctx); err != nil {
		return vm, fmt.Errorf("%w%s", err, logTail(vm.logf))
	}
	return vm, nil
}

// ping is GET / on a fresh connection; the VM must be running.
func (e emberDensity) ping(ctx context.Context, vm *densityVM) error {
	c := client.New(vm.sock)
	defer c.Close()
	info, err := c.Describe(ctx)
	if err != nil {
		return err
	}
	if info.State != "Running" {
		return fmt.Errorf("state %q, want Running", info.State)
	}
	return nil
}

// qemuDensity runs each VM in QEMU's microvm machine with a QMP socket.
type qemuDensity struct{ memMiB int }

func (q qemuDensity) start(ctx context.Context, g *procGroup, i int, kernel string) (*densityVM, error) {
	vm, console, logf, err := vmFiles(g, i)
	if err != nil {
		return nil, err
	}
	console.Close()
	vm.cmd = exec.Command(QEMUBinary, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
		"-m", fmt.Sprint(q.memMiB), "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:"+vm.console, "-qmp", "unix:"+vm.sock+",server=on,wait=off", "-kernel", kernel)
	vm.cmd.Stdout, vm.cmd.Stderr = logf, logf
	err = g.start(vm.cmd)
	logf.Close()
	if err != nil {
		return nil, err
	}
	if err := waitSocket(ctx, vm.sock); err != nil {
		return vm, fmt.Errorf("%w%s", err, logTail(vm.logf))
	}
	return vm, nil
}

// ping connects to QMP, negotiates and asks query-status; the VM must be
// running.
func (q qemuDensity) ping(ctx context.Context, vm *densityVM) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", vm.sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	c := qmp{r: bufio.NewReader(conn), w: conn}
	if _, err := c.read(); err != nil { // the greeting
		return err
	}
	if _, err := c.do("qmp_capabilities", nil); err != nil {
		return err
	}
	ret, err := c.do("query-status", nil)
	if err != nil {
		return err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		return fmt.Errorf("query-status: %w", err)
	}
	if st.Status != "running" {
		return errors.New("QEMU status " + st.Status + ", want running")
	}
	return nil
}

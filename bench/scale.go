package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/embervm/ember/doctor"
)

// The scale benchmarks (density, launch) start hundreds or thousands of
// processes. All of them go into one process group whose leader is a
// child of the benchmark that only waits (LeaderSubcommand), so that the
// group outlives any one VM and one kill(-pgid) ends everything; each
// child also gets SIGKILL when the benchmark dies (Pdeathsig), and all
// their files live in one temporary directory removed at the end.

// LeaderSubcommand is the ember-bench subcommand that runs the process
// group leader: it waits until it is killed.
const LeaderSubcommand = "process-group-leader"

// RunLeader is the process group leader's body.
func RunLeader() { select {} }

// scaleSocketPoll is how often the scale benchmarks try a new VMM's
// socket: a fine grain, as a VMM's socket is up within milliseconds and a
// coarse poll would bound the launch rate, not the VMM.
const scaleSocketPoll = 200 * time.Microsecond

// scaleSocketTimeout bounds the wait for a new VMM's socket.
const scaleSocketTimeout = 30 * time.Second

// procGroup is the processes of one scale benchmark.
type procGroup struct {
	dir    string // the temporary directory all their files live in
	leader *exec.Cmd
	mu     sync.Mutex
	// live maps each started, not yet reaped process to whether a
	// goroutine is waiting for it (wait); nil once the group is closing.
	live map[*exec.Cmd]bool
}

var errStopping = errors.New("the benchmark is stopping")

// newProcGroup makes the temporary directory and starts the group leader.
// The group is killed when ctx ends; close reaps it.
func newProcGroup(ctx context.Context, name string) (*procGroup, error) {
	dir, err := os.MkdirTemp("", "ember-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	leader := exec.Command(self, LeaderSubcommand)
	leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := leader.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting the process group leader: %w", err)
	}
	g := &procGroup{dir: dir, leader: leader, live: map[*exec.Cmd]bool{}}
	context.AfterFunc(ctx, g.kill)
	return g, nil
}

// start starts cmd in the group; it stays tracked until wait or close.
func (g *procGroup) start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: g.leader.Process.Pid, Pdeathsig: syscall.SIGKILL}
	if g.stopping() {
		return errStopping
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.live == nil { // close ran meanwhile
		cmd.Process.Kill()
		cmd.Wait()
		return errStopping
	}
	g.live[cmd] = false
	return nil
}

func (g *procGroup) stopping() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.live == nil
}

// wait waits for a started cmd and stops tracking it.
func (g *procGroup) wait(cmd *exec.Cmd) error {
	g.mu.Lock()
	if g.live != nil {
		g.live[cmd] = true
	}
	g.mu.Unlock()
	err := cmd.Wait()
	g.mu.Lock()
	if g.live != nil {
		delete(g.live, cmd)
	}
	g.mu.Unlock()
	return err
}

// run starts cmd in the group and waits for it.
func (g *procGroup) run(cmd *exec.Cmd) error {
	if err := g.start(cmd); err != nil {
		return err
	}
	return g.wait(cmd)
}

// kill sends SIGKILL to the whole group.
func (g *procGroup) kill() { syscall.Kill(-g.leader.Process.Pid, syscall.SIGKILL) }

// close kills the whole group, reaps the processes no one waits for and
// removes the directory. Callers that wait for processes (run, wait) must
// have returned.
func (g *procGroup) close() {
	g.mu.Lock()
	live := g.live
	g.live = nil
	g.mu.Unlock()
	g.kill()
	for cmd, waited := range live {
		cmd.Process.Kill() // in case it left the group
		if !waited {
			cmd.Wait()
		}
	}
	g.leader.Wait()
	os.RemoveAll(g.dir)
}

// waitSocket waits until something accepts connections on the unix
// socket at path, polling every scaleSocketPoll.
func waitSocket(ctx context.Context, path string) error {
	deadline := time.Now().Add(scaleSocketTimeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c.Close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing accepts on %s after %v: %w", path, scaleSocketTimeout, err)
		}
		time.Sleep(scaleSocketPoll)
	}
}

// LineNote prints a headline figure like Line, with a comment after it.
func LineNote(w io.Writer, name string, value float64, unit, note string) {
	fmt.Fprintf(w, "%s %.3f %s  # %s\n", name, value, unit, note)
}

// memAvailableMiB reads MemAvailable from /proc/meminfo.
func memAvailableMiB() (float64, error) {
	kib, err := procField("/proc/meminfo", "MemAvailable:")
	return float64(kib) / 1024, err
}

// procField returns the first number after the line starting with key in
// a /proc file of "Key: value [kB]" lines.
func procField(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, key)
}

// procUsage is what /proc says of one process.
type procUsage struct {
	pssKiB, threads, fds, maps int64
	cpuTicks                   int64 // utime + stime, in clock ticks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on every
// Linux architecture Ember runs on).
const clockTicks = 100

// readUsage reads a process's PSS (smaps_rollup), threads, open files,
// mappings and CPU time.
func readUsage(pid int) (procUsage, error) {
	var u procUsage
	var err error
	dir := "/proc/" + strconv.Itoa(pid)
	if u.pssKiB, err = procField(dir+"/smaps_rollup", "Pss:"); err != nil {
		return u, err
	}
	if u.threads, err = procField(dir+"/status", "Threads:"); err != nil {
		return u, err
	}
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return u, err
	}
	u.fds = int64(len(fds))
	maps, err := os.ReadFile(dir + "/maps")
	if err != nil {
		return u, err
	}
	u.maps = int64(strings.Count(string(maps), "\n"))
	u.cpuTicks, err = cpuTicks(pid)
	return u, err
}

// cpuTicks is a process's utime + stime from /proc/PID/stat.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: fields are counted
	// after its closing parenthesis; utime and stime are fields 14, 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	return ut + st, errors.Join(err1, err2)
}

// hostLimitHint names the host limits that stand in the way of vms more
// VMs (ember doctor's failing checks), or "" when none does.
func hostLimitHint(vms int) string {
	h := &doctor.Host{Root: "/", PID: os.Getpid(), EUID: os.Geteuid(), Probe: &doctor.LiveProbe{}}
	var fails []string
	for _, r := range doctor.Check(h, vms) {
		if r.Status == doctor.Fail {
			fails = append(fails, r.Name+": "+r.Detail)
		}
	}
	return strings.Join(fails, "; ")
}

// CheckHostFor returns an error naming the host limits that stand in the
// way of vms VMs (ember doctor's failing checks), pointing at
// `ember doctor --fix`; nil when there are none.
func CheckHostFor(vms int) error {
	hint := hostLimitHint(vms)
	if hint == "" {
		return nil
	}
	return fmt.Errorf("this host cannot run %d VMs: %s; run `ember doctor --vms %d --fix` as root first, or ask for fewer", vms, hint, vms)
}

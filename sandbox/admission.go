package sandbox

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// What each sandbox holds besides its template's memory and vCPUs. The
// figures were measured with the tiny guest (guest/tiny.Sandbox) on the
// development host and rounded up.
const (
	// VMOverheadMiB is the host memory an ember process costs besides
	// its guest's memory: 10.3 MiB of VmRSS measured (8.2 MiB of it the
	// ember binary's file pages), rounded up for KVM's page tables,
	// the virtio queues' buffers and the process's own heap under I/O.
	VMOverheadMiB = 16
	// VMOverheadTasks is ember's threads besides one per vCPU (9 tasks
	// in /proc/PID/task with 1 vCPU, 10 with 2: the API thread, the
	// device event loop and the Go runtime's threads).
	VMOverheadTasks = 8
	// FilesPerSandbox is emberd's own descriptors per sandbox (they count
	// against emberd's RLIMIT_NOFILE; ember's count against its own): the
	// agent's vsock connection, an adopted VM's pidfd, an API connection
	// during pause, resume or kill, and a log read by a logs request.
	FilesPerSandbox = 4
	// TapsPerSandbox is one tap per sandbox (sandbox/network).
	TapsPerSandbox = 1
)

// Defaults of the budgets (AdmissionConfig).
const (
	// DefaultMemoryReserveMiB is the host memory kept from sandboxes:
	// emberd, the host's own services and the page cache that holds the
	// templates' memory files.
	DefaultMemoryReserveMiB = 1024
	// DefaultMemoryOvercommit is 1: a sandbox holds its whole guest
	// memory although clones share the template's memory file until they
	// write to it; an operator who knows the workload raises it.
	DefaultMemoryOvercommit = 1.0
	// DefaultVCPUOvercommit is 8 vCPUs per host CPU: a sandbox waits
	// for work most of its life and a halted vCPU costs the host no CPU.
	DefaultVCPUOvercommit = 8.0
	// DefaultTaps is the default guest range of sandbox/network
	// (10.214.0.0/16) in /30 blocks, one per sandbox.
	DefaultTaps = 16384
	// filesReserve is the descriptors emberd keeps for itself: its
	// listeners, the database, requests in flight.
	filesReserve = 256
	// tasksReserve is the tasks kept for the rest of the host.
	tasksReserve = 1024
	// DefaultRetryAfter is Retry-After of a refused create when no
	// sandbox's timeout comes sooner.
	DefaultRetryAfter = 5 * time.Second
	// meminfo and threadsMax are where the host's figures come from
	// (proc(5)).
	meminfoPath    = "/proc/meminfo"
	threadsMaxPath = "/proc/sys/kernel/threads-max"
)

// addResources is r plus sign times o.
func addResources(r, o Resources, sign int64) Resources {
	return Resources{
		MemoryMiB: r.MemoryMiB + sign*o.MemoryMiB,
		VCPUs:     r.VCPUs + sign*o.VCPUs,
		Processes: r.Processes + sign*o.Processes,
		Files:     r.Files + sign*o.Files,
		Taps:      r.Taps + sign*o.Taps,
	}
}

// unit is how a budget's amounts read in a message.
func unit(name string) string {
	switch name {
	case BudgetMemory:
		return " MiB"
	case BudgetProcesses:
		return " tasks"
	}
	return ""
}

// Holds is what a sandbox of template t holds of the host's budgets.
func Holds(t Template) Resources {
	vcpus, mem := int64(t.Spec.VCPUs), int64(t.Spec.MemoryMiB)
	if vcpus == 0 {
		vcpus = 1
	}
	if mem == 0 {
		mem = DefaultMemoryMiB
	}
	return Resources{
		MemoryMiB: mem + VMOverheadMiB,
		VCPUs:     vcpus,
		Processes: vcpus + VMOverheadTasks,
		Files:     FilesPerSandbox,
		Taps:      TapsPerSandbox,
	}
}

// AdmissionConfig sets the host's budgets. A zero field takes its default
// from the host.
type AdmissionConfig struct {
	// MemoryMiB is the host memory given to sandboxes (default /proc/meminfo
	// MemTotal minus MemoryReserveMiB); the budget is MemoryMiB times
	// MemoryOvercommit (default DefaultMemoryOvercommit).
	MemoryMiB        int64
	MemoryReserveMiB int64
	MemoryOvercommit float64
	// VCPUs is the vCPU budget (default the host's CPUs times
	// VCPUOvercommit, default DefaultVCPUOvercommit).
	VCPUs          int64
	VCPUOvercommit float64
	// Files is the budget of emberd's descriptors (default its
	// RLIMIT_NOFILE less a reserve for itself).
	Files int64
	// Processes is the budget of tasks (default the smaller of
	// RLIMIT_NPROC and /proc/sys/kernel/threads-max, less a reserve for
	// the rest of the host).
	Processes int64
	// Taps is the number of taps (default DefaultTaps).
	Taps int64
	// RetryAfter is what a refused create is told when no running
	// sandbox's timeout comes sooner (default DefaultRetryAfter).
	RetryAfter time.Duration
}

// ResolveBudgets fills c's zero fields from the host.
func ResolveBudgets(c AdmissionConfig) (HostBudgets, error) {
	hb := HostBudgets{
		MemoryReserveMiB: c.MemoryReserveMiB, MemoryOvercommit: c.MemoryOvercommit, VCPUOvercommit: c.VCPUOvercommit,
		HostCPUs: runtime.NumCPU(),
		Overhead: Resources{MemoryMiB: VMOverheadMiB, Processes: VMOverheadTasks, Files: FilesPerSandbox, Taps: TapsPerSandbox},
	}
	for name, v := range map[string]int64{"memory": c.MemoryMiB, "memory reserve": c.MemoryReserveMiB, "vcpus": c.VCPUs, "files": c.Files, "processes": c.Processes, "taps": c.Taps} {
		if v < 0 {
			return hb, fmt.Errorf("%s budget %d: negative", name, v)
		}
	}
	for name, v := range map[string]float64{"memory": c.MemoryOvercommit, "vcpu": c.VCPUOvercommit} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return hb, fmt.Errorf("%s overcommit %v: want a positive ratio", name, v)
		}
	}
	if c.RetryAfter < 0 {
		return hb, fmt.Errorf("retry-after %v: negative", c.RetryAfter)
	}
	if hb.MemoryReserveMiB == 0 {
		hb.MemoryReserveMiB = DefaultMemoryReserveMiB
	}
	if hb.MemoryOvercommit == 0 {
		hb.MemoryOvercommit = DefaultMemoryOvercommit
	}
	if hb.VCPUOvercommit == 0 {
		hb.VCPUOvercommit = DefaultVCPUOvercommit
	}
	total, err := memTotalMiB(meminfoPath)
	if err != nil && c.MemoryMiB == 0 {
		return hb, err
	}
	hb.HostMemoryMiB = total
	hb.MemoryMiB = c.MemoryMiB
	if hb.MemoryMiB == 0 {
		hb.MemoryMiB = total - hb.MemoryReserveMiB
		if hb.MemoryMiB <= 0 {
			return hb, fmt.Errorf("the host's memory (%d MiB) is no more than the reserve (%d MiB): lower the reserve or give the memory budget", total, hb.MemoryReserveMiB)
		}
	}
	b := &hb.Budgets
	b.MemoryMiB = int64(float64(hb.MemoryMiB) * hb.MemoryOvercommit)
	b.VCPUs = c.VCPUs
	if b.VCPUs == 0 {
		b.VCPUs = int64(float64(hb.HostCPUs) * hb.VCPUOvercommit)
	}
	b.Files = c.Files
	if b.Files == 0 {
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			return hb, fmt.Errorf("RLIMIT_NOFILE: %w", err)
		}
		b.Files = max(clampRlimit(rl.Cur)-filesReserve, 0)
	}
	b.Processes = c.Processes
	if b.Processes == 0 {
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NPROC, &rl); err != nil {
			return hb, fmt.Errorf("RLIMIT_NPROC: %w", err)
		}
		n := clampRlimit(rl.Cur)
		if tm, err := readInt(threadsMaxPath); err == nil && tm < n {
			n = tm
		}
		b.Processes = max(n-tasksReserve, 0)
	}
	b.Taps = c.Taps
	if b.Taps == 0 {
		b.Taps = DefaultTaps
	}
	retry := c.RetryAfter
	if retry == 0 {
		retry = DefaultRetryAfter
	}
	hb.RetryAfter = retry.Seconds()
	return hb, nil
}

// clampRlimit turns an rlimit into an int64 (RLIM_INFINITY is all ones).
func clampRlimit(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// memTotalMiB reads MemTotal of a meminfo file (proc(5): "MemTotal: N kB").
func memTotalMiB(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("the host's memory: %w", err)
	}
	kb, ok := procField(data, "MemTotal:")
	if !ok {
		return 0, fmt.Errorf("the host's memory: no MemTotal in %s", path)
	}
	return kb / 1024, nil
}

// procField returns the number after key at the start of a line of a
// /proc file in "Key: N kB" form (meminfo, status).
func procField(data []byte, key string) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || v < 0 {
			return 0, false
		}
		return v, true
	}
	return 0, false
}

func readInt(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

// admission keeps what the sandboxes hold of the host's budgets.
type admission struct {
	budgets Resources

	mu    sync.Mutex
	used  Resources
	holds map[string]Resources
}

func newAdmission(b Resources) *admission {
	return &admission{budgets: b, holds: map[string]Resources{}}
}

// reserve takes need for id if every budget has room, else returns the
// first budget that has not and what is held of it.
func (a *admission) reserve(id string, need Resources) (budget string, held int64, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, name := range BudgetNames() {
		if a.used.Get(name)+need.Get(name) > a.budgets.Get(name) {
			return name, a.used.Get(name), false
		}
	}
	a.holds[id] = need
	a.used = addResources(a.used, need, 1)
	return "", 0, true
}

// hold takes need for id whatever the budgets say: a sandbox that runs
// already (adopted by a restarted emberd).
func (a *admission) hold(id string, need Resources) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.holds[id]; ok {
		return
	}
	a.holds[id] = need
	a.used = addResources(a.used, need, 1)
}

// release gives back what id holds (nothing if it holds nothing).
func (a *admission) release(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.holds[id]; ok {
		delete(a.holds, id)
		a.used = addResources(a.used, r, -1)
	}
}

// state returns what is held and by how many sandboxes.
func (a *admission) state() (Resources, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used, len(a.holds)
}

// Host returns the budgets and what the sandboxes hold.
func (m *Manager) Host() Host {
	used, n := m.adm.state()
	return Host{HostBudgets: m.budgets, Used: used, Free: addResources(m.budgets.Budgets, used, -1), Sandboxes: n}
}

// admit reserves what a sandbox of t needs under id, or returns the
// refusal (KindExhausted) naming the budget that has no room.
func (m *Manager) admit(id string, t Template) error {
	need := Holds(t)
	for _, name := range BudgetNames() {
		if lim := m.budgets.Budgets.Get(name); need.Get(name) > lim {
			// Waiting would not help: not a 429.
			return conflict("a sandbox of template %q needs %d%s of the %s budget, which is %d%s in all: it can never be admitted on this host",
				t.ID, need.Get(name), unit(name), name, lim, unit(name))
		}
	}
	name, held, ok := m.adm.reserve(id, need)
	if ok {
		return nil
	}
	retry := m.retryAfter()
	u := unit(name)
	msg := fmt.Sprintf("%s budget exhausted: the sandboxes hold %d of %d%s and a sandbox of template %q needs %d%s more",
		name, held, m.budgets.Budgets.Get(name), u, t.ID, need.Get(name), u)
	if name == BudgetMemory {
		msg += fmt.Sprintf(" (its %d MiB and %d MiB per VM)", need.MemoryMiB-VMOverheadMiB, VMOverheadMiB)
	}
	msg += fmt.Sprintf("; retry in %ds or end a sandbox", int(math.Ceil(retry.Seconds())))
	m.log.Info("create refused", "template", t.ID, "budget", name, "held", held, "need", need.Get(name))
	return &Error{Kind: KindExhausted, Msg: msg, Budget: name, RetryAfter: retry}
}

// retryAfter is when a refused create may try again: the earliest timeout
// of a running sandbox if it comes before the configured wait.
func (m *Manager) retryAfter() time.Duration {
	d := time.Duration(m.budgets.RetryAfter * float64(time.Second))
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.live {
		if l.sb.State == StateRunning && l.sb.Deadline != nil {
			if left := l.sb.Deadline.Sub(now); left < d {
				d = left
			}
		}
	}
	return max(d, time.Second)
}

// holdsOf is what an adopted sandbox holds: its template's share (the
// defaults' if the template is gone).
func (m *Manager) holdsOf(sb Sandbox) Resources {
	t, err := m.Template(sb.Template)
	if err != nil {
		m.log.Warn("an adopted sandbox's template is gone: counting the default memory and vCPUs", "sandbox", sb.ID, "template", sb.Template)
	}
	return Holds(t)
}

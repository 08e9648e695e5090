// Package metrics is emberd's Prometheus metrics: an Observer of a
// sandbox.Manager (creates, execs, ends) and a collector that reads, at
// each scrape, the host's budgets and what is held, the sandboxes by
// state and template, and each running VM's host RSS against its guest
// memory.
//
// Each Metrics has its own registry (no global default registry: two
// managers in one process, as tests have, neither share nor collide).
// The client is github.com/prometheus/client_golang v1.25.0, the version
// the module proxy serves this project (it needs Go 1.23). It lives apart
// from package sandbox so that the ember binary, which links sandbox for
// its types (ember sandbox ...), carries neither the client nor its
// protobuf dependencies nor their init cost (0.5 ms per VM start).
package metrics

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/embervm/ember/sandbox"
)

// Buckets of the histograms, in seconds.
var (
	// createBuckets: 0.25 ms to 8 s; a restore takes 5-50 ms on a quiet
	// host (README, emberd_restore_rate_per_s), an agent's restore
	// transaction a few ms more.
	createBuckets = prometheus.ExponentialBuckets(0.00025, 2, 16)
	// execBuckets: 1 ms to 4.4 min; execs run from `true` to builds.
	execBuckets = prometheus.ExponentialBuckets(0.001, 4, 10)
)

// Create phases (label phase of emberd_create_phase_seconds): the
// sandbox.Timings of a create.
const (
	PhaseRestore    = "restore"
	PhaseAgentReady = "agent_ready"
	PhaseNetwork    = "network"
	PhaseTotal      = "total"
)

// Results of creates and execs.
const (
	ResultOK      = "ok"
	ResultRefused = "refused"
	ResultFailed  = "failed"
)

const mib = 1 << 20

// Metrics is a registry with emberd's metrics; it is a sandbox.Observer.
type Metrics struct {
	reg      *prometheus.Registry
	phases   *prometheus.HistogramVec
	creates  *prometheus.CounterVec
	execs    *prometheus.CounterVec
	execDur  prometheus.Histogram
	refusals *prometheus.CounterVec
	ends     *prometheus.CounterVec
}

// New returns the metrics, with Go's and emberd's process collectors.
// Give it to sandbox.Config.Observer, then Watch the manager.
func New() *Metrics {
	mt := &Metrics{
		reg: prometheus.NewRegistry(),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "emberd_create_phase_seconds",
			Help:    "Latency of a sandbox create's phases: restore (until the snapshot load answered), agent_ready (until the readiness check passed), network (its setup), total.",
			Buckets: createBuckets,
		}, []string{"phase"}),
		creates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emberd_creates_total",
			Help: "Sandbox creates by result: ok, refused (a budget of the host is exhausted: 429), failed.",
		}, []string{"result"}),
		execs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emberd_execs_total",
			Help: "Execs in sandboxes by result: ok (the process ran and its exit status is known) or failed.",
		}, []string{"result"}),
		execDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "emberd_exec_duration_seconds",
			Help:    "Duration of execs in sandboxes, from the request until the process's exit.",
			Buckets: execBuckets,
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emberd_admission_refusals_total",
			Help: "Creates refused because a budget of the host was exhausted, by budget.",
		}, []string{"budget"}),
		ends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emberd_sandbox_ends_total",
			Help: "Ends of sandboxes by exit reason (killed, timeout, guest_panic, oom, exit, vmm_crash).",
		}, []string{"reason"}),
	}
	// Every label value from the start, so a scrape shows the zeros.
	for _, p := range []string{PhaseRestore, PhaseAgentReady, PhaseNetwork, PhaseTotal} {
		mt.phases.WithLabelValues(p)
	}
	for _, r := range []string{ResultOK, ResultRefused, ResultFailed} {
		mt.creates.WithLabelValues(r)
	}
	for _, r := range []string{ResultOK, ResultFailed} {
		mt.execs.WithLabelValues(r)
	}
	for _, b := range sandbox.BudgetNames() {
		mt.refusals.WithLabelValues(b)
	}
	for _, r := range []string{sandbox.ExitKilled, sandbox.ExitTimeout, sandbox.ExitGuestPanic, sandbox.ExitOOM, sandbox.ExitWorkload, sandbox.ExitVMMCrash} {
		mt.ends.WithLabelValues(r)
	}
	mt.reg.MustRegister(mt.phases, mt.creates, mt.execs, mt.execDur, mt.refusals, mt.ends,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return mt
}

// Watch adds m's state (budgets, sandboxes, per-VM memory) to the
// metrics, read at each scrape.
func (mt *Metrics) Watch(m *sandbox.Manager) { mt.reg.MustRegister(newStateCollector(m)) }

// Registry is the metrics' registry.
func (mt *Metrics) Registry() *prometheus.Registry { return mt.reg }

// Handler serves the metrics in Prometheus' exposition formats.
func (mt *Metrics) Handler() http.Handler { return promhttp.HandlerFor(mt.reg, promhttp.HandlerOpts{}) }

// Created counts a create and, when it worked, its phases.
func (mt *Metrics) Created(sb sandbox.Sandbox, err error) {
	var se *sandbox.Error
	switch {
	case err == nil:
		mt.creates.WithLabelValues(ResultOK).Inc()
		tm := sb.Timings
		mt.phases.WithLabelValues(PhaseRestore).Observe(tm.RestoreMS / 1000)
		mt.phases.WithLabelValues(PhaseAgentReady).Observe(tm.AgentReadyMS / 1000)
		mt.phases.WithLabelValues(PhaseNetwork).Observe(tm.NetworkMS / 1000)
		mt.phases.WithLabelValues(PhaseTotal).Observe(tm.TotalMS / 1000)
	case errors.As(err, &se) && se.Kind == sandbox.KindExhausted:
		mt.creates.WithLabelValues(ResultRefused).Inc()
		mt.refusals.WithLabelValues(se.Budget).Inc()
	default:
		mt.creates.WithLabelValues(ResultFailed).Inc()
	}
}

// Exec counts an exec and its duration.
func (mt *Metrics) Exec(d time.Duration, err error) {
	mt.execDur.Observe(d.Seconds())
	if err != nil {
		mt.execs.WithLabelValues(ResultFailed).Inc()
	} else {
		mt.execs.WithLabelValues(ResultOK).Inc()
	}
}

// Ended counts a sandbox's end by reason.
func (mt *Metrics) Ended(sb sandbox.Sandbox) {
	if sb.Exit != nil {
		mt.ends.WithLabelValues(sb.Exit.Reason).Inc()
	}
}

// stateCollector reads a manager's state at each scrape.
type stateCollector struct {
	m                                                    *sandbox.Manager
	sandboxes, rss, guestMem, holding, memOver, vcpuOver *prometheus.Desc
	netBytes                                             *prometheus.Desc
	// budget and held: per budget, what may be held and what is.
	budget, held map[string]*prometheus.Desc
}

func newStateCollector(m *sandbox.Manager) *stateCollector {
	c := &stateCollector{
		m:         m,
		sandboxes: prometheus.NewDesc("emberd_sandboxes", "Sandboxes by state and template (exited ones until they are forgotten).", []string{"state", "template"}, nil),
		rss:       prometheus.NewDesc("emberd_sandbox_rss_bytes", "Host RSS of a sandbox's ember process (/proc/PID/status VmRSS): guest pages touched plus ember's own.", []string{"sandbox", "template"}, nil),
		guestMem:  prometheus.NewDesc("emberd_sandbox_guest_memory_bytes", "Guest memory of a sandbox (its template's).", []string{"sandbox", "template"}, nil),
		netBytes:  prometheus.NewDesc("emberd_sandbox_network_bytes_total", "Bytes a sandbox's guest sent (direction out) and received (in), metered by its nftables counters.", []string{"sandbox", "template", "direction"}, nil),
		holding:   prometheus.NewDesc("emberd_host_sandboxes_holding", "Sandboxes holding a share of the host's budgets.", nil, nil),
		memOver:   prometheus.NewDesc("emberd_host_memory_overcommit_ratio", "The memory budget over the host memory given to sandboxes.", nil, nil),
		vcpuOver:  prometheus.NewDesc("emberd_host_vcpu_overcommit_ratio", "vCPUs allowed per host CPU (when the vCPU budget is not given).", nil, nil),
		budget:    map[string]*prometheus.Desc{},
		held:      map[string]*prometheus.Desc{},
	}
	for _, b := range sandbox.BudgetNames() {
		name, suffix, what := "emberd_host_"+b, "", b
		switch b {
		case sandbox.BudgetMemory:
			suffix, what = "_bytes", "memory (guest memory plus the per-VM overhead), bytes"
		case sandbox.BudgetProcesses:
			what = "tasks (vCPU threads plus ember's own)"
		case sandbox.BudgetFiles:
			what = "emberd's file descriptors"
		}
		c.budget[b] = prometheus.NewDesc(name+"_budget"+suffix, "The host's budget of "+what+" for sandboxes.", nil, nil)
		c.held[b] = prometheus.NewDesc(name+"_held"+suffix, "What the sandboxes hold of the host's budget of "+what+".", nil, nil)
	}
	return c
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sandboxes, c.rss, c.guestMem, c.netBytes, c.holding, c.memOver, c.vcpuOver} {
		ch <- d
	}
	for _, b := range sandbox.BudgetNames() {
		ch <- c.budget[b]
		ch <- c.held[b]
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.m.Host()
	for _, b := range sandbox.BudgetNames() {
		scale := 1.0
		if b == sandbox.BudgetMemory {
			scale = mib
		}
		ch <- prometheus.MustNewConstMetric(c.budget[b], prometheus.GaugeValue, float64(h.Budgets.Get(b))*scale)
		ch <- prometheus.MustNewConstMetric(c.held[b], prometheus.GaugeValue, float64(h.Used.Get(b))*scale)
	}
	ch <- prometheus.MustNewConstMetric(c.holding, prometheus.GaugeValue, float64(h.Sandboxes))
	ch <- prometheus.MustNewConstMetric(c.memOver, prometheus.GaugeValue, h.MemoryOvercommit)
	ch <- prometheus.MustNewConstMetric(c.vcpuOver, prometheus.GaugeValue, h.VCPUOvercommit)

	guestMiB := map[string]int{}
	ts, err := c.m.Templates()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.guestMem, err)
	}
	for _, t := range ts {
		guestMiB[t.ID] = t.Spec.MemoryMiB
	}
	sbs, err := c.m.Sandboxes()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.sandboxes, err)
		return
	}
	type key struct{ state, template string }
	counts := map[key]int{}
	for _, sb := range sbs {
		counts[key{sb.State, sb.Template}]++
		if sb.State != sandbox.StateRunning && sb.State != sandbox.StatePaused {
			continue
		}
		rss, ok := vmRSS(sb.PID, sb.PIDStart)
		if !ok {
			continue // it ended meanwhile
		}
		ch <- prometheus.MustNewConstMetric(c.rss, prometheus.GaugeValue, float64(rss), sb.ID, sb.Template)
		ch <- prometheus.MustNewConstMetric(c.guestMem, prometheus.GaugeValue, float64(guestMiB[sb.Template])*mib, sb.ID, sb.Template)
		if sb.Network != nil {
			ctx, cancel := context.WithTimeout(context.Background(), counterTimeout)
			n, err := c.m.Network(ctx, sb.ID)
			cancel()
			if err == nil {
				ch <- prometheus.MustNewConstMetric(c.netBytes, prometheus.CounterValue, float64(n.BytesOut), sb.ID, sb.Template, "out")
				ch <- prometheus.MustNewConstMetric(c.netBytes, prometheus.CounterValue, float64(n.BytesIn), sb.ID, sb.Template, "in")
			}
		}
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.sandboxes, prometheus.GaugeValue, float64(v), k.state, k.template)
	}
}

// counterTimeout bounds reading one sandbox's network counters at a
// scrape (a netlink round trip).
const counterTimeout = 2 * time.Second

// vmRSS returns VmRSS, in bytes, of pid if it is still the process that
// started at start (clock ticks since boot: /proc/PID/stat field 22).
func vmRSS(pid int, start uint64) (int64, bool) {
	if pid <= 0 {
		return 0, false
	}
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil || statStart(string(stat)) != start {
		return 0, false
	}
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return 0, false
	}
	return statusRSS(string(status))
}

// statStart is field 22 (starttime) of a /proc/PID/stat line, 0 if it
// cannot be read (proc(5); the fields after the command name start past
// its last ')').
func statStart(stat string) uint64 {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	const field = 22 - 3 // f[0] is field 3
	if len(f) <= field {
		return 0
	}
	v, _ := strconv.ParseUint(f[field], 10, 64)
	return v
}

// statusRSS reads "VmRSS: N kB" of a /proc/PID/status (proc(5)).
func statusRSS(status string) (int64, bool) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, false
		}
		return kb * 1024, true
	}
	return 0, false
}

package sandbox

// Prometheus metrics of a Manager, in a registry of its own (no global
// default registry: two managers in one process, as tests have, do not
// share or collide). The client is github.com/prometheus/client_golang
// v1.25.0, the version the module proxy serves this project; it needs Go
// 1.23 and brings prometheus/common and client_model with it.

import (
	"context"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/embervm/ember/agent/proto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
// Timings of a create.
const (
	PhaseRestore    = "restore"
	PhaseAgentReady = "agent_ready"
	PhaseNetwork    = "network"
	PhaseTotal      = "total"
)

// Results of creates and execs.
const (
	resultOK      = "ok"
	resultRefused = "refused"
	resultFailed  = "failed"
)

// metrics is a Manager's instruments and registry.
type metrics struct {
	reg      *prometheus.Registry
	phases   *prometheus.HistogramVec
	creates  *prometheus.CounterVec
	execs    *prometheus.CounterVec
	execDur  prometheus.Histogram
	refusals *prometheus.CounterVec
	ends     *prometheus.CounterVec
}

func newMetrics(m *Manager) *metrics {
	mt := &metrics{
		reg: prometheus.NewRegistry(),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "emberd_create_phase_seconds",
			Help:    "Latency of a sandbox create's phases: restore (until the snapshot load answered), agent_ready (until the readiness check passed), network (its setup), total.",
			Buckets: createBuckets,
		}, []string{"phase"}),
		creates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emberd_creates_total",
			Help: "Sandbox creates by result: ok, refused (a budget is exhausted: 429), failed.",
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
	for _, p := range []string{PhaseRestore, PhaseAgentReady, PhaseNetwork, PhaseTotal} {
		mt.phases.WithLabelValues(p)
	}
	for _, r := range []string{resultOK, resultRefused, resultFailed} {
		mt.creates.WithLabelValues(r)
	}
	for _, r := range []string{resultOK, resultFailed} {
		mt.execs.WithLabelValues(r)
	}
	for _, b := range budgetNames {
		mt.refusals.WithLabelValues(b)
	}
	for _, r := range []string{ExitKilled, ExitTimeout, ExitGuestPanic, ExitOOM, ExitWorkload, ExitVMMCrash} {
		mt.ends.WithLabelValues(r)
	}
	mt.reg.MustRegister(mt.phases, mt.creates, mt.execs, mt.execDur, mt.refusals, mt.ends,
		newStateCollector(m),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return mt
}

func (mt *metrics) refused(budget string) { mt.refusals.WithLabelValues(budget).Inc() }
func (mt *metrics) ended(reason string)   { mt.ends.WithLabelValues(reason).Inc() }

// Gatherer returns the manager's metrics (served at GET /metrics).
func (m *Manager) Gatherer() prometheus.Gatherer { return m.metrics.reg }

// Create restores a sandbox from a template and waits until it is ready.
// A failed create leaves nothing behind; a create over one of the host's
// budgets is refused (KindExhausted) before anything is made.
func (m *Manager) Create(ctx context.Context, spec SandboxSpec) (Sandbox, error) {
	sb, err := m.create(ctx, spec)
	switch {
	case err == nil:
		m.metrics.creates.WithLabelValues(resultOK).Inc()
		tm := sb.Timings
		for phase, ms := range map[string]float64{PhaseRestore: tm.RestoreMS, PhaseAgentReady: tm.AgentReadyMS, PhaseNetwork: tm.NetworkMS, PhaseTotal: tm.TotalMS} {
			m.metrics.phases.WithLabelValues(phase).Observe(ms / 1000)
		}
		m.log.Info("sandbox created", "sandbox", sb.ID, "template", sb.Template, "pid", sb.PID, "total_ms", tm.TotalMS)
	case KindOf(err) == KindExhausted:
		m.metrics.creates.WithLabelValues(resultRefused).Inc()
	default:
		m.metrics.creates.WithLabelValues(resultFailed).Inc()
	}
	return sb, err
}

// Exec runs a command in a sandbox through its agent, streaming its
// output to stdout and stderr, and returns its exit status.
func (m *Manager) Exec(ctx context.Context, id string, req ExecRequest, stdout, stderr io.Writer) (proto.ExitStatus, error) {
	t0 := time.Now()
	st, err := m.runExec(ctx, id, req, stdout, stderr)
	m.metrics.execDur.Observe(time.Since(t0).Seconds())
	if err != nil {
		m.metrics.execs.WithLabelValues(resultFailed).Inc()
		m.log.Debug("exec failed", "sandbox", id, "err", err)
	} else {
		m.metrics.execs.WithLabelValues(resultOK).Inc()
	}
	return st, err
}

// stateCollector reads, at each scrape, the host's budgets and what is
// held, the sandboxes by state and template, and each running VM's host
// RSS against its guest memory.
type stateCollector struct {
	m                                                    *Manager
	sandboxes, rss, guestMem, holding, memOver, vcpuOver *prometheus.Desc
	// budget and held: per budget, what may be held and what is.
	budget, held map[string]*prometheus.Desc
}

const mib = 1 << 20

func newStateCollector(m *Manager) *stateCollector {
	c := &stateCollector{
		m:         m,
		sandboxes: prometheus.NewDesc("emberd_sandboxes", "Sandboxes by state and template (exited ones until they are forgotten).", []string{"state", "template"}, nil),
		rss:       prometheus.NewDesc("emberd_sandbox_rss_bytes", "Host RSS of a sandbox's ember process (/proc/PID/status VmRSS): guest pages touched plus ember's own.", []string{"sandbox", "template"}, nil),
		guestMem:  prometheus.NewDesc("emberd_sandbox_guest_memory_bytes", "Guest memory of a sandbox (its template's).", []string{"sandbox", "template"}, nil),
		holding:   prometheus.NewDesc("emberd_host_sandboxes_holding", "Sandboxes holding a share of the host's budgets.", nil, nil),
		memOver:   prometheus.NewDesc("emberd_host_memory_overcommit_ratio", "The memory budget over the host memory given to sandboxes.", nil, nil),
		vcpuOver:  prometheus.NewDesc("emberd_host_vcpu_overcommit_ratio", "vCPUs allowed per host CPU (when the vCPU budget is not given).", nil, nil),
		budget:    map[string]*prometheus.Desc{},
		held:      map[string]*prometheus.Desc{},
	}
	for _, b := range budgetNames {
		name, suffix, what := "emberd_host_"+b, "", b
		switch b {
		case BudgetMemory:
			suffix, what = "_bytes", "memory (guest memory plus the per-VM overhead), bytes"
		case BudgetProcesses:
			what = "tasks (vCPU threads plus ember's own)"
		case BudgetFiles:
			what = "emberd's file descriptors"
		}
		c.budget[b] = prometheus.NewDesc(name+"_budget"+suffix, "The host's budget of "+what+" for sandboxes.", nil, nil)
		c.held[b] = prometheus.NewDesc(name+"_held"+suffix, "What the sandboxes hold of the host's budget of "+what+".", nil, nil)
	}
	return c
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sandboxes, c.rss, c.guestMem, c.holding, c.memOver, c.vcpuOver} {
		ch <- d
	}
	for _, b := range budgetNames {
		ch <- c.budget[b]
		ch <- c.held[b]
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	used, n := m.adm.state()
	for _, b := range budgetNames {
		scale := 1.0
		if b == BudgetMemory {
			scale = mib
		}
		ch <- prometheus.MustNewConstMetric(c.budget[b], prometheus.GaugeValue, float64(m.budgets.Budgets.get(b))*scale)
		ch <- prometheus.MustNewConstMetric(c.held[b], prometheus.GaugeValue, float64(used.get(b))*scale)
	}
	ch <- prometheus.MustNewConstMetric(c.holding, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.memOver, prometheus.GaugeValue, m.budgets.MemoryOvercommit)
	ch <- prometheus.MustNewConstMetric(c.vcpuOver, prometheus.GaugeValue, m.budgets.VCPUOvercommit)

	guestMiB := map[string]int{}
	if ts, err := m.Templates(); err == nil {
		for _, t := range ts {
			guestMiB[t.ID] = t.Spec.MemoryMiB
		}
	}
	sbs, err := m.Sandboxes()
	if err != nil {
		m.log.Error("metrics: listing the sandboxes", "err", err)
	}
	type key struct{ state, template string }
	counts := map[key]int{}
	for _, sb := range sbs {
		counts[key{sb.State, sb.Template}]++
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.sandboxes, prometheus.GaugeValue, float64(v), k.state, k.template)
	}
	type vm struct {
		id, template string
		pid          int
		start        uint64
	}
	var vms []vm
	m.mu.Lock()
	for _, l := range m.live {
		if l.sb.State == StateRunning || l.sb.State == StatePaused {
			vms = append(vms, vm{l.sb.ID, l.sb.Template, l.sb.PID, l.sb.PIDStart})
		}
	}
	m.mu.Unlock()
	for _, v := range vms {
		rss, ok := vmRSS(v.pid)
		if !ok || !sameProcess(v.pid, v.start) {
			continue // it ended meanwhile
		}
		ch <- prometheus.MustNewConstMetric(c.rss, prometheus.GaugeValue, float64(rss), v.id, v.template)
		ch <- prometheus.MustNewConstMetric(c.guestMem, prometheus.GaugeValue, float64(guestMiB[v.template])*mib, v.id, v.template)
	}
}

// vmRSS returns VmRSS of pid in bytes (proc(5): /proc/PID/status,
// "VmRSS: N kB").
func vmRSS(pid int) (int64, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	kb, ok := procField(data, "VmRSS:")
	return kb * 1024, ok
}

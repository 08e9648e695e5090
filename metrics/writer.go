package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/embervm/ember/logger"
)

// FlushInterval is how often Run writes a line: Firecracker's metrics
// timer fires every 60 s (WRITE_METRICS_PERIOD_MS in
// src/firecracker/src/metrics.rs).
const FlushInterval = 60 * time.Second

// ErrConfigured is returned by Configure after a successful Configure:
// Firecracker's metrics system can be initialized once only
// (MetricsError::AlreadyInitialized in src/vmm/src/logger/metrics.rs).
var ErrConfigured = errors.New("metrics: already configured")

// Options are a Writer's settings.
type Options struct {
	// ID is the instance id written as "id" when EmitID is set; "" means
	// logger.DefaultID, Firecracker's "anonymous-instance".
	ID     string
	EmitID bool
	// Properties, if not empty, are written as the object "properties".
	Properties map[string]string
	// Collect, if not nil, is called at every flush with a function that
	// takes the cumulative value of one counter (or the current value of a
	// store metric). Values reported twice for the same group and name are
	// added. Per-device counters go in "block_<drive_id>" and
	// "net_<iface_id>" groups; the Writer sums them into "block" and "net".
	// Collect runs with the Writer's lock held: it must not call Flush.
	Collect func(add func(group, name string, value uint64))
	// Registry holds in-process counters merged with Collect's values at
	// every flush; nil means a new, empty Registry.
	Registry *Registry
	// Start is when the process started, for RecordStartup; the zero value
	// means the time New is called.
	Start time.Time
	// Interval is Run's period; 0 means FlushInterval.
	Interval time.Duration
}

// Writer writes Firecracker-compatible metrics: one JSON object per line,
// with "utc_timestamp_ms", then "id" and "properties" when asked for, then
// every group of Groups (and any other group the VMM reports).
//
// Counters are written as the increase since the previous line, as
// Firecracker's SharedIncMetric does; store metrics are written as they are.
// The store metrics are the ones marked in Groups (api_server's startup
// times, every latencies_us metric, seccomp.num_faults, vmm.panic_count, the
// deadly signals), any metric in latencies_us, any nested min_us or max_us
// (Firecracker's LatencyAggregateMetrics), and any name given to Store.
//
// All methods are safe for concurrent use.
type Writer struct {
	id         string
	emitID     bool
	properties map[string]string
	collect    func(add func(group, name string, value uint64))
	reg        *Registry
	start      time.Time
	interval   time.Duration
	groups     []Group
	inSchema   map[string]bool
	device     map[string][]Metric // per-device metrics by kind (BlockGroup, NetGroup)

	missed atomic.Uint64 // logger.missed_metrics_count
	fails  atomic.Uint64 // logger.metrics_fails

	mu     sync.Mutex // guards the fields below; held during a flush
	stores map[key]bool
	out    io.WriteCloser
	prev   map[key]uint64 // cumulative counters as of the last line written
}

// New returns a Writer that writes nothing until Configure.
func New(opts Options) *Writer {
	w := &Writer{
		id:       opts.ID,
		emitID:   opts.EmitID,
		collect:  opts.Collect,
		reg:      opts.Registry,
		start:    opts.Start,
		interval: opts.Interval,
		groups:   Groups(),
		inSchema: make(map[string]bool),
		device:   make(map[string][]Metric),
		stores:   make(map[key]bool),
		prev:     make(map[key]uint64),
	}
	if w.id == "" {
		w.id = logger.DefaultID
	}
	if len(opts.Properties) > 0 {
		w.properties = make(map[string]string, len(opts.Properties))
		for k, v := range opts.Properties {
			w.properties[k] = v
		}
	}
	if w.reg == nil {
		w.reg = new(Registry)
	}
	if w.start.IsZero() {
		w.start = time.Now()
	}
	if w.interval <= 0 {
		w.interval = FlushInterval
	}
	for _, g := range w.groups {
		w.inSchema[g.Name] = true
		for _, m := range g.Metrics {
			if m.Store {
				w.stores[key{g.Name, m.Name}] = true
			}
		}
		if g.Name == BlockGroup || g.Name == NetGroup {
			w.device[g.Name] = g.Metrics
		}
	}
	return w
}

// Registry returns the Writer's registry of in-process counters.
func (w *Writer) Registry() *Registry { return w.reg }

// Counter returns the in-process counter group.name (Registry().Counter).
func (w *Writer) Counter(group, name string) *Counter { return w.reg.Counter(group, name) }

// Store makes group.name a store metric: its value is written as it is
// rather than as the increase since the previous line. For a per-device
// group's metrics, pass BlockGroup or NetGroup to apply to every device.
func (w *Writer) Store(group, name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stores[key{group, name}] = true
}

// RecordStartup stores api_server.process_startup_time_us and
// process_startup_time_cpu_us (ProcessTimes since Options.Start). Call it
// when the API socket is ready to accept requests, as Firecracker does.
func (w *Writer) RecordStartup() {
	wall, cpu := ProcessTimes(w.start)
	w.reg.Counter(APIServerGroup, StartupTimeUS).Store(wall)
	w.reg.Counter(APIServerGroup, StartupTimeCPUUS).Store(cpu)
}

// Configure opens the destination (a file, created if absent, or an
// existing named pipe; see logger.Open). It succeeds once: later calls
// return ErrConfigured. A call that fails changes nothing and does not
// count.
func (w *Writer) Configure(path string) error {
	if path == "" {
		return errors.New("metrics: configure: empty path")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.out != nil {
		return ErrConfigured
	}
	out, err := logger.Open(path)
	if err != nil {
		return fmt.Errorf("metrics: configure: %w", err)
	}
	w.out = out
	return nil
}

// Configured reports whether Configure has succeeded.
func (w *Writer) Configured() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out != nil
}

// Missed returns how many lines were dropped (logger.missed_metrics_count,
// cumulative).
func (w *Writer) Missed() uint64 { return w.missed.Load() }

// Close closes the destination. Later flushes write nothing, and
// Configure returns ErrConfigured.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.out
	w.out = closedOutput{}
	if out == nil {
		return nil
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("metrics: close: %w", err)
	}
	return nil
}

// closedOutput stands for a destination closed by Close.
type closedOutput struct{}

func (closedOutput) Write([]byte) (int, error) { return 0, errClosed }
func (closedOutput) Close() error              { return nil }

var errClosed = errors.New("metrics: closed")

// Run writes a line now (as Firecracker's PeriodicMetrics::start does, to
// get the startup times out early), every Options.Interval (60 s) and when
// ctx is done, then returns. Lines are written only once Configure has succeeded;
// failed writes are counted (logger.missed_metrics_count) and otherwise
// ignored.
func (w *Writer) Run(ctx context.Context) {
	_ = w.Flush()
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = w.Flush()
			return
		case <-t.C:
			_ = w.Flush()
		}
	}
}

// Flush writes one line (Firecracker's FlushMetrics). Before Configure it
// writes nothing and returns nil, as Firecracker does, and the counters'
// increases carry over to the first line written. A line that cannot be
// written whole (full pipe, write error) is dropped and counted in
// logger.missed_metrics_count, and its increases carry over to the next
// line; the error is returned.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.out == nil {
		return nil
	}
	if _, closed := w.out.(closedOutput); closed {
		return nil
	}

	cur := make(map[key]uint64)
	add := func(group, name string, value uint64) { cur[key{group, name}] += value }
	if w.collect != nil {
		w.collect(add)
	}
	w.reg.Each(add)
	add(LoggerGroup, MissedMetricsCount, w.missed.Load())
	add(LoggerGroup, MetricsFails, w.fails.Load())

	vals := make(map[key]uint64, len(cur))
	aggs := make(map[key]uint64)
	for k, v := range cur {
		if w.isStore(k) {
			vals[k] = v
			continue
		}
		d := v - w.prev[k]
		if v < w.prev[k] {
			d = v // the counter restarted (a device was replaced)
		}
		vals[k] += d
		if kind := deviceKind(k.group); kind != "" && !w.inSchema[k.group] {
			aggs[key{kind, k.name}] += d
		}
	}
	for k, d := range aggs {
		vals[k] += d
	}

	line := w.appendLine(make([]byte, 0, lineCap), vals)
	n, err := w.out.Write(line)
	if err == nil && n != len(line) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.missed.Add(1)
		if !errors.Is(err, logger.ErrDropped) && !errors.Is(err, io.ErrShortWrite) {
			w.fails.Add(1)
		}
		return fmt.Errorf("metrics: flush: line dropped: %w", err)
	}
	clear(w.prev)
	for k, v := range cur {
		if !w.isStore(k) {
			w.prev[k] = v
		}
	}
	return nil
}

// lineCap is the initial capacity of a line's buffer: a line with a few
// devices takes about 8 KiB.
const lineCap = 16 << 10

// isStore reports whether k is a store metric. w.mu is held.
func (w *Writer) isStore(k key) bool {
	if w.stores[k] || k.group == LatenciesGroup {
		return true
	}
	if kind := deviceKind(k.group); kind != "" && w.stores[key{kind, k.name}] {
		return true
	}
	leaf := k.name
	if dot := strings.LastIndexByte(leaf, '.'); dot >= 0 {
		leaf = leaf[dot+1:]
		return leaf == "min_us" || leaf == "max_us"
	}
	return false
}

// appendLine appends the JSON line for vals.
func (w *Writer) appendLine(b []byte, vals map[key]uint64) []byte {
	// Names reported per group, for the groups and metrics not in Groups.
	reported := make(map[string][]string)
	for k := range vals {
		reported[k.group] = append(reported[k.group], k.name)
	}
	var devices, extra []string
	for g := range reported {
		switch {
		case w.inSchema[g]:
		case deviceKind(g) != "":
			devices = append(devices, g)
		default:
			extra = append(extra, g)
		}
	}
	sort.Strings(devices)
	sort.Strings(extra)

	b = append(b, `{"utc_timestamp_ms":`...)
	b = strconv.AppendInt(b, time.Now().UnixMilli(), 10)
	if w.emitID {
		b = append(b, `,"id":`...)
		b = appendString(b, w.id)
	}
	if len(w.properties) > 0 {
		names := make([]string, 0, len(w.properties))
		for k := range w.properties {
			names = append(names, k)
		}
		sort.Strings(names)
		b = append(b, `,"properties":{`...)
		for i, k := range names {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, w.properties[k])
		}
		b = append(b, '}')
	}
	group := func(name string, schema []Metric) {
		b = append(b, ',')
		b = appendString(b, name)
		b = append(b, ':')
		b = appendGroup(b, name, schema, reported[name], vals)
	}
	for _, g := range w.groups {
		if kind := g.Name; w.device[kind] != nil {
			for _, d := range devices {
				if deviceKind(d) == kind {
					group(d, w.device[kind])
				}
			}
		}
		group(g.Name, g.Metrics)
	}
	for _, g := range extra {
		group(g, nil)
	}
	return append(b, "}\n"...)
}

// appendGroup appends one group's object: the schema's metrics in order,
// then the other reported names sorted; names with a dot become nested
// objects.
func appendGroup(b []byte, group string, schema []Metric, reported []string, vals map[key]uint64) []byte {
	names := make([]string, 0, len(schema)+len(reported))
	known := make(map[string]bool, len(schema))
	for _, m := range schema {
		names = append(names, m.Name)
		known[m.Name] = true
	}
	var more []string
	for _, n := range reported {
		if !known[n] {
			more = append(more, n)
		}
	}
	sort.Strings(more)
	names = append(names, more...)

	b = append(b, '{')
	nested := make(map[string]bool)
	written := 0
	for i, n := range names {
		parent, _, isNested := strings.Cut(n, ".")
		if isNested && nested[parent] {
			continue // written with the first of its siblings
		}
		if written > 0 {
			b = append(b, ',')
		}
		written++
		if !isNested {
			b = appendString(b, n)
			b = append(b, ':')
			b = strconv.AppendUint(b, vals[key{group, n}], 10)
			continue
		}
		nested[parent] = true
		b = appendString(b, parent)
		b = append(b, ":{"...)
		inner := 0
		for _, m := range names[i:] {
			p, leaf, ok := strings.Cut(m, ".")
			if !ok || p != parent {
				continue
			}
			if inner > 0 {
				b = append(b, ',')
			}
			inner++
			b = appendString(b, leaf)
			b = append(b, ':')
			b = strconv.AppendUint(b, vals[key{group, m}], 10)
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

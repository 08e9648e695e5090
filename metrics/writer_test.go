package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// values is a fake VMM: cumulative counters reported through Collect.
type values struct {
	mu sync.Mutex
	m  map[key]uint64
}

func (v *values) set(group, name string, n uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = make(map[key]uint64)
	}
	v.m[key{group, name}] = n
}

func (v *values) collect(add func(group, name string, value uint64)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for k, n := range v.m {
		add(k.group, k.name, n)
	}
}

func newFileWriter(t *testing.T, opts Options) (*Writer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "metrics.json")
	w := New(opts)
	if err := w.Configure(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, path
}

// readLines returns the file's lines, each checked to be valid JSON.
func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseLines(t, data)
}

func parseLines(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("output does not end with a newline: ...%q", data[max(0, len(data)-40):])
	}
	var out []map[string]any
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !json.Valid(line) {
			t.Fatalf("invalid JSON line: %s", line)
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// get returns line[group][name], following a dot into a nested object.
func get(t *testing.T, line map[string]any, group, name string) uint64 {
	t.Helper()
	g, ok := line[group].(map[string]any)
	if !ok {
		t.Fatalf("no group %q in %v", group, keys(line))
	}
	var v any = g
	for _, part := range strings.Split(name, ".") {
		obj, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s.%s: %v is not an object", group, name, v)
		}
		if v, ok = obj[part]; !ok {
			t.Fatalf("no %s.%s", group, name)
		}
	}
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("%s.%s = %v, not a number", group, name, v)
	}
	return uint64(f)
}

func keys(m map[string]any) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

// topKeys returns a line's top-level keys in order.
func topKeys(t *testing.T, line []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("line does not start with an object: %v %v", tok, err)
	}
	var out []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestDeltas(t *testing.T) {
	var v values
	w, path := newFileWriter(t, Options{Collect: v.collect})
	v.set("vcpu", "exit_io_in", 10)
	v.set("uart", "write_count", 100)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	v.set("vcpu", "exit_io_in", 25)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 3 {
		t.Fatalf("%d lines", len(lines))
	}
	for i, want := range []struct{ io, uart uint64 }{{10, 100}, {15, 0}, {0, 0}} {
		if got := get(t, lines[i], "vcpu", "exit_io_in"); got != want.io {
			t.Errorf("line %d vcpu.exit_io_in = %d, want %d", i, got, want.io)
		}
		if got := get(t, lines[i], "uart", "write_count"); got != want.uart {
			t.Errorf("line %d uart.write_count = %d, want %d", i, got, want.uart)
		}
	}
}

func TestCounterRestart(t *testing.T) {
	var v values
	w, path := newFileWriter(t, Options{Collect: v.collect})
	v.set("vcpu", "failures", 50)
	w.Flush()
	v.set("vcpu", "failures", 3) // device rebuilt: counts from 0 again
	w.Flush()
	lines := readLines(t, path)
	if got := get(t, lines[1], "vcpu", "failures"); got != 3 {
		t.Errorf("after restart: %d, want 3", got)
	}
}

func TestStores(t *testing.T) {
	var v values
	w, path := newFileWriter(t, Options{Collect: v.collect, Start: time.Now().Add(-time.Second)})
	w.Store("vmm", "my_gauge")
	w.Store(BlockGroup, "queue_depth")
	v.set(LatenciesGroup, "load_snapshot", 500)
	v.set(LatenciesGroup, "not_in_schema", 7) // every latencies_us metric is a store
	v.set("vmm", "my_gauge", 9)
	v.set("block_rootfs", "queue_depth", 4)
	v.set("block_rootfs", "read_agg.min_us", 11)
	v.set("block_rootfs", "read_agg.max_us", 90)
	v.set("block_rootfs", "read_agg.sum_us", 200)
	v.set("signals", "sigsegv", 1)
	w.RecordStartup()
	w.Flush()
	v.set("block_rootfs", "read_agg.sum_us", 260)
	w.Flush()

	lines := readLines(t, path)
	for i, line := range lines {
		for _, c := range []struct {
			group, name string
			want        uint64
		}{
			{LatenciesGroup, "load_snapshot", 500},
			{LatenciesGroup, "not_in_schema", 7},
			{"vmm", "my_gauge", 9},
			{"block_rootfs", "queue_depth", 4},
			{"block_rootfs", "read_agg.min_us", 11},
			{"block_rootfs", "read_agg.max_us", 90},
			{"signals", "sigsegv", 1},
		} {
			if got := get(t, line, c.group, c.name); got != c.want {
				t.Errorf("line %d %s.%s = %d, want %d (stores are not reset)", i, c.group, c.name, got, c.want)
			}
		}
		if wall := get(t, line, APIServerGroup, StartupTimeUS); wall < uint64(time.Second/time.Microsecond) {
			t.Errorf("line %d startup time %d us, want >= 1 s", i, wall)
		}
		if cpu := get(t, line, APIServerGroup, StartupTimeCPUUS); cpu == 0 {
			t.Errorf("line %d startup CPU time 0", i)
		}
	}
	if got := get(t, lines[0], "block_rootfs", "read_agg.sum_us"); got != 200 {
		t.Errorf("sum_us line 0 = %d", got)
	}
	if got := get(t, lines[1], "block_rootfs", "read_agg.sum_us"); got != 60 {
		t.Errorf("sum_us line 1 = %d, want the delta 60", got)
	}
	// The aggregate sums counters, not stores (as Firecracker's aggregate).
	if got := get(t, lines[1], BlockGroup, "read_agg.sum_us"); got != 60 {
		t.Errorf("block.read_agg.sum_us = %d, want 60", got)
	}
	if got := get(t, lines[1], BlockGroup, "read_agg.max_us"); got != 0 {
		t.Errorf("block.read_agg.max_us = %d, want 0", got)
	}
}

func TestAlwaysPresentGroups(t *testing.T) {
	w, path := newFileWriter(t, Options{})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := parseLines(t, data)
	if len(lines) != 1 {
		t.Fatalf("%d lines", len(lines))
	}
	want := []string{"utc_timestamp_ms"}
	for _, g := range Groups() {
		want = append(want, g.Name)
		for _, m := range g.Metrics {
			if got := get(t, lines[0], g.Name, m.Name); got != 0 {
				t.Errorf("%s.%s = %d, want 0", g.Name, m.Name, got)
			}
		}
	}
	if got := topKeys(t, data); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("keys\n%v\nwant\n%v", got, want)
	}
	ts := int64(lines[0]["utc_timestamp_ms"].(float64))
	if d := time.Since(time.UnixMilli(ts)); d < 0 || d > time.Minute {
		t.Errorf("utc_timestamp_ms %d is %v ago", ts, d)
	}

	// The groups the brief names, with Firecracker's counter names.
	for _, c := range [][2]string{
		{"api_server", "process_startup_time_us"}, {"api_server", "process_startup_time_cpu_us"},
		{"api_server", "sync_response_fails"}, {"api_server", "sync_vmm_send_timeout_count"},
		{"get_api_requests", "instance_info_count"}, {"put_api_requests", "machine_cfg_count"},
		{"put_api_requests", "drive_count"}, {"put_api_requests", "drive_fails"},
		{"patch_api_requests", "drive_count"}, {"block", "read_bytes"}, {"net", "tx_bytes_count"},
		{"vsock", "conns_added"}, {"entropy", "entropy_bytes"}, {"balloon", "inflate_count"},
		{"i8042", "reset_count"}, {"uart", "write_count"}, {"vcpu", "exit_mmio_write"},
		{"vcpu", "exit_io_in_agg.sum_us"}, {"vmm", "panic_count"}, {"latencies_us", "load_snapshot"},
		{"logger", "missed_metrics_count"}, {"logger", "metrics_fails"}, {"logger", "missed_log_count"},
		{"logger", "log_fails"}, {"signals", "sigbus"}, {"seccomp", "num_faults"},
		{"deprecated_api", "deprecated_http_api_calls"}, {"mmds", "rx_accepted"}, {"rtc", "error_count"},
	} {
		get(t, lines[0], c[0], c[1])
	}
}

func TestDeviceGroups(t *testing.T) {
	var v values
	w, path := newFileWriter(t, Options{Collect: v.collect})
	v.set("block_rootfs", "read_count", 10)
	v.set("block_data", "read_count", 5)
	v.set("block_data", "write_bytes", 4096)
	v.set("net_eth0", "rx_bytes_count", 1500)
	v.set("vcpu", "brand_new", 1)         // a metric not in Groups
	v.set("custom_group", "something", 2) // a group not in Groups
	w.Flush()
	v.set("block_rootfs", "read_count", 12)
	v.set("block_data", "read_count", 8)
	w.Flush()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := parseLines(t, data)
	if got := get(t, lines[0], BlockGroup, "read_count"); got != 15 {
		t.Errorf("block.read_count = %d, want 15", got)
	}
	if got := get(t, lines[1], BlockGroup, "read_count"); got != 5 {
		t.Errorf("block.read_count line 1 = %d, want 2+3", got)
	}
	if got := get(t, lines[0], BlockGroup, "write_bytes"); got != 4096 {
		t.Errorf("block.write_bytes = %d", got)
	}
	if got := get(t, lines[0], NetGroup, "rx_bytes_count"); got != 1500 {
		t.Errorf("net.rx_bytes_count = %d", got)
	}
	// Per-device groups have every metric of their kind.
	for _, m := range blockMetrics() {
		get(t, lines[0], "block_rootfs", m.Name)
	}
	for _, m := range netMetrics() {
		get(t, lines[0], "net_eth0", m.Name)
	}
	if get(t, lines[0], "vcpu", "brand_new") != 1 || get(t, lines[0], "custom_group", "something") != 2 {
		t.Error("unlisted metrics lost")
	}

	first, _, _ := bytes.Cut(data, []byte("\n"))
	order := strings.Join(topKeys(t, first), " ")
	for _, want := range []string{"balloon block_data block_rootfs block deprecated_api", "mmds net_eth0 net patch_api_requests"} {
		if !strings.Contains(order, want) {
			t.Errorf("key order %q lacks %q", order, want)
		}
	}
	if !strings.HasSuffix(order, "entropy custom_group") {
		t.Errorf("unlisted group not last: %q", order)
	}
}

func TestIDAndProperties(t *testing.T) {
	props := map[string]string{"region": "eu-west-1", "host": `h"1`}
	w, path := newFileWriter(t, Options{ID: "vm-7", EmitID: true, Properties: props})
	props["region"] = "changed after New"
	w.Flush()
	data, _ := os.ReadFile(path)
	lines := parseLines(t, data)
	if lines[0]["id"] != "vm-7" {
		t.Errorf("id = %v", lines[0]["id"])
	}
	p, ok := lines[0]["properties"].(map[string]any)
	if !ok || p["region"] != "eu-west-1" || p["host"] != `h"1` || len(p) != 2 {
		t.Errorf("properties = %v", lines[0]["properties"])
	}
	if k := topKeys(t, data); len(k) < 4 || k[0] != "utc_timestamp_ms" || k[1] != "id" || k[2] != "properties" || k[3] != "api_server" {
		t.Errorf("keys start %v", k[:min(4, len(k))])
	}

	w2, path2 := newFileWriter(t, Options{ID: "vm-7"})
	w2.Flush()
	line := readLines(t, path2)[0]
	if _, ok := line["id"]; ok {
		t.Error("id written without EmitID")
	}
	if _, ok := line["properties"]; ok {
		t.Error("properties written without any")
	}

	w3, path3 := newFileWriter(t, Options{EmitID: true})
	w3.Flush()
	if id := readLines(t, path3)[0]["id"]; id != "anonymous-instance" {
		t.Errorf("default id %v", id)
	}
}

func TestConfigureOnce(t *testing.T) {
	dir := t.TempDir()
	w := New(Options{})
	defer w.Close()
	if err := w.Configure(""); err == nil {
		t.Error("empty path accepted")
	}
	if err := w.Configure(filepath.Join(dir, "missing/dir/m")); err == nil {
		t.Error("unopenable path accepted")
	}
	if w.Configured() {
		t.Fatal("failed Configure counted")
	}
	if err := w.Configure(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	if err := w.Configure(filepath.Join(dir, "b")); !errors.Is(err, ErrConfigured) {
		t.Errorf("second Configure: %v, want ErrConfigured", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b")); err == nil {
		t.Error("second Configure created its file")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Configure(filepath.Join(dir, "c")); !errors.Is(err, ErrConfigured) {
		t.Errorf("Configure after Close: %v, want ErrConfigured", err)
	}
	if err := w.Flush(); err != nil {
		t.Errorf("Flush after Close: %v", err)
	}
}

func TestFlushBeforeConfigure(t *testing.T) {
	var v values
	w := New(Options{Collect: v.collect})
	defer w.Close()
	v.set("vcpu", "exit_io_out", 7)
	if err := w.Flush(); err != nil {
		t.Fatalf("Flush before Configure: %v", err)
	}
	path := filepath.Join(t.TempDir(), "m")
	if err := w.Configure(path); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	lines := readLines(t, path)
	if len(lines) != 1 {
		t.Fatalf("%d lines", len(lines))
	}
	if got := get(t, lines[0], "vcpu", "exit_io_out"); got != 7 {
		t.Errorf("exit_io_out = %d, want 7 (carried over)", got)
	}
}

func TestRegistry(t *testing.T) {
	var r Registry
	c := r.Counter("put_api_requests", "drive_count")
	if r.Counter("put_api_requests", "drive_count") != c {
		t.Fatal("Counter returned a new counter for the same name")
	}
	if n := testing.AllocsPerRun(100, func() { c.Inc(); c.Add(2) }); n != 0 {
		t.Errorf("increment allocates %v times", n)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				r.Counter("get_api_requests", "instance_info_count").Inc()
			}
		}()
	}
	wg.Wait()
	var got []string
	r.Each(func(group, name string, value uint64) {
		got = append(got, group+"."+name)
		if name == "instance_info_count" && value != 4000 {
			t.Errorf("instance_info_count = %d", value)
		}
	})
	if strings.Join(got, " ") != "get_api_requests.instance_info_count put_api_requests.drive_count" {
		t.Errorf("Each order %v", got)
	}

	// Registry counters are merged with Collect's values.
	var v values
	v.set("put_api_requests", "drive_count", 1)
	w, path := newFileWriter(t, Options{Collect: v.collect, Registry: &r})
	if w.Registry() != &r || w.Counter("put_api_requests", "drive_count") != c {
		t.Fatal("Writer does not use the given Registry")
	}
	w.Flush()
	before := c.Load()
	c.Add(10)
	w.Flush()
	lines := readLines(t, path)
	if got := get(t, lines[0], "put_api_requests", "drive_count"); got != before+1 {
		t.Errorf("drive_count = %d, want %d", got, before+1)
	}
	if got := get(t, lines[1], "put_api_requests", "drive_count"); got != 10 {
		t.Errorf("drive_count line 1 = %d, want 10", got)
	}
}

// TestRunStartAndEnd: Run writes a line when it starts and when its
// context ends.
func TestRunStartAndEnd(t *testing.T) {
	w, path := newFileWriter(t, Options{Interval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(readLines(t, path)) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no line at start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if n := len(readLines(t, path)); n != 2 {
		t.Errorf("%d lines, want 2 (start and end)", n)
	}
}

func TestRunPeriodic(t *testing.T) {
	var n atomic.Uint64
	w, path := newFileWriter(t, Options{
		Interval: 10 * time.Millisecond,
		Collect:  func(add func(string, string, uint64)) { add("vcpu", "exit_io_in", n.Add(1)) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Count(data, []byte("\n")) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run wrote fewer than 3 lines in 10 s at a 10 ms interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	lines := readLines(t, path)
	var sum uint64
	for _, l := range lines {
		sum += get(t, l, "vcpu", "exit_io_in")
	}
	if sum != n.Load() {
		t.Errorf("deltas sum to %d, counter is %d", sum, n.Load())
	}
}

func mkfifo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// drain reads everything a FIFO holds without blocking.
func drain(t *testing.T, path string) []byte {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var data []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			data = append(data, buf[:n]...)
			continue
		}
		if err == unix.EINTR {
			continue
		}
		return data
	}
}

// TestFullPipe flushes into a FIFO nobody reads: lines are dropped and
// counted, Flush never blocks, the pipe holds only whole lines, and no
// counts are lost from the lines that are written.
func TestFullPipe(t *testing.T) {
	path := mkfifo(t)
	var n atomic.Uint64
	w := New(Options{
		Properties: map[string]string{"pad": strings.Repeat("p", 1000)},
		Collect:    func(add func(string, string, uint64)) { add("vcpu", "exit_io_in", n.Add(1)) },
	})
	defer w.Close()
	if err := w.Configure(path); err != nil { // no reader: must not block
		t.Fatal(err)
	}
	done := make(chan struct{})
	dropped := 0
	go func() {
		defer close(done)
		for range 100 {
			if err := w.Flush(); err != nil {
				dropped++
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Flush blocked on a full pipe")
	}
	if w.Missed() == 0 || uint64(dropped) != w.Missed() {
		t.Fatalf("Missed() = %d, Flush errors %d", w.Missed(), dropped)
	}
	data := drain(t, path)
	if err := w.Flush(); err != nil { // room again
		t.Fatal(err)
	}
	data = append(data, drain(t, path)...)
	lines := parseLines(t, data) // whole, valid lines only
	if len(lines) != 100-dropped+1 {
		t.Errorf("%d lines, want %d", len(lines), 100-dropped+1)
	}
	var sum, missed uint64
	for _, l := range lines {
		sum += get(t, l, "vcpu", "exit_io_in")
		missed += get(t, l, LoggerGroup, MissedMetricsCount)
	}
	if sum != n.Load() {
		t.Errorf("deltas in the written lines sum to %d, counter is %d", sum, n.Load())
	}
	if missed != w.Missed() {
		t.Errorf("logger.missed_metrics_count sums to %d, Missed() = %d", missed, w.Missed())
	}
}

func TestProcessTimes(t *testing.T) {
	start := time.Now().Add(-2 * time.Second)
	wall, cpu := ProcessTimes(start)
	if wall < 2_000_000 || wall > 60_000_000 {
		t.Errorf("wall %d us", wall)
	}
	if cpu == 0 {
		t.Error("cpu 0")
	}
	if wall, _ := ProcessTimes(time.Now().Add(time.Hour)); wall != 0 {
		t.Errorf("future start: wall %d", wall)
	}
}

func TestDeviceKind(t *testing.T) {
	for g, want := range map[string]string{
		"block_rootfs": BlockGroup, "net_eth0": NetGroup, "block": "", "net": "",
		"block_": "", "netx": "", "vsock": "", BlockDeviceGroup("a"): BlockGroup, NetDeviceGroup("b"): NetGroup,
	} {
		if got := deviceKind(g); got != want {
			t.Errorf("deviceKind(%q) = %q, want %q", g, got, want)
		}
	}
}

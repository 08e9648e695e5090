package metrics

import "strings"

// Metric is one value of a group.
type Metric struct {
	// Name is the metric's JSON key. A name with a dot, such as
	// "read_agg.min_us", is the key min_us of the nested object read_agg,
	// as Firecracker writes its LatencyAggregateMetrics.
	Name string
	// Store marks a Firecracker SharedStoreMetric: its value is written as
	// it is at every flush. Other metrics are SharedIncMetrics: counters
	// whose flushes write the increase since the previous flush.
	Store bool
}

// Group is a top-level object of a metrics line.
type Group struct {
	Name    string
	Metrics []Metric
}

// Group names with a meaning to the Writer.
const (
	// BlockGroup and NetGroup are the aggregates of the per-device groups
	// "block_<drive_id>" and "net_<iface_id>": the Writer sums the devices'
	// counters into them.
	BlockGroup = "block"
	NetGroup   = "net"
	// LatenciesGroup holds snapshot and pause timings; all its metrics are
	// stores.
	LatenciesGroup = "latencies_us"
	// LoggerGroup holds the logging system's own counters.
	LoggerGroup = "logger"
	// APIServerGroup holds the process startup times (RecordStartup).
	APIServerGroup = "api_server"
)

// Names of the metrics the Writer itself fills in.
const (
	// MissedMetricsCount counts metrics lines dropped (full pipe, write
	// error): logger.missed_metrics_count.
	MissedMetricsCount = "missed_metrics_count"
	// MetricsFails counts metrics writes that failed with an error other
	// than a full pipe: logger.metrics_fails.
	MetricsFails = "metrics_fails"
	// MissedLogCount is logger.missed_log_count, Firecracker's lost-logs:
	// the caller reports the log's dropped lines under this name.
	MissedLogCount = "missed_log_count"
	// StartupTimeUS and StartupTimeCPUUS are api_server's
	// process_startup_time_us and process_startup_time_cpu_us.
	StartupTimeUS    = "process_startup_time_us"
	StartupTimeCPUUS = "process_startup_time_cpu_us"
)

// BlockDeviceGroup returns the group of one drive, "block_<drive_id>".
func BlockDeviceGroup(driveID string) string { return BlockGroup + "_" + driveID }

// NetDeviceGroup returns the group of one interface, "net_<iface_id>".
func NetDeviceGroup(ifaceID string) string { return NetGroup + "_" + ifaceID }

// deviceKind returns BlockGroup or NetGroup for a per-device group name,
// or "" for any other group.
func deviceKind(group string) string {
	for _, k := range [...]string{BlockGroup, NetGroup} {
		if strings.HasPrefix(group, k+"_") && len(group) > len(k)+1 {
			return k
		}
	}
	return ""
}

func inc(names ...string) []Metric {
	m := make([]Metric, len(names))
	for i, n := range names {
		m[i] = Metric{Name: n}
	}
	return m
}

func store(names ...string) []Metric {
	m := inc(names...)
	for i := range m {
		m[i].Store = true
	}
	return m
}

// agg returns the metrics of a Firecracker LatencyAggregateMetrics named
// name: min_us and max_us are stores, sum_us a counter.
func agg(name string) []Metric {
	return []Metric{{Name: name + ".min_us", Store: true}, {Name: name + ".max_us", Store: true}, {Name: name + ".sum_us"}}
}

func cat(parts ...[]Metric) []Metric {
	var m []Metric
	for _, p := range parts {
		m = append(m, p...)
	}
	return m
}

// blockMetrics are BlockDeviceMetrics
// (src/vmm/src/devices/virtio/block/virtio/metrics.rs), for "block" and
// every "block_<drive_id>".
func blockMetrics() []Metric {
	return cat(inc("activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails",
		"invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count",
		"update_count", "update_fails", "read_bytes", "write_bytes", "read_count", "write_count"),
		agg("read_agg"), agg("write_agg"),
		inc("rate_limiter_throttled_events", "io_engine_throttled_events", "remaining_reqs_count"))
}

// netMetrics are NetDeviceMetrics (src/vmm/src/devices/virtio/net/metrics.rs),
// for "net" and every "net_<iface_id>".
func netMetrics() []Metric {
	return cat(inc("activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer",
		"no_tx_avail_buffer", "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count",
		"rx_rate_limiter_throttled", "rx_tap_event_count", "rx_bytes_count", "rx_packets_count",
		"rx_fails", "rx_count", "tap_read_fails", "tap_write_fails"),
		agg("tap_write_agg"),
		inc("tx_bytes_count", "tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count",
			"tx_partial_reads", "tx_queue_event_count", "tx_rate_limiter_event_count",
			"tx_rate_limiter_throttled", "tx_spoofed_mac_count", "tx_remaining_reqs_count"))
}

// Groups returns the groups present in every metrics line, in the order
// Firecracker writes them (the fields of FirecrackerMetrics in
// src/vmm/src/logger/metrics.rs, with the devices' groups flattened in where
// Firecracker flattens them), with their metrics. Per-device groups
// ("block_<drive_id>", "net_<iface_id>") are written just before their
// aggregate, sorted, when the VMM reports them, with the aggregate's
// metrics.
//
// The names are Firecracker's. Groups Firecracker has and Ember does not
// (pmem, vhost_user_*, memory hotplug, interrupts) are left out; a group or
// metric the VMM reports that is not listed here is still written, after
// the listed ones.
func Groups() []Group {
	return []Group{
		{APIServerGroup, cat(store(StartupTimeUS, StartupTimeCPUUS), inc("sync_response_fails", "sync_vmm_send_timeout_count"))},
		{"balloon", inc("activate_fails", "inflate_count", "stats_updates_count", "stats_update_fails", "deflate_count", "event_fails")},
		{BlockGroup, blockMetrics()},
		{"deprecated_api", inc("deprecated_http_api_calls", "deprecated_cmd_line_api_calls")},
		{"get_api_requests", inc("instance_info_count", "machine_cfg_count", "mmds_count", "vmm_version_count")},
		{"i8042", inc("error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count", "write_count")},
		// Firecracker writes rtc (PL031) on aarch64 only; Ember keeps the
		// group so that every line has the same shape.
		{"rtc", inc("error_count", "missed_read_count", "missed_write_count")},
		{"uart", inc("error_count", "flush_count", "missed_read_count", "missed_write_count", "read_count", "write_count")},
		{LatenciesGroup, store("full_create_snapshot", "diff_create_snapshot", "load_snapshot", "pause_vm", "resume_vm",
			"vmm_full_create_snapshot", "vmm_diff_create_snapshot", "vmm_load_snapshot", "vmm_pause_vm", "vmm_resume_vm")},
		{LoggerGroup, inc(MissedMetricsCount, MetricsFails, MissedLogCount, "log_fails")},
		{"mmds", inc("rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth", "rx_invalid_token",
			"rx_no_token", "rx_count", "tx_bytes", "tx_count", "tx_errors", "tx_frames",
			"connections_created", "connections_destroyed")},
		{NetGroup, netMetrics()},
		{"patch_api_requests", inc("drive_count", "drive_fails", "network_count", "network_fails",
			"machine_cfg_count", "machine_cfg_fails", "mmds_count", "mmds_fails")},
		{"put_api_requests", inc("actions_count", "actions_fails", "boot_source_count", "boot_source_fails",
			"drive_count", "drive_fails", "logger_count", "logger_fails", "machine_cfg_count", "machine_cfg_fails",
			"cpu_cfg_count", "cpu_cfg_fails", "metrics_count", "metrics_fails", "network_count", "network_fails",
			"mmds_count", "mmds_fails", "vsock_count", "vsock_fails", "serial_count", "serial_fails")},
		{"seccomp", store("num_faults")},
		{"vcpu", cat(inc("exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures", "kvmclock_ctrl_fails"),
			agg("exit_io_in_agg"), agg("exit_io_out_agg"), agg("exit_mmio_read_agg"), agg("exit_mmio_write_agg"))},
		{"vmm", cat(inc("device_events"), store("panic_count"))},
		// Deadly signals are stores in Firecracker (they are 0 or 1); sigpipe
		// is a counter.
		{"signals", cat(store("sigbus", "sigsegv", "sigxfsz", "sigxcpu"), inc("sigpipe"), store("sighup", "sigill"))},
		{"vsock", inc("activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails",
			"ev_queue_event_fails", "muxer_event_fails", "conn_event_fails", "rx_queue_event_count",
			"tx_queue_event_count", "rx_bytes_count", "tx_bytes_count", "rx_packets_count",
			"tx_packets_count", "conns_added", "conns_killed", "conns_removed", "killq_resync",
			"tx_flush_fails", "tx_write_fails", "rx_read_fails")},
		{"entropy", inc("activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes",
			"host_rng_fails", "entropy_rate_limiter_throttled", "rate_limiter_event_count")},
	}
}

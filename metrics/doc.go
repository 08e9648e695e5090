// Package metrics writes Ember's metrics in Firecracker's format: one JSON
// object per line, to a file or named pipe configured once (PUT /metrics,
// --metrics-path), every 60 s and on FlushMetrics.
//
// A line is
//
//	{"utc_timestamp_ms":1715164487281,"id":"vm1","properties":{...},"api_server":{...},"balloon":{...},
//	 "block_rootfs":{...},"block":{...},...,"vsock":{...},"entropy":{...}}
//
// with every group of Groups present even when all its values are zero, in
// Firecracker's order. The VMM reports its devices' cumulative counters
// through Options.Collect ("block_<drive_id>", "net_<iface_id>", "vcpu",
// "uart", ...); the Writer sums per-device groups into "block" and "net".
// Counters that no device owns, such as API request counts, are Counters
// of a Registry. At every flush a counter is written as its increase since
// the previous line, as Firecracker's SharedIncMetric is; a store metric
// (Firecracker's SharedStoreMetric: startup times, latencies_us, latency
// minimums and maximums, deadly signals) is written as it is.
//
// Writing never blocks: a line that does not fit in a full pipe is dropped
// and counted in logger.missed_metrics_count, Firecracker's lost-metrics,
// and the counters' increases carry over to the next line.
package metrics

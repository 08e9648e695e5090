package vmm

import (
	"maps"
	"slices"

	"github.com/embervm/ember/metrics"
)

// Metric groups and names follow Firecracker's metrics (src/vmm/src/logger/
// metrics.rs and the devices' metrics modules), so dashboards built for it
// read Ember's; a metricValue Ember does not keep is simply not reported here
// (the metrics writer still prints every group).

// metricValue is one named value of a device's metrics.
type metricValue struct {
	name string
	v    uint64
}

// readMetrics reports the cumulative counters of the VM's devices: one
// group per drive and interface ("block_ID", "net_ID"; the metrics writer
// sums them into "block" and "net"), and "uart", "vsock", "entropy" and
// "balloon", and "mmds" with the MMDS; and, in logger.missed_log_count, the guest-caused log lines
// the virtio devices' rate limits left out (the writer adds them to the
// lines the log itself lost).
func (v *VM) readMetrics(add func(group, name string, value uint64)) {
	var suppressed uint64
	for _, d := range v.virtio {
		suppressed += d.transport.SuppressedLogs()
	}
	if v.mmds != nil {
		suppressed += v.mmds.readMetrics(add)
	}
	add(metrics.LoggerGroup, metrics.MissedLogCount, suppressed)
	// The serial console, in bytes (Firecracker counts its one-byte
	// writes and reads): write_count reached the host, missed_write_count
	// was dropped (a stalled reader, the serial_out_path cap) or refused
	// by the host writer, read_count came from the host's input,
	// missed_read_count was lost to a full receive FIFO.
	ss, cs := v.serial.Stats(), v.console.Stats()
	add("uart", "write_count", cs.Written)
	add("uart", "missed_write_count", cs.Dropped+cs.WriteErrors)
	add("uart", "read_count", ss.RxBytes)
	add("uart", "missed_read_count", ss.Overruns)
	add("uart", "error_count", cs.WriteErrors+ss.IRQErrors)

	for _, id := range slices.Sorted(maps.Keys(v.drives)) {
		m := &v.drives[id].Metrics
		for _, kv := range []metricValue{
			{"read_bytes", m.ReadBytes.Load()}, {"write_bytes", m.WriteBytes.Load()},
			{"read_count", m.ReadCount.Load()}, {"write_count", m.WriteCount.Load()},
			{"flush_count", m.FlushCount.Load()}, {"execute_fails", m.IOErrors.Load()},
			{"invalid_reqs_count", m.InvalidReqs.Load()},
			{"rate_limiter_throttled_events", m.RateLimiterThrottled.Load()},
			{"event_fails", m.EventFails.Load()}, {"queue_broken", m.QueueBroken.Load()},
		} {
			add("block_"+id, kv.name, kv.v)
		}
	}

	for _, id := range slices.Sorted(maps.Keys(v.nets)) {
		m := &v.nets[id].Metrics
		for _, kv := range []metricValue{
			{"rx_bytes_count", m.RxBytes.Load()}, {"rx_packets_count", m.RxPackets.Load()},
			{"rx_fails", m.RxDrops.Load()}, {"tx_bytes_count", m.TxBytes.Load()},
			{"tx_packets_count", m.TxPackets.Load()}, {"tx_fails", m.TxDrops.Load()},
			{"rx_rate_limiter_throttled", m.RxThrottled.Load()},
			{"tx_rate_limiter_throttled", m.TxThrottled.Load()},
			{"tx_malformed_frames", m.BadChains.Load()},
			{"tap_read_fails", m.TapReadErrors.Load()}, {"tap_write_fails", m.TapWriteErrors.Load()},
			{"event_fails", m.EventFails.Load()}, {"queue_broken", m.QueueBroken.Load()},
		} {
			add("net_"+id, kv.name, kv.v)
		}
	}

	if v.vsock != nil {
		m := &v.vsock.Metrics
		add("vsock", "rx_bytes_count", m.RxBytes.Load())
		add("vsock", "tx_bytes_count", m.TxBytes.Load())
		add("vsock", "rx_packets_count", m.RxPackets.Load())
		add("vsock", "tx_packets_count", m.TxPackets.Load())
		add("vsock", "conns_added", m.ConnsAdded.Load())
		add("vsock", "conns_removed", m.ConnsRemoved.Load())
		add("vsock", "conns_refused", m.ConnsRefused.Load())
		add("vsock", "rx_read_fails", m.HostErrors.Load())
		add("vsock", "tx_malformed_packets", m.BadPackets.Load())
		add("vsock", "conn_event_fails", m.EventFails.Load())
	}
	if v.rng != nil {
		m := &v.rng.Metrics
		add("entropy", "entropy_bytes", m.Bytes.Load())
		add("entropy", "entropy_event_count", m.Requests.Load())
		add("entropy", "entropy_rate_limiter_throttled", m.Throttled.Load())
		add("entropy", "entropy_event_fails", m.BadRequests.Load())
	}
	if v.balloon != nil {
		m := &v.balloon.Metrics
		add("balloon", "inflate_count", m.InflateCount.Load())
		add("balloon", "deflate_count", m.DeflateCount.Load())
		add("balloon", "stats_updates_count", m.StatsUpdates.Load())
		add("balloon", "stats_update_fails", m.StatsUpdateFails.Load())
		add("balloon", "activate_fails", m.ActivateFails.Load())
		add("balloon", "event_fails", m.EventFails.Load())
	}
}

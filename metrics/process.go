package metrics

import (
	"time"

	"golang.org/x/sys/unix"
)

// ProcessTimes returns the wall time since start and the CPU time the
// process has used, in microseconds: the values of Firecracker's
// api_server.process_startup_time_us and process_startup_time_cpu_us when
// called as the API socket becomes available (ProcessTimeReporter in
// src/vmm/src/logger/metrics.rs). The CPU time is the process's
// CLOCK_PROCESS_CPUTIME_ID, Firecracker's ClockType::ProcessCpu, counted
// from the process's start (so it includes the Go runtime's start-up);
// Firecracker counts from the start of main and adds the jailer's CPU time.
func ProcessTimes(start time.Time) (wallUS, cpuUS uint64) {
	if d := time.Since(start); d > 0 {
		wallUS = uint64(d.Microseconds())
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err == nil {
		return wallUS, uint64(ts.Nano()) / uint64(time.Microsecond)
	}
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		cpuUS = uint64(cpu.Microseconds())
	}
	return wallUS, cpuUS
}

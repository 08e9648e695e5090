// Package logger writes Ember's log in Firecracker's line format.
//
// A Logger owns the destination and the settings that Firecracker's
// PUT /logger controls; its Handler is a [log/slog.Handler] that formats
// each record as one line:
//
//	<time> [<id>:<thread>[:LEVEL][:file:line]] msg key=value...
//
// for example
//
//	2024-05-08T10:34:47.281286581 [vm1:fc_vcpu 0:WARN:vmm/vcpu.go:212] unhandled port write port=0x80
//
// The time is local time with nanoseconds, as Firecracker's
// utils::time::LocalTime prints it. The thread is the value of a "thread"
// attribute (logger.With("thread", "fc_vcpu 0")), or the default thread
// name ("fc_vmm") when the record has none. LEVEL and file:line appear only
// when Config.ShowLevel and Config.ShowOrigin ask for them (both default to
// false, as in Firecracker). Firecracker's message is a formatted string; the
// record's attributes are appended as key=value pairs, quoted where needed,
// so that nothing is lost.
//
// Levels use Firecracker's names (Error, Warning, Info, Debug, Trace, Off;
// see ParseLevel). Trace is below slog.LevelDebug and Off drops every
// record. The level can be changed at run time with SetLevel.
//
// The destination is configured once (Configure): a regular file, which is
// opened for appending and created if absent, or a named pipe, which must
// already exist, as Firecracker requires ("mkfifo logs.fifo" in its
// docs/logger.md). A pipe is opened read-write and non-blocking, as
// Firecracker's open_file_nonblock does, so that opening it never waits for a
// reader and a full pipe never blocks the VMM: a line that cannot be written
// whole is dropped and counted (Lost, Firecracker's logger.missed_log_count).
package logger

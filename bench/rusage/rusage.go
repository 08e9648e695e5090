// Package rusage runs a command and reports its own peak RSS, which its
// parent cannot learn when the parent is a Go program.
//
// Go starts a child with clone(CLONE_VM|CLONE_VFORK), so at the child's
// execve the old mm the kernel retires is the parent's, and its high-water
// RSS is folded into the child's ru_maxrss (fs/exec.c, exec_mmap:
// setmax_mm_hiwater_rss). A child of ember-bench therefore reports at
// least ember-bench's own peak (seen: a tiny guest's ember at 13 MiB,
// growing run after run with ember-bench's heap, where its own VmHWM is
// about half that). So the benchmarks start the child from bin/ember-rusage,
// a small fresh process that imports only this package: the child's figure
// is then at least ember-rusage's own peak (about 2 MiB), which it reports
// beside it as the floor below which the figure means nothing.
package rusage

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ReportFD is where Measure writes its Report: the first of its parent's
// ExtraFiles.
const ReportFD = 3

// MaxReport bounds a report's length in bytes.
const MaxReport = 256

// exitSignalBase is a shell's exit status for a child killed by a signal:
// 128 + the signal's number.
const exitSignalBase = 128

// exitCannotRun is a shell's exit status for a command it could not run.
const exitCannotRun = 127

// Report is what Measure reports of one run.
type Report struct {
	Wall     time.Duration // from the child's start until it was reaped
	PeakKiB  int64         // the child's ru_maxrss
	FloorKiB int64         // the measurer's own VmHWM when it started the child
}

// Measure runs argv with this process's stdio, writes its Report on
// ReportFD, and returns the child's exit status (128 + the signal for a
// killed child, 127 if it could not start).
func Measure(argv []string) int {
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "ember-rusage: usage: ember-rusage COMMAND [ARG]... (reports on fd 3)")
		return exitCannotRun
	}
	floor := selfPeakKiB()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if cmd.ProcessState == nil {
		fmt.Fprintf(os.Stderr, "ember-rusage: %v\n", err)
		return exitCannotRun
	}
	var peak int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		peak = ru.Maxrss // KiB on Linux (getrusage(2))
	}
	report := os.NewFile(ReportFD, "report")
	if _, err := fmt.Fprintf(report, "%d %d %d\n", wall.Nanoseconds(), peak, floor); err != nil {
		fmt.Fprintf(os.Stderr, "ember-rusage: writing the report on fd %d: %v\n", ReportFD, err)
		return exitCannotRun
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitSignalBase + int(ws.Signal())
	}
	return cmd.ProcessState.ExitCode()
}

// ParseReport reads what Measure wrote.
func ParseReport(b []byte) (Report, error) {
	var wallNS, peak, floor int64
	if n, _ := fmt.Sscanf(string(b), "%d %d %d\n", &wallNS, &peak, &floor); n != 3 || wallNS < 0 || peak < 0 || floor < 0 {
		return Report{}, fmt.Errorf("no usage report (got %q)", b)
	}
	return Report{Wall: time.Duration(wallNS), PeakKiB: peak, FloorKiB: floor}, nil
}

// selfPeakKiB is this process's VmHWM (proc(5)), 0 if unknown.
func selfPeakKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kib int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kib)
			return kib
		}
	}
	return 0
}

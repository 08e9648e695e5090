// Package bench measures Ember against QEMU's microvm machine: launch time and
// peak memory for a tiny guest on this host's /dev/kvm, and time to guest init
// for a real Linux guest in the lab. Results are medians over alternating runs
// so both VMMs see the same machine conditions.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/embervm/ember/bench/rusage"
)

// Sample is one measured run.
type Sample struct {
	Wall    time.Duration
	PeakRSS int64 // bytes (the child's ru_maxrss, taken by RunToExitRSS's measurer)
}

// Median returns the median of xs (the mean of the middle two for an even count).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// RunToExit runs argv to completion and measures exec-to-exit wall time
// (not peak RSS: see RunToExitRSS). okCodes lists the exit codes that count as success.
func RunToExit(ctx context.Context, argv []string, okCodes ...int) (Sample, []byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if err := checkExit(argv, cmd, err, okCodes, out.Bytes()); err != nil {
		return Sample{}, out.Bytes(), err
	}
	return Sample{Wall: wall}, out.Bytes(), nil
}

// RunToExitRSS is RunToExit with the child's peak RSS, measured through
// measurer (bin/ember-rusage: see package rusage for why). It fails if
// that peak is not above the measurer's own (the figure would be the
// measurer's).
func RunToExitRSS(ctx context.Context, measurer string, argv []string, okCodes ...int) (Sample, []byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return Sample{}, nil, err
	}
	defer r.Close()
	cmd := exec.CommandContext(ctx, measurer, argv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.ExtraFiles = []*os.File{w} // rusage.ReportFD
	err = cmd.Start()
	w.Close()
	if err != nil {
		return Sample{}, nil, err
	}
	report, _ := io.ReadAll(io.LimitReader(r, rusage.MaxReport))
	err = cmd.Wait()
	if err := checkExit(argv, cmd, err, okCodes, out.Bytes()); err != nil {
		return Sample{}, out.Bytes(), err
	}
	rep, err := rusage.ParseReport(report)
	if err != nil {
		return Sample{}, out.Bytes(), fmt.Errorf("%s: %w\n%s", measurer, err, out.Bytes())
	}
	if rep.PeakKiB <= rep.FloorKiB {
		return Sample{}, out.Bytes(), fmt.Errorf("%s: its peak RSS (%d KiB) is not above its measurer's own (%d KiB): unknown", strings.Join(argv, " "), rep.PeakKiB, rep.FloorKiB)
	}
	return Sample{Wall: rep.Wall, PeakRSS: rep.PeakKiB * 1024}, out.Bytes(), nil
}

// checkExit says why cmd (running argv), which Run or Wait ended with err,
// did not end with one of okCodes.
func checkExit(argv []string, cmd *exec.Cmd, err error, okCodes []int, out []byte) error {
	if err != nil && !slices.Contains(okCodes, cmd.ProcessState.ExitCode()) {
		return fmt.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	if err == nil && !slices.Contains(okCodes, 0) {
		return fmt.Errorf("%s exited 0, want one of %v\n%s", strings.Join(argv, " "), okCodes, out)
	}
	return nil
}

// RunToMarker starts argv and measures the wall time from exec until marker
// appears in its output, then kills it. stdin is /dev/null. The output
// returned is its last 2000 bytes.
func RunToMarker(ctx context.Context, argv []string, marker string, timeout time.Duration) (time.Duration, []byte, error) {
	t0 := time.Now()
	w, err := startWatched(ctx, argv, marker)
	if err != nil {
		return 0, nil, err
	}
	at, err := w.wait(timeout)
	w.kill()
	if err != nil {
		return 0, w.output(), err
	}
	return at.Sub(t0), w.output(), nil
}

// watched is a process whose output is scanned for a marker.
type watched struct {
	cmd    *exec.Cmd
	marker string
	seen   chan time.Time // when the marker first appeared; closed at EOF without it
	waited chan error
	mu     sync.Mutex
	out    bytes.Buffer
}

// startWatched starts argv with stdout and stderr scanned for marker.
func startWatched(ctx context.Context, argv []string, marker string) (*watched, error) {
	return startWatchedCmd(exec.CommandContext(ctx, argv[0], argv[1:]...), marker)
}

// startWatchedCmd starts cmd (not yet started) with stdout and stderr
// scanned for marker.
func startWatchedCmd(cmd *exec.Cmd, marker string) (*watched, error) {
	w := &watched{cmd: cmd, marker: marker, seen: make(chan time.Time, 1), waited: make(chan error, 1)}
	pr, pw := io.Pipe()
	w.cmd.Stdout, w.cmd.Stderr = pw, pw
	if err := w.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			now := time.Now()
			w.mu.Lock()
			w.out.Write(sc.Bytes())
			w.out.WriteByte('\n')
			w.mu.Unlock()
			if !sent && strings.Contains(sc.Text(), marker) {
				w.seen <- now
				sent = true
			}
		}
		if !sent {
			close(w.seen)
		}
	}()
	go func() { w.waited <- w.cmd.Wait(); pw.Close() }()
	return w, nil
}

// wait returns when the marker appeared, or an error with the output.
func (w *watched) wait(timeout time.Duration) (time.Time, error) {
	select {
	case at, ok := <-w.seen:
		if ok {
			return at, nil
		}
		return time.Time{}, fmt.Errorf("%s ended without printing %q", w.cmd.Path, w.marker)
	case <-time.After(timeout):
		return time.Time{}, fmt.Errorf("%s: no %q within %v", w.cmd.Path, w.marker, timeout)
	}
}

func (w *watched) output() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return tail(w.out.Bytes())
}

func (w *watched) kill() {
	w.cmd.Process.Kill()
	<-w.waited
}

// Line prints one headline figure as "NAME VALUE UNIT".
func Line(w io.Writer, name string, value float64, unit string) {
	fmt.Fprintf(w, "%s %.3f %s\n", name, value, unit)
}

// WriteTemp writes data to a new temporary file and returns its path.
func WriteTemp(dir, pattern string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), f.Close()
}

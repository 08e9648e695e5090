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
	"syscall"
	"time"
)

// Sample is one measured run.
type Sample struct {
	Wall    time.Duration
	PeakRSS int64 // bytes (getrusage ru_maxrss of the child)
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

// RunToExit runs argv to completion and measures exec-to-exit wall time and
// peak RSS. okCodes lists the exit codes that count as success.
func RunToExit(ctx context.Context, argv []string, okCodes ...int) (Sample, []byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	code := cmd.ProcessState.ExitCode()
	if err != nil && !slices.Contains(okCodes, code) {
		return Sample{}, out.Bytes(), fmt.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out.Bytes())
	}
	if err == nil && !slices.Contains(okCodes, 0) {
		return Sample{}, out.Bytes(), fmt.Errorf("%s exited 0, want one of %v\n%s", strings.Join(argv, " "), okCodes, out.Bytes())
	}
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss * 1024
	}
	return Sample{Wall: wall, PeakRSS: rss}, out.Bytes(), nil
}

// RunToMarker starts argv and measures the wall time from exec until marker
// appears in its output, then kills it. stdin is /dev/null.
func RunToMarker(ctx context.Context, argv []string, marker string, timeout time.Duration) (time.Duration, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var log bytes.Buffer
	found := make(chan time.Duration, 1)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			log.Write(sc.Bytes())
			log.WriteByte('\n')
			if !sent && strings.Contains(sc.Text(), marker) {
				found <- time.Since(t0)
				sent = true
			}
		}
		if !sent {
			close(found)
		}
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait(); pw.Close() }()
	select {
	case d, ok := <-found:
		cmd.Process.Kill()
		<-waited
		if !ok {
			return 0, log.Bytes(), fmt.Errorf("%s ended without printing %q", argv[0], marker)
		}
		return d, log.Bytes(), nil
	case <-ctx.Done():
		cmd.Process.Kill()
		<-waited
		return 0, log.Bytes(), fmt.Errorf("%s: no %q within %v", argv[0], marker, timeout)
	}
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

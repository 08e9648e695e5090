package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
)

// APIResult holds the API benchmark's figures.
type APIResult struct {
	StartRuns, Requests int
	// StartToSocketMS is the median time from exec until the API socket
	// accepts a connection.
	StartToSocketMS float64
	// StartToSocketJailedMS is the same through `ember jail` (uid/gid
	// 10000, the host's cgroups with memory, pids and cpu limits); 0 when
	// not measured (the jailer needs root).
	StartToSocketJailedMS float64
	// GetP50US and GetP99US are GET / latencies; PutDriveP50US is the
	// median latency of PUT /drives/{id} (pre-boot, replacing the drive).
	GetP50US, GetP99US, PutDriveP50US float64
}

// Lines prints the headline figures as NAME VALUE UNIT.
func (r APIResult) Lines(w io.Writer) {
	Line(w, "api_start_to_socket_ms", r.StartToSocketMS, "ms")
	if r.StartToSocketJailedMS > 0 {
		Line(w, "api_start_to_socket_jailed_ms", r.StartToSocketJailedMS, "ms")
	}
	Line(w, "api_get_p50_us", r.GetP50US, "us")
	Line(w, "api_get_p99_us", r.GetP99US, "us")
	Line(w, "api_put_drive_p50_us", r.PutDriveP50US, "us")
}

// socketPoll is how often the start benchmark tries to connect.
const socketPoll = 50 * time.Microsecond

// API measures Ember's API on this host: exec-to-socket time over
// startRuns starts, then GET / and PUT /drives latencies over requests
// requests each, one at a time on a kept-alive connection (as an SDK
// drives it).
func API(ctx context.Context, ember string, startRuns, requests int, progress io.Writer) (APIResult, error) {
	r := APIResult{StartRuns: startRuns, Requests: requests}
	dir, err := os.MkdirTemp("", "ember-bench-api-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "api.sock")

	var starts []float64
	for i := range startRuns {
		d, err := startToSocket(ctx, ember, sock)
		if err != nil {
			return r, fmt.Errorf("start %d: %w", i, err)
		}
		starts = append(starts, ms(d))
	}
	r.StartToSocketMS = Median(starts)
	fmt.Fprintf(progress, "exec to socket: median %.2f ms over %d starts\n", r.StartToSocketMS, startRuns)
	if r.StartToSocketJailedMS, err = JailedStartToSocket(ctx, ember, startRuns, progress); err != nil {
		return r, fmt.Errorf("jailed start: %w", err)
	}

	cmd := exec.CommandContext(ctx, ember, "--api-sock", sock, "--level", "Warning")
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		return r, err
	}
	c := client.New(sock)
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		return r, err
	}
	get := func() error { _, err := c.Describe(ctx); return err }
	put := func() error {
		return c.PutDrive(ctx, api.Drive{DriveID: "rootfs", PathOnHost: disk, IsRootDevice: true})
	}
	gets, err := latencies(requests, get)
	if err != nil {
		return r, fmt.Errorf("GET /: %w", err)
	}
	puts, err := latencies(requests, put)
	if err != nil {
		return r, fmt.Errorf("PUT /drives/rootfs: %w", err)
	}
	r.GetP50US, r.GetP99US = percentile(gets, 50), percentile(gets, 99)
	r.PutDriveP50US = percentile(puts, 50)
	fmt.Fprintf(progress, "GET /: p50 %.1f us, p99 %.1f us; PUT /drives: p50 %.1f us (%d requests each)\n",
		r.GetP50US, r.GetP99US, r.PutDriveP50US, requests)
	return r, nil
}

// startToSocket execs ember and returns how long until its socket accepts.
func startToSocket(ctx context.Context, ember, sock string) (time.Duration, error) {
	os.Remove(sock)
	return execToSocket(ctx, ember, []string{"--api-sock", sock, "--level", "Warning"}, sock)
}

// execToSocket execs ember with args (the VMM, or the jailer that becomes
// it) and returns how long until the socket sock accepts; then it stops
// the VMM.
func execToSocket(ctx context.Context, ember string, args []string, sock string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, ember, args...)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	deadline := t0.Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			d := time.Since(t0)
			c.Close()
			return d, nil
		}
		time.Sleep(socketPoll)
	}
	return 0, fmt.Errorf("socket %s not accepting after 10 s", sock)
}

// latencies calls fn n times (after a warm-up) and returns each call's
// duration in microseconds.
func latencies(n int, fn func() error) ([]float64, error) {
	const warmup = 100
	for range warmup {
		if err := fn(); err != nil {
			return nil, err
		}
	}
	out := make([]float64, 0, n)
	for range n {
		t0 := time.Now()
		if err := fn(); err != nil {
			return nil, err
		}
		out = append(out, float64(time.Since(t0))/float64(time.Microsecond))
	}
	return out, nil
}

// percentile returns the p-th percentile (nearest rank) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/client"
)

// SandboxRateResult is the emberd restore-rate figures.
type SandboxRateResult struct {
	Creates, Parallel int
	// RatePerS is creates per second through emberd, from the first
	// request until the last sandbox was running (ready: the tiny guest's
	// boot-timer write after its restore).
	RatePerS float64
	// CreateP50MS and CreateP99MS are the creates' latencies.
	CreateP50MS, CreateP99MS float64
	// RestoreP50MS is the median of emberd's restore phase.
	RestoreP50MS float64
}

// Lines prints the figures as NAME VALUE UNIT.
func (r SandboxRateResult) Lines(w io.Writer) {
	Line(w, "emberd_restore_rate_per_s", r.RatePerS, "1/s")
	Line(w, "emberd_create_p50_ms", r.CreateP50MS, "ms")
	Line(w, "emberd_create_p99_ms", r.CreateP99MS, "ms")
	Line(w, "emberd_restore_phase_p50_ms", r.RestoreP50MS, "ms")
}

// SandboxRate starts emberd (with ember) on a fresh state folder, builds
// a template from the tiny sandbox guest (readiness: its boot-timer write)
// and creates sandboxes through emberd's API, parallel at a time, then
// kills them all and stops emberd.
func SandboxRate(ctx context.Context, emberd, ember string, creates, parallel int, progress io.Writer) (r SandboxRateResult, err error) {
	r.Creates, r.Parallel = creates, parallel
	dir, err := os.MkdirTemp("", "ember-bench-emberd-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	kernel := filepath.Join(dir, "sandbox.elf")
	if err := os.WriteFile(kernel, tiny.Sandbox(), 0o644); err != nil {
		return r, err
	}
	// The sandboxes all run at the end: the vCPU budget is lifted to fit
	// them (emberd's default, 8 per host CPU, is for sandboxes that work;
	// the tiny guest halts).
	c, stop, err := startEmberd(ctx, emberd, dir, progress, "--ember", ember, "--budget-vcpus", strconv.Itoa(creates))
	if err != nil {
		return r, err
	}
	defer stop()
	if _, err := c.BuildTemplate(ctx, sandbox.TemplateSpec{Name: "tiny", Kernel: kernel, MemoryMiB: 16, Ready: sandbox.ReadyCheck{Kind: sandbox.ReadyBootTimer}}); err != nil {
		return r, err
	}
	var (
		mu        sync.Mutex
		ids       []string
		latencies []float64
		restores  []float64
		firstErr  error
	)
	defer func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, parallel)
		for _, id := range ids {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c.Kill(context.Background(), id)
			})
		}
		wg.Wait()
	}()
	next := make(chan struct{}, creates)
	for range creates {
		next <- struct{}{}
	}
	close(next)
	t0 := time.Now()
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for range next {
				s := time.Now()
				sb, err := c.Create(ctx, sandbox.SandboxSpec{Template: "tiny"})
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				ids = append(ids, sb.ID)
				latencies = append(latencies, ms(time.Since(s)))
				restores = append(restores, sb.Timings.RestoreMS)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if firstErr != nil {
		return r, firstErr
	}
	r.RatePerS = float64(creates) / elapsed.Seconds()
	r.CreateP50MS, r.CreateP99MS = percentile(latencies, 50), percentile(latencies, 99)
	r.RestoreP50MS = Median(restores)
	fmt.Fprintf(progress, "%d creates through emberd, %d at a time: %.2f s, %.1f/s; create p50 %.1f ms, p99 %.1f ms\n",
		creates, parallel, elapsed.Seconds(), r.RatePerS, r.CreateP50MS, r.CreateP99MS)
	return r, nil
}

// startEmberd starts emberd with its state in dir (and args) and waits
// until its API answers; stop ends it (SIGTERM: its VMs go on, as they
// would; the benchmarks kill theirs).
func startEmberd(ctx context.Context, emberd, dir string, progress io.Writer, args ...string) (c *client.Client, stop func(), err error) {
	sock := filepath.Join(dir, "emberd.sock")
	cmd := exec.CommandContext(ctx, emberd, append([]string{"--state-dir", filepath.Join(dir, "state"), "--socket", sock, "--level", "warn"}, args...)...)
	cmd.Stderr = progress
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	c = client.New(sock)
	stop = func() {
		c.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	for i := 0; ; i++ {
		if _, err := c.Templates(ctx); err == nil {
			return c, stop, nil
		} else if i == emberdWaitTries {
			stop()
			return nil, nil, fmt.Errorf("emberd did not answer: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// emberdWaitTries bounds the wait for emberd's API (10 ms apart: 30 s,
// for the lab's emulated start-up).
const emberdWaitTries = 3000

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/tiny"
)

// SnapshotResult is one memory size's restore figures.
type SnapshotResult struct {
	MemMiB int
	Runs   int
	// RestoreMS is the median time from sending PUT /snapshot/load
	// (resume_vm true) until the restored guest has run: it writes the
	// boot timer as its first action after restore, and Ember logs that.
	RestoreMS float64
	// LoadResponseMS is the median time until the load's 204.
	LoadResponseMS float64
	// UffdRestoreMS is RestoreMS with the Uffd backend, pages served by
	// `ember snapshot serve-uffd`.
	UffdRestoreMS float64
	// SnapshotMS is the time PUT /snapshot/create took (Full, once).
	SnapshotMS float64
}

// Lines prints the headline figures as NAME VALUE UNIT.
func (r SnapshotResult) Lines(w io.Writer) {
	suffix := fmt.Sprintf("%dmib", r.MemMiB)
	if r.MemMiB%1024 == 0 {
		suffix = fmt.Sprintf("%dgib", r.MemMiB/1024)
	}
	Line(w, "restore_ms_"+suffix, r.RestoreMS, "ms")
	Line(w, "restore_load_response_ms_"+suffix, r.LoadResponseMS, "ms")
	Line(w, "restore_uffd_ms_"+suffix, r.UffdRestoreMS, "ms")
	Line(w, "snapshot_create_ms_"+suffix, r.SnapshotMS, "ms")
}

// bootTimerMarker is Ember's boot-timer log line.
const bootTimerMarker = "Guest-boot-time"

// Snapshot measures snapshot restore on this host with the tiny Counter
// guest of memMiB MiB: boot it through the API, pause, take a Full
// snapshot, set the guest's exit flag in the memory file (so a restored
// guest signals the boot timer and resets as soon as it runs), then runs
// times start a fresh `ember --api-sock` and time PUT /snapshot/load with
// resume_vm until the guest's boot-timer line appears; then as many with
// the Uffd backend and `ember snapshot serve-uffd` as the handler.
//
// The tiny guest touches a few pages: the rest of its RAM is holes in the
// memory file, so the figures are the fixed cost of a restore (state file,
// KVM VM and vCPUs, devices, mapping), not the paging-in of a populated RAM.
func Snapshot(ctx context.Context, ember string, memMiB, runs int, progress io.Writer) (SnapshotResult, error) {
	r := SnapshotResult{MemMiB: memMiB, Runs: runs}
	dir, err := os.MkdirTemp("", "ember-bench-snapshot-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	snap, mem, createMS, err := exitingSnapshot(ctx, ember, dir, memMiB)
	if err != nil {
		return r, err
	}
	r.SnapshotMS = createMS
	var restores, responses []float64
	for i := range runs {
		total, resp, phases, err := restoreOnce(ctx, ember, dir, snap, &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: mem})
		if err != nil {
			return r, fmt.Errorf("restore %d: %w", i, err)
		}
		if i == runs-1 && phases != "" {
			fmt.Fprintf(progress, "%d MiB, last run's restore phases (Ember's log): %s\n", memMiB, phases)
		}
		restores, responses = append(restores, ms(total)), append(responses, ms(resp))
	}
	r.RestoreMS, r.LoadResponseMS = Median(restores), Median(responses)

	usock := filepath.Join(dir, "uffd.sock")
	handler := exec.CommandContext(ctx, ember, "snapshot", "serve-uffd", usock, mem)
	if err := handler.Start(); err != nil {
		return r, err
	}
	defer func() { handler.Process.Signal(syscall.SIGTERM); handler.Wait() }()
	for i := 0; ; i++ {
		if _, err := os.Stat(usock); err == nil {
			break
		}
		if i == 5000 {
			return r, fmt.Errorf("serve-uffd did not listen on %s", usock)
		}
		time.Sleep(time.Millisecond)
	}
	var uffds []float64
	for i := range runs {
		total, _, _, err := restoreOnce(ctx, ember, dir, snap, &api.MemoryBackend{BackendType: api.BackendUffd, BackendPath: usock})
		if err != nil {
			return r, fmt.Errorf("Uffd restore %d: %w", i, err)
		}
		uffds = append(uffds, ms(total))
	}
	r.UffdRestoreMS = Median(uffds)
	fmt.Fprintf(progress, "%d MiB: snapshot %.1f ms; restore to guest running: median %.2f ms (load answered: %.2f ms), with Uffd %.2f ms, over %d runs each\n",
		memMiB, r.SnapshotMS, r.RestoreMS, r.LoadResponseMS, r.UffdRestoreMS, runs)
	return r, nil
}

// exitingSnapshot takes a Full snapshot of the Counter guest with memMiB
// of RAM into dir and sets the guest's exit flag in its memory file, so
// that a restored guest signals the boot timer and resets as soon as it
// runs. It returns the state and memory files and how long the snapshot
// took.
func exitingSnapshot(ctx context.Context, ember, dir string, memMiB int) (snap, mem string, createMS float64, err error) {
	snap, mem = filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	kernel := filepath.Join(dir, "counter.elf")
	if err := os.WriteFile(kernel, tiny.Counter(), 0o644); err != nil {
		return "", "", 0, err
	}
	if createMS, err = takeSnapshot(ctx, ember, dir, kernel, memMiB, snap, mem); err != nil {
		return "", "", 0, fmt.Errorf("taking the snapshot: %w", err)
	}
	f, err := os.OpenFile(mem, os.O_RDWR, 0)
	if err != nil {
		return "", "", 0, err
	}
	_, err = f.WriteAt([]byte{1}, tiny.ExitFlagAddr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return snap, mem, createMS, err
}

// takeSnapshot boots the Counter guest in one ember, pauses it and takes a
// Full snapshot; it returns how long the snapshot call took.
func takeSnapshot(ctx context.Context, ember, dir, kernel string, memMiB int, snap, mem string) (float64, error) {
	sock := filepath.Join(dir, "create.sock")
	cmd := exec.CommandContext(ctx, ember, "--api-sock", sock, "--boot-timer", "--level", "Warning")
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		return 0, err
	}
	c := client.New(sock)
	vcpus := 1
	if err := c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &memMiB}); err != nil {
		return 0, err
	}
	if err := c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel}); err != nil {
		return 0, err
	}
	if err := c.InstanceStart(ctx); err != nil {
		return 0, err
	}
	time.Sleep(50 * time.Millisecond) // let it count
	if err := c.Pause(ctx); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem, SnapshotType: "Full"}); err != nil {
		return 0, err
	}
	return ms(time.Since(t0)), nil
}

// restoreOnce starts a fresh ember, waits for its socket, then times the
// load until the guest's boot-timer line (total) and the load's answer.
func restoreOnce(ctx context.Context, ember, dir, snap string, backend *api.MemoryBackend) (total, resp time.Duration, phases string, err error) {
	sock := filepath.Join(dir, "restore.sock")
	os.Remove(sock)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ember, "--api-sock", sock)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		return 0, 0, "", err
	}
	var (
		mu   sync.Mutex
		t0   time.Time
		logb strings.Builder
	)
	seen := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			now := time.Now()
			mu.Lock()
			logb.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if !sent && strings.Contains(sc.Text(), bootTimerMarker) {
				seen <- now
				sent = true
			}
		}
		if !sent {
			close(seen)
		}
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait(); pw.Close() }()
	defer func() {
		cmd.Process.Kill()
		<-waited
	}()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		return 0, 0, "", err
	}
	c := client.New(sock)
	t0 = time.Now()
	err = c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap, MemBackend: backend, ResumeVM: true})
	resp = time.Since(t0)
	if err != nil {
		return 0, 0, "", err
	}
	select {
	case at, ok := <-seen:
		if !ok {
			mu.Lock()
			defer mu.Unlock()
			return 0, 0, "", fmt.Errorf("ember ended without the guest's boot-timer line:\n%s", logb.String())
		}
		total = at.Sub(t0)
	case <-ctx.Done():
		return 0, 0, "", fmt.Errorf("no boot-timer line from the restored guest")
	}
	select {
	case <-waited:
		waited <- nil // for the deferred wait
	case <-time.After(10 * time.Second):
		return 0, 0, "", fmt.Errorf("the restored guest did not reset")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		return 0, 0, "", fmt.Errorf("the restored ember exited %d", code)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, l := range strings.Split(logb.String(), "\n") {
		if i := strings.Index(l, "read_us="); i >= 0 {
			phases = l[i:]
		}
	}
	return total, resp, phases, nil
}

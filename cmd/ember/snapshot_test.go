package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
)

// apiEmber is an `ember --api-sock` process and its client.
type apiEmber struct {
	cmd    *exec.Cmd
	c      *client.Client
	stderr bytes.Buffer
	exited chan struct{}
}

func startAPIEmber(t *testing.T, ctx context.Context) *apiEmber {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	e := &apiEmber{cmd: exec.Command(emberBin, "--api-sock", sock), exited: make(chan struct{})}
	e.cmd.Stderr = &e.stderr
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.cmd.Wait(); close(e.exited) }()
	t.Cleanup(func() { e.cmd.Process.Kill(); <-e.exited })
	if err := client.WaitForSocket(ctx, sock); err != nil {
		t.Fatal(err)
	}
	e.c = client.New(sock)
	return e
}

// wait returns the exit code.
func (e *apiEmber) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-e.exited:
		return e.cmd.ProcessState.ExitCode()
	case <-time.After(hangLimit):
		t.Fatalf("ember did not exit\n%s", e.stderr.String())
	}
	return -1
}

// TestSnapshotAcrossProcesses: a guest booted, paused and snapshotted
// through one ember's API is loaded by a fresh ember and runs on from its
// saved state (its memory file is edited so that the guest, once running,
// exits at once); `ember snapshot describe` reads the file; a corrupt
// snapshot fails the load with a 400 and a non-zero exit.
func TestSnapshotAcrossProcesses(t *testing.T) {
	testkvm.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangLimit)
	defer cancel()
	dir := t.TempDir()
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")

	a := startAPIEmber(t, ctx)
	vcpus, mib := 2, 64
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("machine-config", a.c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mib}))
	must("boot-source", a.c.PutBootSource(ctx, api.BootSource{KernelImagePath: write(t, "counter.elf", tiny.Counter())}))
	if err := a.c.Pause(ctx); err == nil {
		t.Fatal("pause before boot succeeded")
	}
	must("start", a.c.InstanceStart(ctx))
	time.Sleep(20 * time.Millisecond)
	must("pause", a.c.Pause(ctx))
	if info, _ := a.c.Describe(ctx); info.State != "Paused" {
		t.Fatalf("state %q after pause", info.State)
	}
	must("snapshot", a.c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem, SnapshotType: "Full"}))
	must("resume", a.c.Resume(ctx))
	a.cmd.Process.Signal(os.Interrupt)
	if code := a.wait(t); code != 0 {
		t.Fatalf("first ember exit %d\n%s", code, a.stderr.String())
	}

	out, stderr, code, _ := runEmber(t, "snapshot", "describe", snap)
	if code != 0 || !strings.Contains(out, "vCPUs:") || !strings.Contains(out, "64 MiB") {
		t.Fatalf("describe: exit %d\n%s%s", code, out, stderr)
	}
	t.Logf("ember snapshot describe:\n%s", out)

	if out, _, code, _ := runEmber(t, "--describe-snapshot", snap); code != 0 || strings.TrimSpace(out) != "v1" {
		t.Errorf("--describe-snapshot: exit %d, %q", code, out)
	}
	if out, _, code, _ := runEmber(t, "--snapshot-version"); code != 0 || strings.TrimSpace(out) != "v1" {
		t.Errorf("--snapshot-version: exit %d, %q", code, out)
	}

	// The guest exits as soon as it runs again.
	f, err := os.OpenFile(mem, os.O_RDWR, 0)
	must("open memory file", err)
	_, err = f.WriteAt([]byte{1}, tiny.ExitFlagAddr)
	f.Close()
	must("set exit flag", err)

	b := startAPIEmber(t, ctx)
	logPath := filepath.Join(dir, "ember.log")
	must("logger", b.c.PutLogger(ctx, api.Logger{LogPath: &logPath}))
	must("load", b.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap,
		MemBackend: &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: mem}, ResumeVM: true}))
	if code := b.wait(t); code != 0 {
		t.Fatalf("restored ember exit %d, want 0 (guest reset)\n%s", code, b.stderr.String())
	}

	// The same through the Uffd backend and the built-in handler.
	usock := filepath.Join(dir, "uffd.sock")
	handler := exec.Command(emberBin, "snapshot", "serve-uffd", usock, mem)
	var hlog bytes.Buffer
	handler.Stderr = &hlog
	must("start the handler", handler.Start())
	defer func() { handler.Process.Signal(os.Interrupt); handler.Wait() }()
	for i := 0; ; i++ {
		if _, err := os.Stat(usock); err == nil {
			break
		}
		if i == 3000 {
			t.Fatalf("serve-uffd did not listen\n%s", hlog.String())
		}
		time.Sleep(time.Millisecond)
	}
	u := startAPIEmber(t, ctx)
	must("load (Uffd)", u.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap,
		MemBackend: &api.MemoryBackend{BackendType: api.BackendUffd, BackendPath: usock}, ResumeVM: true}))
	if code := u.wait(t); code != 0 {
		t.Fatalf("ember restored through Uffd exit %d, want 0\n%s\nhandler:\n%s", code, u.stderr.String(), hlog.String())
	}

	// Configured first: refused, and nothing happens.
	c := startAPIEmber(t, ctx)
	must("machine-config", c.c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mib}))
	err = c.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap, MemFilePath: &mem})
	if e, ok := client.IsAPIError(err); !ok || !strings.Contains(e.FaultMessage, "after configuring") {
		t.Fatalf("load after configuring: %v", err)
	}

	// Corrupt: 400 naming the CRC, then exit non-zero.
	raw, err := os.ReadFile(snap)
	must("read", err)
	raw[len(raw)/2] ^= 0xff
	bad := write(t, "bad.snap", raw)
	_, stderr, code, _ = runEmber(t, "snapshot", "describe", bad)
	if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "CRC") {
		t.Fatalf("describe of a corrupt file: exit %d, stderr %q", code, stderr)
	}
	d := startAPIEmber(t, ctx)
	err = d.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: bad, MemFilePath: &mem})
	if e, ok := client.IsAPIError(err); !ok || e.Status != 400 || !strings.Contains(e.FaultMessage, "CRC") {
		t.Fatalf("load of a corrupt snapshot: %v", err)
	}
	if code := d.wait(t); code == 0 {
		t.Fatal("ember exited 0 after a failed load")
	}
}

// TestDiffSnapshotCLI: with track_dirty_pages, a Full then a Diff snapshot
// through the API; `ember snapshot apply-diff` merges the Diff into the
// Full memory file, and a fresh ember loads the Diff's state on it.
func TestDiffSnapshotCLI(t *testing.T) {
	testkvm.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangLimit)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	dir := t.TempDir()
	full, fullMem := filepath.Join(dir, "full.snap"), filepath.Join(dir, "full.mem")
	diff, diffMem := filepath.Join(dir, "diff.snap"), filepath.Join(dir, "diff.mem")
	a := startAPIEmber(t, ctx)
	vcpus, mib, track := 1, 32, true
	must("machine-config", a.c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mib, TrackDirtyPages: &track}))
	must("boot-source", a.c.PutBootSource(ctx, api.BootSource{KernelImagePath: write(t, "counter.elf", tiny.Counter())}))
	must("start", a.c.InstanceStart(ctx))
	must("pause", a.c.Pause(ctx))
	must("full", a.c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: full, MemFilePath: fullMem, SnapshotType: "Full"}))
	must("resume", a.c.Resume(ctx))
	time.Sleep(10 * time.Millisecond)
	must("pause", a.c.Pause(ctx))
	must("diff", a.c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: diff, MemFilePath: diffMem, SnapshotType: "Diff"}))
	a.cmd.Process.Signal(os.Interrupt)
	a.wait(t)

	out, stderr, code, _ := runEmber(t, "snapshot", "describe", diff)
	if code != 0 || !strings.Contains(out, "Diff memory file") {
		t.Fatalf("describe diff: exit %d\n%s%s", code, out, stderr)
	}
	if _, stderr, code, _ := runEmber(t, "snapshot", "apply-diff", fullMem, diffMem); code != 0 {
		t.Fatalf("apply-diff: exit %d: %s", code, stderr)
	}
	if _, stderr, code, _ := runEmber(t, "snapshot", "apply-diff", fullMem, filepath.Join(dir, "none")); code == 0 || !strings.Contains(stderr, "none") {
		t.Fatalf("apply-diff of a missing file: exit %d: %s", code, stderr)
	}
	f, err := os.OpenFile(fullMem, os.O_RDWR, 0)
	must("open", err)
	_, err = f.WriteAt([]byte{1}, tiny.ExitFlagAddr)
	f.Close()
	must("set exit flag", err)
	b := startAPIEmber(t, ctx)
	must("load", b.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: diff, MemFilePath: &fullMem, ResumeVM: true}))
	if code := b.wait(t); code != 0 {
		t.Fatalf("restored ember exit %d\n%s", code, b.stderr.String())
	}
}

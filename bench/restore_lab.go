package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/vmm"
)

// LabRestoreResult holds the in-lab snapshot restore figures (medians):
// exec of a fresh VMM process until the restored Linux guest prints.
type LabRestoreResult struct {
	EmberMS, QEMUMS float64
	Runs            int
}

// Ratio is Ember's median over QEMU's: below 1 means Ember is faster.
func (r LabRestoreResult) Ratio() float64 { return r.EmberMS / r.QEMUMS }

// Lines prints the figures as NAME VALUE UNIT.
func (r LabRestoreResult) Lines(w io.Writer) {
	Line(w, "lab_restore_ember_ms", r.EmberMS, "ms")
	Line(w, "lab_restore_qemu_ms", r.QEMUMS, "ms")
	Line(w, "lab_restore_ratio_vs_qemu", r.Ratio(), "ratio")
}

const (
	// restoreTick is what the restore benchmark's guest prints every
	// restoreTickCmd period, before the snapshot and after a restore.
	restoreTick = "ember-guest: tick"
	// restoreTickCmd is its ember_cmd: a tick every 5 ms, so a restored
	// guest shows it runs at most 5 ms after it does.
	restoreTickCmd = "while true; do echo " + restoreTick + "; usleep 5000; done"
	// labRestoreTimeout bounds a boot to the first tick and one restore.
	labRestoreTimeout = 2 * time.Minute
	// labRestoreAttempts: a hung nested guest (a lab fault) is retried.
	labRestoreAttempts = 3
)

// LabRestore measures snapshot restore of a booted Linux guest in the lab,
// Ember against QEMU's microvm machine. Each VMM boots the same kernel and
// initramfs (128 MiB, one vCPU) to a guest that prints a tick every 5 ms,
// and saves it once: Ember with PUT /snapshot/create (Full) on the paused
// VM, QEMU with a migration to a file ("migrate" to exec:cat, QEMU's way
// of saving a VM to a file). Then, runs times each, alternately, a fresh
// process restores it and the time from exec until the guest's next tick
// on the console is taken: Ember with PUT /snapshot/load (File backend,
// resume_vm), QEMU with -incoming exec:cat FILE.
func LabRestore(ctx context.Context, ember, kernel, initrd string, runs int, progress io.Writer) (LabRestoreResult, error) {
	r := LabRestoreResult{Runs: runs}
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			return r, err
		}
	}
	dir, err := os.MkdirTemp("", "ember-bench-restore-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	cmdline := vmm.DefaultCmdline + ` quiet ember_mode=cmd ember_cmd="` + restoreTickCmd + `"`
	snap, mem, mig := filepath.Join(dir, "ember.snap"), filepath.Join(dir, "ember.mem"), filepath.Join(dir, "qemu.mig")
	qemuArgv := []string{QEMUBinary, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host",
		"-m", fmt.Sprint(guestMemMiB), "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", cmdline}

	if err := attempts(ctx, progress, "ember snapshot", func() error {
		return emberLabSnapshot(ctx, ember, dir, kernel, initrd, cmdline, snap, mem)
	}); err != nil {
		return r, err
	}
	if err := attempts(ctx, progress, "qemu migration to a file", func() error {
		return qemuLabSnapshot(ctx, qemuArgv, dir, mig)
	}); err != nil {
		return r, err
	}
	var e, q []float64
	for i := range runs {
		var d time.Duration
		if err := attempts(ctx, progress, "ember restore", func() (err error) {
			d, err = emberLabRestore(ctx, ember, dir, snap, mem)
			return err
		}); err != nil {
			return r, err
		}
		e = append(e, ms(d))
		if err := attempts(ctx, progress, "qemu restore", func() error {
			var out []byte
			var err error
			d, out, err = RunToMarker(ctx, append(qemuArgv, "-incoming", "exec:cat "+mig), restoreTick, labRestoreTimeout)
			if err != nil {
				return fmt.Errorf("%w\n%s", err, tail(out))
			}
			return nil
		}); err != nil {
			return r, err
		}
		q = append(q, ms(d))
		fmt.Fprintf(progress, "lab restore %d: ember %.0f ms, qemu %.0f ms\n", i+1, e[i], q[i])
	}
	r.EmberMS, r.QEMUMS = Median(e), Median(q)
	return r, nil
}

// attempts runs f up to labRestoreAttempts times, logging failures (lab
// faults: a nested guest that hangs).
func attempts(ctx context.Context, progress io.Writer, what string, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil {
			return nil
		}
		if attempt == labRestoreAttempts || ctx.Err() != nil {
			return fmt.Errorf("%s: %w (%d attempts)", what, err, attempt)
		}
		fmt.Fprintf(progress, "%s failed, a lab fault? retrying: %v\n", what, err)
	}
}

// emberLabSnapshot boots the tick guest through Ember's API, pauses it and
// takes a Full snapshot.
func emberLabSnapshot(ctx context.Context, ember, dir, kernel, initrd, cmdline, snap, mem string) error {
	sock := filepath.Join(dir, "create.sock")
	os.Remove(sock)
	w, err := startWatched(ctx, []string{ember, "--api-sock", sock}, restoreTick)
	if err != nil {
		return err
	}
	defer w.kill()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		return err
	}
	c := client.New(sock)
	vcpus, memMiB := 1, guestMemMiB
	if err := c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &memMiB}); err != nil {
		return err
	}
	if err := c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel, InitrdPath: &initrd, BootArgs: &cmdline}); err != nil {
		return err
	}
	if err := c.InstanceStart(ctx); err != nil {
		return err
	}
	if _, err := w.wait(labRestoreTimeout); err != nil {
		return fmt.Errorf("%w\n%s", err, w.output())
	}
	if err := c.Pause(ctx); err != nil {
		return err
	}
	return c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem, SnapshotType: "Full"})
}

// emberLabRestore times a fresh ember from exec until the restored guest
// ticks: socket, PUT /snapshot/load with resume_vm, the first tick.
func emberLabRestore(ctx context.Context, ember, dir, snap, mem string) (time.Duration, error) {
	sock := filepath.Join(dir, "restore.sock")
	os.Remove(sock)
	t0 := time.Now()
	w, err := startWatched(ctx, []string{ember, "--api-sock", sock}, restoreTick)
	if err != nil {
		return 0, err
	}
	defer w.kill()
	if err := client.WaitForSocket(ctx, sock); err != nil {
		return 0, err
	}
	err = client.New(sock).LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap, ResumeVM: true,
		MemBackend: &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: mem}})
	if err != nil {
		return 0, fmt.Errorf("load: %w\n%s", err, w.output())
	}
	at, err := w.wait(labRestoreTimeout)
	if err != nil {
		return 0, fmt.Errorf("%w\n%s", err, w.output())
	}
	return at.Sub(t0), nil
}

// qemuLabSnapshot boots the tick guest in QEMU and migrates it to a file.
func qemuLabSnapshot(ctx context.Context, argv []string, dir, mig string) error {
	sock := filepath.Join(dir, "qmp.sock")
	os.Remove(sock)
	w, err := startWatched(ctx, append(argv, "-qmp", "unix:"+sock+",server=on,wait=off"), restoreTick)
	if err != nil {
		return err
	}
	defer w.kill()
	if _, err := w.wait(labRestoreTimeout); err != nil {
		return fmt.Errorf("%w\n%s", err, w.output())
	}
	return qmpMigrateToFile(sock, mig, labRestoreTimeout)
}

// qmpMigrateToFile connects to the QMP socket of a running QEMU and
// migrates the VM to the file mig (QEMU stops the guest when the migration
// completes), within timeout.
func qmpMigrateToFile(sock, mig string, timeout time.Duration) error {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return fmt.Errorf("QMP: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	q := qmp{r: bufio.NewReader(conn), w: conn}
	if _, err := q.read(); err != nil { // the greeting
		return err
	}
	if _, err := q.do("qmp_capabilities", nil); err != nil {
		return err
	}
	if _, err := q.do("migrate", map[string]string{"uri": "exec:cat > " + mig}); err != nil {
		return err
	}
	for {
		ret, err := q.do("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		json.Unmarshal(ret, &st)
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("QEMU migration %s: %s", st.Status, st.ErrorDesc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// qmp is a minimal QMP client: one command at a time, events skipped.
type qmp struct {
	r *bufio.Reader
	w io.Writer
}

func (q qmp) read() (map[string]json.RawMessage, error) {
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("QMP: %w", err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("QMP: %q: %w", line, err)
		}
		if _, ok := m["event"]; !ok {
			return m, nil
		}
	}
}

func (q qmp) do(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.w.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	m, err := q.read()
	if err != nil {
		return nil, err
	}
	if e, ok := m["error"]; ok {
		return nil, fmt.Errorf("QMP %s: %s", cmd, e)
	}
	ret, ok := m["return"]
	if !ok {
		return nil, errors.New("QMP " + cmd + ": no return")
	}
	return ret, nil
}

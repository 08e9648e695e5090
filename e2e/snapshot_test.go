package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
)

// The snapshot tests boot the minimal kernel (test initramfs) through the
// API with a writable virtio-blk data drive (/dev/vda), pause it, take
// snapshots into a scratch directory (the lab's /tmp: the 9p share is
// read-only) and restore them in fresh `ember --api-sock` processes.
//
// The guest runs counterScript: every iteration it writes the counter to
// the drive's first sector, and prints it with 16 bytes of /dev/urandom, the
// VM generation ID as the guest reads it (devmem at 0xef000, x86.VMGenIDAddr)
// and its wall clock. When the host writes "go" into the drive's sector 8
// it fills 10 MiB of tmpfs once (the Diff test's dirty memory).

// counterScript is the guest's ember_cmd (no double quotes: it is quoted
// on the kernel command line).
const counterScript = "echo ember-guest: vmgenid-driver=$(ls /sys/bus/acpi/drivers/vmgenid 2>/dev/null | grep -c :)" +
	" ged=$(grep -c Ged /proc/interrupts)" +
	" clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource); " +
	"i=0; while true; do i=$((i+1)); " +
	"echo $i | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync; " +
	"if [ ! -e /tmp/done ]; then blockdev --flushbufs /dev/vda; " +
	"if [ x$(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 2) = xgo ]; then " +
	"dd if=/dev/urandom of=/tmp/big bs=1M count=10 2>/dev/null; touch /tmp/done; echo ember-guest: wrote10; fi; fi; " +
	"echo ember-guest: count=$i rnd=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' ')" +
	" gen=$(devmem 0xef000 64)$(devmem 0xef008 64)" +
	" gedirqs=$(grep Ged /proc/interrupts | tr -s ' ' | cut -d ' ' -f 3,4 | tr ' ' +)" +
	" t=$(adjtimex | grep tv_ | tr -s ' ' | cut -d ' ' -f 3 | xargs | tr ' ' :):; " +
	"sleep 0.2; done"

// countLine matches the guest's report line.
// The wall clock is last (adjtimex's seconds and microseconds), so that it
// is read just before the line is printed.
var countLine = regexp.MustCompile(`ember-guest: count=(\d+) rnd=([0-9a-f]+) gen=(\S+) gedirqs=(\S*) t=(\d+):(\d+):`)

type countReport struct {
	n        int
	rnd, gen string
	t        time.Time // the guest's wall clock
	gedIRQs  int       // interrupts the GED has had (the VMGenID notifications)
	end      int       // offset of the line's end in the output
}

// counts parses the report lines of a console output, in order.
func counts(out string) []countReport {
	var rs []countReport
	for _, ix := range countLine.FindAllStringSubmatchIndex(out, -1) {
		m := func(i int) string { return out[ix[2*i]:ix[2*i+1]] }
		n, _ := strconv.Atoi(m(1))
		sec, _ := strconv.ParseInt(m(5), 10, 64)
		usec, _ := strconv.ParseInt(m(6), 10, 64)
		irqs := 0
		for _, f := range strings.Split(m(4), "+") {
			k, _ := strconv.Atoi(f)
			irqs += k
		}
		rs = append(rs, countReport{n: n, rnd: m(2), gen: m(3), t: time.Unix(sec, usec*1000), gedIRQs: irqs, end: ix[1]})
	}
	return rs
}

// clockLag bounds how far the guest's wall clock is behind the host's:
// the smallest, over v's report lines, of the line's arrival at the host
// less the guest time it carries (the line's trip only adds to it).
func clockLag(v *apiVM) time.Duration {
	lag := time.Duration(1<<63 - 1)
	for _, r := range counts(v.out.String()) {
		lag = min(lag, v.out.ArrivedAt(r.end-1).Sub(r.t))
	}
	return lag
}

// lastCount is the last count the console shows, or 0.
func lastCount(out string) int {
	rs := counts(out)
	if len(rs) == 0 {
		return 0
	}
	return rs[len(rs)-1].n
}

// driveCount reads the counter the guest wrote into the drive's first
// sector.
func driveCount(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 512)
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimRight(string(b), "\x00")))
	return n
}

// cowCount is driveCount of a copy-on-write drive: its overlay and base
// merged into a raw file with ember disk commit.
func cowCount(t *testing.T, overlay string) int {
	t.Helper()
	raw := overlay + ".raw"
	os.Remove(raw)
	if out, err := exec.Command(emberBinary(t), "disk", "commit", overlay, raw).CombinedOutput(); err != nil {
		t.Fatalf("ember disk commit %s: %v\n%s", overlay, err, out)
	}
	defer os.Remove(raw)
	return driveCount(t, raw)
}

// setDriveFlag writes "go" into the drive's sector 8 (the guest then fills
// 10 MiB of tmpfs).
func setDriveFlag(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("go"), 8*512); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, dst, src string) {
	t.Helper()
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp %s %s: %v\n%s", src, dst, err, out)
	}
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// bootCounter boots the counting guest with the data drive at drive (and
// vsock at uds, if set; drive is a fresh copy-on-write overlay over base
// if base is set, else a zeroed raw file) and waits for its count to reach 6, so that the
// report line of count 5 is whole (a slow host was seen to be snapshotted
// with count 5 on the drive and its line still half printed).
func bootCounter(t *testing.T, drive, base, uds string, trackDirty bool) *apiVM {
	t.Helper()
	kernel, initrd := guestFile(t, "minimal-bzImage"), guestFile(t, "initramfs.cpio.gz")
	args := cmdline(`ember_mode=cmd ember_cmd="` + counterScript + `"`)
	return bootAPI(t, nil, "ember-guest: count=6 ", func(ctx context.Context, c *client.Client) error {
		// A fresh drive for each attempt.
		if base != "" {
			os.Remove(drive)
			if out, err := exec.Command(emberBinary(t), "disk", "create", "--base", base, drive).CombinedOutput(); err != nil {
				return fmt.Errorf("ember disk create: %v: %s", err, out)
			}
		} else if err := os.WriteFile(drive, make([]byte, 4<<20), 0o644); err != nil {
			return err
		}
		steps := []func() error{
			func() error {
				return c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: ptr(2), MemSizeMiB: ptr(256), TrackDirtyPages: &trackDirty})
			},
			func() error {
				return c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel, InitrdPath: &initrd, BootArgs: &args})
			},
			func() error {
				return c.PutDrive(ctx, api.Drive{DriveID: "data", PathOnHost: drive, EmberBasePath: base})
			},
		}
		if uds != "" {
			steps = append(steps, func() error { return c.PutVsock(ctx, api.Vsock{GuestCID: 3, UDSPath: uds}) })
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return err
			}
		}
		return nil
	})
}

// pauseSnapshot pauses v and takes a snapshot of type typ.
func pauseSnapshot(t *testing.T, v *apiVM, snap, mem, typ string) {
	t.Helper()
	ctx, cancel := apiCtx()
	defer cancel()
	if err := v.c.Pause(ctx); err != nil {
		t.Fatalf("pause: %v\n%s", err, v.err)
	}
	t0 := time.Now()
	if err := v.c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem, SnapshotType: typ}); err != nil {
		t.Fatalf("%s snapshot: %v\n%s", typ, err, v.err)
	}
	t.Logf("%s snapshot took %v", typ, time.Since(t0))
}

// killVM ends an ember process at once (a snapshot's source is not shut
// down cleanly, as a user killing a paused VM would).
func killVM(v *apiVM) {
	v.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-v.exited:
	case <-time.After(unkillableGrace):
		labFault(v.t, "ember could not be killed (stuck in the lab's KVM)\nstdout:\n"+tailString(v.out.String())+"\nstderr:\n"+v.err.String())
	}
}

// restore loads a snapshot into a fresh ember process with clock_realtime
// and resume_vm, and waits until the guest has counted past after (the
// count it reached when snapshotted) by 4. The drive is prepare()d before
// each attempt; a lab fault (load error, hang) is retried.
func restore(t *testing.T, name string, p api.SnapshotLoadParams, after int, prepare func()) *apiVM {
	t.Helper()
	p.ResumeVM, p.ClockRealtime = true, true
	// count after+4 shows that after+3's line is whole.
	want := fmt.Sprintf("ember-guest: count=%d ", after+4)
	for attempt := 1; ; attempt++ {
		prepare()
		v := startAPI(t, nil)
		ctx, cancel := apiCtx()
		t0 := time.Now()
		err := v.c.LoadSnapshot(ctx, p)
		cancel()
		if err == nil {
			t.Logf("%s: load took %v", name, time.Since(t0))
			if v.waitFor(want, bootTimeout) {
				return v
			}
			err = fmt.Errorf("the restored guest did not get to %q", want)
		}
		v.kill()
		if attempt == bootAttempts {
			t.Fatalf("%s: %v, %d times\nstdout:\n%s\nstderr:\n%s", name, err, attempt, tailString(v.out.String()), v.err)
		}
		t.Logf("%s: %v (a lab fault?); trying again. stdout:\n%s\nstderr:\n%s", name, err, tailString(v.out.String()), v.err)
	}
}

// TestSnapshotClones: a paused guest's Full snapshot is restored three
// times, each clone in a fresh ember with its own vsock socket
// (vsock_override) and its own copy of the drive as it was at snapshot
// time. Each clone's counter carries on from the snapshot's (on the
// console and on its drive), the clones read different random bytes and
// see different VM generation IDs, and, loaded with clock_realtime, their
// wall clock is the host's.
//
// The drive's path is part of the snapshot (Firecracker's load API has no
// drive override), so the clones run one after another from the same
// files, each with a fresh copy of the snapshot-time drive put at that
// path before its load.
func TestSnapshotClones(t *testing.T) {
	dir := scratchDir(t)
	drive, uds := filepath.Join(dir, "data.cow"), filepath.Join(dir, "vsock.sock")
	base := filepath.Join(dir, "data.base")
	if err := os.WriteFile(base, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	a := bootCounter(t, drive, base, uds, false)
	boot := a.out.String()
	for _, want := range []string{"vmgenid-driver=1", "ged=1"} {
		if !consoleHas(boot, want) {
			t.Errorf("the guest reports no %q (VMGenID device and GED bound by Linux's drivers)", want)
		}
	}
	if m := regexp.MustCompile(`ember-guest: vmgenid-driver=.*`).FindString(boot); m != "" {
		t.Logf("guest: %s", m)
	}
	pauseSnapshot(t, a, snap, mem, "Full")
	created := time.Now()
	killVM(a)
	at := lastCount(a.out.String())
	atGen, atIRQs := "", 0
	if rs := counts(a.out.String()); len(rs) > 0 {
		atGen, atIRQs = rs[len(rs)-1].gen, rs[len(rs)-1].gedIRQs
	}
	t.Logf("source VM: guest wall clock %v behind the host's (at most), before the snapshot", clockLag(a).Round(time.Millisecond))
	snapDrive := fileSHA(t, drive)
	t.Logf("snapshot at count %d (drive %d), VMGenID %s", at, cowCount(t, drive), atGen)
	if at < 5 {
		t.Fatalf("snapshot at count %d, want at least 5\n%s", at, tailString(a.out.String()))
	}
	if out, err := exec.Command(emberBinary(t), "snapshot", "describe", snap).CombinedOutput(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(strings.ToLower(l), "clock") {
				t.Logf("snapshot describe: %s", l)
			}
		}
	}
	// Let wall time pass: clock_realtime must make it up.
	time.Sleep(time.Until(created.Add(5 * time.Second)))

	type clone struct {
		rnd map[int]string
		gen string
	}
	var clones []clone
	for i := range 3 {
		name := fmt.Sprintf("clone %d", i)
		cuds := filepath.Join(dir, fmt.Sprintf("vsock-%d.sock", i))
		// Each clone gets a new empty overlay over the snapshot's, made by
		// the load in constant time (no copy of the drive).
		cdrive := filepath.Join(dir, fmt.Sprintf("clone-%d.cow", i))
		v := restore(t, name, api.SnapshotLoadParams{SnapshotPath: snap, MemFilePath: &mem,
			VsockOverride:       &api.VsockOverride{UDSPath: cuds},
			EmberDriveOverrides: []api.DriveOverride{{DriveID: "data", PathOnHost: cdrive}}}, at, func() { os.Remove(cdrive) })
		if _, err := os.Stat(cuds); err != nil {
			t.Errorf("%s: vsock_override socket: %v", name, err)
		}
		// Clock: the guest's wall clock is the host's. Each report line
		// ends with the guest's time; the host notes when the line
		// arrived. arrival - guest time is the guest clock's lag plus the
		// line's trip (>= 0), so the smallest over the clone's lines bounds
		// the lag from above, and no guest time may be ahead of arrival.
		rs := counts(v.out.String())
		lag := clockLag(v)
		if lag < -time.Second || lag > time.Second {
			t.Errorf("%s: guest wall clock %v behind the host's after a clock_realtime load, want within 1s", name, lag)
		} else {
			t.Logf("%s: guest wall clock %v behind the host's (at most; over %d reports)", name, lag.Round(time.Millisecond), len(rs))
		}
		killVM(v)
		out := v.out.String()
		rs = counts(out)
		c := clone{rnd: map[int]string{}}
		for _, r := range rs {
			c.rnd[r.n] = r.rnd
			c.gen = r.gen
		}
		if first := rs[0].n; first < at {
			t.Errorf("%s: counter restarted at %d, want it to carry on from %d", name, first, at)
		}
		if n := cowCount(t, cdrive); n <= at || n < rs[len(rs)-1].n {
			t.Errorf("%s: its drive holds count %d, want more than the snapshot's %d and at least its last line's %d", name, n, at, rs[len(rs)-1].n)
		}
		t.Logf("%s: counts %d..%d, VMGenID %s", name, rs[0].n, rs[len(rs)-1].n, c.gen)
		if c.gen == atGen {
			t.Errorf("%s: the guest sees the snapshot's VMGenID %s", name, c.gen)
		}
		if got := rs[len(rs)-1].gedIRQs; got != atIRQs+1 {
			t.Errorf("%s: the GED has had %d interrupts, want the snapshot's %d + 1 (the VMGenID notification)", name, got, atIRQs)
		}
		clones = append(clones, c)
	}
	if fileSHA(t, drive) != snapDrive {
		t.Error("the snapshot's overlay changed while its clones ran")
	}
	// Random bytes a few iterations after the restore (the VMGenID
	// notification reseeds the guest's RNG as it runs). In the lab the
	// clones' bytes differ even with the ID and notification disabled
	// (checked by hand), so the VMGenID evidence is the ID the guest reads
	// and the GED's interrupt count above; this stays as a check of the
	// clones' divergence.
	n := at + 3
	seen := map[string]int{}
	for i, c := range clones {
		r, ok := c.rnd[n]
		if !ok {
			t.Errorf("clone %d printed no count=%d", i, n)
			continue
		}
		if j, dup := seen[r]; dup {
			t.Errorf("clones %d and %d read the same /dev/urandom bytes %s at count %d", j, i, r, n)
		}
		seen[r] = i
		if clones[i].gen != "" {
			for j := range i {
				if clones[j].gen == c.gen {
					t.Errorf("clones %d and %d see the same VMGenID %s", j, i, c.gen)
				}
			}
		}
	}
}

// TestSnapshotDiff: after a Full snapshot the guest resumes and writes
// 10 MiB into tmpfs; a Diff snapshot then holds about that much (at most
// 15 MiB on disk); `ember snapshot apply-diff` onto a copy of the Full
// memory file gives exactly the memory of a Full snapshot taken at the
// same point (the VM still paused), and that merged file restores a guest
// that counts on.
func TestSnapshotDiff(t *testing.T) {
	dir := scratchDir(t)
	drive := filepath.Join(dir, "data.img")
	a := bootCounter(t, drive, "", "", true)
	full, fullMem := filepath.Join(dir, "full.snap"), filepath.Join(dir, "full.mem")
	pauseSnapshot(t, a, full, fullMem, "Full")
	ctx, cancel := apiCtx()
	err := a.c.Resume(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	setDriveFlag(t, drive)
	if !a.waitFor("ember-guest: wrote10", transferTimeout) {
		t.Fatalf("the guest did not write its 10 MiB\n%s", tailString(a.out.String()))
	}
	diff, diffMem := filepath.Join(dir, "diff.snap"), filepath.Join(dir, "diff.mem")
	pauseSnapshot(t, a, diff, diffMem, "Diff")
	at := lastCount(a.out.String())
	full2, full2Mem := filepath.Join(dir, "full2.snap"), filepath.Join(dir, "full2.mem")
	ctx, cancel = apiCtx()
	err = a.c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: full2, MemFilePath: full2Mem, SnapshotType: "Full"})
	cancel()
	if err != nil {
		t.Fatalf("Full snapshot after the Diff: %v", err)
	}
	killVM(a)
	saved := filepath.Join(dir, "data.snapshot.img")
	copyFile(t, saved, drive)

	var st syscall.Stat_t
	if err := syscall.Stat(diffMem, &st); err != nil {
		t.Fatal(err)
	}
	onDisk := st.Blocks * 512
	t.Logf("Diff memory file: %d bytes on disk (apparent %d)", onDisk, st.Size)
	if onDisk > 15<<20 {
		t.Errorf("Diff memory file takes %d bytes on disk, want at most 15 MiB", onDisk)
	}
	if onDisk < 10<<20 {
		t.Errorf("Diff memory file takes %d bytes on disk, less than the 10 MiB the guest wrote", onDisk)
	}

	merged := filepath.Join(dir, "merged.mem")
	copyFile(t, merged, fullMem)
	if out, err := exec.Command(emberBinary(t), "snapshot", "apply-diff", merged, diffMem).CombinedOutput(); err != nil {
		t.Fatalf("ember snapshot apply-diff: %v\n%s", err, out)
	}
	if m, f := fileSHA(t, merged), fileSHA(t, full2Mem); m != f {
		t.Errorf("Full + Diff memory sha256 %s, the Full snapshot at the same point %s", m, f)
	}

	v := restore(t, "merged", api.SnapshotLoadParams{SnapshotPath: diff, MemFilePath: &merged}, at,
		func() { copyFile(t, drive, saved) })
	if first := counts(v.out.String())[0].n; first < at {
		t.Errorf("guest restored from Full + Diff counts from %d, want it to carry on from %d", first, at)
	}
	killVM(v)
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/disk"
	"github.com/embervm/ember/image/boot"
)

// Settings of the image benchmark (ImageImport, COWRatios, LabImageBoot).
const (
	// importRef is the name each timed import gives the Debian image in
	// its throw-away home.
	importRef = "bench/debian:12"

	// ImageMarker is the line the workload of both image-benchmark boots
	// prints. imageWorkload prints it with printf from a format, so the
	// marker itself is in no command line a console could echo.
	ImageMarker = "ember-bench: workload-ran"
	// imageWorkload is that workload, run by /bin/sh -c in both boots. It
	// has no '.' and no '=': the flat boot passes it to init on the
	// kernel command line, where Linux would take a word with '=' for an
	// environment variable and one with '.' for a module parameter
	// (init/main.c, unknown_bootoption).
	imageWorkload = `printf 'ember-bench: %s\n' workload-ran`
	// imageMemMiB is both boots' guest memory (TestRunDebianImage's).
	imageMemMiB = 256
	// flatCmdline is added to boot.Cmdline for the flat boot: the kernel
	// mounts the ext4 drive (its only drive, /dev/vda) as the root,
	// writable, and runs /bin/sh -c imageWorkload as init.
	flatCmdline = ` root=/dev/vda rw rootfstype=ext4 init=/bin/sh -c "` + imageWorkload + `"`

	// Lab boots that hang (a lab fault, see labBootTimeout) are retried:
	// a boot has imageBootTimeout to print the marker and end, up to
	// imageBootAttempts times.
	imageBootTimeout  = 3 * time.Minute
	imageBootAttempts = 3

	// cowDiskSize is the size of the drives the COW ratios use: large
	// enough to spread requests, small enough to stay in the page cache.
	cowDiskSize = 64 << 20
	// cowCluster is the unit of the 4 KiB requests.
	cowCluster = 4096
	// cowLarge is the size of the sequential requests.
	cowLarge = 1 << 20
	// cowSmallRequests is how many 4 KiB requests make one sample (reads
	// and writes; 8 MiB, an eighth of the drive).
	cowSmallRequests = 2048
	// cowSeqPasses is how many times a sequential read sample reads the
	// whole drive.
	cowSeqPasses = 2
	// cowStrideClusters spreads successive 4 KiB requests over the drive:
	// a prime, so that its multiples modulo the (power of two) cluster
	// count are all different (disk/bench_test.go's benchStride).
	cowStrideClusters = 7919
)

// ImageImport imports the root filesystem tarball runs times with
// `ember image import --rootfs`, each into a fresh temporary Ember home
// that is removed afterwards, and returns the median wall time in seconds.
func ImageImport(ctx context.Context, ember, tarball string, runs int, progress io.Writer) (float64, error) {
	if _, err := os.Stat(tarball); err != nil {
		return 0, fmt.Errorf("root filesystem tarball (make guest makes it): %w", err)
	}
	var secs []float64
	for i := range runs {
		s, err := importOnce(ctx, ember, tarball)
		if err != nil {
			return 0, err
		}
		secs = append(secs, s)
		fmt.Fprintf(progress, "import %d: %.2f s\n", i+1, s)
	}
	return Median(secs), nil
}

func importOnce(ctx context.Context, ember, tarball string) (float64, error) {
	home, err := os.MkdirTemp("", "ember-bench-import-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(home)
	argv := []string{ember, "image", "import", "--rootfs", "--home", home, tarball, importRef}
	s, _, err := RunToExit(ctx, argv, 0)
	if err != nil {
		return 0, fmt.Errorf("import: %w", err)
	}
	return s.Wall.Seconds(), nil
}

// COWResult holds the copy-on-write ratios: the median over rounds of a
// COW overlay's throughput over a plain raw file's for the same requests
// (above 1: the overlay is faster).
type COWResult struct {
	Read4K, Read1M   float64 // 4 KiB random reads, 1 MiB sequential reads
	Write4K, Write1M float64 // 4 KiB random writes, 1 MiB sequential writes
	Rounds           int
}

// ReadRatio is the worse of the two read patterns.
func (r COWResult) ReadRatio() float64 { return min(r.Read4K, r.Read1M) }

// WriteRatio is the worse of the two write patterns.
func (r COWResult) WriteRatio() float64 { return min(r.Write4K, r.Write1M) }

// Lines prints the headline ratios, then each pattern's.
func (r COWResult) Lines(w io.Writer) {
	LineNote(w, "cow_read_ratio", r.ReadRatio(), "ratio", "the worse of 4 KiB random and 1 MiB sequential")
	LineNote(w, "cow_write_ratio", r.WriteRatio(), "ratio", "the worse of 4 KiB random and 1 MiB sequential")
	Line(w, "cow_read_4k_random_ratio", r.Read4K, "ratio")
	Line(w, "cow_read_1m_seq_ratio", r.Read1M, "ratio")
	Line(w, "cow_write_4k_random_ratio", r.Write4K, "ratio")
	Line(w, "cow_write_1m_seq_ratio", r.Write1M, "ratio")
}

// throughputRatio is the COW drive's throughput over the raw drive's for
// the same work: raw's time over COW's.
func throughputRatio(raw, cow time.Duration) float64 {
	if cow <= 0 {
		return 0
	}
	return float64(raw) / float64(cow)
}

// COWRatios measures Ember's copy-on-write drive against a plain raw file
// through the stores the VMM's virtio-blk device uses (disk.Open), in dir.
// It follows disk/bench_test.go's BenchmarkCOWRatios (which cannot be
// imported: it is test code) in comparing like with like, with two
// patterns per direction:
//
//   - reads: the overlay holds half the drive, written in 1 MiB extents
//     (every other MiB), the rest comes from its base; the raw file is a
//     copy of the base given the same writes (so both were written alike,
//     which the page cache rewards alike). 4 KiB random reads (2048 per
//     sample, spread over the whole drive) and 1 MiB sequential reads
//     (the whole drive, twice).
//   - writes: a fresh overlay and a fresh sparse raw file of the same
//     size per sample, so that every write fills a hole in both (the
//     overlay allocates a cluster, the raw file a block): 4 KiB random
//     writes (2048 distinct clusters) and 1 MiB sequential writes (the
//     whole drive). FLUSH is not timed, as a guest's writes mostly are
//     not followed by one; both files are in the page cache.
//
// Raw and COW samples alternate (which goes first alternates too), and
// each ratio is the median of rounds per-sample ratios.
func COWRatios(dir string, rounds int) (COWResult, error) {
	r := COWResult{Rounds: rounds}
	base := filepath.Join(dir, "base.img")
	data := make([]byte, cowDiskSize)
	for i := range data {
		data[i] = byte(i*7 + i>>12) // not zeros, not one page repeated
	}
	if err := writeSynced(base, data); err != nil {
		return r, err
	}
	// Reads: the copy and the overlay get the same writes.
	cp := filepath.Join(dir, "copy.img")
	if err := writeSynced(cp, data); err != nil {
		return r, err
	}
	raw, err := disk.Open(disk.Options{Path: cp})
	if err != nil {
		return r, err
	}
	defer raw.Close()
	cow, err := newCOW(filepath.Join(dir, "read.cow"), base)
	if err != nil {
		return r, err
	}
	defer cow.Close()
	extent := make([]byte, cowLarge)
	for i := range extent {
		extent[i] = 0xa5
	}
	for off := int64(0); off < cowDiskSize; off += 2 * cowLarge {
		for _, s := range []disk.Store{raw, cow} {
			if err := s.WriteVec([][]byte{extent}, off); err != nil {
				return r, err
			}
		}
	}
	for _, s := range []disk.Store{raw, cow} {
		if err := s.Flush(); err != nil {
			return r, err
		}
	}
	var r4, r1, w4, w1 []float64
	for k := range rounds {
		rt, ct, err := alternate(k, func() (time.Duration, error) { return smallRequests(raw, false) },
			func() (time.Duration, error) { return smallRequests(cow, false) })
		if err != nil {
			return r, err
		}
		r4 = append(r4, throughputRatio(rt, ct))
		rt, ct, err = alternate(k, func() (time.Duration, error) { return seqRequests(raw, false, cowSeqPasses) },
			func() (time.Duration, error) { return seqRequests(cow, false, cowSeqPasses) })
		if err != nil {
			return r, err
		}
		r1 = append(r1, throughputRatio(rt, ct))
		rt, ct, err = alternate(k, func() (time.Duration, error) { return freshRaw(dir, false) },
			func() (time.Duration, error) { return freshCOW(dir, base, false) })
		if err != nil {
			return r, err
		}
		w4 = append(w4, throughputRatio(rt, ct))
		rt, ct, err = alternate(k, func() (time.Duration, error) { return freshRaw(dir, true) },
			func() (time.Duration, error) { return freshCOW(dir, base, true) })
		if err != nil {
			return r, err
		}
		w1 = append(w1, throughputRatio(rt, ct))
	}
	r.Read4K, r.Read1M, r.Write4K, r.Write1M = Median(r4), Median(r1), Median(w4), Median(w1)
	return r, nil
}

// alternate runs raw and cow, raw first in even rounds and cow first in
// odd ones.
func alternate(round int, raw, cow func() (time.Duration, error)) (rt, ct time.Duration, err error) {
	if round%2 == 0 {
		if rt, err = raw(); err == nil {
			ct, err = cow()
		}
	} else {
		if ct, err = cow(); err == nil {
			rt, err = raw()
		}
	}
	return rt, ct, err
}

// smallRequests times cowSmallRequests 4 KiB requests on s at distinct
// clusters spread over the drive.
func smallRequests(s disk.Store, write bool) (time.Duration, error) {
	buf := make([]byte, cowCluster)
	for i := range buf {
		buf[i] = 0x5a
	}
	const clusters = cowDiskSize / cowCluster
	t0 := time.Now()
	for q := range int64(cowSmallRequests) {
		off := (q * cowStrideClusters % clusters) * cowCluster
		var err error
		if write {
			err = s.WriteVec([][]byte{buf}, off)
		} else {
			err = s.ReadVec([][]byte{buf}, off)
		}
		if err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

// seqRequests times 1 MiB requests through the whole drive, passes times.
func seqRequests(s disk.Store, write bool, passes int) (time.Duration, error) {
	buf := make([]byte, cowLarge)
	for i := range buf {
		buf[i] = 0x3c
	}
	t0 := time.Now()
	for range passes {
		for off := int64(0); off < cowDiskSize; off += cowLarge {
			var err error
			if write {
				err = s.WriteVec([][]byte{buf}, off)
			} else {
				err = s.ReadVec([][]byte{buf}, off)
			}
			if err != nil {
				return 0, err
			}
		}
	}
	return time.Since(t0), nil
}

// freshRaw times writes (seq: 1 MiB sequential, else 4 KiB random) to a
// new sparse raw file of the drive's size, then removes it.
func freshRaw(dir string, seq bool) (time.Duration, error) {
	p := filepath.Join(dir, "write.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return 0, err
	}
	defer os.Remove(p)
	if err := os.Truncate(p, cowDiskSize); err != nil {
		return 0, err
	}
	s, err := disk.Open(disk.Options{Path: p})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return writes(s, seq)
}

// freshCOW times the same writes to a new overlay over base, then removes
// it.
func freshCOW(dir, base string, seq bool) (time.Duration, error) {
	p := filepath.Join(dir, "write.cow")
	s, err := newCOW(p, base)
	if err != nil {
		return 0, err
	}
	defer os.Remove(p)
	defer s.Close()
	return writes(s, seq)
}

func writes(s disk.Store, seq bool) (time.Duration, error) {
	if seq {
		return seqRequests(s, true, 1)
	}
	return smallRequests(s, true)
}

// newCOW creates an overlay at p over base and opens it as the VMM does.
func newCOW(p, base string) (disk.Store, error) {
	os.Remove(p)
	if err := disk.CreateOverlay(p, base, disk.CreateOptions{}); err != nil {
		return nil, err
	}
	return disk.Open(disk.Options{Path: p, BasePath: base})
}

// writeSynced writes data to a new file at p and fsyncs it, so that no
// writeback runs while measuring.
func writeSynced(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// FlatExt4 makes out, an ext4 filesystem image holding the files of the
// root filesystem tarball, unless out is already newer than the tarball.
// The tarball is unpacked (as root, keeping owners, modes, device nodes
// and extended attributes) into a temporary directory beside out, which
// mkfs.ext4 -d copies into a new filesystem (e2fsprogs 1.47.0, Debian
// 12's, cannot read a tarball itself); the image is then renamed into
// place. Its size is the unpacked files' plus a quarter and 64 MiB, so
// the workload has room to write.
func FlatExt4(ctx context.Context, tarball, out string) error {
	ts, err := os.Stat(tarball)
	if err != nil {
		return fmt.Errorf("root filesystem tarball (make guest makes it): %w", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("making the flat ext4 drive needs root (the tarball's files keep their owners and device nodes)")
	}
	if st, err := os.Stat(out); err == nil && st.ModTime().After(ts.ModTime()) {
		return nil
	}
	tree, err := os.MkdirTemp(filepath.Dir(out), ".flat-tree-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	if b, err := exec.CommandContext(ctx, "tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*",
		"-f", tarball, "-C", tree).CombinedOutput(); err != nil {
		return fmt.Errorf("unpacking %s: %v: %s", tarball, err, b)
	}
	used, err := treeBytes(tree)
	if err != nil {
		return err
	}
	size := (used+used/4+64<<20)/(1<<20)*(1<<20) + 1<<20
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
	os.Remove(tmp)
	if err := os.WriteFile(tmp, nil, 0o644); err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Truncate(tmp, size); err != nil {
		return err
	}
	// As image/boot's blank drive: inode tables and journal written now,
	// not by the guest.
	if b, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
		"-L", "ember-flat", "-d", tree, tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 -d (package e2fsprogs): %v: %s", err, b)
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// treeBytes is the space the files under dir take, in bytes (blocks, as
// du counts them).
func treeBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
		return nil
	})
	return n, err
}

// ImageBootOptions say what LabImageBoot boots.
type ImageBootOptions struct {
	// Ember is the ember binary (ember-image beside it runs images).
	Ember string
	// Kernel is the guest kernel both boots use.
	Kernel string
	// Home and Ref name the imported image (read-only is enough).
	Home, Ref string
	// Flat is the ext4 image of the same root filesystem.
	Flat string
	// Runs is how many boots of each.
	Runs int
}

// ImageBootResult holds the in-lab boot figures (medians): exec of ember
// until the workload's marker, for the layered image and the flat drive.
type ImageBootResult struct {
	ImageMS, FlatMS float64
	Runs            int
}

// Ratio is the image's median over the flat drive's: below 1 means the
// layered image boots faster.
func (r ImageBootResult) Ratio() float64 {
	if r.FlatMS == 0 {
		return 0
	}
	return r.ImageMS / r.FlatMS
}

// Lines prints the figures as NAME VALUE UNIT.
func (r ImageBootResult) Lines(w io.Writer) {
	Line(w, "boot_image_ms", r.ImageMS, "ms")
	Line(w, "boot_flat_ms", r.FlatMS, "ms")
	Line(w, "boot_image_vs_flat_ratio", r.Ratio(), "ratio")
}

// ImageArgv is the layered boot: `ember run --image` of the image, whose
// workload is /bin/sh -c imageWorkload.
func (o ImageBootOptions) ImageArgv() []string {
	return []string{o.Ember, "run", "--image", o.Ref, "--home", o.Home, "--kernel", o.Kernel,
		"--mem-mib", fmt.Sprint(imageMemMiB), "--", "/bin/sh", "-c", imageWorkload}
}

// FlatArgv is the flat boot: plain `ember run` of the same kernel with
// the flat drive's overlay at cow as the root and /bin/sh -c
// imageWorkload as init.
func (o ImageBootOptions) FlatArgv(cow string) []string {
	return []string{o.Ember, "run", "--kernel", o.Kernel, "--mem-mib", fmt.Sprint(imageMemMiB),
		"--cmdline", boot.Cmdline + flatCmdline, "--drive", "path=" + cow + ",base=" + o.Flat + ",id=root"}
}

// LabImageBoot boots the layered image and the same files as one flat
// ext4 drive, alternately, o.Runs times each, and measures exec of ember
// until the workload prints ImageMarker. It runs inside the lab, where KVM
// is real.
//
// Both boots have the same kernel, memory, vCPUs and workload, and each
// a writable root whose per-VM state is a fresh copy-on-write overlay:
//
//   - image: `ember run --image REF -- /bin/sh -c WORKLOAD`, as a user
//     runs it: ember-image prepares the VM (the initrd with ember-init
//     and its config, a new overlay on the blank ext4 drive) and starts
//     ember; ember-init mounts the image's EROFS layers and the writable
//     drive as an overlayfs root, sets up /proc, /sys, /dev, and runs
//     the workload. Its time includes all of that.
//   - flat: `ember run` with no initrd and one drive, a new overlay on
//     the flat ext4 image (made before the timing starts, as a
//     ready-made per-VM copy would be); the kernel mounts it as the root
//     and runs /bin/sh -c WORKLOAD as init.
//
// Both are timed to the marker only. The image boot must then end with
// status 0 (the workload's, which ember-init reports); the flat one is
// killed at the marker (its init's exit is a kernel panic, and only the
// reset panic=1 asks for a second later would end it).
func LabImageBoot(ctx context.Context, o ImageBootOptions, progress io.Writer) (ImageBootResult, error) {
	r := ImageBootResult{Runs: o.Runs}
	for _, p := range []string{o.Kernel, o.Flat, o.Home} {
		if _, err := os.Stat(p); err != nil {
			return r, err
		}
	}
	// The lab's own /tmp is a tmpfs; the host's root is shared read-only.
	dir, err := os.MkdirTemp("", "ember-bench-image-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	cow := filepath.Join(dir, "flat.cow")
	var im, fl []float64
	for i := range o.Runs {
		d, err := imageBootOnce(ctx, "image", progress, func() (time.Duration, error) {
			return runToMarkerAndExit(ctx, o.ImageArgv(), ImageMarker, imageBootTimeout, true)
		})
		if err != nil {
			return r, err
		}
		im = append(im, ms(d))
		d, err = imageBootOnce(ctx, "flat", progress, func() (time.Duration, error) {
			os.Remove(cow)
			if err := disk.CreateOverlay(cow, o.Flat, disk.CreateOptions{}); err != nil {
				return 0, err
			}
			defer os.Remove(cow)
			return runToMarkerAndExit(ctx, o.FlatArgv(cow), ImageMarker, imageBootTimeout, false)
		})
		if err != nil {
			return r, err
		}
		fl = append(fl, ms(d))
		fmt.Fprintf(progress, "lab run %d: image %.0f ms, flat %.0f ms\n", i+1, im[i], fl[i])
	}
	r.ImageMS, r.FlatMS = Median(im), Median(fl)
	return r, nil
}

// imageBootOnce runs f up to imageBootAttempts times, logging failures.
func imageBootOnce(ctx context.Context, name string, progress io.Writer, f func() (time.Duration, error)) (time.Duration, error) {
	for attempt := 1; ; attempt++ {
		d, err := f()
		if err == nil {
			return d, nil
		}
		if attempt == imageBootAttempts || ctx.Err() != nil {
			return 0, fmt.Errorf("%s boot: %w (%d attempts)", name, err, attempt)
		}
		fmt.Fprintf(progress, "%s boot failed, a lab fault? retrying: %v\n", name, err)
	}
}

// runToMarkerAndExit starts argv in its own process group and returns the
// time from exec until marker appears in its output. With wantExit it
// then waits for the process to end with status 0 (within timeout in
// all); without, it stops there. Whatever is left of the group at the end
// (all of it without wantExit; ember under ember-image after a timeout)
// is killed: a timed-out `ember run --image` must not leave its VM
// running.
func runToMarkerAndExit(ctx context.Context, argv []string, marker string, timeout time.Duration, wantExit bool) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t0 := time.Now()
	w, err := startWatchedCmd(cmd, marker)
	if err != nil {
		return 0, err
	}
	defer func() {
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		w.kill()
	}()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var at time.Time
	select {
	case t, ok := <-w.seen:
		if !ok {
			w.waited <- <-w.waited // for w.kill
			return 0, fmt.Errorf("%s ended without printing %q\n%s", argv[0], marker, w.output())
		}
		at = t
	case <-deadline.C:
		return 0, fmt.Errorf("no %q within %v\n%s", marker, timeout, w.output())
	}
	if !wantExit {
		return at.Sub(t0), nil
	}
	select {
	case err := <-w.waited:
		w.waited <- err // for w.kill
		if err != nil {
			return 0, fmt.Errorf("%s after the marker: %v\n%s", argv[0], err, w.output())
		}
	case <-deadline.C:
		return 0, fmt.Errorf("%s did not end within %v of its start\n%s", argv[0], timeout, w.output())
	}
	return at.Sub(t0), nil
}

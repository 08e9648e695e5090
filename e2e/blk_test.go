package e2e

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// rootImage makes an ext4 image holding the test initramfs's files (busybox
// and the test init), with mkfs.ext4 -d, and returns its path.
func rootImage(t *testing.T) string {
	t.Helper()
	dir := scratchDir(t)
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, "gzip -dc "+guestFile(t, "initramfs.cpio.gz")+" | (cd "+root+" && cpio -id --quiet)")
	img := filepath.Join(dir, "root.ext4")
	sh(t, "mkfs.ext4 -q -F -L ember-root -d "+root+" "+img+" 64M")
	return img
}

func sh(t *testing.T, script string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestRootOnVirtioBlk boots the minimal kernel with its root on a
// virtio-blk ext4 image; the guest writes a file, syncs and reboots, and
// the file is in the image afterwards.
func TestRootOnVirtioBlk(t *testing.T) {
	img := rootImage(t)
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--drive", "path="+img+",root",
		"--cmdline", cmdline(`init=/init ember_mode=cmd ember_cmd="cat /proc/cmdline; echo written-by-the-guest > /guest-file; sync; mount | grep ' / '"`))
	if !strings.Contains(r.stdout, "/dev/root on / type ext4 (rw") || !strings.Contains(r.stdout, "root=/dev/vda rw") {
		t.Fatalf("root is not /dev/vda, ext4, read-write\n%s", tailString(r.stdout))
	}
	got := sh(t, "debugfs -R 'cat /guest-file' "+img+" 2>/dev/null")
	if got != "written-by-the-guest\n" {
		t.Fatalf("file in the image after reboot: %q", got)
	}
}

// TestReadOnlyDrive: a drive attached read-only is readable and refuses
// writes, and its file is unchanged.
func TestReadOnlyDrive(t *testing.T) {
	dir := scratchDir(t)
	data := filepath.Join(dir, "data.img")
	if err := os.WriteFile(data, bytes.Repeat([]byte("ember-ro-drive\n"), 1<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	before := sha(t, data)
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--initrd", guestFile(t, "initramfs.cpio.gz"),
		"--drive", "path="+data+",ro,id=data",
		"--cmdline", cmdline(`ember_mode=cmd ember_cmd="head -c 15 /dev/vda; cat /sys/block/vda/ro /sys/block/vda/serial; echo; dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync && echo WRITE-OK || echo WRITE-REFUSED"`))
	for _, want := range []string{"ember-ro-drive", "WRITE-REFUSED"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("guest output lacks %q\n%s", want, tailString(r.stdout))
		}
	}
	if !strings.Contains(r.stdout, "\n1\r\ndata") && !strings.Contains(r.stdout, "\n1\ndata") {
		t.Errorf("guest does not see the drive as read-only with serial \"data\"\n%s", tailString(r.stdout))
	}
	if sha(t, data) != before {
		t.Fatal("read-only drive's file changed")
	}
}

// TestHWRNG reads 1 MiB from the guest's /dev/hwrng (virtio-rng): 16384
// requests of the driver's 64-byte buffer, each a doorbell exit and an
// interrupt. rng_core.default_quality=0 keeps the kernel's own hwrng
// reader thread from doubling that traffic: in the lab every nested exit
// is a chance of its emulated-SVM faults (see bootTimeout).
func TestHWRNG(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--initrd", guestFile(t, "initramfs.cpio.gz"), "--rng",
		"--cmdline", cmdline(`rng_core.default_quality=0 ember_mode=cmd ember_cmd="cat /sys/class/misc/hw_random/rng_current; dd if=/dev/hwrng bs=4096 count=256 2>/dev/null | wc -c"`))
	if !strings.Contains(r.stdout, "virtio_rng") || !strings.Contains(r.stdout, "1048576") {
		t.Fatalf("guest did not read 1 MiB from virtio-rng\n%s", tailString(r.stdout))
	}
}

// TestDriveRateLimit reads 40 MiB from a drive limited to 10 MiB/s
// (bucket 1 MiB refilled every 100 ms) and expects 10 MiB/s within 15%,
// timed by the guest's own clock.
func TestDriveRateLimit(t *testing.T) {
	const mib = 40
	data := filepath.Join(scratchDir(t), "data.img")
	if err := os.WriteFile(data, make([]byte, mib<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--initrd", guestFile(t, "initramfs.cpio.gz"),
		"--drive", "path="+data+",ro,rate=bw=1M/100",
		"--cmdline", cmdline(`ember_mode=cmd ember_cmd="a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=64k iflag=direct 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); k=read_seconds; echo ember-guest: $k=$(echo $a $b | awk '{print $2-$1}')"`))
	secs, err := strconv.ParseFloat(field(t, r.stdout, "read_seconds"), 64)
	if err != nil || secs <= 0 {
		t.Fatalf("read_seconds: %v", err)
	}
	rate := mib / secs
	t.Logf("read %d MiB in %.2f s: %.2f MiB/s", mib, secs, rate)
	if rate < 10*0.85 || rate > 10*1.15 {
		t.Fatalf("limited drive read at %.2f MiB/s, want 10 MiB/s ±15%%", rate)
	}
}

// TestCloudKernelFindsDevicesThroughACPI boots Debian's cloud kernel, whose
// virtio drivers are modules loaded by its initramfs, with the devices
// announced in ACPI only.
func TestCloudKernelFindsDevicesThroughACPI(t *testing.T) {
	data := filepath.Join(scratchDir(t), "data.img")
	if err := os.WriteFile(data, bytes.Repeat([]byte("ember-acpi-drive\n"), 1<<12), 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustBoot(t, "--kernel", guestFile(t, "cloud-bzImage"), "--initrd", guestFile(t, "cloud-initramfs.cpio.gz"),
		"--drive", "path="+data+",ro", "--rng", "--no-virtio-cmdline",
		"--cmdline", cmdline(`ember_mode=cmd ember_cmd="cat /proc/cmdline; ls /sys/bus/acpi/devices | grep -c LNRO0005; head -c 16 /dev/vda; echo; cat /sys/class/misc/hw_random/rng_current"`))
	if strings.Contains(r.stdout, "virtio_mmio.device") {
		t.Fatalf("virtio devices were announced on the command line\n%s", tailString(r.stdout))
	}
	for _, want := range []string{"ember-acpi-drive", "virtio_rng"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("guest output lacks %q\n%s", want, tailString(r.stdout))
		}
	}
}

// TestBalloonInflatesAtBoot gives a 256 MiB guest a balloon with a 64 MiB
// target: the guest driver inflates it, and its MemTotal drops by as much.
func TestBalloonInflatesAtBoot(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--initrd", guestFile(t, "initramfs.cpio.gz"),
		"--mem-mib", "256", "--balloon", "64",
		"--cmdline", cmdline(`ember_mode=cmd ember_cmd="sleep 2; k=memtotal_kib; echo ember-guest: $k=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"`))
	total, err := strconv.Atoi(field(t, r.stdout, "memtotal_kib"))
	if err != nil {
		t.Fatal(err)
	}
	// Without a balloon this kernel reports about 245 MiB of 256.
	if total > (256-64+4)*1024 || total < (256-64-32)*1024 {
		t.Fatalf("guest MemTotal %d KiB with a 64 MiB balloon in 256 MiB; want about %d KiB", total, (256-64-11)*1024)
	}
	t.Logf("MemTotal %d KiB", total)
}

package e2e

import (
	"bufio"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const baseCmdline = "console=ttyS0 reboot=k panic=1"

func cmdline(extra string) string { return baseCmdline + " " + extra }

// checkUname asserts the guest printed a Linux uname line.
func checkUname(t *testing.T, r result) {
	t.Helper()
	if !strings.Contains(r.stdout, "Linux ") || !strings.Contains(r.stdout, "x86_64") {
		t.Fatalf("no `uname -a` line in the guest's output\n%s", tailString(r.stdout))
	}
}

func TestBootMinimalVmlinux64BitEntry(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-vmlinux"), "--boot-protocol", "linux64",
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=uname"))
	checkUname(t, r)
}

func TestBootMinimalVmlinuxPVH(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-vmlinux"),
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=uname"))
	checkUname(t, r)
}

func TestBootMinimalBzImage(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"),
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=uname"))
	checkUname(t, r)
}

func TestBootCloudBzImage(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "cloud-bzImage"),
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=uname"))
	checkUname(t, r)
	if !strings.Contains(r.stdout, "cloud-amd64") {
		t.Errorf("uname does not name Debian's cloud kernel\n%s", tailString(r.stdout))
	}
}

func TestBootCloudPVH(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "cloud-vmlinux"), "--boot-protocol", "pvh",
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=uname"))
	checkUname(t, r)
}

func TestVCPUCount(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--vcpus", strconv.Itoa(n),
				"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=uname"))
			if got := field(t, r.stdout, "cpus"); got != strconv.Itoa(n) {
				t.Fatalf("guest sees %s CPUs in /proc/cpuinfo, want %d", got, n)
			}
		})
	}
}

func TestMemorySize(t *testing.T) {
	for _, mib := range []int{128, 4096} {
		t.Run(strconv.Itoa(mib)+"MiB", func(t *testing.T) {
			r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--mem-mib", strconv.Itoa(mib),
				"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=uname"))
			kib, err := strconv.Atoi(field(t, r.stdout, "memtotal_kib"))
			if err != nil {
				t.Fatal(err)
			}
			want := float64(mib) * 1024
			if got := float64(kib); got < want*0.95 || got > want {
				t.Fatalf("guest MemTotal %d KiB, want within 5%% of %d KiB", kib, mib*1024)
			}
			t.Logf("MemTotal %d KiB of %d KiB (%.1f%%)", kib, mib*1024, 100*float64(kib)/want)
		})
	}
}

func TestGuestRebootExitsZero(t *testing.T) {
	r := ember(t, "--kernel", guestFile(t, "minimal-bzImage"),
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=reboot"))
	if r.code != 0 {
		t.Fatalf("guest reboot: exit %d, want 0\n%s\n%s", r.code, tailString(r.stdout), r.stderr)
	}
}

func TestBootTimer(t *testing.T) {
	r := mustBoot(t, "--kernel", guestFile(t, "minimal-bzImage"), "--boot-timer",
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=reboot ember_boottimer=1"))
	if !strings.Contains(r.stderr, "Guest-boot-time") {
		t.Fatalf("no boot-time log line\nstderr:\n%s", r.stderr)
	}
}

// TestInteractiveConsole types a command on Ember's stdin and reads its
// output back from the guest's serial console.
func TestInteractiveConsole(t *testing.T) {
	lab(t)
	cmd := exec.Command(emberBinary(t), "run", "--kernel", guestFile(t, "minimal-bzImage"),
		"--initrd", guestFile(t, "initramfs.cpio.gz"), "--cmdline", cmdline("ember_mode=shell"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(bootTimeout, func() { cmd.Process.Kill() })
	defer timer.Stop()

	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), "\r")
		}
		close(lines)
	}()
	var seen []string
	waitFor := func(want string) {
		t.Helper()
		for l := range lines {
			seen = append(seen, l)
			if strings.Contains(l, want) {
				return
			}
		}
		t.Fatalf("console closed before %q appeared\n%s\nstderr:\n%s", want, strings.Join(seen, "\n"), stderr.String())
	}
	waitFor("ember-guest: shell ready")
	// The shell's answer is computed in the guest, so an echo of the typed
	// line alone cannot satisfy the check.
	io.WriteString(stdin, "echo round-trip-$((6*7))\n")
	waitFor("round-trip-42")
	io.WriteString(stdin, "reboot -f\n")
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ember after guest reboot: %v\nstderr:\n%s", err, stderr.String())
	}
}

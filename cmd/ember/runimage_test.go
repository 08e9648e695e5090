package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
)

// Image flags without --image, and a command without it, are refused
// before anything is made.
func TestRunImageFlagsNeedImage(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--kernel", "k", "--env", "A=1"},
		{"run", "--kernel", "k", "--dry-run"},
		{"run", "--kernel", "k", "--", "echo", "hi"},
	} {
		_, stderr, code, _ := runEmber(t, args...)
		if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
			!(strings.Contains(stderr, "needs --image") || strings.Contains(stderr, "only with --image")) {
			t.Errorf("%v: exit %d, %q", args, code, stderr)
		}
	}
}

// --dry-run prepares the image (no KVM needed) and prints the plain ember
// command; its files are gone afterwards. Bad input is one line and
// leaves nothing.
func TestRunImageDryRun(t *testing.T) {
	k := newImageKit(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	out, code := k.run(t, "run", "--image", "app:1", "--kernel", kernel, "--disk-mib", "64", "--dry-run", "--", "/bin/true", "x")
	if code != 0 || !strings.Contains(out, "--initrd "+k.tmp) || !strings.Contains(out, "--kernel "+kernel) ||
		!strings.Contains(out, ",id=layer0,ro") || !strings.Contains(out, ",id=rw,base=") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	k.leftInTmp(t)
	for _, c := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"--image", "nope:1"}, `image "nope:1"`, exitFailure},
		{[]string{"--image", "app:1", "--env", "NOEQUALS"}, "NOEQUALS", exitUsage},
		{[]string{"--image", "app:1", "--initrd", kernel}, "initrd", exitUsage},
		{[]string{"--image", "app:1", "--drive", "path=" + kernel + ",id=rw"}, `drive "rw"`, exitUsage},
	} {
		args := append([]string{"run", "--kernel", kernel, "--dry-run"}, c.args...)
		out, code := k.run(t, args...)
		if code != c.code || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d (want %d), want one line naming %q:\n%s", c.args, code, c.code, c.want, out)
		}
		k.leftInTmp(t)
	}
	// No kernel at all: --kernel, $EMBER_KERNEL (empty in the kit) and
	// ember-vmlinux beside ember are missing.
	if out, code := k.run(t, "run", "--image", "app:1", "--dry-run"); code != exitUsage || !strings.Contains(out, "no guest kernel") {
		t.Errorf("without a kernel: exit %d:\n%s", code, out)
	}
	k.leftInTmp(t)
}

// ember run --image boots the tiny guest (it resets at once, never reading
// the image's drives) with the image prepared while the kernel loaded,
// under seccomp; the files go at exit, a --disk stays. An image that
// cannot be prepared ends the run with one error, leaving nothing.
func TestRunImage(t *testing.T) {
	testkvm.Need(t)
	k := newImageKit(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	keep := filepath.Join(t.TempDir(), "keep.cow")
	out, code := k.run(t, "run", "--image", "app:1", "--kernel", kernel, "--mem-mib", "64", "--disk", keep, "--disk-mib", "64", "--debug")
	if code != 0 || !strings.Contains(out, "ember image prepared") || !strings.Contains(out, "complete_wait_ms") {
		t.Fatalf("exit %d, want 0 and the image prepared while the kernel loaded\n%s", code, out)
	}
	k.leftInTmp(t)
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("--disk is gone: %v", err)
	}
	out, code = k.run(t, "run", "--image", "nope:1", "--kernel", kernel, "--mem-mib", "64")
	if code != exitFailure || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, `image "nope:1"`) {
		t.Errorf("unknown image: exit %d, want %d and one line:\n%s", code, exitFailure, out)
	}
	k.leftInTmp(t)
}

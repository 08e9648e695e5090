package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
)

// cowScript is the guest's command: it shows the base's marker through the
// overlay, writes 10 MiB of random data at 100 MiB, syncs and says so with
// the data's hash, then waits to be killed.
const cowScript = "head -c 11 /dev/vda; echo; dd if=/dev/urandom of=/tmp/r bs=1M count=10 2>/dev/null; " +
	"dd if=/tmp/r of=/dev/vda bs=1M seek=100 conv=fsync 2>/dev/null; sync; " +
	"echo ember-guest: synced sha=$(sha256sum </tmp/r | cut -c1-64); echo ember-guest: kill-now; sleep 3600"

// TestCOWDrive: a guest writes 10 MiB through a copy-on-write overlay over
// a 1 GiB base; the overlay takes at most 12 MiB on disk; Ember is killed
// with SIGKILL right after the guest's sync returned, and the next boot on
// the same overlay reads the data back; the base is never written.
func TestCOWDrive(t *testing.T) {
	dir := scratchDir(t)
	base, ovl := filepath.Join(dir, "base.img"), filepath.Join(dir, "data.cow")
	sh(t, "truncate -s 1G "+base+" && printf BASE-MARKER | dd of="+base+" conv=notrunc 2>/dev/null")
	// The base is never written: its modification time and allocated
	// blocks stay (hashing 1 GiB under the lab's emulation takes a minute).
	baseStat := statOf(t, base)
	kernel, initrd := guestFile(t, "minimal-bzImage"), guestFile(t, "initramfs.cpio.gz")
	args := cmdline(`ember_mode=cmd ember_cmd="` + cowScript + `"`)

	// Waiting for the line after the sha's: the console is slow in the
	// lab, and the sha's own line may still be coming when its start is.
	v := bootAPI(t, nil, "ember-guest: kill-now", func(ctx context.Context, c *client.Client) error {
		os.Remove(ovl) // a fresh overlay for each attempt
		if out, err := exec.Command(emberBinary(t), "disk", "create", "--base", base, ovl).CombinedOutput(); err != nil {
			t.Fatalf("ember disk create: %v\n%s", err, out)
		}
		for _, step := range []func() error{
			func() error {
				return c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: ptr(1), MemSizeMiB: ptr(256)})
			},
			func() error {
				return c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel, InitrdPath: &initrd, BootArgs: &args})
			},
			func() error {
				return c.PutDrive(ctx, api.Drive{DriveID: "data", PathOnHost: ovl, EmberBasePath: base})
			},
		} {
			if err := step(); err != nil {
				return err
			}
		}
		return nil
	})
	out := v.out.String()
	if !strings.Contains(out, "BASE-MARKER") {
		t.Errorf("the guest did not read the base through the overlay\n%s", tailString(out))
	}
	written := field(t, out, "synced sha")
	killVM(v)
	if v.cmd.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("ember ended by itself: %v", v.cmd.ProcessState)
	}
	onDisk := statOf(t, ovl).Blocks * 512
	t.Logf("overlay: %.2f MiB on disk after the guest wrote 10 MiB on a 1 GiB base", float64(onDisk)/(1<<20))
	if onDisk > 12<<20 {
		t.Errorf("overlay takes %d bytes on disk, want at most 12 MiB", onDisk)
	}

	r := mustBoot(t, "--kernel", kernel, "--initrd", initrd, "--drive", "path="+ovl+",base="+base+",id=data",
		"--cmdline", cmdline(`ember_mode=cmd ember_cmd="echo ember-guest: read sha=$(dd if=/dev/vda bs=1M skip=100 count=10 2>/dev/null | sha256sum | cut -c1-64)"`))
	if got := field(t, r.stdout, "read sha"); got != written {
		t.Errorf("after SIGKILL the overlay reads %s at 100 MiB, the guest had written and synced %s", got, written)
	}
	if after := statOf(t, base); after.Mtim != baseStat.Mtim || after.Ctim != baseStat.Ctim || after.Blocks != baseStat.Blocks {
		t.Error("the base changed")
	}
}

func statOf(t *testing.T, path string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

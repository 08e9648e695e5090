package boot

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/image"
	"github.com/embervm/ember/image/imagetest"
	"github.com/embervm/ember/initrd"
	"github.com/embervm/ember/vmm"
)

func TestCmdlineIsEmbersDefaultQuiet(t *testing.T) {
	if want := vmm.DefaultCmdline + " quiet"; Cmdline != want {
		t.Errorf("Cmdline = %q, want %q", Cmdline, want)
	}
}

// needTools skips without what importing and formatting need, unless CI
// is set (CI has them: make setup installs them, and runs as root).
func needTools(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (layer conversion keeps owners)"
	}
	for _, tool := range []string{"mkfs.erofs", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			why = "needs " + tool
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// TestPrepare: an image of two layers becomes two read-only layer drives
// (lowest first) and a copy-on-write writable drive over a blank ext4
// base shared by every VM of that size, with an initrd that holds the
// init and the config the image and the options make.
func TestPrepare(t *testing.T) {
	needTools(t)
	home := t.TempDir()
	store, err := image.Open(home, nil)
	if err != nil {
		t.Fatal(err)
	}
	img := imagetest.Build(t, v1.Config{
		Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/w", User: "app",
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"},
	}, imagetest.Tar(t, imagetest.Dir("bin"), imagetest.File("bin/sh", "x")),
		imagetest.Tar(t, imagetest.Dir("w"), imagetest.File("w/f", "y")))
	if _, err := store.Import(context.Background(), imagetest.WriteLayout(t, t.TempDir(), img, ""), image.ImportOptions{Name: "test:1"}); err != nil {
		t.Fatal(err)
	}
	initBin := filepath.Join(t.TempDir(), "ember-init")
	if err := os.WriteFile(initBin, []byte("\x7fELF not really"), 0o755); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	vm, err := Prepare(context.Background(), store, Options{Ref: "test:1", Dir: dir, Init: initBin, DiskMiB: 64,
		Env: []string{"A=2", "B=3"}, Hostname: "box"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Drives) != 3 || !vm.Drives[0].ReadOnly || vm.Drives[0].ID != "layer0" || vm.Drives[1].ID != "layer1" ||
		vm.Drives[2].ID != WritableID || vm.Drives[2].ReadOnly || vm.Drives[2].Base == "" {
		t.Fatalf("drives %+v", vm.Drives)
	}
	c := vm.Config
	if !slices.Equal(c.Args, []string{"/bin/sh", "-c", "echo hi"}) || c.User != "app" || c.WorkingDir != "/w" ||
		!slices.Equal(c.Env, []string{"PATH=/bin", "A=2", "B=3"}) || c.Hostname != "box" || len(c.Layers) != 2 {
		t.Errorf("config %+v", c)
	}
	f, err := os.Open(vm.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	files, err := initrd.List(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var got *initconfig.Config
	for _, fl := range files {
		if fl.Name == "ember/config.json" {
			if got, err = initconfig.Parse(fl.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got == nil || !slices.Equal(got.Args, c.Args) {
		t.Fatalf("initrd config %+v (files %d)", got, len(files))
	}

	// The blank base holds the overlay's directories, owned by root, so
	// that no guest makes them at boot.
	out, err := exec.Command("debugfs", "-R", "ls -l /", vm.Drives[2].Base).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	for _, d := range []string{overlayUpper, overlayWork} {
		if !regexp.MustCompile(`40755 \(2\)\s+0\s+0\s+.* ` + d + `\n`).Match(out) {
			t.Errorf("blank base: no root-owned directory %s in\n%s", d, out)
		}
	}

	// A second VM: its own overlay, the same blank base; args replace Cmd.
	dir2 := t.TempDir()
	disk := filepath.Join(dir2, "kept.cow")
	vm2, err := Prepare(context.Background(), store, Options{Ref: "test:1", Dir: dir2, Init: initBin, DiskMiB: 64,
		Disk: disk, Args: []string{"exit 3"}, User: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if vm2.Drives[2].Base != vm.Drives[2].Base || vm2.Drives[2].Path != disk {
		t.Errorf("second VM's writable drive %+v, first %+v", vm2.Drives[2], vm.Drives[2])
	}
	if !slices.Equal(vm2.Config.Args, []string{"/bin/sh", "-c", "exit 3"}) || vm2.Config.User != "0" {
		t.Errorf("second config %+v", vm2.Config)
	}
	// Reusing the kept disk keeps it.
	vm3, err := Prepare(context.Background(), store, Options{Ref: "test:1", Dir: t.TempDir(), Init: initBin, Disk: disk})
	if err != nil || vm3.Drives[2].Path != disk || vm3.Drives[2].Base != vm.Drives[2].Base {
		t.Fatalf("reused disk: %+v, %v", vm3, err)
	}
	if _, err := Prepare(context.Background(), store, Options{Ref: "nope:1", Dir: t.TempDir(), Init: initBin}); err == nil {
		t.Error("an unknown image prepared")
	}
}

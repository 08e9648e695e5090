package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/initrd"
	"github.com/embervm/ember/vmm"
)

// imageCmdline is what an image VM boots with: Ember's default command
// line, quiet so that the console carries the workload's output only.
const imageCmdline = vmm.DefaultCmdline + " quiet"

// imageVM is an image made of one layer (busybox and an /etc/passwd) on a
// read-only drive and an ext4 writable drive, as `ember run --image` will
// attach them.
type imageVM struct {
	layer, layerFS, rw string
	base               string // the cached initramfs with ember-init
	dir                string
}

func newImageVM(t *testing.T) *imageVM {
	t.Helper()
	dir := scratchDir(t)
	initBin, err := exec.LookPath(initrd.InitName)
	if err != nil {
		t.Fatalf("%s not on PATH (make build): %v", initrd.InitName, err)
	}
	base, err := initrd.BuildInitramfs(dir, initBin)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "layer")
	for _, d := range []string{"bin", "etc", "data", "home/app"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(src, "data"), 0o777)
	sh(t, "cp /bin/busybox "+src+"/bin/busybox && ln -s busybox "+src+"/bin/sh")
	if err := os.WriteFile(filepath.Join(src, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	vm := &imageVM{dir: dir, base: base, layer: filepath.Join(dir, "layer.img"), rw: filepath.Join(dir, "rw.ext4")}
	if _, err := exec.LookPath("mkfs.erofs"); err == nil {
		vm.layerFS = initconfig.FSErofs
		sh(t, "mkfs.erofs --quiet "+vm.layer+" "+src)
	} else {
		vm.layerFS = initconfig.FSExt4
		sh(t, "mkfs.ext4 -q -F -d "+src+" "+vm.layer+" 16M")
	}
	sh(t, "truncate -s 64M "+vm.rw+" && mkfs.ext4 -q -F "+vm.rw)
	return vm
}

// run boots the image with args as the workload and returns ember's result.
func (vm *imageVM) run(t *testing.T, user string, args ...string) result {
	t.Helper()
	cfg := &initconfig.Config{
		Version: initconfig.Version, Mode: initconfig.ModeRun,
		Layers:   []initconfig.Drive{{Serial: "layer0", FSType: vm.layerFS}},
		Writable: &initconfig.Drive{Serial: "rw", FSType: initconfig.FSExt4},
		Hostname: "e2ebox", User: user, Args: args,
		// The init's steps on the console: a guest silent for the
		// harness's stall timeout counts as hung.
		Debug: true,
	}
	initrdPath := filepath.Join(vm.dir, "initrd-"+strings.ReplaceAll(t.Name(), "/", "-"))
	os.Remove(initrdPath)
	if err := initrd.AppendConfig(initrdPath, vm.base, cfg); err != nil {
		t.Fatal(err)
	}
	return ember(t, "--kernel", guestFile(t, "minimal-vmlinux"), "--initrd", initrdPath, "--cmdline", imageCmdline,
		"--drive", "path="+vm.layer+",id=layer0,ro", "--drive", "path="+vm.rw+",id=rw")
}

// TestImageInit boots ember-init on an image's layer and a writable drive
// and checks what `ember run --image` promises: the workload runs as the
// image's user on an overlay root, ember exits with its status, its files
// survive into the next run on the same writable drive, and a command that
// cannot run gives 127.
func TestImageInit(t *testing.T) {
	lab(t)
	vm := newImageVM(t)

	r := vm.run(t, "app", "sh", "-c", `echo "image-run host=$(hostname) id=$(id -u) root=$(grep ' / ' /proc/mounts | cut -d' ' -f3)"; echo kept > /data/f; exit 7`)
	if r.code != 7 {
		t.Fatalf("ember exited %d, want the workload's 7\nstdout:\n%s\nstderr:\n%s", r.code, tailString(r.stdout), r.stderr)
	}
	if !strings.Contains(r.stdout, "image-run host=e2ebox id=1000 root=overlay") {
		t.Fatalf("workload's line missing (layers: %s)\n%s", vm.layerFS, tailString(r.stdout))
	}

	r = vm.run(t, "", "sh", "-c", "cat /data/f; kill -KILL $$")
	if r.code != 128+9 || !strings.Contains(r.stdout, "kept") {
		t.Fatalf("second run: exit %d (want 137), the first run's file: %v\n%s", r.code, strings.Contains(r.stdout, "kept"), tailString(r.stdout))
	}

	r = vm.run(t, "", "/nonexistent")
	if r.code != 127 || !strings.Contains(r.stdout, "ember-init: cannot run /nonexistent: no such file or directory") {
		t.Fatalf("missing command: exit %d, want 127\n%s", r.code, tailString(r.stdout))
	}
}

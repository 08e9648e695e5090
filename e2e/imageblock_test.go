package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/image/imagetest"
)

// TestImageBlock boots an image through the config file's Ember extension
// "ember-image" (`ember --no-api --config-file`, seccomp on, no
// "boot-source": the kernel is `ember run --image`'s default): the workload
// runs with the block's args, env and host name over the image's WorkingDir
// and User, the block's disk keeps its files for the next run, and the
// files ember made (initrd, overlay) are gone when it exits. In this mode
// ember exits 0 when the guest resets, whatever the workload's status.
func TestImageBlock(t *testing.T) {
	lab(t)
	home := scratchDir(t)
	base, top := busyboxLayers(t)
	importImage(t, home, imagetest.Build(t, busyboxConfig, base, top), "e2e/busybox:1")
	tmp := scratchDir(t)
	disk := filepath.Join(scratchDir(t), "keep.cow")
	prefix := []string{"env", "EMBER_HOME=" + home, "TMPDIR=" + tmp}

	boot := func(args ...string) result {
		t.Helper()
		data, err := json.Marshal(map[string]any{
			"ember-image": map[string]any{"ref": "e2e/busybox:1", "args": args, "env": []string{"GREETING=block"},
				"hostname": "blockbox", "disk": disk, "disk_mib": 256},
		})
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(scratchDir(t), "vm.json")
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		r := emberArgv(t, bootTimeout, prefix, "--no-api", "--config-file", file)
		if r.code != 0 {
			t.Fatalf("ember exited %d\nstdout:\n%s\nstderr:\n%s", r.code, tailString(r.stdout), r.stderr)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			t.Errorf("ember left %d entries in TMPDIR (%s)", len(ents), ents[0].Name())
		}
		return r
	}

	r := boot(`echo "image-block env=$GREETING cwd=$(pwd) id=$(id -u) host=$(hostname)"; echo kept > /work/f`)
	if want := "image-block env=block cwd=/work id=1000 host=blockbox"; !strings.Contains(r.stdout, want) {
		t.Fatalf("want %q in the output\n%s", want, tailString(r.stdout))
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("the block's disk: %v", err)
	}
	r = boot(`echo "second=$(cat /work/f)"`)
	if !strings.Contains(r.stdout, "second=kept") {
		t.Fatalf("the first run's file is not on the block's disk\n%s", tailString(r.stdout))
	}
}

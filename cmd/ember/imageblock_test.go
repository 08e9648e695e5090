package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/image"
	"github.com/embervm/ember/image/imagetest"
	"github.com/embervm/ember/initrd"
	"github.com/embervm/ember/internal/testbin"
	"github.com/embervm/ember/internal/testkvm"
)

// imageKit is ember with ember-image beside it, an Ember home holding an
// imported image "app:1", a stand-in ember-init (the tiny guest never runs
// it), and TMPDIR, where ember puts the image's files.
type imageKit struct {
	ember, home, tmp string
	env              []string
}

func newImageKit(t *testing.T) *imageKit {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("importing an image needs root")
	}
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("needs mkfs.erofs")
	}
	dir := t.TempDir()
	k := &imageKit{ember: filepath.Join(dir, "ember"), home: t.TempDir(), tmp: t.TempDir()}
	data, err := os.ReadFile(emberBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.ember, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := testbin.Build(dir, imageTool, "github.com/embervm/ember/cmd/ember-image"); err != nil {
		t.Fatal(err)
	}
	initBin := write(t, "ember-init", []byte("\x7fELF not really"))
	k.env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR="+k.tmp,
		image.HomeEnv+"="+k.home, initrd.InitEnv+"="+initBin, "EMBER_KERNEL=")
	img := imagetest.Build(t, v1.Config{Cmd: []string{"/bin/true"}},
		imagetest.Tar(t, imagetest.Dir("bin"), imagetest.File("bin/true", "x")))
	layout := imagetest.WriteLayout(t, t.TempDir(), img, "")
	if out, err := exec.Command(k.ember, "image", "import", "--home", k.home, layout, "app:1").CombinedOutput(); err != nil {
		t.Fatalf("ember image import: %v\n%s", err, out)
	}
	return k
}

// run runs ember; stdout and stderr together.
func (k *imageKit) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(k.ember, args...)
	cmd.Env = k.env
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// leftInTmp fails the test if ember left files in TMPDIR.
func (k *imageKit) leftInTmp(t *testing.T) {
	t.Helper()
	if ents, _ := os.ReadDir(k.tmp); len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("left in TMPDIR: %v", names)
	}
}

func configJSON(t *testing.T, v map[string]any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return write(t, "vm.json", data)
}

// TestConfigFileImage boots the tiny guest from a config file whose
// "ember-image" gives it the image's drives and initrd (the tiny guest
// ignores them: it resets at once), with seccomp on: the image is
// prepared before the filter, and its files are removed at exit, after
// boot, under it. Bad blocks are one line and exit 152, leaving nothing.
func TestConfigFileImage(t *testing.T) {
	testkvm.Need(t)
	k := newImageKit(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	keep := filepath.Join(t.TempDir(), "keep.cow")
	good := configJSON(t, map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": kernel},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 64},
		"ember-image":    map[string]any{"ref": "app:1", "disk": keep, "disk_mib": 64},
	})
	out, code := k.run(t, "--no-api", "--boot-timer", "--level", "Debug", "--config-file", good)
	if code != 0 || !strings.Contains(out, "Guest-boot-time") || !strings.Contains(out, "ember image prepared") {
		t.Fatalf("exit %d, want 0, a boot time and the image prepared\n%s", code, out)
	}
	k.leftInTmp(t)
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("the block's disk is gone: %v", err)
	}

	for _, c := range []struct {
		name   string
		cfg    map[string]any
		want   []string
		noTool bool
	}{
		{"unknown ref", map[string]any{"boot-source": map[string]any{"kernel_image_path": kernel},
			"ember-image": map[string]any{"ref": "nope:1", "disk": filepath.Join(k.tmp, "x.cow")}},
			[]string{`"ember-image": image "nope:1"`, "no such image"}, false},
		{"unknown field", map[string]any{"ember-image": map[string]any{"ref": "app:1", "cmd": "x"}},
			[]string{`unknown field "ember-image.cmd"`}, false},
		{"conflicting drive", map[string]any{"ember-image": map[string]any{"ref": "app:1"},
			"drives": []any{map[string]any{"drive_id": "rw", "path_on_host": kernel, "is_root_device": false}}},
			[]string{`"drives"[0]`, `drive "rw"`}, false},
		{"no kernel", map[string]any{"ember-image": map[string]any{"ref": "app:1"}},
			[]string{"no guest kernel", `"boot-source"`}, false},
		{"no ember-image", map[string]any{"boot-source": map[string]any{"kernel_image_path": kernel},
			"ember-image": map[string]any{"ref": "app:1"}},
			[]string{"ember-image is not installed"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.noTool {
				os.Rename(filepath.Join(filepath.Dir(k.ember), imageTool), filepath.Join(filepath.Dir(k.ember), imageTool+".off"))
				defer os.Rename(filepath.Join(filepath.Dir(k.ember), imageTool+".off"), filepath.Join(filepath.Dir(k.ember), imageTool))
			}
			out, code := k.run(t, "--no-api", "--config-file", configJSON(t, c.cfg))
			if code != exitBadConfig || strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Fatalf("exit %d, want %d and one line:\n%s", code, exitBadConfig, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("%q does not name %q", out, w)
				}
			}
			k.leftInTmp(t)
		})
	}
}

// TestAPIImage: PUT /ember/image through the API socket. With seccomp (the
// default) it is refused, saying why and what to do; with --no-seccomp the
// image's drives and initrd are configured (GET /vm/config shows them), the
// tiny guest boots, and the files are gone when ember exits.
func TestAPIImage(t *testing.T) {
	testkvm.Need(t)
	k := newImageKit(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	start := func(args ...string) (*client.Client, *exec.Cmd, chan struct{}) {
		sock := filepath.Join(t.TempDir(), "api.sock")
		cmd := exec.Command(k.ember, append([]string{"--api-sock", sock}, args...)...)
		cmd.Env = k.env
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
		defer cancel()
		if err := client.WaitForSocket(ctx, sock); err != nil {
			t.Fatal(err)
		}
		return client.New(sock), cmd, done
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
	defer cancel()

	c, _, _ := start()
	err := c.PutEmberImage(ctx, api.EmberImage{Ref: "app:1"})
	if e, ok := client.IsAPIError(err); !ok || e.Status != 400 || !strings.Contains(e.FaultMessage, "seccomp") ||
		!strings.Contains(e.FaultMessage, "--no-seccomp") {
		t.Fatalf("with seccomp: %v", err)
	}
	k.leftInTmp(t)

	c, cmd, done := start("--no-seccomp")
	err = c.PutEmberImage(ctx, api.EmberImage{Ref: "nope:1"})
	if e, ok := client.IsAPIError(err); !ok || e.Status != 400 || !strings.Contains(e.FaultMessage, `image "nope:1"`) {
		t.Fatalf("unknown image: %v", err)
	}
	k.leftInTmp(t)
	if err := c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutEmberImage(ctx, api.EmberImage{Ref: "app:1", DiskMiB: 64}); err != nil {
		t.Fatal(err)
	}
	full, err := c.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(full.Drives) != 2 || full.Drives[0].DriveID != "layer0" || full.Drives[1].DriveID != "rw" ||
		full.Drives[1].EmberBasePath == "" || full.BootSource.InitrdPath == nil || !strings.HasPrefix(*full.BootSource.InitrdPath, k.tmp) {
		t.Fatalf("GET /vm/config: %+v", full)
	}
	if err := c.InstanceStart(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("ember did not exit after the guest reset")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	k.leftInTmp(t)
}

package api

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/api/imageblock"
	"github.com/embervm/ember/vmm"
)

// fakeImages stands in for `ember-image prepare --json` (cmd/ember and
// cmd/ember-image test the real one): it knows one image, "app:1", of two
// layers, and makes its initrd and writable overlay as real files in dir,
// which discard removes.
type fakeImages struct {
	t        *testing.T
	dir      string
	kernel   string
	calls    []EmberImage
	discards int
	made     []string // files made and not discarded
}

func (h *harness) withImages() *fakeImages {
	h.t.Helper()
	fi := &fakeImages{t: h.t, dir: h.t.TempDir(), kernel: h.kernel}
	h.s.opts.PrepareImage = fi.prepare
	return fi
}

func (fi *fakeImages) prepare(b EmberImage) (PreparedImage, func(), error) {
	fi.calls = append(fi.calls, b)
	if b.Ref != "app:1" {
		return PreparedImage{}, nil, fmt.Errorf("no image %q in the store", b.Ref)
	}
	n := len(fi.calls)
	var made []string
	file := func(name string) string {
		p := filepath.Join(fi.dir, fmt.Sprintf("%d-%s", n, name))
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			fi.t.Fatal(err)
		}
		made = append(made, p)
		return p
	}
	p := PreparedImage{
		Kernel: fi.kernel, Initrd: file("initrd"), BootArgs: vmm.DefaultCmdline + " quiet",
		Drives: []imageblock.Drive{
			{ID: "layer0", Path: file("l0.erofs"), ReadOnly: true},
			{ID: "layer1", Path: file("l1.erofs"), ReadOnly: true},
			{ID: "rw", Path: file("rw.cow"), Base: file("blank.ext4")},
		},
	}
	fi.made = append(fi.made, made...)
	return p, func() {
		fi.discards++
		for _, f := range made {
			os.Remove(f)
		}
		fi.made = fi.made[:len(fi.made)-len(made)]
	}, nil
}

// left lists the files the fake made that are still there.
func (fi *fakeImages) left() []string {
	ents, _ := os.ReadDir(fi.dir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestEmberImageAPI: PUT /ember/image adds the image's drives after those
// already configured and its initrd, keeps a kernel and boot_args given by
// PUT /boot-source, and later requests cannot take the image's initrd,
// drive IDs or root.
func TestEmberImageAPI(t *testing.T) {
	h := newHarness(t)
	fi := h.withImages()
	h.ok("PUT", "/drives/data", js(t, Drive{DriveID: "data", PathOnHost: h.disk2, IsReadOnly: true}))
	h.ok("PUT", "/ember/image", `{"ref": "app:1", "args": ["sh", "-c", "echo hi"], "env": ["A=1"], "user": "app",
		"working_dir": "/w", "hostname": "box", "disk_mib": 64}`)
	if len(fi.calls) != 1 || fi.calls[0].Hostname != "box" || fi.calls[0].DiskMiB != 64 || len(fi.calls[0].Args) != 3 {
		t.Fatalf("hook calls %+v", fi.calls)
	}
	c := h.f.Config()
	var ids []string
	for _, d := range c.Drives {
		ids = append(ids, d.ID)
	}
	if strings.Join(ids, ",") != "data,layer0,layer1,rw" || !c.Drives[1].ReadOnly || c.Drives[3].ReadOnly || c.Drives[3].BasePath == "" {
		t.Errorf("drives %v: %+v", ids, c.Drives)
	}
	if c.KernelPath != h.kernel || !strings.HasSuffix(c.InitrdPath, "initrd") || c.Cmdline != vmm.DefaultCmdline+" quiet" {
		t.Errorf("boot: kernel %q initrd %q cmdline %q", c.KernelPath, c.InitrdPath, c.Cmdline)
	}

	// A boot source afterwards: its kernel and boot_args win, the initrd
	// stays the image's.
	other := h.file("other-vmlinux")
	h.ok("PUT", "/boot-source", js(t, BootSource{KernelImagePath: other, BootArgs: Ptr("console=ttyS0")}))
	if c2 := h.f.Config(); c2.KernelPath != other || c2.InitrdPath != c.InitrdPath || c2.Cmdline != "console=ttyS0" {
		t.Errorf("after PUT /boot-source: kernel %q initrd %q cmdline %q", c2.KernelPath, c2.InitrdPath, c2.Cmdline)
	}
	h.fail("PUT", "/boot-source", js(t, BootSource{KernelImagePath: h.kernel, InitrdPath: &h.initrd}), "initrd_path", "ember image")
	h.fail("PUT", "/drives/rw", js(t, Drive{DriveID: "rw", PathOnHost: h.disk}), `drive "rw"`, "layer0", "another drive_id")
	h.fail("PUT", "/drives/layer7", js(t, Drive{DriveID: "layer7", PathOnHost: h.disk}), `drive "layer7"`)
	h.fail("PUT", "/drives/root", js(t, Drive{DriveID: "root", PathOnHost: h.disk, IsRootDevice: true}), "is_root_device", "ember image")
	h.ok("PUT", "/drives/extra", js(t, Drive{DriveID: "extra", PathOnHost: h.disk}))
	h.fail("PUT", "/ember/image", `{"ref": "app:1"}`, "already configured")
	if len(fi.calls) != 1 {
		t.Errorf("a second block ran the hook: %d calls", len(fi.calls))
	}

	h.ok("PUT", "/actions", `{"action_type": "InstanceStart"}`)
	h.fail("PUT", "/ember/image", `{"ref": "app:1"}`, msgPostBoot)

	// GET /vm/config shows the drives and initrd, not the block.
	var full FullVmConfiguration
	h.get("/vm/config", &full)
	if full.EmberImage != nil || len(full.Drives) != 5 || full.BootSource.InitrdPath == nil {
		t.Errorf("GET /vm/config: %+v", full)
	}
}

// TestEmberImageAPIErrors: each bad block is one 400 naming what is wrong,
// the hook is not run for what the block alone decides, and nothing it
// made is left behind.
func TestEmberImageAPIErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(h *harness)
		body  string
		want  []string
		hook  bool // the hook ran (and its files must be gone)
	}{
		{"unknown field", nil, `{"ref": "app:1", "cmd": ["sh"]}`, []string{`unknown field "cmd"`}, false},
		{"no ref", nil, `{"args": ["sh"]}`, []string{`missing field "ref"`}, false},
		{"empty ref", nil, `{"ref": " "}`, []string{"ref: empty"}, false},
		{"bad env", nil, `{"ref": "app:1", "env": ["NOEQUALS"]}`, []string{`env "NOEQUALS"`, "NAME=VALUE"}, false},
		{"bad disk_mib", nil, `{"ref": "app:1", "disk_mib": -1}`, []string{"disk_mib -1"}, false},
		{"wrong type", nil, `{"ref": "app:1", "args": "sh"}`, []string{`"args"`}, false},
		{"unknown image", nil, `{"ref": "nope:1"}`, []string{`image "nope:1"`, "no image"}, true},
		{"initrd given", func(h *harness) {
			h.ok("PUT", "/boot-source", js(h.t, BootSource{KernelImagePath: h.kernel, InitrdPath: &h.initrd}))
		}, `{"ref": "app:1"}`, []string{"boot-source", "initrd_path"}, false},
		{"drive id taken", func(h *harness) {
			h.ok("PUT", "/drives/layer0", js(h.t, Drive{DriveID: "layer0", PathOnHost: h.disk}))
		}, `{"ref": "app:1"}`, []string{`drive "layer0"`, "another drive_id"}, false},
		{"root drive", func(h *harness) {
			h.ok("PUT", "/drives/rootfs", js(h.t, Drive{DriveID: "rootfs", PathOnHost: h.disk, IsRootDevice: true}))
		}, `{"ref": "app:1"}`, []string{`drive "rootfs"`, "is_root_device"}, false},
		{"no room", func(h *harness) {
			for i := range vmm.MaxVirtioDevices - 2 {
				id := fmt.Sprintf("d%d", i)
				h.ok("PUT", "/drives/"+id, js(h.t, Drive{DriveID: id, PathOnHost: h.disk, IsReadOnly: true}))
			}
		}, `{"ref": "app:1"}`, []string{"too many devices"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			fi := h.withImages()
			if c.setup != nil {
				c.setup(h)
			}
			before := h.f.Config()
			h.fail("PUT", "/ember/image", c.body, c.want...)
			if ran := len(fi.calls) > 0; ran != c.hook {
				t.Errorf("hook ran: %v, want %v", ran, c.hook)
			}
			if left := fi.left(); len(left) > 0 {
				t.Errorf("files left behind: %v", left)
			}
			if after := h.f.Config(); len(after.Drives) != len(before.Drives) || after.InitrdPath != before.InitrdPath {
				t.Errorf("configuration changed: %+v", after)
			}
			// A failed block does not count as the one image: a good one
			// is accepted next (unless the configuration itself is in
			// the way).
			if c.setup == nil {
				h.ok("PUT", "/ember/image", `{"ref": "app:1"}`)
			}
		})
	}

	// Without the hook (a process that cannot run ember-image): not
	// supported, said once.
	h := newHarness(t)
	h.fail("PUT", "/ember/image", `{"ref": "app:1"}`, "not supported", "ember-image")
}

// imageConfigFile is a config file with an "ember-image" and extra.
func (h *harness) imageConfigFile(extra string) []byte {
	return []byte(fmt.Sprintf(`{
  "drives": [{"drive_id": "data", "path_on_host": %q, "is_root_device": false, "is_read_only": true}],
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
  "ember-image": {"ref": "app:1", "args": ["true"]}%s
}`, h.disk2, extra))
}

// TestEmberImageConfigFile: "ember-image" makes "boot-source" optional
// (the image's kernel), its drives follow "drives", and a boot source's
// kernel and boot_args win over the image's.
func TestEmberImageConfigFile(t *testing.T) {
	h := newHarness(t)
	fi := h.withImages()
	if err := h.s.ApplyConfigFile(h.imageConfigFile("")); err != nil {
		t.Fatal(err)
	}
	c := h.f.Config()
	if len(c.Drives) != 4 || c.Drives[0].ID != "data" || c.Drives[3].ID != "rw" || len(c.Nets) != 1 ||
		c.KernelPath != fi.kernel || c.InitrdPath == "" || c.Cmdline != vmm.DefaultCmdline+" quiet" || c.MemMiB != 256 {
		t.Errorf("config %+v", c)
	}
	h.fail("PUT", "/ember/image", `{"ref": "app:1"}`, "already configured")

	h = newHarness(t)
	h.withImages()
	other := h.file("other-vmlinux")
	bs := fmt.Sprintf(`, "boot-source": {"kernel_image_path": %q, "boot_args": "console=ttyS0 quiet"}`, other)
	if err := h.s.ApplyConfigFile(h.imageConfigFile(bs)); err != nil {
		t.Fatal(err)
	}
	if c := h.f.Config(); c.KernelPath != other || c.Cmdline != "console=ttyS0 quiet" || c.InitrdPath == "" {
		t.Errorf("with a boot source: %+v", c)
	}
}

// TestEmberImageConfigFileErrors: a bad "ember-image", or one that
// conflicts with the rest of the file, is one error naming the key; the
// hook runs only once the rest of the file is valid, and what it made is
// removed when the file cannot be applied.
func TestEmberImageConfigFileErrors(t *testing.T) {
	for _, c := range []struct {
		name, extra string
		file        string // instead of imageConfigFile(extra)
		noKernel    bool
		want        []string
		hook        bool
	}{
		{name: "unknown field", extra: `, "ember-imag": {}`, want: []string{`unknown field "ember-imag"`}},
		{name: "unknown block field", file: `{"drives": [], "ember-image": {"ref": "app:1", "rootfs": "/x"}}`,
			want: []string{`unknown field "ember-image.rootfs"`}},
		{name: "bad env", file: `{"drives": [], "ember-image": {"ref": "app:1", "env": ["=x"]}}`,
			want: []string{`"ember-image"`, `env "=x"`}},
		{name: "initrd", extra: `, "boot-source": {"kernel_image_path": "%KERNEL%", "initrd_path": "%KERNEL%"}`,
			want: []string{`"boot-source"`, "initrd_path", `"ember-image" gives one`}},
		{name: "drive id", file: `{"drives": [{"drive_id": "rw", "path_on_host": "%DISK%", "is_root_device": false}], "ember-image": {"ref": "app:1"}}`,
			want: []string{`"drives"[0]`, `drive "rw"`, `beside "ember-image"`}},
		{name: "root drive", file: `{"drives": [{"drive_id": "rootfs", "path_on_host": "%DISK%", "is_root_device": true}], "ember-image": {"ref": "app:1"}}`,
			want: []string{`"drives"[0]`, "is_root_device"}},
		{name: "bad other key", extra: `, "vsock": {"guest_cid": 1, "uds_path": "/v"}`, want: []string{`"vsock"`, "guest_cid 1"}},
		{name: "unknown image", file: `{"drives": [], "ember-image": {"ref": "nope:1"}}`,
			want: []string{`"ember-image"`, `image "nope:1"`}, hook: true},
		{name: "no kernel", noKernel: true, want: []string{`"ember-image"`, "no guest kernel", `"boot-source"`}, hook: true},
		{name: "too many devices", extra: `, "balloon": {"amount_mib": 1, "deflate_on_oom": false}, "vsock": {"guest_cid": 3, "uds_path": "/v"}, "entropy": {}` +
			`, "network-interfaces": [` + nets(14) + `]`,
			want: []string{"too many devices"}, hook: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			fi := h.withImages()
			if c.noKernel {
				fi.kernel = ""
			}
			data := h.imageConfigFile(c.extra)
			if c.file != "" {
				data = []byte(c.file)
			}
			data = []byte(strings.NewReplacer("%KERNEL%", h.kernel, "%DISK%", h.disk).Replace(string(data)))
			if strings.Count(string(data), `"network-interfaces"`) > 1 { // the extra one replaces imageConfigFile's
				data = []byte(strings.Replace(string(data), `"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],`, "", 1))
			}
			err := h.s.ApplyConfigFile(data)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.HasPrefix(err.Error(), "config file: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line starting with config file:", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if ran := len(fi.calls) > 0; ran != c.hook {
				t.Errorf("hook ran: %v, want %v", ran, c.hook)
			}
			if left := fi.left(); len(left) > 0 {
				t.Errorf("files left behind: %v", left)
			}
			if cfg := h.f.Config(); len(cfg.Drives) != 0 || cfg.InitrdPath != "" {
				t.Errorf("configuration changed: %+v", cfg)
			}
		})
	}

	// Without the hook: not supported.
	h := newHarness(t)
	err := h.s.ApplyConfigFile(h.imageConfigFile(""))
	if err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("without the hook: %v", err)
	}
	if errors.Is(err, errImageRoot) {
		t.Error("wrong error")
	}
}

// nets is n network interfaces as config-file JSON.
func nets(n int) string {
	var s []string
	for i := range n {
		s = append(s, fmt.Sprintf(`{"iface_id": "eth%d", "host_dev_name": "tap%d"}`, i, i))
	}
	return strings.Join(s, ", ")
}

func TestIsImageDriveID(t *testing.T) {
	for id, want := range map[string]bool{"rw": true, "layer0": true, "layer13": true, "layer": false, "layerx": false, "rw2": false, "data": false} {
		if got := imageblock.IsImageDriveID(id); got != want {
			t.Errorf("IsImageDriveID(%q) = %v", id, got)
		}
	}
}

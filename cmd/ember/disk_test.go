package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/disk"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/vmm"
)

func TestDriveBaseFlag(t *testing.T) {
	var drives []vmm.DriveConfig
	if err := (driveFlag{&drives}).Set("path=/o.cow,base=/b.img,root"); err != nil {
		t.Fatal(err)
	}
	if d := drives[0]; d.Path != "/o.cow" || d.BasePath != "/b.img" || !d.Root {
		t.Fatalf("drive %+v", d)
	}
}

// TestDiskCommands: `ember disk create`, `info` and `commit` on real
// files; bad input gets one line naming the problem; a base changed under
// its overlay fails `info` and `ember run`, naming it.
func TestDiskCommands(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := os.WriteFile(base, bytes.Repeat([]byte{7}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "o.cow")
	if _, stderr, code, _ := runEmber(t, "disk", "create", "--base", base, overlay); code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	s, err := disk.OpenCOW(disk.Options{Path: overlay, BasePath: base})
	if err != nil {
		t.Fatal(err)
	}
	s.WriteVec([][]byte{bytes.Repeat([]byte{9}, 4096)}, 4096)
	s.Close()
	stdout, stderr, code, _ := runEmber(t, "disk", "info", overlay)
	if code != 0 || !strings.Contains(stdout, "base check:    ok") || !strings.Contains(stdout, "written:       1 clusters") {
		t.Fatalf("info: exit %d\n%s%s", code, stdout, stderr)
	}
	t.Logf("ember disk info:\n%s", stdout)
	merged := filepath.Join(dir, "merged.img")
	if _, stderr, code, _ := runEmber(t, "disk", "commit", overlay, merged); code != 0 {
		t.Fatalf("commit: exit %d: %s", code, stderr)
	}
	b, _ := os.ReadFile(merged)
	if len(b) != 1<<20 || b[4095] != 7 || b[4096] != 9 || b[8192] != 7 {
		t.Fatal("the merged base is wrong")
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"disk"}, 2, "create, commit or info"},
		{[]string{"disk", "create", overlay}, 2, "--base"},
		{[]string{"disk", "create", "--base", base}, 2, "one argument"},
		{[]string{"disk", "create", "--base", base, "--base-format", "qcow2", filepath.Join(dir, "x")}, 2, "qcow2"},
		{[]string{"disk", "create", "--base", base, overlay}, 1, "exists"},
		{[]string{"disk", "create", "--base", filepath.Join(dir, "missing"), filepath.Join(dir, "y")}, 1, "missing"},
		{[]string{"disk", "create", "--base", base, "--cluster-size", "1000", filepath.Join(dir, "z")}, 1, "cluster size"},
		{[]string{"disk", "commit", overlay, merged}, 1, "exists"},
		{[]string{"disk", "info", base}, 1, "not an Ember overlay"},
	} {
		_, stderr, code, _ := runEmber(t, c.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != c.code || len(lines) != 1 || !strings.Contains(lines[0], c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and one line naming %q", c.args, code, stderr, c.code, c.want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Errorf("%d files in the directory, want base, overlay and merged", len(ents))
	}

	// The base changes under the overlay.
	if err := os.WriteFile(base, bytes.Repeat([]byte{8}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, _, code, _ = runEmber(t, "disk", "info", overlay)
	if code != 1 || !strings.Contains(stdout, "base check:    FAILED") || !strings.Contains(stdout, "changed") {
		t.Fatalf("info on a changed base: exit %d\n%s", code, stdout)
	}
	// Running it is refused (found as the VM is built, after /dev/kvm is
	// opened).
	testkvm.Need(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	_, stderr, code, _ = runEmber(t, "run", "--kernel", kernel, "--drive", "path="+overlay+",base="+base)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "the base changed since the overlay was made") {
		t.Fatalf("run on a changed base: exit %d, stderr %q", code, stderr)
	}
	t.Log(lines[0])
}

// TestCOWSnapshotClonesUnderSeccomp: the copy-on-write drive's life
// through the API, in ember processes confined by their seccomp filters: a
// root drive on an overlay (ember_base_path), swapped after boot for
// another overlay on the same base (PATCH /drives: the running VM's opens),
// snapshotted (the overlay recorded), then loaded by three fresh embers,
// each on a new overlay over the snapshot's (ember_drive_overrides), whose
// guests run on and exit 0. Once the snapshot's overlay is written, a load
// answers 400 naming it, and makes no overlay.
func TestCOWSnapshotClonesUnderSeccomp(t *testing.T) {
	testkvm.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangLimit)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	must("base", os.WriteFile(base, bytes.Repeat([]byte{7}, 1<<20), 0o600))
	first, second := filepath.Join(dir, "first.cow"), filepath.Join(dir, "second.cow")
	for _, o := range []string{first, second} {
		if _, stderr, code, _ := runEmber(t, "disk", "create", "--base", base, o); code != 0 {
			t.Fatalf("disk create: %s", stderr)
		}
	}
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")

	a := startAPIEmber(t, ctx)
	vcpus, mib := 1, 32
	must("machine-config", a.c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mib}))
	must("boot-source", a.c.PutBootSource(ctx, api.BootSource{KernelImagePath: write(t, "counter.elf", tiny.Counter())}))
	must("drive", a.c.PutDrive(ctx, api.Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: first,
		EmberBasePath: base, CacheType: api.CacheTypeWriteback}))
	must("start", a.c.InstanceStart(ctx))
	must("patch drive", a.c.PatchDrive(ctx, api.PartialDrive{DriveID: "rootfs", PathOnHost: &second}))
	must("pause", a.c.Pause(ctx))
	must("snapshot", a.c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem}))
	a.cmd.Process.Signal(os.Interrupt)
	if code := a.wait(t); code != 0 {
		t.Fatalf("first ember exit %d\n%s", code, a.stderr.String())
	}
	// The guest exits as soon as it runs again.
	f, err := os.OpenFile(mem, os.O_RDWR, 0)
	must("open memory file", err)
	_, err = f.WriteAt([]byte{1}, tiny.ExitFlagAddr)
	f.Close()
	must("set exit flag", err)

	for i := range 3 {
		clone := filepath.Join(dir, fmt.Sprintf("clone%d.cow", i))
		b := startAPIEmber(t, ctx)
		must("load", b.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap, MemFilePath: &mem, ResumeVM: true,
			EmberDriveOverrides: []api.DriveOverride{{DriveID: "rootfs", PathOnHost: clone}}}))
		if code := b.wait(t); code != 0 {
			t.Fatalf("clone %d: exit %d\n%s", i, code, b.stderr.String())
		}
		out, stderr, code, _ := runEmber(t, "disk", "info", clone)
		if code != 0 || !strings.Contains(out, second+" (overlay)") {
			t.Fatalf("clone %d: disk info exit %d\n%s%s", i, code, out, stderr)
		}
	}

	s, err := disk.OpenCOW(disk.Options{Path: second, BasePath: base})
	must("open the snapshot's overlay", err)
	s.WriteVec([][]byte{make([]byte, 512)}, 0)
	s.Close()
	late := filepath.Join(dir, "late.cow")
	c := startAPIEmber(t, ctx)
	err = c.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap, MemFilePath: &mem,
		EmberDriveOverrides: []api.DriveOverride{{DriveID: "rootfs", PathOnHost: late}}})
	if e, ok := client.IsAPIError(err); !ok || e.Status != 400 || !strings.Contains(e.FaultMessage, "after the snapshot") {
		t.Fatalf("load on a written overlay: %v", err)
	}
	if _, err := os.Stat(late); err == nil {
		t.Fatal("the refused load left its overlay behind")
	}
	c.wait(t)
}

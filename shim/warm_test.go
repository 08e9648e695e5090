package shim

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestTemplateKey: the pod template's key changes with every input that
// makes two pod VMs' snapshots differ, and only with those.
func TestTemplateKey(t *testing.T) {
	dir := t.TempDir()
	file := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l := &EmberLauncher{Ember: file("ember", "e"), Kernel: file("vmlinux", "k"), Init: file("ember-init", "i"), Home: dir}
	spec := VMSpec{ID: "pod-a", Dir: "/run/a", Hostname: "a", Env: []string{"PATH=/bin"}, VCPUs: 2, MemoryMiB: 1024, SpareDrives: 8}
	images := []string{"/l/1.erofs"}
	key := func(l *EmberLauncher, spec VMSpec, images []string) string {
		k, err := l.templateKey(spec, images)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := key(l, spec, images)
	// Another pod of the same shape: the same template.
	other := spec
	other.ID, other.Dir, other.Hostname = "pod-b", "/run/b", "b"
	if k := key(l, other, images); k != base {
		t.Errorf("another pod's key %s, want %s", k, base)
	}
	for name, change := range map[string]func(*EmberLauncher, *VMSpec, *[]string){
		"env":    func(_ *EmberLauncher, s *VMSpec, _ *[]string) { s.Env = []string{"PATH=/usr/bin"} },
		"memory": func(_ *EmberLauncher, s *VMSpec, _ *[]string) { s.MemoryMiB = 512 },
		"vcpus":  func(_ *EmberLauncher, s *VMSpec, _ *[]string) { s.VCPUs = 1 },
		"spare":  func(_ *EmberLauncher, s *VMSpec, _ *[]string) { s.SpareDrives = 4 },
		"layers": func(_ *EmberLauncher, _ *VMSpec, im *[]string) { *im = []string{"/l/2.erofs"} },
		"kernel": func(l *EmberLauncher, _ *VMSpec, _ *[]string) { l.Kernel = file("vmlinux2", "k") },
		"init rebuilt": func(l *EmberLauncher, _ *VMSpec, _ *[]string) {
			if err := os.WriteFile(l.Init, []byte("i2"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
	} {
		l2, s2, im2 := *l, spec, images
		change(&l2, &s2, &im2)
		if k := key(&l2, s2, im2); k == base {
			t.Errorf("%s changed, the key did not", name)
		}
	}
	l.Kernel = filepath.Join(dir, "missing")
	if _, err := l.templateKey(spec, images); err == nil {
		t.Error("a missing kernel: no error")
	}
}

// TestLockFile: a second taker waits until the first releases, and gives
// up when its context ends.
func TestLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.lock")
	unlock, err := lockFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*lockPoll)
	defer cancel()
	if _, err := lockFile(ctx, path); err == nil {
		t.Fatal("took a lock that is held")
	}
	got := make(chan error, 1)
	go func() {
		u, err := lockFile(context.Background(), path)
		if err == nil {
			u()
		}
		got <- err
	}()
	time.Sleep(2 * lockPoll)
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // a hang, not a speed figure
		t.Fatal("the waiting taker did not get the released lock")
	}
}

// TestReadTemplate: a folder without the manifest is no template (an
// unfinished build); the manifest's writable drives are read back.
func TestReadTemplate(t *testing.T) {
	dir := t.TempDir()
	if _, err := readTemplate(dir); err == nil {
		t.Error("a folder without a manifest read as a template")
	}
	if err := os.WriteFile(filepath.Join(dir, templateManifest), []byte(`{"writable":["rootfs"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tm, err := readTemplate(dir)
	if err != nil || tm.dir != dir || len(tm.Writable) != 1 || tm.Writable[0] != "rootfs" {
		t.Errorf("readTemplate = %+v, %v", tm, err)
	}
	if err := os.WriteFile(filepath.Join(dir, templateManifest), []byte(`{`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readTemplate(dir); err == nil {
		t.Error("a corrupt manifest read as a template")
	}
}

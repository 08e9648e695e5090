package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/disk"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/virtio/blk"
)

// readOverlay reads n bytes at off of the overlay at path over base.
func readOverlay(t *testing.T, path, base string, off, n int64) []byte {
	t.Helper()
	s, err := disk.OpenCOW(disk.Options{Path: path, BasePath: base, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := make([]byte, n)
	if err := s.ReadVec([][]byte{b}, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeOverlay writes b at off into the overlay at path over base.
func writeOverlay(t *testing.T, path, base string, b []byte, off int64) {
	t.Helper()
	s, err := disk.OpenCOW(disk.Options{Path: path, BasePath: base})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteVec([][]byte{b}, off); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotClonesOnCOWDrive: a VM whose root drive is an overlay
// snapshots; three clones load it, each with a new overlay made over the
// snapshot's (ember_drive_overrides); each reads what the source had
// written, and their writes diverge. Once the snapshot's overlay is
// written, a load is refused, naming it, and leaves no overlay behind.
func TestSnapshotClonesOnCOWDrive(t *testing.T) {
	testkvm.Need(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := os.WriteFile(base, bytes.Repeat([]byte{0x11}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src.cow")
	if err := disk.CreateOverlay(src, base, disk.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// What the source's guest wrote before the snapshot.
	writeOverlay(t, src, base, bytes.Repeat([]byte{0x22}, 4096), 8192)

	cfg, _ := tinyConfig(t, tiny.Counter())
	cfg.Drives = []DriveConfig{{Config: blk.Config{ID: "rootfs", Path: src, BasePath: base, CacheType: blk.CacheWriteback}, Root: true}}
	a, doneA := startVM(t, cfg)
	_, snap, mem := snapshotAt(t, a, 0)
	a.Stop()
	<-doneA
	a.Close()

	load := func(overrides map[string]string) (Config, error) {
		t.Helper()
		bc, _ := tinyConfig(t, tiny.Image())
		b, bcfg, err := LoadSnapshot(bc, SnapshotLoad{SnapshotPath: snap, MemFilePath: mem, DriveOverrides: overrides})
		if err == nil {
			b.Close()
		}
		return bcfg, err
	}
	var clones []string
	for i := range 3 {
		clone := filepath.Join(dir, fmt.Sprintf("clone%d.cow", i))
		bcfg, err := load(map[string]string{"rootfs": clone})
		if err != nil {
			t.Fatal(err)
		}
		if d := bcfg.Drives[0]; d.Path != clone || d.BasePath != src {
			t.Fatalf("clone %d drive %s over %s, want %s over %s", i, d.Path, d.BasePath, clone, src)
		}
		clones = append(clones, clone)
	}
	for i, c := range clones {
		if got := readOverlay(t, c, src, 8192, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0x22}, 4096)) {
			t.Fatalf("clone %d does not see the source's write", i)
		}
		writeOverlay(t, c, src, bytes.Repeat([]byte{byte(0x30 + i)}, 512), 8192+512)
		writeOverlay(t, c, src, bytes.Repeat([]byte{byte(0x40 + i)}, 4096), 65536)
	}
	for i, c := range clones {
		want := bytes.Repeat([]byte{0x22}, 4096)
		copy(want[512:], bytes.Repeat([]byte{byte(0x30 + i)}, 512))
		if !bytes.Equal(readOverlay(t, c, src, 8192, 4096), want) ||
			!bytes.Equal(readOverlay(t, c, src, 65536, 4096), bytes.Repeat([]byte{byte(0x40 + i)}, 4096)) ||
			!bytes.Equal(readOverlay(t, c, src, 0, 4096), bytes.Repeat([]byte{0x11}, 4096)) {
			t.Fatalf("clone %d does not read its own writes alone", i)
		}
	}
	if got := readOverlay(t, src, base, 65536, 4096); got[0] != 0x11 {
		t.Fatal("a clone's write reached the snapshot's overlay")
	}

	// Bad overrides: nothing is made.
	if _, err := load(map[string]string{"rootfs": filepath.Join(dir, "x.cow"), "nope": filepath.Join(dir, "y.cow")}); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("override of a missing drive: %v", err)
	}
	if _, err := load(map[string]string{"rootfs": clones[0]}); err == nil {
		t.Fatal("an override onto an existing file was accepted")
	}

	// The snapshot's overlay written after the snapshot: refused.
	writeOverlay(t, src, base, []byte{0x99}, 0)
	late := filepath.Join(dir, "late.cow")
	_, err := load(map[string]string{"rootfs": late})
	if !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), src) || !strings.Contains(err.Error(), "after the snapshot") {
		t.Fatalf("load on a written overlay: %v", err)
	}
	t.Log(err)
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 5 {
		t.Fatalf("files left: %v, want base, src and three clones", names)
	}
}

package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	storage "github.com/embervm/ember/disk"
	"github.com/embervm/ember/virtio/virtiotest"
)

// cowDrive makes an overlay over a base of sectors sectors (sector i
// filled with byte i) and returns both paths.
func cowDrive(t *testing.T, sectors int) (overlay, base string) {
	t.Helper()
	base = disk(t, sectors)
	overlay = filepath.Join(t.TempDir(), "overlay.cow")
	if err := storage.CreateOverlay(overlay, base, storage.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return overlay, base
}

// TestCOWDrive: a drive on an overlay has its base's capacity and content;
// the guest's writes (a lone sector too, inside a cluster it never wrote)
// land in the overlay, survive a FLUSH and a reopen, and never reach the
// base.
func TestCOWDrive(t *testing.T) {
	overlay, base := cowDrive(t, 32)
	orig, _ := os.ReadFile(base)
	cfg := Config{ID: "root", Path: overlay, BasePath: base, CacheType: CacheWriteback}
	d, m := start(t, cfg)
	if got := binary.LittleEndian.Uint64(m.Config(0, 8)); got != 32 {
		t.Fatalf("capacity %d sectors, want the base's 32", got)
	}
	data := bytes.Repeat([]byte{0xab}, 512)
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeOut, 9)}, virtiotest.Buf{Data: data}); st != statusOK {
		t.Fatalf("write: status %d", st)
	}
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeFlush, 0)}); st != statusOK {
		t.Fatalf("flush: status %d", st)
	}
	// Sectors 8-15 are one 4 KiB cluster: the written one and seven from
	// the base, read in one request of two segments.
	head, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 6)}, virtiotest.Buf{WriteLen: 3 * 512}, virtiotest.Buf{WriteLen: 7 * 512})
	if st != statusOK {
		t.Fatalf("read: status %d", st)
	}
	got := append(m.Queues[0].Written(head, 0, 3*512), m.Queues[0].Written(head, 1, 7*512)...)
	want := bytes.Clone(orig[6*512 : 16*512])
	copy(want[3*512:], data)
	if !bytes.Equal(got, want) {
		t.Fatal("sectors 6-15 read wrong across the written sector")
	}
	if now, _ := os.ReadFile(base); !bytes.Equal(now, orig) {
		t.Fatal("the write reached the base")
	}
	if d.Metrics.WriteCount.Load() != 1 || d.Metrics.FlushCount.Load() != 1 {
		t.Fatal("metrics not counted")
	}

	s, err := storage.OpenCOW(storage.Options{Path: overlay, BasePath: base, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := make([]byte, 512)
	if err := s.ReadVec([][]byte{b}, 9*512); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("after the flush the overlay reads %x..., %v", b[:4], err)
	}
}

// TestCOWDriveRefusesAChangedBase: a base written after its overlay was
// made is refused when the drive is created, with the disk package's error.
func TestCOWDriveRefusesAChangedBase(t *testing.T) {
	overlay, base := cowDrive(t, 8)
	if err := os.WriteFile(base, make([]byte, 8*512), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{ID: "root", Path: overlay, BasePath: base}, nil)
	if err == nil {
		d.Close()
		t.Fatal("a drive on a changed base was created")
	}
	if !errors.Is(err, storage.ErrBaseChanged) {
		t.Fatalf("error %v, want ErrBaseChanged", err)
	}
	t.Log(err)
}

// TestCOWDriveReadOnly: a read-only drive on an overlay reads it and
// refuses writes.
func TestCOWDriveReadOnly(t *testing.T) {
	overlay, base := cowDrive(t, 8)
	_, m := start(t, Config{ID: "ro", Path: overlay, BasePath: base, ReadOnly: true})
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeOut, 1)}, virtiotest.Buf{Data: make([]byte, 512)}); st != statusIOErr {
		t.Fatalf("write to a read-only overlay: status %d", st)
	}
	head, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 5)}, virtiotest.Buf{WriteLen: 512})
	if b := m.Queues[0].Written(head, 0, 512); st != statusOK || b[0] != 5 {
		t.Fatalf("read: status %d, byte %d", st, b[0])
	}
}

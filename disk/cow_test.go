package disk

import (
	"bytes"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pattern is the base's byte at offset x: never zero, and different in
// every 512-byte sector, so misplaced data shows.
func pattern(x int64) byte { return byte(x/512*7+x%251) | 1 }

// makeBase writes a base of size bytes filled with pattern.
func makeBase(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "base.img")
	b := make([]byte, size)
	for i := range b {
		b[i] = pattern(int64(i))
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newOverlay makes an overlay over base and opens it.
func newOverlay(t testing.TB, base string, o CreateOptions) (*COW, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "overlay.cow")
	if err := CreateOverlay(p, base, o); err != nil {
		t.Fatal(err)
	}
	s, err := OpenCOW(Options{Path: p, BasePath: base})
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

// readAll reads the whole store.
func readAll(t testing.TB, s Store) []byte {
	t.Helper()
	b := make([]byte, s.Size())
	if err := s.ReadVec([][]byte{b}, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// split cuts b into a vector of pieces of random lengths (some empty), as
// a guest's scattered buffers are.
func split(r *rand.Rand, b []byte) [][]byte {
	var v [][]byte
	for len(b) > 0 {
		n := min(len(b), r.IntN(3000))
		v = append(v, b[:n])
		b = b[n:]
	}
	return v
}

func TestReadsOfUnwrittenClustersComeFromTheBase(t *testing.T) {
	base := makeBase(t, 3<<20+1000) // a partial last cluster
	s, _ := newOverlay(t, base, CreateOptions{})
	defer s.Close()
	want, _ := os.ReadFile(base)
	if got := readAll(t, s); !bytes.Equal(got, want) {
		t.Fatal("an empty overlay does not read as its base")
	}
	if s.Size() != int64(len(want)) {
		t.Fatalf("size %d, want %d", s.Size(), len(want))
	}
}

// TestWritesAgainstAModel: random writes and reads (aligned and not, of
// one and many segments, spanning written and unwritten clusters) read
// back as a plain byte array would, before and after a reopen, at two
// cluster sizes; the base is never written.
func TestWritesAgainstAModel(t *testing.T) {
	const size = 1<<20 + 3000
	for _, tc := range []struct {
		name    string
		cluster int
	}{{"4K", 4096}, {"64K", 65536}} {
		t.Run(tc.name, func(t *testing.T) {
			base := makeBase(t, size)
			orig, _ := os.ReadFile(base)
			s, path := newOverlay(t, base, CreateOptions{ClusterSize: tc.cluster})
			model := bytes.Clone(orig)
			r := rand.New(rand.NewPCG(1, uint64(tc.cluster)))
			for i := range 400 {
				off := r.Int64N(size)
				n := min(r.Int64N(40000), size-off)
				if i%3 == 0 { // sector-aligned, as a guest's
					off &^= 511
					n &^= 511
				}
				if r.IntN(2) == 0 {
					data := make([]byte, n)
					for j := range data {
						data[j] = byte(r.Uint32())
					}
					if err := s.WriteVec(split(r, data), off); err != nil {
						t.Fatal(err)
					}
					copy(model[off:], data)
				} else {
					got := make([]byte, n)
					if err := s.ReadVec(split(r, got), off); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, model[off:off+n]) {
						t.Fatalf("op %d: read of [%d,+%d) differs from the model", i, off, n)
					}
				}
			}
			if got := readAll(t, s); !bytes.Equal(got, model) {
				t.Fatal("the store differs from the model")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err := OpenCOW(Options{Path: path, BasePath: base})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got := readAll(t, s); !bytes.Equal(got, model) {
				t.Fatal("after a reopen the store differs from the model")
			}
			if now, _ := os.ReadFile(base); !bytes.Equal(now, orig) {
				t.Fatal("the base was written")
			}
		})
	}
}

// TestPartialClusterWriteCopiesUp: a 512-byte write into the middle of an
// unwritten cluster keeps the rest of the cluster's base data, at the
// disk's partial last cluster too.
func TestPartialClusterWriteCopiesUp(t *testing.T) {
	const size = 5*4096 + 1536
	base := makeBase(t, size)
	want, _ := os.ReadFile(base)
	s, _ := newOverlay(t, base, CreateOptions{})
	defer s.Close()
	for _, off := range []int64{4096 + 1024, 2*4096 - 512, 5 * 4096, 5*4096 + 512, size - 512} {
		data := bytes.Repeat([]byte{0xee}, 512)
		if err := s.WriteVec([][]byte{data}, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], data)
		if got := readAll(t, s); !bytes.Equal(got, want) {
			t.Fatalf("after a 512-byte write at %d the disk differs", off)
		}
	}
	if n := s.Allocated(); n != 2 {
		t.Fatalf("%d clusters allocated, want 2", n)
	}
}

func TestRangeAndReadOnly(t *testing.T) {
	base := makeBase(t, 8192)
	s, path := newOverlay(t, base, CreateOptions{})
	defer s.Close()
	b := make([]byte, 512)
	for _, off := range []int64{-512, 8192 - 511, 1 << 62} {
		if err := s.ReadVec([][]byte{b}, off); err == nil {
			t.Errorf("read at %d accepted", off)
		}
		if err := s.WriteVec([][]byte{b}, off); err == nil {
			t.Errorf("write at %d accepted", off)
		}
	}
	ro, err := OpenCOW(Options{Path: path, BasePath: base, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.WriteVec([][]byte{b}, 0); err == nil {
		t.Error("a read-only overlay took a write")
	}
}

// TestBaseChangedIsRefused: a base written, truncated or touched after the
// overlay was made is refused with ErrBaseChanged and a message saying
// what changed; a copy that kept the time opens.
func TestBaseChangedIsRefused(t *testing.T) {
	for name, change := range map[string]func(t *testing.T, base string){
		"written": func(t *testing.T, base string) {
			f, err := os.OpenFile(base, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte{0}, 100)
			f.Close()
		},
		"truncated": func(t *testing.T, base string) { os.Truncate(base, 4096) },
		"touched": func(t *testing.T, base string) {
			os.Chtimes(base, time.Now(), time.Now().Add(time.Hour))
		},
		"same size and time, other content": func(t *testing.T, base string) {
			st, _ := os.Stat(base)
			os.WriteFile(base, make([]byte, st.Size()), 0o600)
			os.Chtimes(base, st.ModTime(), st.ModTime())
		},
	} {
		t.Run(name, func(t *testing.T) {
			base := makeBase(t, 1<<20)
			_, path := newOverlay(t, base, CreateOptions{})
			change(t, base)
			_, err := OpenCOW(Options{Path: path, BasePath: base})
			if !errors.Is(err, ErrBaseChanged) {
				t.Fatalf("open after the base was %s: %v, want ErrBaseChanged", name, err)
			}
			if !strings.Contains(err.Error(), base) || !strings.Contains(err.Error(), path) {
				t.Errorf("the error names neither file: %v", err)
			}
			t.Log(err)
		})
	}
	t.Run("copy keeping the time", func(t *testing.T) {
		base := makeBase(t, 1<<20)
		_, path := newOverlay(t, base, CreateOptions{})
		st, _ := os.Stat(base)
		b, _ := os.ReadFile(base)
		moved := filepath.Join(t.TempDir(), "moved.img")
		os.WriteFile(moved, b, 0o600)
		os.Chtimes(moved, st.ModTime(), st.ModTime())
		s, err := OpenCOW(Options{Path: path, BasePath: moved})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
}

// TestBadOverlaysAreRefused: a corrupt or truncated overlay, or a plain
// file, gets a clear error at open.
func TestBadOverlaysAreRefused(t *testing.T) {
	base := makeBase(t, 1<<20)
	for name, tc := range map[string]struct {
		spoil func(path string)
		want  string
	}{
		"not an overlay": {func(p string) { os.WriteFile(p, make([]byte, 8192), 0o600) }, "magic"},
		"header bit flip": {func(p string) {
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			f.WriteAt([]byte{0x40}, offVirtualSize+2)
			f.Close()
		}, "CRC"},
		"truncated":       {func(p string) { os.Truncate(p, 1<<20) }, "truncated"},
		"too short":       {func(p string) { os.Truncate(p, 100) }, "too short"},
		"map bit too far": {func(p string) { writeAt(p, []byte{0x80}, HeaderSize+(1<<20)/4096/8) }, "past the last cluster"},
	} {
		t.Run(name, func(t *testing.T) {
			_, path := newOverlay(t, base, CreateOptions{})
			tc.spoil(path)
			_, err := OpenCOW(Options{Path: path, BasePath: base})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open: %v, want an error about %q", err, tc.want)
			}
			t.Log(err)
		})
	}
}

func writeAt(path string, b []byte, off int64) {
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt(b, off)
	f.Close()
}

func TestCreateRefuses(t *testing.T) {
	base := makeBase(t, 1<<20)
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	os.WriteFile(existing, []byte("keep"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	for name, tc := range map[string]struct {
		path, base string
		o          CreateOptions
	}{
		"existing overlay":  {existing, base, CreateOptions{}},
		"missing base":      {filepath.Join(dir, "a"), filepath.Join(dir, "nope"), CreateOptions{}},
		"empty base":        {filepath.Join(dir, "b"), empty, CreateOptions{}},
		"cluster size":      {filepath.Join(dir, "c"), base, CreateOptions{ClusterSize: 3000}},
		"small cluster":     {filepath.Join(dir, "d"), base, CreateOptions{ClusterSize: 512}},
		"base not overlay":  {filepath.Join(dir, "e"), base, CreateOptions{BaseIsOverlay: true}},
		"missing directory": {filepath.Join(dir, "no", "f"), base, CreateOptions{}},
	} {
		if err := CreateOverlay(tc.path, tc.base, tc.o); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep" {
		t.Error("an existing file was replaced")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("%d files left in the directory, want the 2 the test made", len(ents))
	}
}

// TestOverlaySpace: the done-when figure. A 1 GiB base, 10 MiB written at
// random 4 KiB-aligned places in 4 KiB writes, flushed: the overlay takes
// at most 12 MiB of the host's disk. 64 KiB clusters are logged for
// comparison.
func TestOverlaySpace(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := os.WriteFile(base, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(base, 1<<30); err != nil {
		t.Fatal(err)
	}
	for _, cluster := range []int{4096, 65536} {
		path := filepath.Join(dir, "overlay-"+strings.Repeat("x", cluster/4096))
		if err := CreateOverlay(path, base, CreateOptions{ClusterSize: cluster}); err != nil {
			t.Fatal(err)
		}
		s, err := OpenCOW(Options{Path: path, BasePath: base})
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(7, 7))
		data := bytes.Repeat([]byte{0x5a}, 4096)
		written := map[int64]bool{}
		for len(written) < (10<<20)/4096 {
			off := r.Int64N(1<<30/4096) * 4096
			if err := s.WriteVec([][]byte{data}, off); err != nil {
				t.Fatal(err)
			}
			written[off] = true
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		s.Close()
		in, err := Inspect(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d KiB clusters: 10 MiB written at random 4 KiB places take %.2f MiB on disk (%d clusters)",
			cluster/1024, float64(in.FileBytes)/(1<<20), in.AllocatedClusters)
		if cluster == 4096 && in.FileBytes > 12<<20 {
			t.Fatalf("the overlay takes %d bytes, want at most 12 MiB", in.FileBytes)
		}
	}
}

// TestOverlayChainsAndClones: three overlays made on one frozen overlay
// (as snapshot clones are) read its data, diverge independently, and
// commit to three different bases.
func TestOverlayChainsAndClones(t *testing.T) {
	const size = 1 << 20
	base := makeBase(t, size)
	orig, _ := os.ReadFile(base)
	src, srcPath := newOverlay(t, base, CreateOptions{})
	model := readAll(t, src)
	shared := bytes.Repeat([]byte{0x11}, 8192)
	if err := src.WriteVec([][]byte{shared}, 4096); err != nil {
		t.Fatal(err)
	}
	copy(model[4096:], shared)
	if _, err := src.Mark(); err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var clones []*COW
	for i := range 3 {
		p := filepath.Join(dir, "clone"+string(rune('0'+i)))
		if err := CreateOverlay(p, srcPath, CreateOptions{BaseIsOverlay: true}); err != nil {
			t.Fatal(err)
		}
		c, err := OpenCOW(Options{Path: p, BasePath: srcPath})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := readAll(t, c); !bytes.Equal(got, model) {
			t.Fatalf("clone %d does not read as the snapshot's disk", i)
		}
		clones = append(clones, c)
	}
	for i, c := range clones {
		own := bytes.Repeat([]byte{byte(0xa0 + i)}, 512)
		if err := c.WriteVec([][]byte{own}, int64(4096+1000*i)); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range clones {
		want := bytes.Clone(model)
		copy(want[4096+1000*i:], bytes.Repeat([]byte{byte(0xa0 + i)}, 512))
		if got := readAll(t, c); !bytes.Equal(got, want) {
			t.Fatalf("clone %d sees another clone's write or lost its own", i)
		}
		out := filepath.Join(dir, "merged"+string(rune('0'+i)))
		if err := Commit(c.f.Name(), out); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Fatalf("clone %d's commit differs from what it reads", i)
		}
	}
	if got, _ := os.ReadFile(base); !bytes.Equal(got, orig) {
		t.Fatal("the base was written")
	}
}

// TestChainDepthIsBounded: a loop of bases is refused, not followed.
func TestChainDepthIsBounded(t *testing.T) {
	base := makeBase(t, 1<<20)
	_, a := newOverlay(t, base, CreateOptions{})
	dir := t.TempDir()
	prev := a
	for i := range MaxChain {
		p := filepath.Join(dir, "l"+strings.Repeat("x", i))
		if err := CreateOverlay(p, prev, CreateOptions{BaseIsOverlay: true}); err != nil {
			if i < MaxChain-2 {
				t.Fatalf("level %d: %v", i, err)
			}
			if !strings.Contains(err.Error(), "deep") {
				t.Fatalf("level %d: %v, want a chain-depth error", i, err)
			}
			t.Log(err)
			return
		}
		prev = p
	}
	t.Fatal("a chain deeper than MaxChain was made")
}

func TestCommitRefusesExistingAndIsSparse(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	os.WriteFile(base, nil, 0o600)
	os.Truncate(base, 64<<20)
	s, path := newOverlay(t, base, CreateOptions{})
	s.WriteVec([][]byte{bytes.Repeat([]byte{1}, 4096)}, 32<<20)
	s.Close()
	out := filepath.Join(dir, "out")
	if err := Commit(path, out); err != nil {
		t.Fatal(err)
	}
	in, _ := Inspect(path)
	var st os.FileInfo
	if st, _ = os.Stat(out); st.Size() != 64<<20 {
		t.Fatalf("merged size %d", st.Size())
	}
	raw, _ := OpenRaw(out, true)
	defer raw.Close()
	b := readAll(t, raw)
	if b[32<<20] != 1 || b[32<<20-1] != 0 {
		t.Fatal("merged content wrong")
	}
	t.Logf("overlay %d bytes on disk", in.FileBytes)
	if err := Commit(path, out); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("commit onto an existing file: %v", err)
	}
}

// TestMarkShowsLaterWrites: the identity Mark records is the overlay's
// until a write, however soon after, and a clean close keeps it.
func TestMarkShowsLaterWrites(t *testing.T) {
	base := makeBase(t, 1<<20)
	s, path := newOverlay(t, base, CreateOptions{})
	s.WriteVec([][]byte{make([]byte, 4096)}, 8192)
	id, err := s.Mark()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := OverlayIdentity(path); err != nil || again != id {
		t.Fatalf("identity %+v after Mark, %+v now (%v)", id, again, err)
	}
	s.WriteVec([][]byte{make([]byte, 4096)}, 0)
	after, _ := OverlayIdentity(path)
	if after == id || after.Generation != id.Generation+1 {
		t.Fatalf("a write right after Mark: identity %+v, was %+v", after, id)
	}
	id2, _ := s.Mark()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if again, _ := OverlayIdentity(path); again != id2 {
		t.Fatal("closing a marked overlay changed its identity")
	}
}

// TestNoAllocationPerRequest: reads and writes of a vector allocate
// nothing, for Raw and for COW.
func TestNoAllocationPerRequest(t *testing.T) {
	base := makeBase(t, 1<<20)
	s, _ := newOverlay(t, base, CreateOptions{})
	defer s.Close()
	raw, err := OpenRaw(base, false)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	bufs := [][]byte{make([]byte, 4096), make([]byte, 8192), make([]byte, 512)}
	// One write allocates everything first, then a mix of runs.
	s.WriteVec(bufs, 8192)
	for name, st := range map[string]Store{"raw": raw, "cow": s} {
		off := int64(0)
		if n := testing.AllocsPerRun(100, func() {
			if err := st.ReadVec(bufs, off); err != nil {
				t.Fatal(err)
			}
			if err := st.WriteVec(bufs, off+65536); err != nil {
				t.Fatal(err)
			}
			off = (off + 4096) % (512 << 10)
		}); n != 0 {
			t.Errorf("%s: %.1f allocations per read+write", name, n)
		}
	}
}

package snapshot

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// anonRegion maps n bytes of anonymous memory, as guest RAM is.
func anonRegion(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// allocated returns the bytes the file at path occupies on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// dataPages returns the page numbers the filesystem reports as data.
func dataPages(t *testing.T, path string) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var pages []int64
	err = dataExtents(f, func(start, end int64) error {
		for p := start / PageSize; p*PageSize < end; p++ {
			pages = append(pages, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pages
}

// requireHoles skips the test where t.TempDir's filesystem does not keep
// 4 KiB holes.
func requireHoles(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "probe")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	defer f.Close()
	f.Truncate(1 << 20)
	f.WriteAt(make([]byte, PageSize), 8*PageSize)
	f.Sync()
	got := dataPages(t, p)
	if len(got) != 1 || got[0] != 8 {
		t.Skipf("%s does not keep 4 KiB holes (data pages %v)", dir, got)
	}
}

func TestWriteFullSparse(t *testing.T) {
	dir := t.TempDir()
	requireHoles(t, dir)
	low := anonRegion(t, 64<<20)
	high := anonRegion(t, 4<<20)
	copy(low[0:], "page zero")
	copy(low[5*PageSize+100:], "page five")
	low[len(low)-1] = 0xff
	for i := range 8 { // a run of 8 pages
		high[(16+i)*PageSize] = byte(i + 1)
	}
	path := filepath.Join(dir, "mem.full")
	if err := WriteFull(path, [][]byte{low, high}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 68<<20 {
		t.Fatalf("size %d, want %d", fi.Size(), 68<<20)
	}
	if a := allocated(t, path); a > 64<<10 {
		t.Errorf("a 68 MiB guest with 11 non-zero pages takes %d bytes on disk", a)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(low)], low) || !bytes.Equal(got[len(low):], high) {
		t.Fatal("memory file content differs from guest RAM")
	}
	want := []int64{0, 5, int64(len(low)/PageSize - 1)}
	for i := range 8 {
		want = append(want, int64(len(low)/PageSize+16+i))
	}
	if d := dataPages(t, path); !equalInts(d, want) {
		t.Errorf("data pages %v, want %v", d, want)
	}

	// Bad regions: nothing is written.
	bad := filepath.Join(dir, "bad")
	if err := WriteFull(bad, [][]byte{low[:PageSize+1]}); err == nil {
		t.Error("WriteFull of a partial page succeeded")
	}
	if err := WriteFull(bad, [][]byte{nil}); err == nil {
		t.Error("WriteFull of an empty region succeeded")
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Error("failed WriteFull left a file")
	}
	if err := WriteFull(filepath.Join(dir, "no", "such"), [][]byte{low}); err == nil {
		t.Error("WriteFull into a missing directory succeeded")
	}
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func setBit(bm []uint64, page int) { bm[page/64] |= 1 << (page % 64) }

func TestWriteDiffAndApply(t *testing.T) {
	dir := t.TempDir()
	requireHoles(t, dir)
	const lowPages, highPages = 300, 70 // not multiples of 64
	low := anonRegion(t, lowPages*PageSize)
	high := anonRegion(t, highPages*PageSize)
	for p := range lowPages {
		low[p*PageSize] = byte(p) | 1 // every page non-zero
	}
	high[3*PageSize+7] = 0x33
	base := filepath.Join(dir, "base.mem")
	if err := WriteFull(base, [][]byte{low, high}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(base)

	// The guest runs on: it changes some pages, zeroes one, and one page
	// is dirty but unchanged.
	dl, dh := make([]uint64, 5), make([]uint64, 2)
	copy(low[10*PageSize:], "ten")
	setBit(dl, 10)
	clear(low[11*PageSize : 12*PageSize]) // dirty and now zero
	setBit(dl, 11)
	setBit(dl, 299) // last page of low, unchanged
	high[69*PageSize+1] = 0x69
	setBit(dh, 69)
	high[3*PageSize+7] = 0
	setBit(dh, 3)

	diff := filepath.Join(dir, "diff.mem")
	if err := WriteDiff(diff, [][]byte{low, high}, [][]uint64{dl, dh}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(diff); fi.Size() != int64(len(before)) {
		t.Fatalf("diff is %d bytes, want %d", fi.Size(), len(before))
	}
	if d, want := dataPages(t, diff), []int64{10, 11, 299, lowPages + 3, lowPages + 69}; !equalInts(d, want) {
		t.Errorf("diff data pages %v, want %v", d, want)
	}
	if a := allocated(t, diff); a > 64<<10 {
		t.Errorf("diff of 5 pages takes %d bytes", a)
	}

	if err := ApplyDiff(base, diff); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after[:len(low)], low) || !bytes.Equal(after[len(low):], high) {
		t.Fatal("base + diff differs from guest RAM")
	}
	if bytes.Equal(after, before) {
		t.Fatal("ApplyDiff changed nothing")
	}

	// Size mismatch.
	other := filepath.Join(dir, "other.mem")
	if err := WriteFull(other, [][]byte{low}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyDiff(other, diff); !errors.Is(err, ErrMemoryFile) {
		t.Errorf("ApplyDiff onto a smaller base: %v", err)
	}
	if err := ApplyDiff(filepath.Join(dir, "missing"), diff); err == nil {
		t.Error("ApplyDiff onto a missing base succeeded")
	}
}

func TestWriteDiffBitmapChecks(t *testing.T) {
	dir := t.TempDir()
	r := anonRegion(t, 100*PageSize)
	path := filepath.Join(dir, "d")
	for name, bms := range map[string][][]uint64{
		"count":         {},
		"short":         {make([]uint64, 1)},
		"beyond pages":  {{0, 1 << 36}},
		"beyond words":  {{0, 0, 1}},
		"two for one":   {make([]uint64, 2), make([]uint64, 2)},
		"high bit last": {{0, 1 << 63}},
	} {
		if err := WriteDiff(path, [][]byte{r}, bms); err == nil {
			t.Errorf("%s: WriteDiff succeeded", name)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("failed WriteDiff left a file")
	}
	// An empty diff is a hole of the full size.
	if err := WriteDiff(path, [][]byte{r}, [][]uint64{{0, 0, 0}}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Size() != 100*PageSize {
		t.Errorf("empty diff size %d", fi.Size())
	}
}

func TestMapPrivate(t *testing.T) {
	dir := t.TempDir()
	a := anonRegion(t, 16*PageSize)
	b := anonRegion(t, 4*PageSize)
	copy(a, "region a")
	copy(b[PageSize:], "region b")
	path := filepath.Join(dir, "mem")
	if err := WriteFull(path, [][]byte{a, b}); err != nil {
		t.Fatal(err)
	}
	m, err := MapPrivate(path, []uint64{16 * PageSize, 4 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(m)
	if len(m) != 2 || !bytes.Equal(m[0], a) || !bytes.Equal(m[1], b) {
		t.Fatal("mapped memory differs from what was written")
	}
	// The file's data pages are mapped from it; its holes (a's pages after
	// the first, b's first page) are anonymous memory.
	for _, c := range []struct {
		name     string
		addr     *byte
		fromFile bool
	}{{"a's data page", &m[0][0], true}, {"a's hole", &m[0][PageSize], false}, {"a's last hole", &m[0][15*PageSize], false},
		{"b's hole", &m[1][0], false}, {"b's data page", &m[1][PageSize], true}} {
		if got := mappedFrom(t, c.addr); (got == path) != c.fromFile {
			t.Errorf("%s is mapped from %q", c.name, got)
		}
	}
	// Writes stay private.
	copy(m[1][PageSize:], "CHANGED!")
	copy(m[0][PageSize:], "HOLE")
	if f, _ := os.ReadFile(path); !bytes.Equal(f[16*PageSize+PageSize:][:8], []byte("region b")) {
		t.Error("a write to the private mapping reached the file")
	}
	if f, _ := os.ReadFile(path); !bytes.Equal(f[PageSize:][:4], make([]byte, 4)) {
		t.Error("a write to a hole reached the file")
	}

	// The file must hold all the RAM.
	_, err = MapPrivate(path, []uint64{16 * PageSize, 5 * PageSize})
	if !errors.Is(err, ErrMemoryFile) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("MapPrivate of a short file: %v", err)
	}
	// A longer file is fine (only the first bytes are used).
	if m2, err := MapPrivate(path, []uint64{PageSize}); err != nil {
		t.Error(err)
	} else {
		Unmap(m2)
	}
	for name, sizes := range map[string][]uint64{"none": nil, "zero": {0}, "partial page": {100}} {
		if _, err := MapPrivate(path, sizes); err == nil {
			t.Errorf("%s: MapPrivate succeeded", name)
		}
	}
	if _, err := MapPrivate(filepath.Join(dir, "missing"), []uint64{PageSize}); err == nil {
		t.Error("MapPrivate of a missing file succeeded")
	}
	if _, err := MapPrivate(dir, []uint64{PageSize}); err == nil {
		t.Error("MapPrivate of a directory succeeded")
	}
}

func TestIsZero(t *testing.T) {
	p := make([]byte, PageSize+1)
	if !isZero(p[1:]) { // unaligned
		t.Error("zero page reported non-zero")
	}
	for _, i := range []int{0, 7, 8, 63, 64, 2049, PageSize - 1} {
		q := make([]byte, PageSize)
		q[i] = 1
		if isZero(q) {
			t.Errorf("page with byte %d set reported zero", i)
		}
	}
}

// TestVerifyDiff checks the guard against filesystems that report more or
// less data than the dirty pages written.
func TestVerifyDiff(t *testing.T) {
	dir := t.TempDir()
	requireHoles(t, dir)
	r := make([]byte, 64*PageSize)
	f, err := os.Create(filepath.Join(dir, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(int64(len(r)))
	f.WriteAt(make([]byte, 2*PageSize), PageSize) // pages 1 and 2 hold data
	f.Sync()
	if err := verifyDiff(f, [][]byte{r}, [][]uint64{{0b110}}, 2); err != nil {
		t.Errorf("exact extents: %v", err)
	}
	if err := verifyDiff(f, [][]byte{r}, [][]uint64{{0b010}}, 1); !errors.Is(err, ErrMemoryFile) || !strings.Contains(err.Error(), "not dirty") {
		t.Errorf("extra data page: %v", err)
	}
	if err := verifyDiff(f, [][]byte{r}, [][]uint64{{0b1110}}, 3); !errors.Is(err, ErrMemoryFile) || !strings.Contains(err.Error(), "3 dirty pages") {
		t.Errorf("missing data page: %v", err)
	}
}

// mappedFrom is the path /proc/self/maps gives for the mapping holding
// addr ("" for anonymous memory).
func mappedFrom(t *testing.T, addr *byte) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	a := uint64(uintptr(unsafe.Pointer(addr)))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		l, err1 := strconv.ParseUint(lo, 16, 64)
		h, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && l <= a && a < h {
			if len(f) >= 6 {
				return f[5]
			}
			return ""
		}
	}
	t.Fatalf("no mapping holds %#x", a)
	return ""
}

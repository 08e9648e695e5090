package snapshot

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Memory files hold guest RAM regions back to back, page for page: region i
// starts at the sum of the sizes of regions 0..i-1. Both kinds are sparse:
//
//   - A full memory file (WriteFull) holds every page; all-zero pages are
//     holes, so a mostly idle guest makes a small file.
//   - A diff memory file (WriteDiff) has the full size but holds data only
//     at the pages dirtied since the previous snapshot; everything else is
//     a hole. ApplyDiff copies its data extents onto the base file.
//
// A diff is only meaningful on a filesystem that reports holes at 4 KiB
// granularity (ext4, XFS, btrfs, tmpfs without huge pages): WriteDiff
// checks that the file it wrote reads back with exactly the dirty pages as
// data and fails otherwise.

// ErrMemoryFile reports a memory file that does not fit the RAM it must hold.
var ErrMemoryFile = errors.New("memory file does not match guest RAM")

// copyChunk bounds one read/write when copying extents.
const copyChunk = 1 << 20

// checkRegions checks that every region is a whole number of pages and
// returns their total size.
func checkRegions(regions [][]byte) (int64, error) {
	var total int64
	for i, r := range regions {
		if len(r) == 0 || len(r)%PageSize != 0 {
			return 0, fmt.Errorf("RAM region %d: %d bytes, not a positive multiple of %d", i, len(r), PageSize)
		}
		total += int64(len(r))
	}
	return total, nil
}

// isZero reports whether a page (PageSize bytes, any alignment) is all zero.
func isZero(p []byte) bool {
	// Compare eight bytes at a time; unaligned loads are fine on x86-64
	// and arm64.
	w := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(p))), len(p)/8)
	for i := 0; i < len(w); i += 8 {
		if w[i]|w[i+1]|w[i+2]|w[i+3]|w[i+4]|w[i+5]|w[i+6]|w[i+7] != 0 {
			return false
		}
	}
	return true
}

// WriteFull writes guest RAM regions back to back to path, skipping all-zero
// pages so they stay holes. Like Write, it fills a temporary file and
// renames it, so a failure leaves nothing behind. The guest must be paused.
func WriteFull(path string, regions [][]byte) error {
	total, err := checkRegions(regions)
	if err != nil {
		return fmt.Errorf("write memory file %s: %w", path, err)
	}
	return writeAtomic(path, func(f *os.File) error {
		if err := f.Truncate(total); err != nil {
			return err
		}
		var base int64
		for _, r := range regions {
			for p := 0; p < len(r); {
				if isZero(r[p : p+PageSize]) {
					p += PageSize
					continue
				}
				end := p + PageSize
				for end < len(r) && end-p < copyChunk*16 && !isZero(r[end:end+PageSize]) {
					end += PageSize
				}
				if _, err := f.WriteAt(r[p:end], base+int64(p)); err != nil {
					return err
				}
				p = end
			}
			base += int64(len(r))
		}
		return nil
	})
}

// checkBitmaps checks that dirty has one bitmap per region with one bit per
// page and no bit beyond the region, and returns the dirty page count.
func checkBitmaps(regions [][]byte, dirty [][]uint64) (int64, error) {
	if len(dirty) != len(regions) {
		return 0, fmt.Errorf("%d dirty bitmaps for %d RAM regions", len(dirty), len(regions))
	}
	var n int64
	for i, r := range regions {
		pages := len(r) / PageSize
		words := (pages + 63) / 64
		bm := dirty[i]
		if len(bm) < words {
			return 0, fmt.Errorf("dirty bitmap of region %d has %d words, its %d pages need %d", i, len(bm), pages, words)
		}
		for w, v := range bm {
			valid := ^uint64(0)
			switch {
			case w >= words:
				valid = 0
			case w == words-1 && pages%64 != 0:
				valid = 1<<(pages%64) - 1
			}
			if v&^valid != 0 {
				return 0, fmt.Errorf("dirty bitmap of region %d marks a page beyond its %d pages", i, pages)
			}
			n += int64(bits.OnesCount64(v))
		}
	}
	return n, nil
}

// WriteDiff writes the pages of regions whose bit is set in dirty (one
// bitmap per region, bit i%64 of word i/64 for page i, as KVM_GET_DIRTY_LOG
// returns them) at their offsets in a sparse file of the full size. Dirty
// pages are written even when they are zero: in a diff a hole means "not
// dirty". It fails, leaving nothing behind, if the filesystem does not keep
// the file's holes at page granularity.
func WriteDiff(path string, regions [][]byte, dirty [][]uint64) error {
	total, err := checkRegions(regions)
	if err != nil {
		return fmt.Errorf("write diff memory file %s: %w", path, err)
	}
	ndirty, err := checkBitmaps(regions, dirty)
	if err != nil {
		return fmt.Errorf("write diff memory file %s: %w", path, err)
	}
	return writeAtomic(path, func(f *os.File) error {
		if err := f.Truncate(total); err != nil {
			return err
		}
		var base int64
		for i, r := range regions {
			pages := len(r) / PageSize
			bm := dirty[i]
			for p := 0; p < pages; {
				if bm[p/64]&(1<<(p%64)) == 0 {
					if bm[p/64] == 0 {
						p = (p/64 + 1) * 64
					} else {
						p++
					}
					continue
				}
				end := p + 1
				for end < pages && bm[end/64]&(1<<(end%64)) != 0 && (end-p)*PageSize < copyChunk*16 {
					end++
				}
				if _, err := f.WriteAt(r[p*PageSize:end*PageSize], base+int64(p)*PageSize); err != nil {
					return err
				}
				p = end
			}
			base += int64(len(r))
		}
		if err := f.Sync(); err != nil {
			return err
		}
		return verifyDiff(f, regions, dirty, ndirty)
	})
}

// verifyDiff checks that the data extents of the diff file f are exactly
// its dirty pages, so ApplyDiff will copy those and nothing else.
func verifyDiff(f *os.File, regions [][]byte, dirty [][]uint64, ndirty int64) error {
	isDirty := func(page int64) bool {
		for i, r := range regions {
			n := int64(len(r) / PageSize)
			if page < n {
				return dirty[i][page/64]&(1<<(page%64)) != 0
			}
			page -= n
		}
		return false
	}
	var seen int64
	err := dataExtents(f, func(start, end int64) error {
		for off := start &^ (PageSize - 1); off < end; off += PageSize {
			if !isDirty(off / PageSize) {
				return fmt.Errorf("%w: the filesystem reports data at offset %#x, a page that is not dirty: it does not keep 4 KiB holes (large blocks, huge pages or no SEEK_HOLE), so a diff written here would overwrite clean pages", ErrMemoryFile, off)
			}
			seen++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != ndirty {
		return fmt.Errorf("%w: %d dirty pages written but the filesystem reports %d pages of data (it drops zero blocks?)", ErrMemoryFile, ndirty, seen)
	}
	return nil
}

// dataExtents calls fn for each data extent [start, end) of f, found with
// SEEK_DATA and SEEK_HOLE.
func dataExtents(f *os.File, fn func(start, end int64) error) error {
	fd := int(f.Fd())
	var off int64
	for {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data after off
		}
		if err != nil {
			return fmt.Errorf("lseek SEEK_DATA: %w", err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("lseek SEEK_HOLE: %w", err)
		}
		if end <= start {
			return fmt.Errorf("lseek: hole at %d before data at %d", end, start)
		}
		if err := fn(start, end); err != nil {
			return err
		}
		off = end
	}
}

// ApplyDiff copies the data extents of the diff memory file diffPath onto
// the memory file basePath at the same offsets, producing the memory of the
// snapshot the diff was taken at (`ember snapshot apply-diff`). Apply diffs
// in the order they were taken. Both files must have the same size. The
// base is changed in place; keep a copy (a reflink is cheap) if the apply
// may be interrupted.
func ApplyDiff(basePath, diffPath string) error {
	diff, err := os.Open(diffPath)
	if err != nil {
		return err
	}
	defer diff.Close()
	base, err := os.OpenFile(basePath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer base.Close()
	ds, err := diff.Stat()
	if err != nil {
		return err
	}
	bs, err := base.Stat()
	if err != nil {
		return err
	}
	if !ds.Mode().IsRegular() || !bs.Mode().IsRegular() {
		return fmt.Errorf("apply %s to %s: not regular files", diffPath, basePath)
	}
	if ds.Size() != bs.Size() {
		return fmt.Errorf("apply %s to %s: %w: diff is %d bytes, base %d; they are not memory files of the same VM", diffPath, basePath, ErrMemoryFile, ds.Size(), bs.Size())
	}
	if st, ok := ds.Sys().(*unix.Stat_t); ok {
		// A filesystem without SEEK_HOLE reports the whole file as one data
		// extent; applying that would zero every clean page of the base.
		start, err1 := unix.Seek(int(diff.Fd()), 0, unix.SEEK_DATA)
		end, err2 := unix.Seek(int(diff.Fd()), 0, unix.SEEK_HOLE)
		if err1 == nil && err2 == nil && start == 0 && end == ds.Size() && st.Blocks*512 < ds.Size() {
			return fmt.Errorf("apply %s: %w: the file is sparse but its filesystem reports no holes", diffPath, ErrMemoryFile)
		}
	}
	buf := make([]byte, copyChunk)
	err = dataExtents(diff, func(start, end int64) error {
		return copyRange(base, diff, start, end, buf)
	})
	if err != nil {
		return fmt.Errorf("apply %s to %s: %w", diffPath, basePath, err)
	}
	if err := base.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", basePath, err)
	}
	return nil
}

// copyRange copies [start, end) of src to the same offsets in dst, with
// copy_file_range (which can share blocks on XFS and btrfs) or, where that
// is unavailable, read and write.
func copyRange(dst, src *os.File, start, end int64, buf []byte) error {
	off := start
	for off < end {
		in, out := off, off
		n, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.Fd()), &out, int(min(end-off, 1<<30)), 0)
		if err != nil || n == 0 {
			break // fall back below for the rest
		}
		off += int64(n)
	}
	for off < end {
		n := int(min(end-off, int64(len(buf))))
		if _, err := src.ReadAt(buf[:n], off); err != nil {
			return err
		}
		if _, err := dst.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// MapPrivate maps the memory file at path for a restore: a private
// mapping per RAM region, sizes[i] bytes at the offset where WriteFull put
// region i. The file's data extents are mapped from it (MAP_PRIVATE): their
// pages load on first access and guest writes stay private to the process,
// so the file must not change while mapped (truncating it makes the
// guest's next access fault). Its holes (the all-zero pages WriteFull
// skipped) are mapped anonymous instead: the guest gets the zero page or a
// fresh page of its own there, and no page of zeros is allocated in the
// file's page cache (on tmpfs, unreclaimable memory that every clone's
// touch of free guest memory would add to). The file must be at least as
// long as the RAM it holds. Unmap releases the mappings.
func MapPrivate(path string, sizes []uint64) ([][]byte, error) {
	var total uint64
	for i, s := range sizes {
		if s == 0 || s%PageSize != 0 || s > 1<<48 {
			return nil, fmt.Errorf("map %s: RAM region %d size %d is not a positive multiple of %d", path, i, s, PageSize)
		}
		total += s
	}
	if len(sizes) == 0 {
		return nil, fmt.Errorf("map %s: no RAM regions", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mappings keep the file
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("map %s: not a regular file", path)
	}
	if uint64(fi.Size()) < total {
		return nil, fmt.Errorf("map %s: %w: the file is %d bytes but guest RAM needs %d (truncated memory file?)", path, ErrMemoryFile, fi.Size(), total)
	}
	exts, ok := pageExtents(f)
	out := make([][]byte, 0, len(sizes))
	var off uint64
	for i, s := range sizes {
		m, err := mapRegion(int(f.Fd()), off, s, exts, ok)
		if err != nil {
			Unmap(out)
			return nil, fmt.Errorf("map %s region %d (%d bytes at %#x): %w", path, i, s, off, err)
		}
		out = append(out, m)
		off += s
	}
	return out, nil
}

// maxMapExtents bounds the file mappings of a restore: a file more
// fragmented than that is mapped whole (each mapping is a VMA, and a
// process has vm.max_map_count of them, 65530 by default).
const maxMapExtents = 8192

// errTooFragmented stops pageExtents' walk.
var errTooFragmented = errors.New("more than maxMapExtents data extents")

// extent is a byte range of a file.
type extent struct{ start, end uint64 }

// pageExtents lists the file's data extents widened to whole pages and
// merged, or reports false if there are more than maxMapExtents or the
// file system cannot tell (then the file is mapped whole).
func pageExtents(f *os.File) ([]extent, bool) {
	var out []extent
	err := dataExtents(f, func(s, e int64) error {
		start := uint64(s) &^ (PageSize - 1)
		end := (uint64(e) + PageSize - 1) &^ (PageSize - 1)
		if n := len(out); n > 0 && out[n-1].end >= start {
			out[n-1].end = max(out[n-1].end, end)
			return nil
		}
		if len(out) == maxMapExtents {
			return errTooFragmented
		}
		out = append(out, extent{start, end})
		return nil
	})
	return out, err == nil
}

// mapRegion maps size bytes of the file fd at off: anonymous memory with
// the file's data extents exts mapped over it (MAP_FIXED); with !ok the
// whole region from the file.
func mapRegion(fd int, off, size uint64, exts []extent, ok bool) ([]byte, error) {
	const prot = unix.PROT_READ | unix.PROT_WRITE
	if !ok {
		return unix.Mmap(fd, int64(off), int(size), prot, unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	}
	m, err := unix.Mmap(-1, 0, int(size), prot, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	end := off + size
	for _, e := range exts {
		s, t := max(e.start, off), min(e.end, end)
		if s >= t {
			continue
		}
		if _, err := unix.MmapPtr(fd, int64(s), unsafe.Pointer(&m[s-off]), uintptr(t-s), prot,
			unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_NORESERVE); err != nil {
			unix.Munmap(m)
			return nil, fmt.Errorf("file extent %#x..%#x: %w", s, t, err)
		}
	}
	return m, nil
}

// Unmap releases mappings made by MapPrivate.
func Unmap(regions [][]byte) error {
	var first error
	for _, r := range regions {
		if err := unix.Munmap(r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

package lab

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// File permission bits used for initramfs entries.
const (
	modeDir  = 0o755
	modeExec = 0o755
	modeFile = 0o644
)

// Entry is one file, directory or symlink of an initramfs.
type Entry struct {
	// Name is the path inside the archive, without a leading slash.
	Name string
	// Mode holds the permission bits (file type comes from the other fields).
	Mode uint64
	// Data is the content of a regular file (ignored for dirs and symlinks).
	Data []byte
	// Source, if set, is a host file whose content is used instead of Data.
	Source string
	// Dir marks a directory.
	Dir bool
	// Target, if set, makes the entry a symlink to Target.
	Target string
}

// WriteInitramfs writes entries as a gzip-compressed newc cpio archive to w.
// The archive is reproducible: entries are sorted by name, parent directories
// are created implicitly, and timestamps, owners and inode numbers are fixed.
// Character devices are not needed: both the lab and the guests mount
// devtmpfs, and the kernel creates /dev/console for an initramfs itself.
func WriteInitramfs(w io.Writer, entries []Entry) error {
	all, err := withParents(entries)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return fmt.Errorf("creating gzip writer: %w", err)
	}
	bw := bufio.NewWriter(zw)
	rw := cpio.Newc.Writer(bw)
	for i, e := range all {
		rec, err := e.record(uint64(i + 1))
		if err != nil {
			return err
		}
		if err := rw.WriteRecord(rec); err != nil {
			return fmt.Errorf("writing %s to the archive: %w", e.Name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("writing the cpio trailer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("flushing the archive: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("finishing gzip stream: %w", err)
	}
	return nil
}

// withParents normalizes entry names, adds missing parent directories,
// rejects duplicates and returns the entries sorted so that every directory
// precedes its contents.
func withParents(entries []Entry) ([]Entry, error) {
	byName := make(map[string]Entry, len(entries))
	for _, e := range entries {
		name := path.Clean(strings.TrimPrefix(e.Name, "/"))
		if name == "." || name == ".." || strings.HasPrefix(name, "../") {
			return nil, fmt.Errorf("invalid initramfs entry name %q", e.Name)
		}
		if _, dup := byName[name]; dup {
			return nil, fmt.Errorf("duplicate initramfs entry %q", name)
		}
		e.Name = name
		byName[name] = e
	}
	for name := range byName {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if existing, ok := byName[d]; ok {
				if !existing.Dir {
					return nil, fmt.Errorf("initramfs entry %q is inside non-directory %q", name, d)
				}
				continue
			}
			byName[d] = Entry{Name: d, Dir: true, Mode: modeDir}
		}
	}
	all := make([]Entry, 0, len(byName))
	for _, e := range byName {
		all = append(all, e)
	}
	// Sorting by name puts "a" before "a/b"; "a-b" may sort between them,
	// which is harmless since "a" already exists by then.
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return all, nil
}

// record converts e into a cpio record with inode number ino.
func (e Entry) record(ino uint64) (cpio.Record, error) {
	info := cpio.Info{Ino: ino, Name: e.Name, NLink: 1}
	perm := e.Mode &^ cpio.S_IFMT
	switch {
	case e.Dir:
		info.Mode = cpio.S_IFDIR | perm
		info.NLink = 2
		return cpio.Record{Info: info}, nil
	case e.Target != "":
		info.Mode = cpio.S_IFLNK | 0o777
		return cpio.StaticRecord([]byte(e.Target), info), nil
	}
	data := e.Data
	if e.Source != "" {
		b, err := os.ReadFile(e.Source)
		if err != nil {
			return cpio.Record{}, fmt.Errorf("reading %s for initramfs entry %s: %w", e.Source, e.Name, err)
		}
		data = b
	}
	info.Mode = cpio.S_IFREG | perm
	return cpio.StaticRecord(data, info), nil
}

// ReadInitramfsNames lists the names in a gzip-compressed newc archive; it is
// used by tests and by `ember-lab` diagnostics.
func ReadInitramfsNames(r io.Reader) ([]string, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("opening gzip stream: %w", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("decompressing archive: %w", err)
	}
	rr := cpio.Newc.Reader(strings.NewReader(string(raw)))
	recs, err := cpio.ReadAllRecords(rr)
	if err != nil {
		return nil, fmt.Errorf("reading cpio records: %w", err)
	}
	names := make([]string, 0, len(recs))
	for _, r := range recs {
		names = append(names, r.Name)
	}
	return names, nil
}

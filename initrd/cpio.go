package initrd

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

// Permission bits commonly used for entries.
const (
	ModeDir  = 0o755
	ModeExec = 0o755
	ModeFile = 0o644
)

// Entry is one file, directory or symlink of an archive.
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

// Write writes entries as a gzip-compressed newc cpio archive to w.
// Character devices are not needed: the guests mount devtmpfs, and the
// kernel's built-in initramfs already has /dev/console.
func Write(w io.Writer, entries []Entry) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return fmt.Errorf("creating gzip writer: %w", err)
	}
	if err := WriteUncompressed(zw, entries); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("finishing gzip stream: %w", err)
	}
	return nil
}

// WriteZstd writes entries as a zstd-compressed newc cpio archive to w:
// one frame that records its content size and a checksum, which Linux's
// initramfs decompressor (lib/decompress_unzstd.c, CONFIG_RD_ZSTD) takes
// and checks. zstd rather than gzip: the guest inflates it at every boot,
// and zstd decompresses several times faster for a smaller archive.
func WriteZstd(w io.Writer, entries []Entry) error {
	var raw bytes.Buffer
	if err := WriteUncompressed(&raw, entries); err != nil {
		return err
	}
	zw, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderCRC(true))
	if err != nil {
		return fmt.Errorf("creating zstd writer: %w", err)
	}
	defer zw.Close()
	if _, err := w.Write(zw.EncodeAll(raw.Bytes(), nil)); err != nil {
		return fmt.Errorf("writing the zstd archive: %w", err)
	}
	return nil
}

// WriteUncompressed writes entries as a plain newc cpio archive to w.
func WriteUncompressed(w io.Writer, entries []Entry) error {
	all, err := withParents(entries)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
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
			byName[d] = Entry{Name: d, Dir: true, Mode: ModeDir}
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

// File is one record of an initrd as List reads it.
type File struct {
	Name string
	// Mode is the newc mode: file type and permission bits.
	Mode uint64
	Data []byte
}

// Newc framing (buffer-format.rst): a 110-byte ASCII header whose magic is
// "070701", the name and its NUL padded to 4 bytes, the data padded to 4.
const (
	newcMagic      = "070701"
	newcHeaderSize = 110
	newcAlign      = 4
)

// gzipMagic starts a gzip member (RFC 1952 section 2.3.1); zstdMagic a
// zstd frame (RFC 8878 section 3.1.1, little-endian 0xFD2FB528).
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// maxListSize bounds what List decompresses, so a hostile archive cannot
// take unbounded memory.
const maxListSize = 1 << 30

// List reads an initrd as Linux unpacks one (init/initramfs.c,
// unpack_to_rootfs): archives one after the other, each gzip- or
// zstd-compressed or plain; zero bytes between them are skipped; a plain
// archive must start at a 4-byte-aligned offset. It returns every record
// but the trailers, in order. Tests and the lab's diagnostics use it.
func List(r io.Reader) ([]File, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxListSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the initrd: %w", err)
	}
	if len(data) > maxListSize {
		return nil, fmt.Errorf("initrd larger than %d bytes", maxListSize)
	}
	var files []File
	for off := 0; off < len(data); {
		if data[off] == 0 {
			off++
			continue
		}
		rest := data[off:]
		switch {
		case bytes.HasPrefix(rest, []byte(newcMagic)):
			if off%newcAlign != 0 {
				return nil, fmt.Errorf("cpio archive at offset %d: not 4-byte aligned (the kernel would take it for compressed data)", off)
			}
			fs, n, err := readArchive(rest)
			if err != nil {
				return nil, fmt.Errorf("cpio archive at offset %d: %w", off, err)
			}
			files = append(files, fs...)
			off += n
		case bytes.HasPrefix(rest, gzipMagic):
			br := bytes.NewReader(rest) // an io.ByteReader: gzip reads no further than its member
			zr, err := gzip.NewReader(br)
			if err != nil {
				return nil, fmt.Errorf("gzip member at offset %d: %w", off, err)
			}
			zr.Multistream(false)
			raw, err := io.ReadAll(io.LimitReader(zr, maxListSize+1))
			if err != nil {
				return nil, fmt.Errorf("gzip member at offset %d: %w", off, err)
			}
			if len(raw) > maxListSize {
				return nil, fmt.Errorf("gzip member at offset %d: more than %d bytes", off, maxListSize)
			}
			fs, err := listPlain(raw)
			if err != nil {
				return nil, fmt.Errorf("gzip member at offset %d: %w", off, err)
			}
			files = append(files, fs...)
			off += len(rest) - br.Len()
		case bytes.HasPrefix(rest, zstdMagic):
			raw, n, err := zstdFrame(rest)
			if err != nil {
				return nil, fmt.Errorf("zstd frame at offset %d: %w", off, err)
			}
			fs, err := listPlain(raw)
			if err != nil {
				return nil, fmt.Errorf("zstd frame at offset %d: %w", off, err)
			}
			files = append(files, fs...)
			off += n
		default:
			return nil, fmt.Errorf("offset %d: neither a cpio archive nor gzip or zstd data", off)
		}
	}
	return files, nil
}

// zstdFrame decompresses the one zstd frame at the start of b and returns
// its content and its length in b, as the kernel does before it looks for
// the next archive. The frame must say its content size (WriteZstd's do),
// which is bounded by maxListSize before anything is allocated.
func zstdFrame(b []byte) ([]byte, int, error) {
	var h zstd.Header
	if err := h.Decode(b); err != nil {
		return nil, 0, err
	}
	if !h.HasFCS || h.FrameContentSize > maxListSize {
		return nil, 0, fmt.Errorf("content size %d (known: %v): want a known size of at most %d bytes", h.FrameContentSize, h.HasFCS, maxListSize)
	}
	// The frame's length: its blocks are walked so that it is decoded
	// alone, as DecodeAll takes every frame in its input.
	n, err := frameLength(b, h)
	if err != nil {
		return nil, 0, err
	}
	zr, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxListSize))
	if err != nil {
		return nil, 0, err
	}
	defer zr.Close()
	// No buffer sized from the header's claim: a frame of a few bytes
	// could otherwise take 1 GiB before it fails to decode.
	raw, err := zr.DecodeAll(b[:n], nil)
	if err != nil {
		return nil, 0, err
	}
	return raw, n, nil
}

// frameLength returns the length of the zstd frame at the start of b
// (RFC 8878 section 3.1.1): its header, its blocks (each a 3-byte header
// giving its type and size, the last flagged), and the 4-byte checksum
// when the header says there is one.
func frameLength(b []byte, h zstd.Header) (int, error) {
	const (
		blockHeaderSize = 3
		blockRLE        = 1
		blockReserved   = 3
		checksumSize    = 4
	)
	off := h.HeaderSize
	for {
		if off+blockHeaderSize > len(b) {
			return 0, errors.New("truncated block header")
		}
		bh := uint32(b[off]) | uint32(b[off+1])<<8 | uint32(b[off+2])<<16
		last, typ, size := bh&1 == 1, (bh>>1)&3, int(bh>>3)
		if typ == blockReserved {
			return 0, errors.New("reserved block type")
		}
		if typ == blockRLE {
			size = 1 // an RLE block stores its byte once
		}
		off += blockHeaderSize + size
		if off > len(b) {
			return 0, errors.New("truncated block")
		}
		if last {
			break
		}
	}
	if h.HasCheckSum {
		off += checksumSize
		if off > len(b) {
			return 0, errors.New("truncated checksum")
		}
	}
	return off, nil
}

// listPlain reads uncompressed archives, as the kernel reads the output of
// a decompressor: zeros skipped, each archive 4-byte aligned.
func listPlain(b []byte) ([]File, error) {
	var files []File
	for off := 0; off < len(b); {
		if b[off] == 0 {
			off++
			continue
		}
		if off%newcAlign != 0 || !bytes.HasPrefix(b[off:], []byte(newcMagic)) {
			return nil, fmt.Errorf("offset %d: no aligned cpio archive", off)
		}
		fs, n, err := readArchive(b[off:])
		if err != nil {
			return nil, fmt.Errorf("cpio archive at offset %d: %w", off, err)
		}
		files = append(files, fs...)
		off += n
	}
	return files, nil
}

// readArchive reads one newc archive at the start of b with u-root's
// reader and returns its records and its length up to the end of the
// trailer. Each header's sizes are checked against b first: u-root
// allocates the name before reading it.
func readArchive(b []byte) ([]File, int, error) {
	rr := cpio.Newc.Reader(bytes.NewReader(b))
	var files []File
	for pos := 0; ; {
		size, err := recordSize(b[pos:])
		if err != nil {
			return nil, 0, fmt.Errorf("record at offset %d: %w", pos, err)
		}
		rec, err := rr.ReadRecord()
		if errors.Is(err, io.EOF) { // u-root's reader says so at the trailer
			return files, pos + size, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("record at offset %d: %w", pos, err)
		}
		files = append(files, File{Name: rec.Name, Mode: rec.Mode, Data: b[rec.FilePos : rec.FilePos+int64(rec.FileSize)]})
		pos += size
	}
}

// Where a newc header holds the name's and the data's lengths (eight hex
// digits each, after the magic and the fields before them).
const (
	newcFileSizeField = len(newcMagic) + 6*8
	newcNameSizeField = len(newcMagic) + 11*8
)

// recordSize returns the length of the record at the start of b, padding
// included, after checking that it lies within b.
func recordSize(b []byte) (int, error) {
	if len(b) < newcHeaderSize {
		return 0, errors.New("truncated header")
	}
	field := func(off int) (uint64, error) { return strconv.ParseUint(string(b[off:off+8]), 16, 32) }
	nameSize, err := field(newcNameSizeField)
	if err != nil {
		return 0, fmt.Errorf("name size: %w", err)
	}
	fileSize, err := field(newcFileSizeField)
	if err != nil {
		return 0, fmt.Errorf("file size: %w", err)
	}
	n := align(newcHeaderSize+int(nameSize)) + int(fileSize)
	if n > len(b) {
		return 0, errors.New("truncated record")
	}
	return min(align(n), len(b)), nil
}

func align(n int) int { return (n + newcAlign - 1) &^ (newcAlign - 1) }

// Names lists the record names of an initrd (see List).
func Names(r io.Reader) ([]string, error) {
	files, err := List(r)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, f.Name)
	}
	return names, nil
}

package loader

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/pierrec/lz4/v4"
)

const (
	// maxVmlinuxSize bounds a decompressed kernel, so that a hostile
	// bzImage cannot make Ember allocate without limit. Real x86-64
	// vmlinux files are tens of MiB.
	maxVmlinuxSize = 512 << 20
	// maxBzImageSize bounds the bzImage ExtractVmlinuxFile reads.
	maxBzImageSize = 512 << 20

	// lz4LegacyMagic starts an LZ4 legacy frame and may recur between its
	// blocks (LZ4 Frame Format, "Legacy frame"; 02 21 4c 18 on disk).
	lz4LegacyMagic = 0x184c2102
	// lz4FieldSize is the size of the legacy magic and of each block's
	// little-endian compressed-size field.
	lz4FieldSize = 4
	// lz4LegacyBlockMax is the most a legacy-frame block decompresses to.
	lz4LegacyBlockMax = 8 << 20
	// lz4MaxRatio bounds LZ4 expansion: each input byte yields at most 255
	// output bytes (a match-length continuation byte), so a block of n
	// bytes never decompresses to more than 255*n.
	lz4MaxRatio = 255
	// deflateMaxRatio bounds deflate expansion (RFC 1951: a 258-byte match
	// costs at least 2 bits, about 1032:1), used only to size a buffer.
	deflateMaxRatio = 1032
	// sizeTrailer is the 4-byte little-endian uncompressed size the kernel
	// build appends to compressed payloads (scripts/Makefile.lib size_append).
	sizeTrailer = 4
)

// ExtractVmlinux returns the ELF vmlinux compressed inside a bzImage: the
// payload at payload_offset (relative to the protected-mode kernel) of
// payload_length bytes, decompressed. gzip, LZ4 (legacy frames, as Debian's
// cloud kernels use) and uncompressed payloads are supported; other
// compressors are named in the error. The result is at most 512 MiB and is
// checked to be an x86-64 ELF.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	out, err := extractVmlinux(bzImage, maxVmlinuxSize)
	if err != nil {
		return nil, fmt.Errorf("extract vmlinux: %w", err)
	}
	return out, nil
}

// ExtractVmlinuxFile extracts the vmlinux inside the bzImage file in and
// writes it to out atomically: out is either the complete vmlinux or left
// as it was.
func ExtractVmlinuxFile(in, out string) error {
	b, err := readBounded(in, maxBzImageSize)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", in, err)
	}
	v, err := extractVmlinux(b, maxVmlinuxSize)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", in, err)
	}
	if err := writeAtomic(out, v); err != nil {
		return fmt.Errorf("extract vmlinux from %s: write %s: %w", in, out, err)
	}
	return nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("file is larger than %s", mib(uint64(limit)))
	}
	return b, nil
}

// writeAtomic writes b to path through a temporary file in the same
// directory and a rename; on error nothing is left behind.
func writeAtomic(path string, b []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(b); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// extractVmlinux is ExtractVmlinux with the output bound as a parameter.
func extractVmlinux(bz []byte, limit int) ([]byte, error) {
	payload, err := bzPayload(bz)
	if err != nil {
		return nil, err
	}
	var out []byte
	switch name := compression(payload); name {
	case "gzip":
		out, err = gunzip(payload, limit)
	case "lz4":
		out, err = unlz4Legacy(payload, limit)
	case "none":
		if len(payload) > limit {
			return nil, fmt.Errorf("uncompressed payload is larger than %s", mib(uint64(limit)))
		}
		out = bytes.Clone(payload)
	case "":
		return nil, fmt.Errorf("payload compression not recognised (starts with %s)", describeStart(payload))
	default:
		return nil, fmt.Errorf("payload compressed with %s, which Ember cannot extract yet (gzip and lz4 are supported)", name)
	}
	if err != nil {
		return nil, err
	}
	if err := checkVmlinux(out); err != nil {
		return nil, err
	}
	return out, nil
}

// bzPayload returns the compressed payload of a bzImage.
func bzPayload(bz []byte) ([]byte, error) {
	if len(bz) == 0 {
		return nil, errors.New("file is empty")
	}
	if !isBzImage(bz) {
		if bytes.HasPrefix(bz, []byte(elf.ELFMAG)) {
			return nil, errors.New("not a bzImage: already an ELF vmlinux")
		}
		return nil, fmt.Errorf("not a bzImage (no %q at %#x; starts with %s)", bzMagic, hdrMagic, describeStart(bz))
	}
	le := binary.LittleEndian
	if len(bz) < hdrPayloadLength+4 {
		return nil, fmt.Errorf("truncated: bzImage setup header needs %d bytes, file has %d", hdrPayloadLength+4, len(bz))
	}
	if v := le.Uint16(bz[hdrVersion:]); v < minPayloadProtocol {
		return nil, fmt.Errorf("bzImage boot protocol %s has no payload fields (needs %s)", protocolString(v), protocolString(minPayloadProtocol))
	}
	start := pmOffset(bz) + uint64(le.Uint32(bz[hdrPayloadOffset:]))
	n := uint64(le.Uint32(bz[hdrPayloadLength:]))
	if n == 0 {
		return nil, errors.New("bzImage payload_length is 0")
	}
	if start > uint64(len(bz)) || n > uint64(len(bz))-start {
		return nil, fmt.Errorf("truncated: payload needs bytes up to %d, file has %d", start+n, len(bz))
	}
	return bz[start : start+n], nil
}

// compression names the compressor of a payload from its magic, or "".
// The magics are those of the compressors arch/x86/boot/compressed/Makefile
// can use, as each format's specification defines them.
func compression(p []byte) string {
	magics := []struct {
		magic []byte
		name  string
	}{
		{[]byte{0x1f, 0x8b}, "gzip"},                   // RFC 1952: ID1 ID2
		{[]byte{0x02, 0x21, 0x4c, 0x18}, "lz4"},        // LZ4 legacy frame magic 0x184C2102
		{[]byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, "xz"}, // .xz file format: header magic
		{[]byte{0x28, 0xb5, 0x2f, 0xfd}, "zstd"},       // RFC 8878: frame magic 0xFD2FB528
		{[]byte("BZh"), "bzip2"},                       // bzip2 stream header
		{[]byte{0x5d, 0x00, 0x00}, "lzma"},             // lzma_alone: properties lc=3 lp=0 pb=2
		{[]byte{0x89, 'L', 'Z', 'O'}, "lzo"},           // lzop file magic
		{[]byte(elf.ELFMAG), "none"},                   // CONFIG_KERNEL_UNCOMPRESSED: the ELF itself
	}
	for _, m := range magics {
		if bytes.HasPrefix(p, m.magic) {
			return m.name
		}
	}
	return ""
}

// gunzip decompresses a single gzip member of at most limit bytes.
func gunzip(p []byte, limit int) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(p))
	if err != nil {
		return nil, fmt.Errorf("gzip payload: %w", err)
	}
	zr.Multistream(false)
	var buf bytes.Buffer
	if len(p) >= sizeTrailer { // ISIZE, the gzip trailer: a size hint only
		hint := uint64(binary.LittleEndian.Uint32(p[len(p)-sizeTrailer:]))
		buf.Grow(int(min(hint, uint64(limit), uint64(len(p))*deflateMaxRatio)))
	}
	n, err := buf.ReadFrom(io.LimitReader(zr, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("gzip payload: %w", err)
	}
	if n > int64(limit) {
		return nil, fmt.Errorf("gzip payload decompresses to more than %s", mib(uint64(limit)))
	}
	return buf.Bytes(), nil
}

// unlz4Legacy decompresses an LZ4 legacy frame the way the kernel's
// lib/decompress_unlz4.c does: after the magic come blocks, each a
// little-endian u32 compressed size and an independent LZ4 block of at most
// 8 MiB output. A size equal to the magic starts a new frame; a size that
// is zero or runs past the end of the payload (the kernel's 4-byte size
// trailer) ends the stream.
func unlz4Legacy(p []byte, limit int) ([]byte, error) {
	le := binary.LittleEndian
	maxBlock := lz4.CompressBlockBound(lz4LegacyBlockMax)
	var out []byte
	pos := lz4FieldSize // past the magic
	for len(p)-pos >= lz4FieldSize {
		n := le.Uint32(p[pos:])
		if n == lz4LegacyMagic {
			pos += lz4FieldSize
			continue
		}
		if n == 0 || uint64(n) > uint64(len(p)-pos-lz4FieldSize) {
			break
		}
		if int(n) > maxBlock {
			return nil, fmt.Errorf("lz4 payload: block at offset %d is %d bytes, more than an 8 MiB block compresses to", pos, n)
		}
		src := p[pos+lz4FieldSize : pos+lz4FieldSize+int(n)]
		room := min(lz4LegacyBlockMax, len(src)*lz4MaxRatio)
		if len(out)+room > limit {
			room = limit - len(out)
		}
		out = slices.Grow(out, room)
		got, err := lz4.UncompressBlock(src, out[len(out):len(out)+room])
		if err != nil {
			if room < min(lz4LegacyBlockMax, len(src)*lz4MaxRatio) {
				return nil, fmt.Errorf("lz4 payload decompresses to more than %s", mib(uint64(limit)))
			}
			return nil, fmt.Errorf("lz4 payload: block at offset %d: %w", pos, err)
		}
		out = out[:len(out)+got]
		pos += lz4FieldSize + int(n)
	}
	if len(out) == 0 {
		return nil, errors.New("lz4 payload holds no data")
	}
	if len(p)-pos == sizeTrailer {
		if want := le.Uint32(p[pos:]); uint64(want) != uint64(len(out)) {
			return nil, fmt.Errorf("lz4 payload decompresses to %d bytes, but its size trailer says %d", len(out), want)
		}
	}
	return out, nil
}

// checkVmlinux verifies that b starts with an x86-64 ELF header.
func checkVmlinux(b []byte) error {
	if !bytes.HasPrefix(b, []byte(elf.ELFMAG)) {
		return fmt.Errorf("decompressed payload is not an ELF (starts with %s)", describeStart(b))
	}
	if len(b) < elf64HeaderSize {
		return fmt.Errorf("decompressed ELF is truncated (%d bytes)", len(b))
	}
	if c := elf.Class(b[elf.EI_CLASS]); c != elf.ELFCLASS64 {
		return fmt.Errorf("decompressed ELF is %v, want %v", c, elf.ELFCLASS64)
	}
	if m := elf.Machine(binary.LittleEndian.Uint16(b[ehMachineOff:])); m != elf.EM_X86_64 {
		return fmt.Errorf("decompressed ELF for %s, want x86-64", machineName(m))
	}
	return nil
}

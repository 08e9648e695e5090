package lab

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/pierrec/lz4/v4"
)

// Offsets and values of the x86 boot protocol's setup header
// (Documentation/x86/boot.rst).
const (
	setupSectsOffset    = 0x1f1
	headerMagicOffset   = 0x202
	headerMagic         = "HdrS"
	payloadOffsetOffset = 0x248
	payloadLengthOffset = 0x24c
	sectorSize          = 512
	defaultSetupSects   = 4
)

// xenNotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the PVH entry point note.
const xenNotePhys32Entry = 18

// Compressed payload magics.
const (
	magicXZ   = "\xfd7zXZ\x00"
	magicGzip = "\x1f\x8b"
	magicLZ4  = "\x02\x21\x4c\x18"
)

// bzImagePayload returns the compressed kernel inside a bzImage.
func bzImagePayload(bz []byte) ([]byte, error) {
	if len(bz) < payloadLengthOffset+4 || string(bz[headerMagicOffset:headerMagicOffset+4]) != headerMagic {
		return nil, fmt.Errorf("not a bzImage (no %s header)", headerMagic)
	}
	setupSects := int(bz[setupSectsOffset])
	if setupSects == 0 {
		setupSects = defaultSetupSects
	}
	off := binary.LittleEndian.Uint32(bz[payloadOffsetOffset:])
	length := binary.LittleEndian.Uint32(bz[payloadLengthOffset:])
	start := uint64(setupSects+1)*sectorSize + uint64(off)
	end := start + uint64(length)
	if length == 0 || end > uint64(len(bz)) {
		return nil, fmt.Errorf("bzImage payload [%d, %d) out of range (file is %d bytes)", start, end, len(bz))
	}
	return bz[start:end], nil
}

// decompressPayload decompresses a bzImage payload (xz through the xz tool,
// gzip and LZ4 in Go).
func decompressPayload(ctx context.Context, p []byte) ([]byte, error) {
	switch {
	case bytes.HasPrefix(p, []byte(magicXZ)):
		cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
		cmd.Stdin = bytes.NewReader(p)
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("xz -d (install xz-utils): %w", commandError(err))
		}
		return out, nil
	case bytes.HasPrefix(p, []byte(magicGzip)):
		zr, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return nil, fmt.Errorf("gzip payload: %w", err)
		}
		zr.Multistream(false)
		out, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("decompressing gzip payload: %w", err)
		}
		return out, nil
	case bytes.HasPrefix(p, []byte(magicLZ4)):
		out, err := io.ReadAll(lz4.NewReader(bytes.NewReader(p)))
		if err != nil && len(out) == 0 {
			return nil, fmt.Errorf("decompressing lz4 payload: %w", err)
		}
		// The legacy LZ4 frame is followed by the appended size; the
		// reader may report that as an error after the real data.
		return out, nil
	}
	return nil, fmt.Errorf("unknown bzImage payload compression (magic % x)", p[:min(len(p), 6)])
}

// hasPVHNote reports whether an ELF kernel has the PVH entry note, which
// lets QEMU boot it directly (skipping the slow in-guest decompression).
func hasPVHNote(vmlinux []byte) (bool, error) {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return false, fmt.Errorf("parsing vmlinux: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return false, fmt.Errorf("reading ELF notes: %w", err)
		}
		for len(data) >= 12 {
			namesz := binary.LittleEndian.Uint32(data[0:])
			descsz := binary.LittleEndian.Uint32(data[4:])
			typ := binary.LittleEndian.Uint32(data[8:])
			nameEnd := 12 + int(align4(namesz))
			descEnd := nameEnd + int(align4(descsz))
			if descEnd > len(data) {
				break
			}
			name := string(bytes.TrimRight(data[12:12+int(namesz)], "\x00"))
			if name == "Xen" && typ == xenNotePhys32Entry {
				return true, nil
			}
			data = data[descEnd:]
		}
	}
	return false, nil
}

func align4(n uint32) uint32 { return (n + 3) &^ 3 }

// extractPVHVmlinux writes the ELF vmlinux inside bzImagePath to out, if it
// has a PVH entry point. It returns false (and writes nothing) otherwise.
func extractPVHVmlinux(ctx context.Context, bzImagePath, out string) (bool, error) {
	bz, err := os.ReadFile(bzImagePath)
	if err != nil {
		return false, fmt.Errorf("reading the lab kernel: %w", err)
	}
	payload, err := bzImagePayload(bz)
	if err != nil {
		return false, fmt.Errorf("%s: %w", bzImagePath, err)
	}
	vmlinux, err := decompressPayload(ctx, payload)
	if err != nil {
		return false, fmt.Errorf("%s: %w", bzImagePath, err)
	}
	ok, err := hasPVHNote(vmlinux)
	if err != nil || !ok {
		return false, err
	}
	if err := os.WriteFile(out, vmlinux, 0o644); err != nil {
		return false, fmt.Errorf("writing %s: %w", out, err)
	}
	return true, nil
}

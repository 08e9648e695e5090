package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// bigVmlinux is a test vmlinux with a long compressible tail, so that LZ4
// payloads span several blocks.
func bigVmlinux() []byte {
	v := testVmlinux(true)
	for i := range 40 {
		v = append(v, bytes.Repeat([]byte{byte(i)}, 1000)...)
		v = append(v, pattern(100, byte(i))...)
	}
	return v
}

func TestExtractVmlinux(t *testing.T) {
	v := bigVmlinux()
	payloads := map[string][]byte{
		"gzip":               gzipped(t, v),
		"lz4 one block":      lz4Legacy(t, v, lz4LegacyBlockMax, true),
		"lz4 blocks":         lz4Legacy(t, v, 4096, true),
		"lz4 literal blocks": lz4Legacy(t, v, 1000, false),
		"uncompressed":       v,
	}
	// A legacy magic between blocks starts a new frame (concatenated streams).
	le := binary.LittleEndian
	a, b := lz4Legacy(t, v[:5000], 4096, true), lz4Legacy(t, v[5000:], 4096, true)
	cat := append(a[:len(a)-sizeTrailer:len(a)-sizeTrailer], b[:len(b)-sizeTrailer]...)
	payloads["lz4 concatenated"] = le.AppendUint32(cat, uint32(len(v)))
	for name, p := range payloads {
		got, err := ExtractVmlinux(testBzImage(p))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, v) {
			t.Errorf("%s: extracted %d bytes differ from the %d-byte vmlinux", name, len(got), len(v))
		}
	}

	// The extracted vmlinux loads.
	got, err := ExtractVmlinux(testBzImage(payloads["lz4 blocks"]))
	if err != nil {
		t.Fatal(err)
	}
	k, err := loadBytes(t, newTestMem(testMemSize), got)
	if err != nil || !k.HasPVH || k.PVHEntry != testPVHEntry {
		t.Fatalf("load extracted vmlinux: %+v, %v", k, err)
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	v := testVmlinux(true)
	le := binary.LittleEndian
	lz := lz4Legacy(t, v, 4096, true)
	badTrailer := bytes.Clone(lz)
	le.PutUint32(badTrailer[len(badTrailer)-4:], uint32(len(v)+1))
	corrupt := bytes.Clone(lz)
	corrupt[8] = 0xff // first token: literal run longer than the block
	bigBlock := le.AppendUint32(le.AppendUint32(nil, lz4LegacyMagic), 9<<20)
	bigBlock = append(bigBlock, make([]byte, 9<<20)...)
	notELF := gzipped(t, []byte("hello, this is not an ELF file at all"))
	aarch := buildELF(elf.ELFCLASS64, elf.EM_AARCH64, testText, []tseg{{typ: elf.PT_LOAD, paddr: testText, data: []byte{1}, memsz: 1}})
	bz := testBzImage(gzipped(t, v))
	oldProto := bytes.Clone(bz)
	le.PutUint16(oldProto[hdrVersion:], 0x0207)
	farPayload := bytes.Clone(bz)
	le.PutUint32(farPayload[hdrPayloadOffset:], 0xfffffff0)

	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "extract vmlinux: file is empty"},
		{"text", []byte("just some text, long enough to not be a bzImage header"), `not a bzImage (no "HdrS" at 0x202; starts with 0x6a 0x75 0x73 0x74 "just")`},
		{"vmlinux", v, "not a bzImage: already an ELF vmlinux"},
		{"truncated header", bz[:0x240], "truncated: bzImage setup header needs 592 bytes, file has 576"},
		{"old protocol", oldProto, "bzImage boot protocol 2.07 has no payload fields (needs 2.08)"},
		{"payload past end", farPayload, "truncated: payload needs bytes up to"},
		{"truncated payload", bz[:len(bz)-0x200], "truncated: payload needs bytes up to"},
		{"xz", testBzImage([]byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}), "payload compressed with xz, which Ember cannot extract yet"},
		{"zstd", testBzImage([]byte{0x28, 0xb5, 0x2f, 0xfd, 1}), "payload compressed with zstd, which Ember cannot extract yet"},
		{"bzip2", testBzImage([]byte("BZh91AY&SY")), "payload compressed with bzip2, which Ember cannot extract yet"},
		{"lzma", testBzImage([]byte{0x5d, 0, 0, 0x80, 0}), "payload compressed with lzma, which Ember cannot extract yet"},
		{"lzo", testBzImage([]byte{0x89, 'L', 'Z', 'O', 0}), "payload compressed with lzo, which Ember cannot extract yet"},
		{"unknown", testBzImage([]byte{1, 2, 3, 4}), "payload compression not recognised (starts with 0x01 0x02 0x03 0x04)"},
		{"gzip corrupt", testBzImage(gzipped(t, v)[:40]), "gzip payload: unexpected EOF"},
		{"not ELF", testBzImage(notELF), `decompressed payload is not an ELF (starts with 0x68 0x65 0x6c 0x6c "hell")`},
		{"aarch64 ELF", testBzImage(gzipped(t, aarch)), "decompressed ELF for aarch64 (machine 183), want x86-64"},
		{"lz4 size mismatch", testBzImage(badTrailer), fmt.Sprintf("decompresses to %d bytes, but its size trailer says %d", len(v), len(v)+1)},
		{"lz4 corrupt", testBzImage(corrupt), "lz4 payload: block at offset 4:"},
		{"lz4 big block", testBzImage(bigBlock), "more than an 8 MiB block compresses to"},
		{"lz4 empty", testBzImage(le.AppendUint32(nil, lz4LegacyMagic)), "lz4 payload holds no data"},
	}
	for _, c := range cases {
		out, err := ExtractVmlinux(c.in)
		if err == nil {
			t.Errorf("%s: extracted %d bytes, want error %q", c.name, len(out), c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "extract vmlinux: ") {
			t.Errorf("%s: error %q, want %q", c.name, err, c.want)
		}
	}
}

func TestExtractVmlinuxBound(t *testing.T) {
	v := bigVmlinux()
	for name, p := range map[string][]byte{
		"gzip": gzipped(t, v),
		"lz4":  lz4Legacy(t, v, 4096, true),
		"none": v,
	} {
		if _, err := extractVmlinux(testBzImage(p), len(v)); err != nil {
			t.Errorf("%s at the limit: %v", name, err)
		}
		_, err := extractVmlinux(testBzImage(p), len(v)-1)
		if err == nil || !strings.Contains(err.Error(), "more than") && !strings.Contains(err.Error(), "larger than") {
			t.Errorf("%s over the limit: error %v", name, err)
		}
	}
}

func TestExtractVmlinuxFile(t *testing.T) {
	dir := t.TempDir()
	v := testVmlinux(true)
	in := filepath.Join(dir, "vmlinuz")
	out := filepath.Join(dir, "vmlinux")
	os.WriteFile(in, testBzImage(gzipped(t, v)), 0o644)
	if err := ExtractVmlinuxFile(in, out); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}

	// Failures leave out as it was and no temporary file behind.
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, testBzImage([]byte("BZh9")), 0o644)
	err := ExtractVmlinuxFile(bad, out)
	if err == nil || !strings.HasPrefix(err.Error(), "extract vmlinux from "+bad+": payload compressed with bzip2") {
		t.Errorf("error %v", err)
	}
	if err := ExtractVmlinuxFile(filepath.Join(dir, "missing"), out); err == nil {
		t.Error("missing input: no error")
	}
	if err := ExtractVmlinuxFile(in, filepath.Join(dir, "nodir", "vmlinux")); err == nil {
		t.Error("unwritable output: no error")
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, v) {
		t.Error("a failed extraction changed the existing output")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only bad, vmlinux, vmlinuz", names)
	}
}

// TestCloudKernel extracts a real Debian cloud kernel (LZ4 legacy payload)
// named by EMBER_CLOUD_BZIMAGE, and loads both it and its vmlinux.
func TestCloudKernel(t *testing.T) {
	path := os.Getenv("EMBER_CLOUD_BZIMAGE")
	if path == "" {
		t.Skip("EMBER_CLOUD_BZIMAGE not set")
	}
	bz, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatal(err)
	}
	m := newTestMem(256 << 20)
	k, err := loadBytes(t, m, v)
	if err != nil {
		t.Fatal(err)
	}
	if !k.HasPVH {
		t.Fatal("extracted vmlinux has no PVH entry note")
	}
	t.Logf("vmlinux: %d bytes, entry %#x, PVH entry %#x, end %#x", len(v), k.Entry, k.PVHEntry, k.End)

	m = newTestMem(256 << 20)
	k, err = loadBytes(t, m, bz)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bzImage: protocol %s, init_size %#x, end %#x, header %d bytes", protocolString(k.Protocol), k.InitSize, k.End, len(k.SetupHeader))
}

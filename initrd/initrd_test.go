package initrd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/guest/initconfig"
	"github.com/u-root/u-root/pkg/cpio"
)

func TestWrite(t *testing.T) {
	entries := []Entry{
		{Name: "/init", Mode: ModeExec, Data: []byte("#!/bin/sh\n")},
		{Name: "bin/sh", Target: "busybox"},
		{Name: "lib/modules/a.ko", Mode: ModeFile, Data: []byte("x")},
	}
	var a, b bytes.Buffer
	if err := Write(&a, entries); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, entries); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("Write is not reproducible")
	}
	names, err := Names(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"bin", "bin/sh", "init", "lib", "lib/modules", "lib/modules/a.ko"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("archive names = %v, want %v", names, want)
	}
	if cpioBin, err := exec.LookPath("cpio"); err == nil {
		// Cross-check with GNU cpio when it is installed.
		zcat := exec.Command("gzip", "-dc")
		zcat.Stdin = bytes.NewReader(a.Bytes())
		raw, err := zcat.Output()
		if err != nil {
			t.Fatalf("gzip -dc: %v", err)
		}
		list := exec.Command(cpioBin, "-t", "--quiet")
		list.Stdin = bytes.NewReader(raw)
		out, err := list.Output()
		if err != nil {
			t.Fatalf("cpio -t: %v", err)
		}
		if got := strings.Fields(string(out)); !reflect.DeepEqual(got, want) {
			t.Errorf("cpio -t = %v", got)
		}
	}
	if err := Write(&a, []Entry{{Name: "x"}, {Name: "/x"}}); err == nil {
		t.Error("duplicate names: want an error")
	}
	if err := Write(&a, []Entry{{Name: "f"}, {Name: "f/g"}}); err == nil {
		t.Error("entry under a file: want an error")
	}
}

func fakeInit(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), InitName)
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildInitramfsIsCached(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache")
	bin := fakeInit(t, "\x7fELF a static init")
	p1, err := BuildInitramfs(cache, bin)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(p1) != cache || !strings.HasPrefix(filepath.Base(p1), "initramfs-") {
		t.Errorf("built %s, want initramfs-<hash> in %s", p1, cache)
	}
	st1, err := os.Stat(p1)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p1)
	if err != nil {
		t.Fatal(err)
	}
	files, err := List(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].Name != "ember" || files[0].Mode != cpio.S_IFDIR|ModeDir ||
		files[1].Name != "init" || files[1].Mode != cpio.S_IFREG|ModeExec || string(files[1].Data) != "\x7fELF a static init" {
		t.Errorf("archive holds %+v", files)
	}

	// The same binary again: the same file, not rewritten.
	p2, err := BuildInitramfs(cache, bin)
	if err != nil || p2 != p1 {
		t.Fatalf("second build: %s, %v", p2, err)
	}
	if st2, _ := os.Stat(p2); !os.SameFile(st1, st2) || !st2.ModTime().Equal(st1.ModTime()) {
		t.Error("the cached initramfs was rebuilt")
	}
	// Another binary: another file.
	p3, err := BuildInitramfs(cache, fakeInit(t, "\x7fELF a newer init"))
	if err != nil || p3 == p1 {
		t.Fatalf("new binary: %s, %v", p3, err)
	}
	entries, _ := os.ReadDir(cache)
	if len(entries) != 4 {
		t.Errorf("cache holds %d entries, want 4: two archives and their index links (no temporary files left)", len(entries))
	}
	// The binary rewritten in place (a rebuild): its time changes, so it
	// is hashed again and gets its own archive, never the old one.
	if err := os.WriteFile(bin, []byte("\x7fELF a rebuilt init"), 0o755); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(bin, later, later)
	p4, err := BuildInitramfs(cache, bin)
	if err != nil || p4 == p1 {
		t.Fatalf("rebuilt binary: %s, %v (want a new archive)", p4, err)
	}
	if p5, err := BuildInitramfs(cache, bin); err != nil || p5 != p4 {
		t.Fatalf("rebuilt binary again: %s, %v, want %s", p5, err, p4)
	}
	if _, err := BuildInitramfs(cache, "/nonexistent/ember-init"); err == nil || !strings.Contains(err.Error(), "/nonexistent/ember-init") {
		t.Errorf("missing binary: %v", err)
	}
}

func testConfig() *initconfig.Config {
	return &initconfig.Config{
		Version: initconfig.Version, Mode: initconfig.ModeRun,
		Layers:   []initconfig.Drive{{Serial: "layer0", FSType: initconfig.FSErofs}},
		Writable: &initconfig.Drive{Serial: "rw", FSType: initconfig.FSExt4},
		Env:      []string{"SECRET=1"}, Args: []string{"/bin/true"},
	}
}

// The initrd of a VM is the cached initramfs and the config archive, which
// List (reading as the kernel does) finds whatever the initramfs's length:
// the padding puts the second archive at a 4-byte boundary.
func TestAppendConfig(t *testing.T) {
	cache := t.TempDir()
	cfg := testConfig()
	// Binaries of every length mod 4 (the archive pads them; AppendConfig
	// pads whatever it is given).
	for i := range 2 * newcAlign {
		base, err := BuildInitramfs(cache, fakeInit(t, strings.Repeat("x", i*7)))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(base)

		dst := filepath.Join(t.TempDir(), "initrd")
		if err := AppendConfig(dst, base, cfg); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(dst)
		if err != nil {
			t.Fatal(err)
		}
		files, err := List(f)
		f.Close()
		if err != nil {
			t.Fatalf("initramfs of %d bytes: %v", st.Size(), err)
		}
		var names []string
		for _, f := range files {
			names = append(names, f.Name)
		}
		if want := []string{"ember", "init", "ember", "ember/config.json"}; !reflect.DeepEqual(names, want) {
			t.Fatalf("initrd names %v, want %v", names, want)
		}
		conf := files[3]
		if conf.Mode != cpio.S_IFREG|0o600 {
			t.Errorf("config mode %o, want a regular file 0600", conf.Mode)
		}
		got, err := initconfig.Parse(conf.Data)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, cfg) {
			t.Errorf("config %+v, want %+v", got, cfg)
		}
		if st, _ := os.Stat(dst); st.Mode().Perm() != 0o600 {
			t.Errorf("initrd mode %v, want 0600", st.Mode())
		}
	}
}

func TestAppendConfigLeavesNothingOnError(t *testing.T) {
	base, err := BuildInitramfs(t.TempDir(), fakeInit(t, "init"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bad := testConfig()
	bad.Args = nil
	if err := AppendConfig(filepath.Join(dir, "a"), base, bad); err == nil || !strings.Contains(err.Error(), "config: args") {
		t.Errorf("invalid config: %v", err)
	}
	if err := AppendConfig(filepath.Join(dir, "b"), "/nonexistent/initramfs", testConfig()); err == nil {
		t.Error("missing initramfs: no error")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left %d files behind", len(entries))
	}
	existing := filepath.Join(dir, "c")
	os.WriteFile(existing, []byte("keep"), 0o644)
	if err := AppendConfig(existing, base, testConfig()); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("existing file: %v", err)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep" {
		t.Error("an existing file was overwritten or removed")
	}
}

func TestListRejects(t *testing.T) {
	cfgArchive, err := ConfigArchive(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"misaligned archive": append([]byte{0, 0, 0, 0, 0}, cfgArchive...),
		"garbage":            []byte("hello"),
		"truncated":          cfgArchive[:len(cfgArchive)-20],
		"bad gzip":           {0x1f, 0x8b, 0, 0},
	} {
		if _, err := List(bytes.NewReader(data)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if files, err := List(bytes.NewReader(append([]byte{0, 0, 0, 0}, cfgArchive...))); err != nil || len(files) != 2 {
		t.Errorf("aligned archive after zeros: %v, %v", files, err)
	}
}

func TestFindInit(t *testing.T) {
	bin := fakeInit(t, "init")
	t.Setenv(InitEnv, bin)
	if p, err := FindInit(); err != nil || p != bin {
		t.Errorf("FindInit with $%s=%s: %s, %v", InitEnv, bin, p, err)
	}
	t.Setenv(InitEnv, "/nonexistent/ember-init")
	if _, err := FindInit(); err == nil || !strings.Contains(err.Error(), "$EMBER_INIT") {
		t.Errorf("missing $%s file: %v", InitEnv, err)
	}
	t.Setenv(InitEnv, t.TempDir())
	if _, err := FindInit(); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("$%s a directory: %v", InitEnv, err)
	}
	t.Setenv(InitEnv, "")
	exe, _ := os.Executable()
	if _, err := os.Stat(filepath.Join(filepath.Dir(exe), InitName)); err == nil {
		t.Skip("an ember-init lies beside the test binary")
	}
	if _, err := FindInit(); err == nil || !strings.Contains(err.Error(), filepath.Join(filepath.Dir(exe), InitName)) ||
		!strings.Contains(err.Error(), "make build") {
		t.Errorf("no ember-init beside the executable: %v", err)
	}
}

// TestFindRunInit: $EMBER_INIT names the init for run-only VMs too; with
// no ember-init-run beside the executable, the full ember-init serves.
func TestFindRunInit(t *testing.T) {
	bin := fakeInit(t, "init")
	t.Setenv(InitEnv, bin)
	if p, err := FindRunInit(); err != nil || p != bin {
		t.Errorf("FindRunInit with $%s=%s: %s, %v", InitEnv, bin, p, err)
	}
	t.Setenv(InitEnv, "")
	exe, _ := os.Executable()
	if _, err := os.Stat(filepath.Join(filepath.Dir(exe), RunInitName)); err == nil {
		t.Skip("an ember-init-run lies beside the test binary")
	}
	p, err := FindRunInit()
	q, ferr := FindInit()
	if p != q || (err == nil) != (ferr == nil) {
		t.Errorf("FindRunInit without ember-init-run: %q, %v; FindInit: %q, %v", p, err, q, ferr)
	}
}

// TestListZstd: a zstd archive followed by a plain one reads as the
// kernel reads it; a cut or lying frame is an error, not a panic or a
// huge allocation.
func TestListZstd(t *testing.T) {
	var zs bytes.Buffer
	if err := WriteZstd(&zs, []Entry{{Name: "init", Mode: ModeExec, Data: bytes.Repeat([]byte("ember"), 1000)}}); err != nil {
		t.Fatal(err)
	}
	cfgArchive, err := ConfigArchive(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	pad := make([]byte, (newcAlign-zs.Len()%newcAlign)%newcAlign)
	files, err := List(bytes.NewReader(append(append(zs.Bytes(), pad...), cfgArchive...)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name)
	}
	if len(files) < 3 || files[0].Name != "init" || len(files[0].Data) != 5000 || names[len(names)-1] != "ember/config.json" {
		t.Errorf("records %q", names)
	}
	for _, cut := range []int{3, 8, zs.Len() - 2} {
		if _, err := List(bytes.NewReader(zs.Bytes()[:cut])); err == nil {
			t.Errorf("a zstd frame cut to %d bytes was read", cut)
		}
	}
	// A frame header claiming 2 GiB of content.
	lying := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0, 0x80, 0, 0, 0}
	if _, err := List(bytes.NewReader(lying)); err == nil || !strings.Contains(err.Error(), "content size") {
		t.Errorf("a frame claiming 2 GiB: %v", err)
	}
}

// FuzzList: no input makes the initrd reader panic or loop.
func FuzzList(f *testing.F) {
	var gz bytes.Buffer
	Write(&gz, []Entry{{Name: "init", Data: []byte("x")}})
	cfgArchive, _ := ConfigArchive(testConfig())
	f.Add(gz.Bytes())
	f.Add(cfgArchive)
	f.Add(append(append(gz.Bytes(), 0, 0, 0), cfgArchive...))
	var zs bytes.Buffer
	WriteZstd(&zs, []Entry{{Name: "init", Data: []byte("x")}})
	f.Add(append(append(zs.Bytes(), 0, 0, 0), cfgArchive...))
	f.Fuzz(func(t *testing.T, data []byte) {
		List(bytes.NewReader(data))
	})
}

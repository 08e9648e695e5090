package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/internal/testbin"
)

func TestParseImageFlags(t *testing.T) {
	f, err := parseImageFlags("image", nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.runs != 5 || f.labRuns != 21 || f.rounds != 31 || f.ref != debianRef ||
		!strings.HasSuffix(f.tarball, "debian-rootfs.tar") || !strings.HasSuffix(f.home, "debian-home") ||
		!strings.HasSuffix(f.flat, "debian-flat.ext4") || !strings.HasSuffix(f.kernel, "ember-vmlinux") {
		t.Errorf("defaults: %+v", f)
	}
	f, err = parseImageFlags("image", []string{"--runs", "1", "--lab-runs", "0", "--rounds", "3", "--tarball", "/t.tar",
		"--kernel", "/k", "--home", "/h", "--ref", "x/y:1", "--flat", "/f.ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := imageFlags{runs: 1, labRuns: 0, rounds: 3, tarball: "/t.tar", kernel: "/k", home: "/h", ref: "x/y:1", flat: "/f.ext4"}
	if f != want {
		t.Errorf("got %+v, want %+v", f, want)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"image", []string{"--runs", "0"}, "--runs 0"},
		{"image", []string{"--lab-runs", "-1"}, "--lab-runs -1"},
		{"image", []string{"--rounds", "0"}, "--rounds 0"},
		{"image", []string{"--ref", ""}, "--ref is empty"},
		{"image", []string{"extra"}, `unexpected argument "extra"`},
		{"image", []string{"--runs", "many"}, "many"},
		{"lab-image", []string{"--lab-runs", "3"}, "lab-runs"},
		{"lab-image", []string{"--tarball", "/t"}, "tarball"},
		{"lab-image", []string{"--runs", "0"}, "--runs 0"},
	} {
		if _, err := parseImageFlags(c.name, c.args); err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), c.name+": ") {
			t.Errorf("%s %q: %v, want an error with %q", c.name, c.args, err, c.want)
		}
	}
}

// The lab half gets the host half's files and its --lab-runs as --runs.
func TestLabArgvRoundTrip(t *testing.T) {
	f, err := parseImageFlags("image", []string{"--lab-runs", "7", "--kernel", "/k", "--home", "/h", "--ref", "x/y:1", "--flat", "/f.ext4"})
	if err != nil {
		t.Fatal(err)
	}
	argv := f.labArgv("/bin/ember-bench")
	if argv[0] != "/bin/ember-bench" || argv[1] != "lab-image" {
		t.Fatalf("argv %q", argv)
	}
	l, err := parseImageFlags(argv[1], argv[2:])
	if err != nil {
		t.Fatal(err)
	}
	if l.runs != 7 || l.kernel != "/k" || l.home != "/h" || l.ref != "x/y:1" || l.flat != "/f.ext4" {
		t.Errorf("lab-image got %+v from %q", l, argv)
	}
	if labTimeout(5) != 40*time.Minute {
		t.Errorf("lab timeout for 5 runs: %v", labTimeout(5))
	}
}

func TestPickLines(t *testing.T) {
	out := []byte("lab run 1: image 900 ms, flat 800 ms\nboot_image_ms 900.000 ms\nnoise\nboot_flat_ms 800.000 ms\n" +
		"boot_image_vs_flat_ratio 1.125 ratio  # a note\nboot_bad x ms\n")
	got, err := pickLines(out, "boot_image_vs_flat_ratio", "boot_image_ms")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"boot_image_vs_flat_ratio 1.125 ratio  # a note", "boot_image_ms 900.000 ms"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, missing := range []string{"boot_bad", "boot_other_ms"} {
		if _, err := pickLines(out, "boot_flat_ms", missing); err == nil || !strings.Contains(err.Error(), "no "+missing+" line") {
			t.Errorf("%s: %v", missing, err)
		}
	}
}

// The host half, with one import and no lab, on the Debian tarball make
// guest made (skipped without it).
func TestImageHostHalf(t *testing.T) {
	dir := os.Getenv("EMBER_GUEST_DIR")
	if dir == "" {
		dir = "../../build/guest"
	}
	tarball, _ := filepath.Abs(filepath.Join(dir, "debian-rootfs.tar"))
	if _, err := os.Stat(tarball); err != nil {
		t.Skip("no Debian tarball (make guest makes it): ", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (the import keeps owners)")
	}
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("needs mkfs.erofs")
	}
	bin := t.TempDir()
	for _, name := range []string{"ember", "ember-image", "ember-bench"} {
		if _, err := testbin.Build(bin, name, "github.com/embervm/ember/cmd/"+name); err != nil {
			t.Fatal(err)
		}
	}
	tmp := t.TempDir()
	cmd := exec.Command(filepath.Join(bin, "ember-bench"), "image", "--runs", "1", "--lab-runs", "0", "--rounds", "3", "--tarball", tarball)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := pickLines(out, "image_import_debian_s", "cow_read_ratio", "cow_write_ratio"); err != nil {
		t.Errorf("%v in\n%s", err, out)
	}
	// The imports' homes and the copy-on-write files are removed.
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left in TMPDIR: %v", left)
	}
}

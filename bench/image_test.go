package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/image/boot"
)

func TestThroughputRatio(t *testing.T) {
	if r := throughputRatio(2*time.Second, time.Second); r != 2 {
		t.Errorf("raw 2 s, cow 1 s: %v, want 2 (COW twice as fast)", r)
	}
	if r := throughputRatio(time.Second, 0); r != 0 {
		t.Errorf("cow 0 s: %v, want 0", r)
	}
}

func TestCOWResultLines(t *testing.T) {
	r := COWResult{Read4K: 0.93, Read1M: 1.02, Write4K: 1.1, Write1M: 0.97}
	if r.ReadRatio() != 0.93 || r.WriteRatio() != 0.97 {
		t.Errorf("headlines %v %v, want the worse patterns 0.93 0.97", r.ReadRatio(), r.WriteRatio())
	}
	var b bytes.Buffer
	r.Lines(&b)
	for _, want := range []string{"cow_read_ratio 0.930 ratio", "cow_write_ratio 0.970 ratio",
		"cow_read_4k_random_ratio 0.930 ratio", "cow_read_1m_seq_ratio 1.020 ratio",
		"cow_write_4k_random_ratio 1.100 ratio", "cow_write_1m_seq_ratio 0.970 ratio"} {
		if !strings.Contains(b.String(), want+"\n") && !strings.Contains(b.String(), want+"  #") {
			t.Errorf("no %q in\n%s", want, b.String())
		}
	}
}

func TestImageBootResult(t *testing.T) {
	r := ImageBootResult{ImageMS: 1100, FlatMS: 1000}
	var b bytes.Buffer
	r.Lines(&b)
	want := "boot_image_ms 1100.000 ms\nboot_flat_ms 1000.000 ms\nboot_image_vs_flat_ratio 1.100 ratio\n"
	if b.String() != want {
		t.Errorf("lines\n%s\nwant\n%s", b.String(), want)
	}
	if (ImageBootResult{ImageMS: 5}).Ratio() != 0 {
		t.Error("a ratio over no flat boots is not 0")
	}
}

// The workload prints the marker (run here by this host's sh), yet the
// marker is in neither boot's command line; the flat boot's init gets it
// whole on the kernel command line.
func TestImageWorkload(t *testing.T) {
	out, err := exec.Command("/bin/sh", "-c", imageWorkload).Output()
	if err != nil || string(out) != ImageMarker+"\n" {
		t.Fatalf("sh -c %q: %q, %v; want %q", imageWorkload, out, err, ImageMarker)
	}
	o := ImageBootOptions{Ember: "ember", Kernel: "/k", Home: "/h", Ref: "r", Flat: "/flat.ext4"}
	img, flat := o.ImageArgv(), o.FlatArgv("/tmp/x.cow")
	for _, argv := range [][]string{img, flat} {
		if strings.Contains(strings.Join(argv, " "), ImageMarker) {
			t.Errorf("the marker is in %q", argv)
		}
	}
	if strings.ContainsAny(imageWorkload, ".=") {
		t.Errorf("the workload %q has '.' or '=', which the kernel does not pass to init as an argument", imageWorkload)
	}
	if got := img[len(img)-3:]; got[0] != "/bin/sh" || got[1] != "-c" || got[2] != imageWorkload {
		t.Errorf("image workload %q", got)
	}
	joined := strings.Join(flat, " ")
	for _, want := range []string{"--cmdline " + boot.Cmdline + " root=/dev/vda rw", `init=/bin/sh -c "` + imageWorkload + `"`,
		"--drive path=/tmp/x.cow,base=/flat.ext4,id=root", "--kernel /k", "--mem-mib 256"} {
		if !strings.Contains(joined, want) {
			t.Errorf("flat argv lacks %q: %s", want, joined)
		}
	}
	if !strings.Contains(strings.Join(img, " "), "--kernel /k --mem-mib 256") {
		t.Errorf("image argv: %q", img)
	}
}

func TestCOWRatiosRun(t *testing.T) {
	r, err := COWRatios(t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []float64{r.Read4K, r.Read1M, r.Write4K, r.Write1M} {
		if !(v > 0) {
			t.Errorf("a ratio is %v: %+v", v, r)
		}
	}
}

func TestRunToMarkerAndExit(t *testing.T) {
	ctx := context.Background()
	const mark = "MARK"
	if _, err := runToMarkerAndExit(ctx, []string{"/bin/sh", "-c", "echo one; echo MARK; echo two"}, mark, time.Minute, true); err != nil {
		t.Errorf("a clean run: %v", err)
	}
	if _, err := runToMarkerAndExit(ctx, []string{"/bin/sh", "-c", "echo MARK; exit 3"}, mark, time.Minute, true); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("exit 3 after the marker, wanting 0: %v", err)
	}
	// Without wantExit, the run stops at the marker: the rest of the group
	// is killed.
	pidFile := filepath.Join(t.TempDir(), "pid")
	if _, err := runToMarkerAndExit(ctx, []string{"/bin/sh", "-c", "echo $$ > " + pidFile + "; echo MARK; sleep 600"}, mark, time.Minute, false); err != nil {
		t.Errorf("not waiting for the end: %v", err)
	}
	waitGone(t, pidFile)
	if _, err := runToMarkerAndExit(ctx, []string{"/bin/sh", "-c", "echo nothing"}, mark, time.Minute, true); err == nil || !strings.Contains(err.Error(), `without printing "MARK"`) {
		t.Errorf("no marker: %v", err)
	}
	// A process left behind in the group (as ember under ember-image after
	// a timeout) is killed.
	pidFile = filepath.Join(t.TempDir(), "pid")
	_, err := runToMarkerAndExit(ctx, []string{"/bin/sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $! > " + pidFile + "; echo MARK; sleep 600"},
		mark, time.Second, true)
	if err == nil || !strings.Contains(err.Error(), "did not end") {
		t.Errorf("a run that does not end: %v", err)
	}
	waitGone(t, pidFile)
}

// waitGone waits until the process whose pid is in pidFile has ended.
func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	b, _ := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		t.Fatalf("pid file: %q", b)
	}
	for {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			break // gone, or dead and not yet reaped
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// needFlatTools skips without what FlatExt4 (and this test's check) needs.
func needFlatTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the tarball's owners are kept)")
	}
	for _, tool := range []string{"tar", "mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip("needs " + tool)
		}
	}
}

func TestFlatExt4(t *testing.T) {
	needFlatTools(t)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("flat-test\n"), 0o644)
	os.Symlink("/etc/hostname", filepath.Join(tree, "bin", "link"))
	if err := os.Chown(filepath.Join(tree, "etc", "hostname"), 1234, 5678); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(dir, "rootfs.tar")
	if b, err := exec.Command("tar", "-c", "--numeric-owner", "-f", tarball, "-C", tree, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, b)
	}
	out := filepath.Join(dir, "out", "flat.ext4")
	os.MkdirAll(filepath.Dir(out), 0o755)
	if err := FlatExt4(context.Background(), tarball, out); err != nil {
		t.Fatal(err)
	}
	debugfs := func(req string) string {
		b, err := exec.Command("debugfs", "-R", req, out).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v: %s", req, err, b)
		}
		return string(b)
	}
	if got := debugfs("cat /etc/hostname"); !strings.Contains(got, "flat-test\n") {
		t.Errorf("/etc/hostname in the image: %q", got)
	}
	if got := debugfs("stat /etc/hostname"); !strings.Contains(got, "User:  1234") || !strings.Contains(got, "Group:  5678") {
		t.Errorf("owner of /etc/hostname not kept:\n%s", got)
	}
	if got := debugfs("stat /bin/link"); !strings.Contains(got, `Fast link dest: "/etc/hostname"`) {
		t.Errorf("/bin/link:\n%s", got)
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 1 {
		t.Errorf("left beside the image: %v", ents)
	}
	// Newer than the tarball: kept as it is.
	st, _ := os.Stat(out)
	if err := FlatExt4(context.Background(), tarball, out); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(out); !st2.ModTime().Equal(st.ModTime()) || !os.SameFile(st, st2) {
		t.Error("an up-to-date image was made again")
	}
}

func TestFlatExt4Failures(t *testing.T) {
	needFlatTools(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "flat.ext4")
	if err := FlatExt4(context.Background(), filepath.Join(dir, "missing.tar"), out); err == nil || !strings.Contains(err.Error(), "missing.tar") {
		t.Errorf("missing tarball: %v", err)
	}
	bad := filepath.Join(dir, "bad.tar")
	os.WriteFile(bad, []byte("not a tarball at all"), 0o644)
	if err := FlatExt4(context.Background(), bad, out); err == nil || !strings.Contains(err.Error(), "unpacking "+bad) {
		t.Errorf("bad tarball: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "bad.tar" {
		t.Errorf("left behind: %v", ents)
	}
}

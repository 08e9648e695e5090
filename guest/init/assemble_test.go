package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/guest/ociuser"
	"github.com/embervm/ember/guest/workload"
)

// assembleEnv carries the child's orders: a JSON assembleJob.
const assembleEnv = "EMBER_INIT_TEST_ASSEMBLE"

type assembleJob struct {
	Config initconfig.Config
	Drives map[string]string // serial -> loop device
	Script string            // run in the new root as the config's user
	// Initramfs is an empty directory that stands for the initramfs.
	Initramfs string
}

func TestMain(m *testing.M) {
	if job := os.Getenv(assembleEnv); job != "" {
		if err := assembleChild(job); err != nil {
			fmt.Fprintln(os.Stderr, "assemble child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestAssembleRealRoot carries out the init's plans for real, as root in
// a mount and UTS namespace of its own (nothing reaches the host's mount
// table or hostname): two image layers on read-only loop devices, an ext4
// writable drive, the overlay, the switch of root, the system mounts, the
// /etc files, the user from the image's /etc/passwd and the workload. The
// upper layer of the first run is still there in the second, as it is for
// a re-run or a snapshot clone. OCI whiteouts as the image store writes
// them (a 0:0 character device; trusted.overlay.opaque=y) hide what they
// should.
//
// It does not boot the init as PID 1 (no Linux guest runs on this host's
// KVM, and ember-init's /dev/mem store would reach the host's physical
// memory); the lab does that.
func TestAssembleRealRoot(t *testing.T) {
	layerFS := needAssembleTools(t)
	dir := t.TempDir()

	// Layer 0: busybox, users, files; layer 1 deletes a/old (whiteout) and
	// replaces d/ (opaque directory).
	l0, l1 := filepath.Join(dir, "l0"), filepath.Join(dir, "l1")
	writeTree(t, l0, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
		"a/old":      "old\n", "a/keep": "keep\n", "d/lower": "lower\n",
	})
	copyFile(t, "/bin/busybox", filepath.Join(l0, "bin/busybox"))
	os.Symlink("busybox", filepath.Join(l0, "bin/sh"))
	mustMkdir(t, filepath.Join(l0, "data"), 0o777)
	mustMkdir(t, filepath.Join(l0, "home/app"), 0o755)
	writeTree(t, l1, map[string]string{"a/new": "new\n", "d/upper": "upper\n"})
	if err := unix.Mknod(filepath.Join(l1, "a/old"), unix.S_IFCHR|0o000, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(l1, "d"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("no trusted xattrs on %s: %v", dir, err)
	}

	img := func(name, src string) string {
		p := filepath.Join(dir, name)
		if layerFS == initconfig.FSErofs {
			run(t, "mkfs.erofs", "--quiet", p, src)
		} else {
			run(t, "mkfs.ext4", "-q", "-F", "-d", src, p, "16M")
		}
		return p
	}
	rw := filepath.Join(dir, "rw.img")
	run(t, "truncate", "-s", "64M", rw)
	run(t, "mkfs.ext4", "-q", "-F", rw)
	drives := map[string]string{
		"layer0": loop(t, img("l0.img", l0), true),
		"layer1": loop(t, img("l1.img", l1), true),
		"rw":     loop(t, rw, false),
	}
	cfg := initconfig.Config{
		Version: initconfig.Version, Mode: initconfig.ModeRun,
		Layers:   []initconfig.Drive{{Serial: "layer0", FSType: layerFS}, {Serial: "layer1", FSType: layerFS}},
		Writable: &initconfig.Drive{Serial: "rw", FSType: initconfig.FSExt4},
		Hostname: "imagebox", User: "app", Args: []string{"sh"},
		DNS: []string{"10.0.2.3"},
	}
	script := `set -e
echo "keep=$(cat /a/keep) new=$(cat /a/new) old=$(cat /a/old 2>/dev/null || echo gone)"
echo "d=$(ls /d | tr '\n' ' ')"
echo "host=$(hostname) etc=$(cat /etc/hostname) dns=$(cat /etc/resolv.conf)"
echo "id=$(id -u):$(id -g) groups=$(id -G) home=$HOME"
echo "root=$(grep ' / ' /proc/mounts | cut -d' ' -f3) tmp=$(grep ' /tmp ' /proc/mounts | cut -d' ' -f3) pts=$(grep ' /dev/pts ' /proc/mounts | cut -d' ' -f3)"
echo "$RUN" > /data/$RUN
echo "data=$(ls /data | tr '\n' ' ')"
`
	for i, want := range []string{"data=first ", "data=first second "} {
		runName := []string{"first", "second"}[i]
		cfg.Env = []string{"RUN=" + runName}
		out := assemble(t, assembleJob{Config: cfg, Drives: drives, Script: script, Initramfs: t.TempDir()})
		t.Logf("run %s (%s layers):\n%s", runName, layerFS, out)
		for _, w := range []string{
			"keep=keep new=new old=gone",
			"d=upper ",
			"host=imagebox etc=imagebox dns=nameserver 10.0.2.3",
			"id=1000:1000 groups=1000 50 home=/home/app",
			"root=overlay tmp=tmpfs pts=devpts",
			want,
		} {
			if !strings.Contains(out, w+"\n") {
				t.Errorf("run %s: output lacks %q:\n%s", runName, w, out)
			}
		}
	}
}

// assemble runs the job in a child with its own mount and UTS namespaces
// and returns what the workload printed.
func assemble(t *testing.T, job assembleJob) string {
	t.Helper()
	b, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), assembleEnv+"="+string(b))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWUTS}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	return out.String()
}

// assembleChild is the init's prepare and run, in a scratch initramfs (a
// tmpfs the child chroots into) instead of the real one.
func assembleChild(jobJSON string) error {
	var job assembleJob
	if err := json.Unmarshal([]byte(jobJSON), &job); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	initramfs := job.Initramfs
	if err := unix.Mount("tmpfs", initramfs, "tmpfs", 0, ""); err != nil {
		return err
	}
	if err := unix.Chdir(initramfs); err != nil {
		return err
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	trace := func(s string) { fmt.Fprintln(os.Stderr, s) }
	cfg := &job.Config
	if err := execute("/", earlyPlan(), trace); err != nil {
		return err
	}
	plan, err := rootPlan(cfg, job.Drives)
	if err != nil {
		return err
	}
	if err := execute("/", plan, trace); err != nil {
		return err
	}
	if err := switchRoot(newRoot); err != nil {
		return err
	}
	if err := execute("/", systemPlan(cfg), trace); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return err
	}
	if err := writeEtc("/", cfg); err != nil {
		return err
	}
	id, err := ociuser.Resolve("/", cfg.User)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGCHLD)
	pid, err := workload.Start(workload.Spec{
		Args: []string{"sh", "-c", job.Script}, Env: workloadEnv(cfg, id), Dir: "/",
		UID: id.UID, GID: id.GID, Groups: id.Groups, Console: os.Stdout,
	})
	if err != nil {
		return err
	}
	ws, err := workload.Supervise(pid, sigs)
	if err != nil {
		return err
	}
	if code := workload.ExitCode(ws); code != 0 {
		return fmt.Errorf("workload exited %d", code)
	}
	unix.Sync()
	return nil
}

// needAssembleTools skips unless this machine can build and mount the
// layers, and returns the layer file system to use: EROFS where
// mkfs.erofs is installed, else ext4.
func needAssembleTools(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root for mounts and loop devices")
	}
	fsList, _ := os.ReadFile("/proc/filesystems")
	for _, tool := range []string{"mkfs.ext4", "losetup", "truncate"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no static /bin/busybox (busybox-static)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices")
	}
	if !bytes.Contains(fsList, []byte("\toverlay\n")) {
		t.Skip("no overlayfs in this kernel")
	}
	if _, err := exec.LookPath("mkfs.erofs"); err == nil && bytes.Contains(fsList, []byte("\terofs\n")) {
		return initconfig.FSErofs
	}
	t.Log("no mkfs.erofs or EROFS here: ext4 layers")
	return initconfig.FSExt4
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// loop attaches a file to a free loop device, detached at the end of the
// test (the kernel clears it once the namespace that mounted it is gone).
func loop(t *testing.T, file string, readOnly bool) string {
	t.Helper()
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	dev := run(t, "losetup", append(args, file)...)
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	return dev
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, name)
		mustMkdir(t, filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func mustMkdir(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	mustMkdir(t, filepath.Dir(dst), 0o755)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

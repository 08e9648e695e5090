package e2e

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/embervm/ember/image/imagetest"
)

// The image tests build OCI images with go-containerregistry (package
// imagetest), import them into a scratch Ember home with `ember image
// import`, and boot them with `ember run --image`, as a user would.

// busyboxApplets are linked to busybox in the test image.
var busyboxApplets = []string{"sh", "cat", "ls", "id", "pwd", "env", "tr", "sha256sum", "dd", "sync", "mkdir", "hostname", "wc"}

// busyboxLayers are the test image's two layers: busybox, an /etc/passwd
// with user app (1000:1000) and a file /etc/doomed; then a whiteout of
// /etc/doomed and /work/hello.
func busyboxLayers(t *testing.T) (base, top []byte) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static: %v", err)
	}
	ents := []imagetest.Entry{imagetest.Dir("bin"), {Name: "bin/busybox", Type: tar.TypeReg, Body: string(bb), Mode: 0o755}}
	for _, a := range busyboxApplets {
		ents = append(ents, imagetest.Symlink("bin/"+a, "busybox"))
	}
	ents = append(ents, imagetest.Dir("etc"),
		imagetest.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
		imagetest.File("etc/group", "root:x:0:\napp:x:1000:\n"),
		imagetest.File("etc/doomed", "still here\n"),
		imagetest.Dir("tmp"), imagetest.Dir("home"))
	base = imagetest.Tar(t, ents...)
	work := imagetest.Dir("work")
	work.UID, work.GID = 1000, 1000
	top = imagetest.Tar(t, imagetest.Whiteout("etc/doomed"), work, imagetest.File("work/hello", "hi\n"))
	return base, top
}

// busyboxConfig runs a shell command as app in /work.
var busyboxConfig = v1.Config{
	Env:        []string{"PATH=/bin", "GREETING=hello"},
	WorkingDir: "/work",
	User:       "app",
	Entrypoint: []string{"/bin/sh", "-c"},
	Cmd:        []string{"echo no command given"},
}

// importImage writes img as an OCI layout and imports it as name into the
// Ember home.
func importImage(t *testing.T, home string, img v1.Image, name string) time.Duration {
	t.Helper()
	layout := imagetest.WriteLayout(t, scratchDir(t), img, "")
	t0 := time.Now()
	if out, err := exec.Command(emberBinary(t), "image", "import", "--home", home, layout, name).CombinedOutput(); err != nil {
		t.Fatalf("ember image import %s: %v\n%s", name, err, out)
	}
	return time.Since(t0)
}

// runImage runs `ember run --image ref --home home [flags] -- args...`,
// retrying lab faults.
func runImage(t *testing.T, home, ref string, flags []string, args ...string) result {
	t.Helper()
	argv := append([]string{"run", "--image", ref, "--home", home}, flags...)
	return emberArgv(t, bootTimeout, nil, append(append(argv, "--"), args...)...)
}

// TestRunImage: an OCI image of two layers runs with its Entrypoint, Env,
// WorkingDir and User; the file the top layer whites out is absent; ember
// exits with the workload's status. A second image sharing the base layer
// stores it once. Ten VMs of one image run at once, each writing its own
// file: none sees another's, and the layer files are unchanged.
func TestRunImage(t *testing.T) {
	lab(t)
	home := scratchDir(t)
	base, top := busyboxLayers(t)
	importImage(t, home, imagetest.Build(t, busyboxConfig, base, top), "e2e/busybox:1")

	r := runImage(t, home, "e2e/busybox:1", []string{"--hostname", "imgbox"},
		`echo "image-run env=$GREETING cwd=$(pwd) id=$(id -u):$(id -g) host=$(hostname) hello=$(cat hello) doomed=$(test -e /etc/doomed && echo yes || echo no)"; exit 5`)
	if r.code != 5 {
		t.Fatalf("ember exited %d, want the workload's 5\nstdout:\n%s\nstderr:\n%s", r.code, tailString(r.stdout), r.stderr)
	}
	want := "image-run env=hello cwd=/work id=1000:1000 host=imgbox hello=hi doomed=no"
	if !strings.Contains(r.stdout, want) {
		t.Fatalf("want %q in the output\n%s", want, tailString(r.stdout))
	}
	if strings.Contains(r.stdout, "still here") {
		t.Error("the whited-out file is visible")
	}
	r = runImage(t, home, "e2e/busybox:1", []string{"--user", "0", "--env", "GREETING=bye"}, `echo "as=$(id -u) env=$GREETING"; kill -KILL $$`)
	if r.code != 128+9 || !strings.Contains(r.stdout, "as=0 env=bye") {
		t.Fatalf("exit %d (want 137), output:\n%s", r.code, tailString(r.stdout))
	}
	r = runImage(t, home, "e2e/busybox:1", nil) // the image's Cmd
	if r.code != 0 || !strings.Contains(r.stdout, "no command given") {
		t.Fatalf("default command: exit %d\n%s", r.code, tailString(r.stdout))
	}

	// A second image on the same base layer: the base is stored once.
	other := imagetest.Tar(t, imagetest.Dir("srv"), imagetest.File("srv/x", "x\n"))
	importImage(t, home, imagetest.Build(t, busyboxConfig, base, other), "e2e/busybox:2")
	layers, err := filepath.Glob(filepath.Join(home, "images", "layers", "sha256", "*.erofs"))
	if err != nil || len(layers) != 3 {
		t.Fatalf("layer images %v (%v), want 3: base, top, other", layers, err)
	}
	sums := map[string][32]byte{}
	for _, l := range layers {
		sums[l] = sha(t, l)
	}

	// Ten at once, each with its own writable disk. Alone one takes about
	// 8 s in the lab; crowdTimeout is ample for ten on its two CPUs.
	const (
		vms          = 10
		crowdTimeout = 4 * time.Minute
	)
	outs := make([]result, vms)
	stuck := make([]bool, vms)
	var wg sync.WaitGroup
	for i := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(emberBinary(t), "run", "--image", "e2e/busybox:1", "--home", home, "--env", fmt.Sprintf("ID=%d", i), "--",
				`echo $ID > mine-$ID; sync; echo "vm=$ID files=$(ls | tr '\n' ' ')"`)
			out, unkillable, err := runWithTimeout(cmd, crowdTimeout)
			outs[i], stuck[i] = result{stdout: out, code: exitCode(err)}, unkillable
		}()
	}
	wg.Wait()
	for i := range vms {
		if stuck[i] {
			labFault(t, fmt.Sprintf("ember (VM %d of %d) could not be killed (stuck in the lab's KVM)\n%s", i, vms, tailString(outs[i].stdout)))
		}
	}
	for i, r := range outs {
		want := fmt.Sprintf("vm=%d files=hello mine-%d ", i, i)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			// A lab fault in the crowd: that one VM again, alone.
			t.Logf("VM %d of %d: exit %d, output:\n%s\nrunning it again alone", i, vms, r.code, tailString(r.stdout))
			r = runImage(t, home, "e2e/busybox:1", []string{"--env", fmt.Sprintf("ID=%d", i)},
				`echo $ID > mine-$ID; sync; echo "vm=$ID files=$(ls | tr '\n' ' ')"`)
		}
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("VM %d: exit %d, want %q\n%s", i, r.code, want, tailString(r.stdout))
		}
	}
	for l, s := range sums {
		if sha(t, l) != s {
			t.Errorf("layer image %s changed", l)
		}
	}
}

// TestRunDebianImage runs bash and python3 in a Debian 12 image: the root
// filesystem mmdebstrap made, which make guest imports with `ember image
// import --rootfs` into build/guest/debian-home (read-only in the lab:
// importing 175 MB under the lab's emulation took three minutes).
func TestRunDebianImage(t *testing.T) {
	home := guestFile(t, "debian-home")
	r := runImage(t, home, "e2e/debian:12", []string{"--mem-mib", "256"},
		"/bin/bash", "-c", `echo "debian=$(cat /etc/debian_version) py=$(python3 -c 'print(6*7)')"`)
	if r.code != 0 || !regexp.MustCompile(`debian=12\.\d+ py=42`).MatchString(r.stdout) {
		t.Fatalf("exit %d\n%s\nstderr:\n%s", r.code, tailString(r.stdout), r.stderr)
	}
}

// runWithTimeout runs cmd with its output (stdout and stderr) captured,
// killing it after d. unkillable: SIGKILL did not end it within
// unkillableGrace (a vCPU thread stuck in the lab's KVM, a lab fault); the
// process is then left behind.
func runWithTimeout(cmd *exec.Cmd, d time.Duration) (out string, unkillable bool, err error) {
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		return "", false, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
		return buf.String(), false, err
	case <-time.After(d):
	}
	cmd.Process.Kill()
	select {
	case err = <-done:
		return buf.String(), false, err
	case <-time.After(unkillableGrace):
		return buf.String(), true, fmt.Errorf("killed after %v and still running", d)
	}
}

// exitCode is an exec error's exit status (0 for nil, -1 if none).
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

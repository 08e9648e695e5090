package e2e

// NOT RUN YET: written without a lab run. The lead runs it in the lab
// (make test); expect fixes on its first run.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/embervm/ember/image/imagetest"
)

// containerdConfig registers Ember's runtime with a containerd 1.6 whose
// sockets and state are in dir.
const containerdConfig = `version = 2
root = "%[1]s/root"
state = "%[1]s/state"
[grpc]
  address = "%[1]s/containerd.sock"
[ttrpc]
  address = "%[1]s/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ember]
  runtime_type = "io.containerd.ember.v2"
`

// TestContainerdShim is issue 14's ctr acceptance: Debian's containerd
// (1.6) runs containers in Ember microVMs through containerd-shim-ember-v2.
func TestContainerdShim(t *testing.T) {
	guests := lab(t)
	for _, tool := range []string{"containerd", "ctr", "containerd-shim-ember-v2", "mkfs.erofs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not on PATH (containerd: Debian's containerd package in the lab; the shim: make build): %v", tool, err)
		}
	}
	dir := scratchDir(t)
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(containerdConfig, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	shimCfg := filepath.Join(dir, "shim.json")
	kernel := filepath.Join(guests, "minimal-vmlinux")
	if err := os.WriteFile(shimCfg, []byte(fmt.Sprintf(`{"ember": %q, "kernel": %q, "home": %q}`,
		emberBinary(t), kernel, filepath.Join(dir, "home"))), 0o644); err != nil {
		t.Fatal(err)
	}
	cd := exec.Command("containerd", "--config", cfg)
	cd.Env = append(os.Environ(), "EMBER_SHIM_CONFIG="+shimCfg)
	var cdLog bytes.Buffer
	cd.Stdout, cd.Stderr = &cdLog, &cdLog
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cd.Process.Kill()
		cd.Wait()
		if t.Failed() {
			t.Logf("containerd's log:\n%s", tailString(cdLog.String()))
		}
	})
	sock := filepath.Join(dir, "containerd.sock")
	ctr := func(timeout time.Duration, stdin string, args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", sock}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("ctr %v: %v", args, err)
		}
		return string(out), code
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, code := ctr(10*time.Second, "", "version"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not answer within 30 s")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A local image: busybox, as a docker-save tarball.
	src := filepath.Join(dir, "layer")
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	layer := imagetest.Tar(t, imagetest.Dir("bin"), imagetest.Entry{Name: "bin/busybox", Type: '0', Mode: 0o755, Body: string(busybox)},
		imagetest.Symlink("bin/sh", "busybox"), imagetest.Symlink("bin/cat", "busybox"), imagetest.Symlink("bin/uname", "busybox"),
		imagetest.Symlink("bin/sleep", "busybox"), imagetest.Dir("etc"), imagetest.File("etc/os-release", "ID=ember-e2e\n"))
	img := imagetest.Build(t, v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}}, layer)
	ref, err := name.NewTag("localhost/ember-e2e:1")
	if err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(dir, "image.tar")
	if err := tarball.WriteToFile(tarPath, ref, img); err != nil {
		t.Fatal(err)
	}
	if out, code := ctr(time.Minute, "", "image", "import", tarPath); code != 0 {
		t.Fatalf("ctr image import: %d: %s", code, out)
	}
	const image = "localhost/ember-e2e:1"
	// retrying runs f, a ctr run of container id; a VM that died of the
	// lab's triple fault while booting (see bootTimeout) is run again, a
	// few times, after what is left of its container is removed.
	retrying := func(id string, f func() (string, int)) (string, int) {
		for attempt := 1; ; attempt++ {
			out, code := f()
			if code == 0 || !labDeath(out) || attempt == bootAttempts {
				return out, code
			}
			t.Logf("container %s: its VM died of a triple fault or internal error (a lab fault?); trying again: %s", id, out)
			ctr(time.Minute, "", "task", "delete", "--force", id)
			ctr(time.Minute, "", "container", "delete", id)
		}
	}
	// run runs container args[1] of image args[0] to its end.
	run := func(stdin string, args ...string) (string, int) {
		return retrying(args[1], func() (string, int) {
			return ctr(3*time.Minute, stdin, append([]string{"run", "--rm", "--runtime", "io.containerd.ember.v2"}, args...)...)
		})
	}

	// uname -r prints the guest kernel's release, not the lab's.
	out, code := run("", image, "u1", "uname", "-r")
	host, _ := exec.Command("uname", "-r").Output()
	if code != 0 || strings.TrimSpace(out) == "" || strings.TrimSpace(out) == strings.TrimSpace(string(host)) {
		t.Errorf("uname -r in the VM: %d %q (the lab's: %q)", code, out, host)
	}
	// Exit codes propagate.
	if _, code := run("", image, "u2", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exit 7: ctr exited %d", code)
	}
	// stdin reaches cat.
	if out, code := run("through stdin\n", image, "u3", "cat"); code != 0 || out != "through stdin\n" {
		t.Errorf("cat: %d %q", code, out)
	}
	// -t gives a terminal. ctr -t wants a terminal of its own: script(1)
	// runs it on a pseudo-terminal.
	{
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		line := "ctr --address " + sock + " run --rm -t --runtime io.containerd.ember.v2 " + image + " u4 sh -c 'test -t 0 && echo is-a-tty'"
		out, err := exec.CommandContext(ctx, "script", "-q", "-e", "-c", line, "/dev/null").CombinedOutput()
		cancel()
		if err != nil || !strings.Contains(string(out), "is-a-tty") {
			t.Errorf("-t: %v %q", err, out)
		}
	}
	// exec runs a second process in the same VM; metrics reports the
	// VM's use; kill ends the task.
	if out, code := retrying("u5", func() (string, int) {
		return ctr(3*time.Minute, "", "run", "-d", "--runtime", "io.containerd.ember.v2", image, "u5", "sh", "-c", "echo vm-marker > /tmp/m; sleep 1000")
	}); code != 0 {
		t.Fatalf("run -d: %d %s", code, out)
	}
	time.Sleep(time.Second) // the marker is written by then (no readiness signal from ctr)
	if out, code := ctr(time.Minute, "", "task", "exec", "--exec-id", "e1", "u5", "cat", "/tmp/m"); code != 0 || out != "vm-marker\n" {
		t.Errorf("task exec: %d %q", code, out)
	}
	// metrics: the VM's CPU time and memory in use, from its agent.
	if out, code := ctr(time.Minute, "", "task", "metrics", "--format", "json", "u5"); code != 0 ||
		!strings.Contains(out, `"usage_usec"`) || !strings.Contains(out, `"usage_limit"`) {
		t.Errorf("task metrics: %d %q", code, out)
	}
	if out, code := ctr(time.Minute, "", "task", "kill", "-s", "SIGKILL", "u5"); code != 0 {
		t.Errorf("task kill: %d %s", code, out)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		out, _ := ctr(10*time.Second, "", "task", "ls")
		if !strings.Contains(out, "RUNNING") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("u5 still running after kill: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ctr(time.Minute, "", "task", "delete", "u5")
	ctr(time.Minute, "", "container", "delete", "u5")
	// Bounded: pgrep reads every /proc/PID/cmdline, which blocks on an
	// ember stuck in the lab's KVM (a lab fault).
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	if out, _ := exec.CommandContext(pctx, "pgrep", "-f", "ember --api-sock").Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("ember processes left: %s", out)
	}
}

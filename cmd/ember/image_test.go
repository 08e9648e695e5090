package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/internal/testbin"
)

// TestImageDelegates: `ember image` runs ember-image from beside ember, and
// says so plainly when it is missing.
func TestImageDelegates(t *testing.T) {
	dir := t.TempDir()
	ember := filepath.Join(dir, "ember")
	data, err := os.ReadFile(emberBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ember, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(ember, args...)
		cmd.Env = append(os.Environ(), "PATH=/nonexistent")
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return o.String(), e.String(), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return o.String(), e.String(), 0
	}
	if _, errOut, code := run("image", "ls"); code != exitFailure || !strings.Contains(errOut, "ember-image is not installed") {
		t.Errorf("without ember-image: exit %d, %q", code, errOut)
	}
	if _, err := testbin.Build(dir, "ember-image", "github.com/embervm/ember/cmd/ember-image"); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run("image", "ls", "--home", t.TempDir())
	if code != exitOK || !strings.HasPrefix(out, "ID ") {
		t.Errorf("ember image ls: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code := run("image", "frobnicate"); code != exitUsage || !strings.Contains(errOut, "unknown command") {
		t.Errorf("ember image frobnicate: exit %d, %q", code, errOut)
	}
}

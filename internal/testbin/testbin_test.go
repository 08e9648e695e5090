package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// rusage is a small command of the module to build.
const rusage = "github.com/embervm/ember/cmd/ember-rusage"

// TestBuildAndPrebuilt: Build builds a static binary at dir/name; with
// EMBER_TEST_BIN set it copies the prebuilt one there instead, and a
// missing prebuilt binary is an error that names the variable.
func TestBuildAndPrebuilt(t *testing.T) {
	t.Setenv(Env, "")
	pre := t.TempDir()
	bin, err := Build(pre, "ember-rusage", rusage)
	if err != nil {
		t.Fatal(err)
	}
	if bin != filepath.Join(pre, "ember-rusage") {
		t.Errorf("Build = %s", bin)
	}
	if out, err := exec.Command("file", bin).CombinedOutput(); err == nil && !strings.Contains(string(out), "statically linked") {
		t.Errorf("not static: %s", out)
	}
	t.Setenv(Env, pre)
	dir := t.TempDir()
	got, err := Build(dir, "ember-rusage", rusage)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(bin)
	b, err := os.ReadFile(got)
	if err != nil || string(a) != string(b) {
		t.Errorf("the copy at %s differs from the prebuilt binary (%v)", got, err)
	}
	if st, err := os.Stat(got); err != nil || st.Mode().Perm()&0o100 == 0 {
		t.Errorf("copy not executable: %v %v", st, err)
	}
	if _, err := Build(dir, "ember-missing", rusage); err == nil || !strings.Contains(err.Error(), Env) {
		t.Errorf("missing prebuilt binary: %v, want an error naming %s", err, Env)
	}
}

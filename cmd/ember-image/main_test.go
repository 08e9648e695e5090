package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/embervm/ember/image"
	"github.com/embervm/ember/internal/testbin"
)

var toolBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ember-image-cli-test-")
	if err != nil {
		panic(err)
	}
	toolBin, err = testbin.Build(dir, "ember-image", "github.com/embervm/ember/cmd/ember-image")
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the tool with stdin, stdout and stderr not terminals.
func run(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(toolBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func needRoot(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		why = "needs mkfs.erofs"
	}
	if why != "" {
		if os.Getenv("CI") != "" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
}

// testLayout writes a two-layer linux/GOARCH image as an OCI layout.
func testLayout(t *testing.T) (string, v1.Image) {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Env = []string{"A=1"}
	cf.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return dir, img
}

func TestImageCommands(t *testing.T) {
	needRoot(t)
	home := t.TempDir()
	dir, img := testLayout(t)
	id, _ := img.ConfigName()

	out, errOut, code := run(t, nil, "import", "--home", home, dir, "app:v1")
	if code != 0 || errOut != "" {
		t.Fatalf("import: exit %d, stderr %q (no progress when stderr is not a terminal)", code, errOut)
	}
	if want := id.String() + "\nindex.docker.io/library/app:v1\n"; out != want {
		t.Errorf("import printed %q, want %q", out, want)
	}

	// $EMBER_HOME is the default home.
	out, _, code = run(t, []string{image.HomeEnv + "=" + home}, "ls")
	if code != 0 || !strings.Contains(out, id.Hex[:12]) || !strings.Contains(out, "app:v1") {
		t.Errorf("ls: exit %d:\n%s", code, out)
	}

	out, _, code = run(t, nil, "inspect", "--home", home, "app:v1")
	var got image.Image
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 {
		t.Fatalf("inspect: exit %d, %v:\n%s", code, err, out)
	}
	if got.ID != id.String() || len(got.Layers) != 2 || got.Config.Cmd[0] != "/bin/true" || got.Layers[0].Path == "" {
		t.Errorf("inspect: %+v", got)
	}

	out, _, code = run(t, nil, "rm", "--home", home, "app:v1")
	if code != 0 || !strings.Contains(out, "untagged index.docker.io/library/app:v1") || !strings.Contains(out, "deleted "+id.String()) {
		t.Errorf("rm: exit %d:\n%s", code, out)
	}
	out, _, _ = run(t, nil, "ls", "--home", home)
	if strings.Count(out, "\n") != 1 {
		t.Errorf("ls after rm:\n%s", out)
	}
}

// TestImageErrors: bad input gets one line on stderr and leaves nothing.
func TestImageErrors(t *testing.T) {
	needRoot(t)
	home := t.TempDir()
	_, img := testLayout(t)
	saved := filepath.Join(t.TempDir(), "saved.tar")
	ref, err := name.ParseReference("app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(saved, ref, img); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(saved)
	os.Truncate(saved, fi.Size()-700)

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"import", "--home", home, saved}, 1, "truncated"},
		{[]string{"import", "--home", home, "/nonexistent"}, 1, "no such file"},
		{[]string{"inspect", "--home", home, "nothing:here"}, 1, "no such image"},
		{[]string{"rm", "--home", home, "nothing:here"}, 1, "no such image"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"ls", "--home", home, "extra"}, 2, "wrong number of arguments"},
		{[]string{"pull", "--bogus", "x"}, 2, "flag provided but not defined"},
	} {
		_, errOut, code := run(t, nil, c.args...)
		first, _, _ := strings.Cut(errOut, "\n")
		if code != c.code || !strings.Contains(first, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errOut, c.code, c.want)
		}
		if c.code == 1 && strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: stderr is not one line: %q", c.args, errOut)
		}
	}
	var left []string
	filepath.Walk(filepath.Join(home, image.StoreDir), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !strings.HasSuffix(p, "lock") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

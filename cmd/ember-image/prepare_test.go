package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/api/imageblock"
	"github.com/embervm/ember/disk"
	"github.com/embervm/ember/initrd"
)

// prepareRun runs `ember-image prepare` with the block on stdin.
func prepareRun(t *testing.T, env []string, block string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(toolBin, append([]string{"prepare"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(block)
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

// prepareEnv is a home with the test image imported as app:v1, and the
// environment prepare runs in: a stand-in ember-init and guest kernel (the
// initrd is built, never booted here).
func prepareEnv(t *testing.T) (home string, env []string) {
	t.Helper()
	home = t.TempDir()
	dir, _ := testLayout(t)
	if _, errOut, code := run(t, nil, "import", "--home", home, dir, "app:v1"); code != 0 {
		t.Fatalf("import: exit %d: %s", code, errOut)
	}
	tools := t.TempDir()
	initBin := filepath.Join(tools, "ember-init")
	kernel := filepath.Join(tools, "vmlinux")
	for _, f := range []string{initBin, kernel} {
		if err := os.WriteFile(f, []byte("\x7fELF not really"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return home, []string{initrd.InitEnv + "=" + initBin, imageblock.KernelEnv + "=" + kernel}
}

// TestPrepareJSON: `ember-image prepare --json` turns a block into the
// image's layer drives (the store's files, read-only, lowest first), a
// copy-on-write writable drive and an initrd in --dir, with the guest
// kernel and command line `ember run --image` uses; a "disk" named in the
// block is made there and reused next time.
func TestPrepareJSON(t *testing.T) {
	needRoot(t)
	home, env := prepareEnv(t)
	dir := t.TempDir()
	out, errOut, code := prepareRun(t, env, `{"ref": "app:v1", "args": ["/bin/sh", "-c", "echo hi"], "env": ["B=2"], "hostname": "box", "disk_mib": 64}`,
		"--json", "--home", home, "--dir", dir)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	var p imageblock.Prepared
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("answer %q: %v", out, err)
	}
	if p.Kernel != strings.TrimPrefix(env[1], imageblock.KernelEnv+"=") || filepath.Dir(p.Initrd) != dir || !strings.HasSuffix(p.BootArgs, " quiet") {
		t.Errorf("answer %+v", p)
	}
	if len(p.Drives) != 3 || p.Drives[0].ID != "layer0" || p.Drives[1].ID != "layer1" || !p.Drives[0].ReadOnly ||
		!strings.HasPrefix(p.Drives[0].Path, filepath.Join(home, "images")) || p.Drives[2].ID != imageblock.WritableID ||
		p.Drives[2].ReadOnly || filepath.Dir(p.Drives[2].Path) != dir || p.Drives[2].Base == "" {
		t.Fatalf("drives %+v", p.Drives)
	}
	if info, err := disk.Inspect(p.Drives[2].Path); err != nil || info.BasePath != p.Drives[2].Base {
		t.Errorf("writable drive: %+v, %v", info, err)
	}
	// The initrd ends with the config: the block's command, environment
	// and host name, over the image's.
	data, err := os.ReadFile(p.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"echo hi"`, `"A=1"`, `"B=2"`, `"box"`} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("initrd has no %s", want)
		}
	}

	// A named disk: made, then reused with its base.
	named := filepath.Join(t.TempDir(), "keep.cow")
	block := `{"ref": "app:v1", "disk": "` + named + `", "disk_mib": 64}`
	for i := range 2 {
		dir := t.TempDir()
		out, errOut, code := prepareRun(t, env, block, "--json", "--home", home, "--dir", dir)
		if code != 0 {
			t.Fatalf("run %d: exit %d: %s", i, code, errOut)
		}
		var p imageblock.Prepared
		if err := json.Unmarshal([]byte(out), &p); err != nil || p.Drives[len(p.Drives)-1].Path != named {
			t.Fatalf("run %d: %v %+v", i, err, p)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 { // the initrd only
			t.Errorf("run %d: --dir holds %v", i, ents)
		}
	}
}

// TestPrepareErrors: a bad block or an unknown image is one line on
// stderr; nothing is left in --dir, nor at a "disk" the block named.
func TestPrepareErrors(t *testing.T) {
	needRoot(t)
	home, env := prepareEnv(t)
	noInit := []string{initrd.InitEnv + "=/nonexistent/ember-init"}
	disk := filepath.Join(t.TempDir(), "new.cow")
	for _, c := range []struct {
		name, block string
		env         []string
		args        []string
		code        int
		want        string
	}{
		{"unknown ref", `{"ref": "nothing:here"}`, env, nil, 1, `image "nothing:here": no such image`},
		{"unknown field", `{"ref": "app:v1", "cmd": ["x"]}`, env, nil, 2, `unknown field "cmd"`},
		{"bad env", `{"ref": "app:v1", "env": ["X"]}`, env, nil, 2, `env "X": want NAME=VALUE`},
		{"two values", `{"ref": "app:v1"} {}`, env, nil, 2, "more than one JSON value"},
		{"not json", `ref=app`, env, nil, 2, "invalid character"},
		{"no ember-init", `{"ref": "app:v1", "disk": "` + disk + `", "disk_mib": 64}`, noInit, nil, 1, "/nonexistent/ember-init"},
		{"no --json", `{"ref": "app:v1"}`, env, []string{"--dir", "/tmp"}, 2, "--json is required"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			args := c.args
			if args == nil {
				args = []string{"--json", "--home", home, "--dir", dir}
			}
			out, errOut, code := prepareRun(t, c.env, c.block, args...)
			if code != c.code || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, c.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d and one line with %q", code, out, errOut, c.code, c.want)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("left in --dir: %v", ents)
			}
			if _, err := os.Stat(disk); err == nil {
				t.Errorf("the block's disk %s was left", disk)
			}
		})
	}
}

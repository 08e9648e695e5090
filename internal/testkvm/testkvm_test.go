package testkvm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// childEnv marks the child process of TestNeedWithoutKVM.
const childEnv = "TESTKVM_CHILD"

// TestNeedWithoutKVM runs the check against a device node that does not
// exist, in a child test process: with CI set the child fails, naming CI;
// without it the child skips; with a lab list set (CI or not) it skips and
// lists itself for the lab.
func TestNeedWithoutKVM(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		t.Run("sub", func(t *testing.T) {
			need(t, filepath.Join(os.TempDir(), "no-such-dir", "kvm"))
		})
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(extra ...string) (string, error) {
		cmd := exec.Command(exe, "-test.run", "^TestNeedWithoutKVM$", "-test.v")
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, ciEnv+"=") && !strings.HasPrefix(kv, LabListEnv+"=") {
				env = append(env, kv)
			}
		}
		cmd.Env = append(append(env, childEnv+"=1"), extra...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(ciEnv + "=true")
	if err == nil || !strings.Contains(out, "--- FAIL") || !strings.Contains(out, "CI is set") {
		t.Errorf("with CI set: err %v, want a failure naming CI:\n%s", err, out)
	}
	out, err = run()
	if err != nil || !strings.Contains(out, "--- SKIP") {
		t.Errorf("without CI: err %v, want a skip:\n%s", err, out)
	}
	list := filepath.Join(t.TempDir(), "list")
	for range 2 {
		out, err = run(ciEnv+"=true", LabListEnv+"="+list)
		if err != nil || !strings.Contains(out, "--- SKIP") || !strings.Contains(out, "listed to run in the lab") {
			t.Errorf("with a lab list: err %v, want a skip that says it is listed:\n%s", err, out)
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(list)
	line := dir + "\tTestNeedWithoutKVM\n"
	if err != nil || string(b) != line+line {
		t.Errorf("lab list = %q, %v; want %q twice", b, err, line)
	}
}

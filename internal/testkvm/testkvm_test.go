package testkvm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// childEnv marks the child process of TestNeedFailsUnderCI.
const childEnv = "TESTKVM_CHILD"

// TestNeedFailsUnderCI runs the check against a device node that does not
// exist, in a child test process: with CI set the child fails, naming CI;
// without it the child skips.
func TestNeedFailsUnderCI(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		need(t, filepath.Join(os.TempDir(), "no-such-dir", "kvm"))
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(ci string) (string, error) {
		cmd := exec.Command(exe, "-test.run", "^TestNeedFailsUnderCI$", "-test.v")
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, ciEnv+"=") {
				env = append(env, kv)
			}
		}
		env = append(env, childEnv+"=1")
		if ci != "" {
			env = append(env, ciEnv+"="+ci)
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("true")
	if err == nil || !strings.Contains(out, "--- FAIL") || !strings.Contains(out, "CI is set") {
		t.Errorf("with CI set: err %v, want a failure naming CI:\n%s", err, out)
	}
	out, err = run("")
	if err != nil || !strings.Contains(out, "--- SKIP") {
		t.Errorf("without CI: err %v, want a skip:\n%s", err, out)
	}
}

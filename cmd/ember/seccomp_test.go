package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testbin"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/seccomp"
)

// selfTestBinary builds ember with the seccomptest tag (the self-test of
// selftest_on.go) once per test run.
func selfTestBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(filepath.Dir(emberBin), "ember-seccomptest")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	bin, err := testbin.Build(filepath.Dir(emberBin), "ember-seccomptest", "github.com/embervm/ember/cmd/ember", "seccomptest")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// runSelfTest runs bin with the self-test asking class to attempt action.
func runSelfTest(t *testing.T, bin, spec string, args ...string) (stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), selfTestEnvName+"="+spec)
	var e strings.Builder
	cmd.Stderr = &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return e.String(), code
}

// selfTestEnvName is selftest_on.go's selfTestEnv (not compiled here).
const selfTestEnvName = "EMBER_SECCOMP_SELFTEST"

// TestSeccompForbiddenCalls: after boot, each thread class attempting
// each forbidden call ends ember with exit status 148 and one log line
// naming the system call and the class, in ember run and in the
// Firecracker mode.
func TestSeccompForbiddenCalls(t *testing.T) {
	testkvm.Need(t)
	bin := selfTestBinary(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	cfg, _ := json.Marshal(map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": kernel},
		"drives":         []any{},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 32},
	})
	cfgFile := write(t, "vm.json", cfg)
	actions := []struct{ action, syscall string }{
		{"execve", "59 (execve)"},
		{"open-shadow", "257 (openat)"},
		{"socket-inet", "41 (socket)"},
		{"ptrace", "101 (ptrace)"},
		{"fork", "56 (clone)"},
	}
	modes := map[string][]string{
		"run":         {"run", "--kernel", kernel, "--boot-timer", "--mem-mib", "32"},
		"firecracker": {"--no-api", "--boot-timer", "--config-file", cfgFile},
	}
	for _, mode := range []string{"run", "firecracker"} {
		for _, class := range []string{"vcpu", "vmm"} {
			for _, a := range actions {
				t.Run(fmt.Sprintf("%s/%s/%s", mode, class, a.action), func(t *testing.T) {
					stderr, code := runSelfTest(t, bin, class+":"+a.action, modes[mode]...)
					if code != seccomp.ExitCode {
						t.Fatalf("exit %d, want %d\n%s", code, seccomp.ExitCode, stderr)
					}
					want := fmt.Sprintf("seccomp: bad syscall %s on a %s thread", a.syscall, class)
					var hits []string
					for _, l := range strings.Split(stderr, "\n") {
						if strings.Contains(l, "seccomp:") {
							hits = append(hits, l)
						}
					}
					if len(hits) != 1 || !strings.Contains(hits[0], want) {
						t.Fatalf("want one log line with %q, got:\n%s", want, stderr)
					}
				})
			}
		}
	}
}

// TestSeccompMetric: in the Firecracker mode a violation is counted in
// seccomp.num_faults and the metrics are flushed before the exit.
func TestSeccompMetric(t *testing.T) {
	testkvm.Need(t)
	bin := selfTestBinary(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	cfg, _ := json.Marshal(map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": kernel},
		"drives":         []any{},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 32},
	})
	metricsPath := filepath.Join(t.TempDir(), "metrics.json")
	stderr, code := runSelfTest(t, bin, "vmm:execve", "--no-api", "--boot-timer",
		"--metrics-path", metricsPath, "--config-file", write(t, "vm.json", cfg))
	if code != seccomp.ExitCode {
		t.Fatalf("exit %d, want %d\n%s", code, seccomp.ExitCode, stderr)
	}
	b, err := os.ReadFile(metricsPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var last struct {
		Seccomp struct {
			NumFaults uint64 `json:"num_faults"`
		} `json:"seccomp"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("last metrics line: %v\n%s", err, lines[len(lines)-1])
	}
	if last.Seccomp.NumFaults != 1 {
		t.Fatalf("seccomp.num_faults %d in the last metrics line, want 1:\n%s", last.Seccomp.NumFaults, lines[len(lines)-1])
	}
}

// TestSeccompFlags: --no-seccomp and a --seccomp-filter file (the
// built-in filters printed as JSON) run the tiny guest; a bad filter file
// is one line and the mode's bad-argument status; the two flags together
// are refused.
func TestSeccompFlags(t *testing.T) {
	testkvm.Need(t)
	kernel := write(t, "tiny.elf", tiny.Image())
	printed, stderr, code, _ := runEmber(t, "seccomp", "print", "--json")
	if code != 0 {
		t.Fatalf("ember seccomp print --json: exit %d\n%s", code, stderr)
	}
	builtin := write(t, "builtin.json", []byte(printed))
	for _, args := range [][]string{
		{"run", "--kernel", kernel, "--no-seccomp"},
		{"run", "--kernel", kernel, "--seccomp-filter", builtin},
	} {
		if _, stderr, code, _ := runEmber(t, args...); code != 0 {
			t.Errorf("ember %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
		}
	}
	bad := write(t, "bad.json", []byte(`{"vmm": {"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "frobnicate"}]}}`))
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--kernel", kernel, "--seccomp-filter", bad}, exitUsage, "frobnicate"},
		{[]string{"run", "--kernel", kernel, "--seccomp-filter", "/nonexistent.json"}, exitUsage, "/nonexistent.json"},
		{[]string{"run", "--kernel", kernel, "--seccomp-filter", bad, "--no-seccomp"}, exitUsage, "exclude"},
		{[]string{"--no-api", "--config-file", "/nonexistent", "--seccomp-filter", bad}, exitBadArguments, "frobnicate"},
	} {
		_, stderr, code, _ := runEmber(t, c.args...)
		if code != c.code || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("ember %s: exit %d, stderr %q; want %d and one line naming %q", strings.Join(c.args, " "), code, stderr, c.code, c.want)
		}
	}
	out, _, code, _ := runEmber(t, "seccomp", "print")
	for _, want := range []string{"filter boot:", "filter vmm:", "filter vcpu:", "BPF instructions", "KVM_RUN"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("ember seccomp print: exit %d, no %q in:\n%s", code, want, out)
		}
	}
}

package main

import (
	"strings"
	"testing"
)

// TestDoctorReportsEveryCheck: ember doctor (without --fix, so the host is
// left alone) prints one status line per check and a verdict, with exit
// status 0 when ready and 1 when not.
func TestDoctorReportsEveryCheck(t *testing.T) {
	stdout, stderr, code, _ := runEmber(t, "doctor", "--vms", "10")
	if code != 0 && code != 1 {
		t.Fatalf("exit %d, want 0 or 1; stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	verdict := lines[len(lines)-1]
	if want := map[int]string{0: "ready for 10 VMs", 1: "not ready for 10 VMs"}[code]; !strings.Contains(verdict, want) {
		t.Errorf("exit %d with verdict %q", code, verdict)
	}
	for _, name := range []string{"kvm", "kernel.pid_max", "RLIMIT_NOFILE", "vm.max_map_count", "userfaultfd", "THP"} {
		found := false
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) > 1 && (f[0] == "ok" || f[0] == "warn" || f[0] == "FAIL") && f[1] == name {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s line in:\n%s", name, stdout)
		}
	}
}

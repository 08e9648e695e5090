package doctor

import (
	"os"
	"testing"
)

// TestThisHost runs every check on the machine the tests run on, with the
// real probes, for the test process itself, and logs the report.
func TestThisHost(t *testing.T) {
	h := &Host{Root: "/", PID: os.Getpid(), EUID: os.Geteuid(), Probe: &LiveProbe{}}
	rs := Check(h, 100)
	if len(rs) != len(checks) {
		t.Fatalf("%d results for %d checks", len(rs), len(checks))
	}
	t.Logf("ember doctor --vms 100 on this host (ready: %v):\n%s", Ready(rs), printed(rs))
	if _, err := os.Stat("/dev/kvm"); err == nil {
		if r := result(t, rs, "kvm"); r.Status != OK {
			t.Errorf("/dev/kvm exists but the kvm check says %v: %s", r.Status, r.Detail)
		}
	}
}

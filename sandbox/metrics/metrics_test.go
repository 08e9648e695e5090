package metrics

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/embervm/ember/sandbox"
)

// TestVMRSS reads this process's RSS, and nothing for a pid whose start
// time does not match (a reused pid).
func TestVMRSS(t *testing.T) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	start := statStart(string(stat))
	if start == 0 {
		t.Fatalf("no start time in %q", stat)
	}
	if rss, ok := vmRSS(os.Getpid(), start); !ok || rss < 1<<20 {
		t.Errorf("vmRSS(self) = %d, %v", rss, ok)
	}
	if _, ok := vmRSS(os.Getpid(), start+1); ok {
		t.Error("vmRSS with another start time read a value")
	}
	for _, s := range []string{"", "VmRSS:", "VmRSS: x kB", "VmRSS: -4 kB"} {
		if _, ok := statusRSS(s); ok {
			t.Errorf("statusRSS(%q) read a value", s)
		}
	}
	if v, ok := statusRSS("Name:\tx\nVmRSS:\t   10516 kB\n"); !ok || v != 10516*1024 {
		t.Errorf("statusRSS = %d, %v", v, ok)
	}
}

// TestObserver: creates, refusals, execs and ends are counted, each
// Metrics in its own registry.
func TestObserver(t *testing.T) {
	a, b := New(), New()
	a.Created(sandbox.Sandbox{Timings: sandbox.Timings{RestoreMS: 10, TotalMS: 12}}, nil)
	a.Created(sandbox.Sandbox{}, &sandbox.Error{Kind: sandbox.KindExhausted, Budget: sandbox.BudgetTaps, RetryAfter: time.Second})
	a.Created(sandbox.Sandbox{}, errors.New("boom"))
	a.Exec(time.Millisecond, nil)
	a.Ended(sandbox.Sandbox{Exit: &sandbox.Exit{Reason: sandbox.ExitOOM}})
	for _, tc := range []struct {
		v    float64
		want float64
		name string
	}{
		{testutil.ToFloat64(a.creates.WithLabelValues(ResultOK)), 1, "ok creates"},
		{testutil.ToFloat64(a.creates.WithLabelValues(ResultRefused)), 1, "refused creates"},
		{testutil.ToFloat64(a.creates.WithLabelValues(ResultFailed)), 1, "failed creates"},
		{testutil.ToFloat64(a.refusals.WithLabelValues(sandbox.BudgetTaps)), 1, "tap refusals"},
		{testutil.ToFloat64(a.execs.WithLabelValues(ResultOK)), 1, "execs"},
		{testutil.ToFloat64(a.ends.WithLabelValues(sandbox.ExitOOM)), 1, "oom ends"},
		{testutil.ToFloat64(b.creates.WithLabelValues(ResultOK)), 0, "another registry's creates"},
	} {
		if tc.v != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.v, tc.want)
		}
	}
	n, err := testutil.GatherAndCount(a.Registry(), "emberd_create_phase_seconds")
	if err != nil || n != 4 {
		t.Errorf("create phase series: %d, %v", n, err)
	}
	if err := testutil.GatherAndCompare(a.Registry(), strings.NewReader(`
# HELP emberd_admission_refusals_total Creates refused because a budget of the host was exhausted, by budget.
# TYPE emberd_admission_refusals_total counter
emberd_admission_refusals_total{budget="files"} 0
emberd_admission_refusals_total{budget="memory"} 0
emberd_admission_refusals_total{budget="processes"} 0
emberd_admission_refusals_total{budget="taps"} 1
emberd_admission_refusals_total{budget="vcpus"} 0
`), "emberd_admission_refusals_total"); err != nil {
		t.Error(err)
	}
}

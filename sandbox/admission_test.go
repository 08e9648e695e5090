package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embervm/ember/internal/testkvm"
)

// TestAdmissionConcurrentCreates: with a memory budget that fits three
// sandboxes, eight creates at once give three sandboxes and five refusals
// naming the memory budget, with nothing made for the refused ones; a
// kill frees room for the next create.
func TestAdmissionConcurrentCreates(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	tpl := tinySpec(t)
	per := Holds(Template{Spec: tpl})
	m, err := Open(Config{StateDir: state, Ember: emberBin, Admission: AdmissionConfig{MemoryMiB: 3*per.MemoryMiB + per.MemoryMiB/2, VCPUs: 64}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.BuildTemplate(ctx, tpl); err != nil {
		t.Fatal(err)
	}
	const n = 8
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		created  []Sandbox
		refusals []*Error
	)
	for range n {
		wg.Go(func() {
			sb, err := m.Create(ctx, SandboxSpec{Template: "tiny"})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				created = append(created, sb)
				return
			}
			e, ok := err.(*Error)
			if !ok || e.Kind != KindExhausted {
				t.Errorf("create: %v; want a refusal", err)
				return
			}
			refusals = append(refusals, e)
		})
	}
	wg.Wait()
	if len(created) != 3 || len(refusals) != n-3 {
		t.Fatalf("%d created, %d refused; want 3 and %d", len(created), len(refusals), n-3)
	}
	for _, e := range refusals {
		if e.Budget != BudgetMemory || e.RetryAfter < time.Second || !strings.Contains(e.Msg, "memory budget exhausted") {
			t.Errorf("refusal %+v: want the memory budget and a Retry-After", e)
		}
	}
	h := m.Host()
	if h.Sandboxes != 3 || h.Used.MemoryMiB != 3*per.MemoryMiB || h.Used.VCPUs != 3 || h.Used.Taps != 3 || h.Free.MemoryMiB != h.Budgets.MemoryMiB-3*per.MemoryMiB {
		t.Errorf("host after 3 creates: %+v", h)
	}
	// Nothing was made for the refused creates: no record, no folder.
	sbs, err := m.Sandboxes()
	if err != nil {
		t.Fatal(err)
	}
	dirs, _ := os.ReadDir(filepath.Join(state, sandboxesDir))
	if len(sbs) != 3 || len(dirs) != 3 {
		t.Errorf("%d records and %d folders after 3 creates and %d refusals; want 3 and 3", len(sbs), len(dirs), n-3)
	}
	if _, _, err := m.Kill(ctx, created[0].ID); err != nil {
		t.Fatal(err)
	}
	if h := m.Host(); h.Sandboxes != 2 || h.Used.MemoryMiB != 2*per.MemoryMiB {
		t.Errorf("host after a kill: %+v", h)
	}
	sb, err := m.Create(ctx, SandboxSpec{Template: "tiny"})
	if err != nil {
		t.Fatalf("a create after a kill: %v", err)
	}
	for _, s := range append(created[1:], sb) {
		if _, _, err := m.Kill(ctx, s.ID); err != nil {
			t.Error(err)
		}
	}
	if h := m.Host(); h.Sandboxes != 0 || h.Used != (Resources{}) {
		t.Errorf("host after killing every sandbox: %+v", h)
	}
}

// TestAdmissionFailedCreateReleases: a create that fails after its
// reservation (ember does not come up) gives back what it held and
// leaves no folder or record.
func TestAdmissionFailedCreateReleases(t *testing.T) {
	state := t.TempDir()
	m, err := Open(Config{StateDir: state, Ember: "/bin/true", Admission: AdmissionConfig{MemoryMiB: 1024, VCPUs: 4}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tpl := Template{ID: "t", State: TemplateReady, Spec: TemplateSpec{VCPUs: 1, MemoryMiB: 16, Ready: ReadyCheck{Kind: ReadyBootTimer, TimeoutMS: 2000}}}
	if err := m.db.put(bucketTemplates, tpl.ID, tpl); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := Template{ID: "big", State: TemplateReady, Spec: TemplateSpec{VCPUs: 8, MemoryMiB: 16}}
	if err := m.db.put(bucketTemplates, big.ID, big); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, SandboxSpec{Template: "big"}); KindOf(err) != KindConflict || !strings.Contains(err.Error(), "needs 8 of the vcpus budget, which is 4 in all: it can never be admitted") {
		t.Errorf("a template larger than a budget: %v; want a conflict saying so", err)
	}
	if _, err := m.Create(ctx, SandboxSpec{Template: "t"}); err == nil || KindOf(err) == KindExhausted {
		t.Fatalf("create with an ember that exits at once: %v; want a failure", err)
	}
	if h := m.Host(); h.Sandboxes != 0 || h.Used != (Resources{}) {
		t.Errorf("host after a failed create: %+v", h)
	}
	sbs, _ := m.Sandboxes()
	dirs, _ := os.ReadDir(filepath.Join(state, sandboxesDir))
	if len(sbs) != 0 || len(dirs) != 0 {
		t.Errorf("after a failed create: %d records, %d folders", len(sbs), len(dirs))
	}
}

// TestResolveBudgets: defaults from the host, overrides, and bad values
// named.
func TestResolveBudgets(t *testing.T) {
	hb, err := ResolveBudgets(AdmissionConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if hb.HostMemoryMiB <= 0 || hb.Budgets.MemoryMiB != hb.HostMemoryMiB-DefaultMemoryReserveMiB || hb.MemoryOvercommit != 1 {
		t.Errorf("default memory: %+v", hb)
	}
	if hb.Budgets.VCPUs != int64(float64(hb.HostCPUs)*DefaultVCPUOvercommit) || hb.Budgets.Files <= 0 || hb.Budgets.Processes <= 0 || hb.Budgets.Taps != DefaultTaps {
		t.Errorf("defaults: %+v", hb.Budgets)
	}
	hb, err = ResolveBudgets(AdmissionConfig{MemoryMiB: 1000, MemoryOvercommit: 1.5, VCPUs: 7, Files: 9, Processes: 11, Taps: 13, RetryAfter: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Resources{MemoryMiB: 1500, VCPUs: 7, Files: 9, Processes: 11, Taps: 13}); hb.Budgets != want || hb.RetryAfter != 2 {
		t.Errorf("overrides: %+v, retry %v; want %+v", hb.Budgets, hb.RetryAfter, want)
	}
	for _, tc := range []struct {
		c    AdmissionConfig
		want string
	}{
		{AdmissionConfig{MemoryMiB: -1}, "memory budget -1"},
		{AdmissionConfig{Taps: -2}, "taps budget -2"},
		{AdmissionConfig{VCPUOvercommit: -1}, "vcpu overcommit -1"},
		{AdmissionConfig{MemoryReserveMiB: 1 << 40}, "is no more than the reserve"},
	} {
		if _, err := ResolveBudgets(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v; want %q", tc.c, err, tc.want)
		}
	}
}

// TestAdmissionReserve: the reservation's arithmetic, the first budget
// without room named, and releases that give back exactly once.
func TestAdmissionReserve(t *testing.T) {
	a := newAdmission(Resources{MemoryMiB: 100, VCPUs: 4, Processes: 100, Files: 100, Taps: 100})
	need := Resources{MemoryMiB: 40, VCPUs: 2, Processes: 10, Files: 4, Taps: 1}
	if _, _, ok := a.reserve("a", need); !ok {
		t.Fatal("first reserve refused")
	}
	if _, _, ok := a.reserve("b", need); !ok {
		t.Fatal("second reserve refused")
	}
	if name, held, ok := a.reserve("c", need); ok || name != BudgetMemory || held != 80 {
		t.Errorf("third reserve: %q %d %v; want memory 80 refused", name, held, ok)
	}
	a.release("a")
	a.release("a")
	if used, n := a.state(); n != 1 || used != need {
		t.Errorf("after a release: %+v (%d); want %+v", used, n, need)
	}
	if name, _, ok := a.reserve("c", Resources{MemoryMiB: 1, VCPUs: 3}); ok || name != BudgetVCPUs {
		t.Errorf("a reserve over the vCPUs: %q %v", name, ok)
	}
	a.hold("adopted", Resources{MemoryMiB: 1000})
	if used, _ := a.state(); used.MemoryMiB != 1040 {
		t.Errorf("an adopted sandbox over the budget is held: %+v", used)
	}
}

// TestProcField reads "Key: N kB" lines as meminfo and status have them.
func TestProcField(t *testing.T) {
	data := []byte("MemTotal:       24731400 kB\nMemFree:  1 kB\nVmRSS:\t   10516 kB\nBad: x kB\n")
	for key, want := range map[string]int64{"MemTotal:": 24731400, "VmRSS:": 10516} {
		if v, ok := procField(data, key); !ok || v != want {
			t.Errorf("%s %d %v; want %d", key, v, ok, want)
		}
	}
	for _, key := range []string{"Bad:", "Missing:"} {
		if _, ok := procField(data, key); ok {
			t.Errorf("%s read", key)
		}
	}
	if mib, err := memTotalMiB("/proc/meminfo"); err != nil || mib <= 0 {
		t.Errorf("memTotalMiB: %d, %v", mib, err)
	}
}

// TestRetryAfter: a refusal's Retry-After is the nearest timeout of a
// running sandbox when it comes before the configured wait, at least 1s.
func TestRetryAfter(t *testing.T) {
	m, err := Open(Config{StateDir: t.TempDir(), Ember: "/bin/true", Admission: AdmissionConfig{RetryAfter: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if d := m.retryAfter(); d != 30*time.Second {
		t.Errorf("no sandbox: %v, want 30s", d)
	}
	soon, sooner, past := time.Now().Add(10*time.Second), time.Now().Add(4*time.Second), time.Now().Add(-time.Second)
	m.mu.Lock()
	m.live["a"] = &live{sb: Sandbox{State: StateRunning, Deadline: &soon}}
	m.live["b"] = &live{sb: Sandbox{State: StatePaused, Deadline: &sooner}} // paused: its clock stands
	m.mu.Unlock()
	if d := m.retryAfter(); d > 10*time.Second || d < 9*time.Second {
		t.Errorf("a timeout in 10s: %v", d)
	}
	m.mu.Lock()
	m.live["c"] = &live{sb: Sandbox{State: StateRunning, Deadline: &past}}
	m.mu.Unlock()
	if d := m.retryAfter(); d != time.Second {
		t.Errorf("a timeout past: %v, want 1s", d)
	}
	m.mu.Lock()
	clear(m.live)
	m.mu.Unlock()
}

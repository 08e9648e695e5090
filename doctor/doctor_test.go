package doctor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testPID is the manager process of the fake hosts.
const testPID = 4242

// fakeProbe stands in for the system calls.
type fakeProbe struct {
	kvm        KVMInfo
	kvmErr     error
	uffdErr    error
	tunErr     error
	nofile     []uint64 // soft, hard of the last SetNofile
	nofilePID  int
	nprocCalls int
}

func (p *fakeProbe) KVM() (KVMInfo, error) { return p.kvm, p.kvmErr }
func (p *fakeProbe) Userfaultfd() error    { return p.uffdErr }
func (p *fakeProbe) OpenTun() error        { return p.tunErr }
func (p *fakeProbe) SetNofile(pid int, soft, hard uint64) error {
	p.nofilePID, p.nofile = pid, []uint64{soft, hard}
	return nil
}
func (p *fakeProbe) SetNproc(pid int, soft, hard uint64) error { p.nprocCalls++; return nil }

// limitsFile is /proc/PID/limits with the given open-files and processes
// limits.
func limitsFile(nofileSoft, nofileHard, nprocSoft, nprocHard string) string {
	return fmt.Sprintf(`Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max processes             %-20s %-20s processes
Max open files            %-20s %-20s files
Max locked memory         8388608              8388608              bytes
`, nprocSoft, nprocHard, nofileSoft, nofileHard)
}

// healthyHost is a fake host ready for 4000 VMs: native KVM, generous
// limits, cgroup v2 with its controllers, 64 GiB available.
func healthyHost() map[string]string {
	pid := fmt.Sprint(testPID)
	return map[string]string{
		"dev/kvm":                                               "",
		"dev/net/tun":                                           "",
		"dev/userfaultfd":                                       "",
		"proc/cpuinfo":                                          "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae vmx sse2\n",
		"proc/loadavg":                                          "0.10 0.20 0.30 2/300 12345\n",
		"proc/meminfo":                                          "MemTotal:       67108864 kB\nMemFree:        60000000 kB\nMemAvailable:   65000000 kB\nSwapTotal:             0 kB\n",
		"proc/sys/kernel/pid_max":                               "4194304\n",
		"proc/sys/kernel/threads-max":                           "500000\n",
		"proc/sys/fs/nr_open":                                   "1048576\n",
		"proc/sys/fs/file-max":                                  "9223372036854775807\n",
		"proc/sys/fs/file-nr":                                   "1000\t0\t9223372036854775807\n",
		"proc/sys/vm/max_map_count":                             "65530\n",
		"proc/sys/vm/overcommit_memory":                         "0\n",
		"proc/sys/vm/unprivileged_userfaultfd":                  "0\n",
		"proc/" + pid + "/limits":                               limitsFile("1048576", "1048576", "unlimited", "unlimited"),
		"proc/" + pid + "/mountinfo":                            "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
		"proc/" + pid + "/cgroup":                               "0::/user.slice/session-1.scope\n",
		"sys/fs/cgroup/cgroup.controllers":                      "cpuset cpu io memory hugetlb pids rdma misc\n",
		"sys/fs/cgroup/user.slice/session-1.scope/pids.max":     "max\n",
		"sys/fs/cgroup/user.slice/session-1.scope/pids.current": "12\n",
		"sys/fs/cgroup/user.slice/pids.max":                     "max\n",
		"sys/kernel/mm/ksm/run":                                 "0\n",
		"sys/kernel/mm/transparent_hugepage/enabled":            "always [madvise] never\n",
	}
}

// newHost writes files (path -> contents; a path ending in "/" is a
// directory) under a temporary root.
func newHost(t *testing.T, files map[string]string, euid int) (*Host, *fakeProbe) {
	t.Helper()
	root := t.TempDir()
	for p, data := range files {
		full := filepath.Join(root, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &fakeProbe{kvm: KVMInfo{AdjustClock: 7, ClockRealtime: true}}
	return &Host{Root: root, PID: testPID, EUID: euid, Probe: p}, p
}

func result(t *testing.T, rs []Result, name string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no %q check among %d results", name, len(rs))
	return Result{}
}

func printed(rs []Result) string {
	var b strings.Builder
	Print(&b, rs)
	return b.String()
}

func TestHealthyHostIsReady(t *testing.T) {
	h, _ := newHost(t, healthyHost(), 0)
	rs := Check(h, 4000)
	if !Ready(rs) {
		t.Fatalf("not ready:\n%s", printed(rs))
	}
	for _, r := range rs {
		if r.Status != OK {
			t.Errorf("%s: %v: %s", r.Name, r.Status, r.Detail)
		}
	}
	if got := strings.Count(printed(rs), "\n"); got != len(checks) {
		t.Errorf("printed %d lines for %d checks", got, len(checks))
	}
}

func TestPidMaxTooLowFailsAndFixRaisesIt(t *testing.T) {
	files := healthyHost()
	files["proc/sys/kernel/pid_max"] = "32768\n"
	h, _ := newHost(t, files, 0)
	rs := Check(h, 4000)
	r := result(t, rs, "kernel.pid_max")
	// 300 threads now + 4000 x 9 + 2048 spare.
	want := 300 + 4000*ThreadsPerVM + spareThreads
	if r.Status != Fail || !strings.Contains(r.Detail, fmt.Sprint(want)) || !strings.Contains(r.Detail, "ember doctor --fix") {
		t.Fatalf("pid_max check: %v %s", r.Status, r.Detail)
	}
	if Ready(rs) {
		t.Fatal("ready with pid_max 32768 for 4000 VMs")
	}
	// Few VMs fit.
	if r := result(t, Check(h, 1000), "kernel.pid_max"); r.Status != OK {
		t.Errorf("1000 VMs: %v %s", r.Status, r.Detail)
	}

	changed, errs := Fix(h, rs)
	if len(errs) > 0 || len(changed) != 1 || changed[0] != "kernel.pid_max 32768 -> 65536" {
		t.Fatalf("Fix: changed %q, errors %v", changed, errs)
	}
	b, _ := os.ReadFile(filepath.Join(h.Root, "proc/sys/kernel/pid_max"))
	if string(b) != "65536\n" {
		t.Errorf("pid_max file now %q", b)
	}
	if rs := Check(h, 4000); !Ready(rs) {
		t.Errorf("still not ready after the fix:\n%s", printed(rs))
	}
}

func TestTooManyVMsForThePIDSpaceHasNoFix(t *testing.T) {
	h, _ := newHost(t, healthyHost(), 0)
	r := result(t, Check(h, 500_000), "kernel.pid_max")
	if r.Status != Fail || r.Fixable() || !strings.Contains(r.Detail, "ceiling") {
		t.Fatalf("%v fixable=%v %s", r.Status, r.Fixable(), r.Detail)
	}
}

func TestPVMHostWarnsThatLinuxGuestsNeedTheLab(t *testing.T) {
	files := healthyHost()
	files["proc/cpuinfo"] = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae sse2 hypervisor\n"
	files["sys/module/kvm_pvm/"] = ""
	h, _ := newHost(t, files, 0)
	rs := Check(h, 10)
	r := result(t, rs, "kvm-native")
	if r.Status != Warn || !strings.Contains(r.Detail, "PVM") || !strings.Contains(r.Detail, "bin/ember-lab") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}
	if !Ready(rs) {
		t.Error("a PVM host runs tiny guests: a warning, not a failure")
	}
}

func TestNoKVMFails(t *testing.T) {
	files := healthyHost()
	delete(files, "dev/kvm")
	h, _ := newHost(t, files, 0)
	rs := Check(h, 1)
	if r := result(t, rs, "kvm"); r.Status != Fail || !strings.Contains(r.Detail, "/dev/kvm") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}

	h, p := newHost(t, healthyHost(), 1000)
	p.kvmErr = errors.New("open /dev/kvm: permission denied")
	if r := result(t, Check(h, 1), "kvm"); r.Status != Fail || !strings.Contains(r.Detail, "permission denied") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}
	p.kvmErr = nil
	p.kvm.MissingCaps = []string{"KVM_CAP_IRQFD"}
	if r := result(t, Check(h, 1), "kvm"); r.Status != Fail || !strings.Contains(r.Detail, "KVM_CAP_IRQFD") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}
}

func TestSnapshotCapabilities(t *testing.T) {
	h, p := newHost(t, healthyHost(), 0)
	p.kvm = KVMInfo{AdjustClock: 2} // TSC_STABLE only: before Linux 5.16
	if r := result(t, Check(h, 1), "kvm-snapshots"); r.Status != Warn || !strings.Contains(r.Detail, "KVM_CLOCK_REALTIME") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}
	p.kvm = KVMInfo{AdjustClock: 7, ClockRealtime: true, DirtyLog: errors.New("KVM_GET_DIRTY_LOG: invalid argument")}
	if r := result(t, Check(h, 1), "kvm-snapshots"); r.Status != Warn || !strings.Contains(r.Detail, "Diff snapshots") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}
}

func TestOpenFilesSoftLimitIsRaisedForTheCaller(t *testing.T) {
	files := healthyHost()
	files[fmt.Sprintf("proc/%d/limits", testPID)] = limitsFile("1024", "524288", "unlimited", "unlimited")
	h, p := newHost(t, files, 1000)
	rs := Check(h, 4000)
	r := result(t, rs, "RLIMIT_NOFILE")
	if r.Status != Warn || !r.Fixable() {
		t.Fatalf("%v fixable=%v %s", r.Status, r.Fixable(), r.Detail)
	}
	if _, errs := Fix(h, rs); len(errs) > 0 {
		t.Fatal(errs)
	}
	need := uint64(4000*ManagerFDsPerVM + spareNofile)
	if p.nofilePID != testPID || len(p.nofile) != 2 || p.nofile[0] != need || p.nofile[1] != 524288 {
		t.Errorf("SetNofile(%d, %v), want (%d, [%d 524288])", p.nofilePID, p.nofile, testPID, need)
	}
}

func TestOpenFilesHardLimitNeedsRoot(t *testing.T) {
	files := healthyHost()
	files[fmt.Sprintf("proc/%d/limits", testPID)] = limitsFile("1024", "4096", "unlimited", "unlimited")
	files["proc/sys/fs/nr_open"] = "4096\n"
	h, _ := newHost(t, files, 1000)
	if r := result(t, Check(h, 4000), "RLIMIT_NOFILE"); r.Status != Fail || r.Fixable() || !strings.Contains(r.Detail, "limits.conf") {
		t.Fatalf("non-root: %v fixable=%v %s", r.Status, r.Fixable(), r.Detail)
	}

	// Root: fs.nr_open is raised first, then the limit it caps.
	h, p := newHost(t, files, 0)
	rs := Check(h, 4000)
	changed, errs := Fix(h, rs)
	if len(errs) > 0 || len(changed) != 2 || !strings.HasPrefix(changed[0], "fs.nr_open 4096 -> 16384") || !strings.HasPrefix(changed[1], "RLIMIT_NOFILE") {
		t.Fatalf("Fix: %q %v", changed, errs)
	}
	need := uint64(4000*ManagerFDsPerVM + spareNofile)
	if p.nofile[0] != need || p.nofile[1] != need {
		t.Errorf("SetNofile %v, want %d/%d", p.nofile, need, need)
	}
}

func TestNprocCountsForUsersNotRoot(t *testing.T) {
	files := healthyHost()
	files[fmt.Sprintf("proc/%d/limits", testPID)] = limitsFile("1048576", "1048576", "4096", "unlimited")
	h, p := newHost(t, files, 0)
	if r := result(t, Check(h, 4000), "RLIMIT_NPROC"); r.Status != OK {
		t.Fatalf("root: %v %s", r.Status, r.Detail)
	}
	h, p = newHost(t, files, 1000)
	rs := Check(h, 4000)
	if r := result(t, rs, "RLIMIT_NPROC"); r.Status != Fail || !r.Fixable() {
		t.Fatalf("user: %v %s", r.Status, r.Detail)
	}
	Fix(h, rs)
	if p.nprocCalls != 1 {
		t.Errorf("SetNproc called %d times", p.nprocCalls)
	}
}

func TestPidsCgroupLimit(t *testing.T) {
	// cgroup v1 with the pids controller; the manager's own cgroup is
	// unlimited but its parent allows 15000 threads.
	files := healthyHost()
	pid := fmt.Sprint(testPID)
	files["proc/"+pid+"/mountinfo"] = "36 25 0:31 / /sys/fs/cgroup/pids rw,relatime shared:14 - cgroup cgroup rw,pids\n" +
		"37 25 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
	files["proc/"+pid+"/cgroup"] = "8:pids:/jobs/build\n0::/\n"
	files["sys/fs/cgroup/pids/jobs/build/pids.max"] = "max\n"
	files["sys/fs/cgroup/pids/jobs/pids.max"] = "15000\n"
	files["sys/fs/cgroup/pids/jobs/pids.current"] = "400\n"
	h, _ := newHost(t, files, 0)
	r := result(t, Check(h, 4000), "pids cgroup")
	if r.Status != Fail || !strings.Contains(r.Detail, "sys/fs/cgroup/pids/jobs allows 15000") || r.Fixable() {
		t.Fatalf("%v fixable=%v %s", r.Status, r.Fixable(), r.Detail)
	}
	room := fmt.Sprintf("room for %d VMs", (15000-400)/ThreadsPerVM)
	if r := result(t, Check(h, 1000), "pids cgroup"); r.Status != OK || !strings.Contains(r.Detail, room) {
		t.Fatalf("1000 VMs: %v %s", r.Status, r.Detail)
	}
}

func TestHybridCgroupsWarn(t *testing.T) {
	files := healthyHost()
	pid := fmt.Sprint(testPID)
	files["proc/"+pid+"/mountinfo"] = "36 25 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n" +
		"35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
		"37 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
	files["sys/fs/cgroup/unified/cgroup.controllers"] = "hugetlb\n"
	h, _ := newHost(t, files, 0)
	if r := result(t, Check(h, 1), "cgroup v2"); r.Status != Warn || !strings.Contains(r.Detail, "memory, pids on cgroup v1") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}
	files["proc/"+pid+"/mountinfo"] = "36 25 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
	h, _ = newHost(t, files, 0)
	if r := result(t, Check(h, 1), "cgroup v2"); r.Status != Warn || !strings.Contains(r.Detail, "not mounted") {
		t.Fatalf("%v %s", r.Status, r.Detail)
	}
}

func TestMemoryAndOvercommit(t *testing.T) {
	files := healthyHost()
	files["proc/meminfo"] = "MemTotal: 4194304 kB\nMemAvailable: 2097152 kB\nSwapTotal: 1048576 kB\n"
	files["proc/sys/vm/overcommit_memory"] = "2\n"
	h, _ := newHost(t, files, 0)
	rs := Check(h, 4000)
	if r := result(t, rs, "memory"); r.Status != Fail || !strings.Contains(r.Detail, "2048 MiB available") || r.Fixable() {
		t.Fatalf("memory: %v %s", r.Status, r.Detail)
	}
	if r := result(t, rs, "vm.overcommit_memory"); r.Status != Fail || r.Fixable() {
		t.Fatalf("overcommit: %v %s", r.Status, r.Detail)
	}
	if r := result(t, rs, "swap"); r.Status != OK || !strings.Contains(r.Detail, "1024 MiB") {
		t.Fatalf("swap: %v %s", r.Status, r.Detail)
	}
	if r := result(t, Check(h, 100), "memory"); r.Status != OK {
		t.Fatalf("100 VMs: %v %s", r.Status, r.Detail)
	}
}

func TestFileLimitsAndMaps(t *testing.T) {
	files := healthyHost()
	files["proc/sys/fs/file-max"] = "50000\n"
	files["proc/sys/vm/max_map_count"] = "256\n"
	h, _ := newHost(t, files, 0)
	rs := Check(h, 4000)
	for _, name := range []string{"fs.file-max", "vm.max_map_count"} {
		if r := result(t, rs, name); r.Status != Fail || !r.Fixable() {
			t.Errorf("%s: %v %s", name, r.Status, r.Detail)
		}
	}
	if _, errs := Fix(h, rs); len(errs) > 0 {
		t.Fatal(errs)
	}
	if rs := Check(h, 4000); !Ready(rs) {
		t.Fatalf("after the fixes:\n%s", printed(rs))
	}
}

func TestDevicesAndPageSettings(t *testing.T) {
	files := healthyHost()
	delete(files, "dev/net/tun")
	files["sys/kernel/mm/transparent_hugepage/enabled"] = "[always] madvise never\n"
	h, p := newHost(t, files, 1000)
	p.uffdErr = errors.New("userfaultfd: operation not permitted")
	rs := Check(h, 1)
	want := map[string]string{
		"/dev/net/tun": "modprobe tun",
		"userfaultfd":  "vm.unprivileged_userfaultfd=1",
		"THP":          "madvise is better",
	}
	for name, text := range want {
		if r := result(t, rs, name); r.Status != Warn || !strings.Contains(r.Detail, text) {
			t.Errorf("%s: %v %s", name, r.Status, r.Detail)
		}
	}
	if !Ready(rs) {
		t.Errorf("warnings only, yet not ready:\n%s", printed(rs))
	}
}

// TestUnreadableFilesWarn: a host without some /proc files (another
// kernel, a container) gets "cannot tell", not a crash or a failure.
func TestUnreadableFilesWarn(t *testing.T) {
	h, _ := newHost(t, map[string]string{"dev/kvm": ""}, 0)
	rs := Check(h, 100)
	if len(rs) != len(checks) {
		t.Fatalf("%d results for %d checks", len(rs), len(checks))
	}
	if r := result(t, rs, "kernel.pid_max"); r.Status != Warn || !strings.Contains(r.Detail, "cannot tell") {
		t.Errorf("pid_max: %v %s", r.Status, r.Detail)
	}
	if !Ready(rs) {
		t.Errorf("unknowns are warnings:\n%s", printed(rs))
	}
}

package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"

	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/vmm"
)

// checks run in this order; Fix applies fixes in it too, so fs.nr_open
// (the ceiling of RLIMIT_NOFILE) comes before the open-files limit.
var checks = []func(h *Host, vms int) Result{
	checkKVM,
	checkKVMNative,
	checkKVMSnapshots,
	checkPidMax,
	checkThreadsMax,
	checkPidsCgroup,
	checkNproc,
	checkNrOpen,
	checkNofile,
	checkFileMax,
	checkMaxMapCount,
	checkMemory,
	checkOvercommit,
	checkCgroup2,
	checkTun,
	checkUserfaultfd,
	checkSwap,
	checkKSM,
	checkTHP,
}

// Host files the checks read, below the root.
const (
	devKVM       = "dev/kvm"
	devTun       = "dev/net/tun"
	devUffd      = "dev/userfaultfd"
	loadavgPath  = "proc/loadavg"
	meminfoPath  = "proc/meminfo"
	fileNrPath   = "proc/sys/fs/file-nr"
	ksmRunPath   = "sys/kernel/mm/ksm/run"
	thpPath      = "sys/kernel/mm/transparent_hugepage/enabled"
	cgroupV2Root = "sys/fs/cgroup"
)

// labHint is where Linux guests run on a host whose KVM cannot run them.
const labHint = "Linux guests need the lab: bin/ember-lab run -- ember run ... (tiny guests run natively)"

func checkKVM(h *Host, _ int) Result {
	const name = "kvm"
	if _, err := os.Stat(h.path(devKVM)); err != nil {
		return fail(name, "no /dev/kvm (%v): load kvm-intel or kvm-amd, or enable nested virtualization", err)
	}
	info, err := h.Probe.KVM()
	if err != nil {
		return fail(name, "%v: ember must be able to open /dev/kvm read-write (group kvm, or root)", err)
	}
	if len(info.MissingCaps) > 0 {
		return fail(name, "KVM lacks %s, which Ember needs", strings.Join(info.MissingCaps, ", "))
	}
	return ok(name, "/dev/kvm opens, KVM API %d, in-kernel irqchip, ioeventfd, irqfd and immediate exit present", kvm.APIVersion)
}

func checkKVMNative(h *Host, _ int) Result {
	const name = "kvm-native"
	if p := vmm.HostProblemFS(os.DirFS(h.Root)); p != "" {
		return warn(name, "%s: %s", p, labHint)
	}
	return ok(name, "hardware virtualization without PVM: Linux guests run natively")
}

func checkKVMSnapshots(h *Host, _ int) Result {
	const name = "kvm-snapshots"
	if _, err := os.Stat(h.path(devKVM)); err != nil {
		return fail(name, "no /dev/kvm")
	}
	info, err := h.Probe.KVM()
	if err != nil {
		return fail(name, "%v", err)
	}
	if info.DirtyLog != nil {
		return warn(name, "KVM's dirty log does not work (%v): Diff snapshots fail, Full ones work", info.DirtyLog)
	}
	switch {
	case info.AdjustClock&kvm.ClockRealtime == 0:
		return warn(name, "dirty log ok; KVM_CAP_ADJUST_CLOCK lacks KVM_CLOCK_REALTIME (kernel before 5.16): clock_realtime restores advance the guest clock by the time since the snapshot instead")
	case !info.ClockRealtime:
		return warn(name, "dirty log ok; KVM_GET_CLOCK gives no CLOCK_REALTIME reference here (host clocksource not TSC-based): clock_realtime restores advance the guest clock by the time since the snapshot instead")
	}
	return ok(name, "dirty log and KVM_CLOCK_REALTIME (clock_realtime restores) work")
}

// hostThreads is the number of threads on the host now (the fourth field
// of /proc/loadavg: running/total scheduling entities).
func hostThreads(h *Host) (int, error) {
	s, err := h.read(loadavgPath)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(s)
	if len(f) < 4 {
		return 0, fmt.Errorf("%s: %q has no thread count", loadavgPath, s)
	}
	_, total, found := strings.Cut(f[3], "/")
	n, err := strconv.Atoi(total)
	if !found || err != nil {
		return 0, fmt.Errorf("%s: %q has no thread count", loadavgPath, s)
	}
	return n, nil
}

// threadsLimit checks a sysctl that caps the host's threads (pid_max,
// threads-max) against vms VMs.
func threadsLimit(h *Host, vms int, name string, ceiling int) Result {
	v, err := h.sysctl(name)
	if err != nil {
		return unreadable(name, err)
	}
	cur, err := hostThreads(h)
	if err != nil {
		return unreadable(name, err)
	}
	need := threadsNeed(vms, cur)
	why := fmt.Sprintf("%d VMs x %d threads + %d threads now + %d spare", vms, ThreadsPerVM, cur, spareThreads)
	if v >= need {
		return ok(name, "%d >= %d needed (%s)", v, need, why)
	}
	if need > ceiling {
		return fail(name, "%d < %d needed (%s), beyond the kernel's ceiling %d: run fewer VMs per host", v, need, why, ceiling)
	}
	to := min(roundUpPow2(need), ceiling)
	r := fail(name, "%d < %d needed (%s): sysctl -w %s=%d (or ember doctor --fix)", v, need, why, name, to)
	r.fix = setSysctl(name, v, to)
	return r
}

func checkPidMax(h *Host, vms int) Result {
	return threadsLimit(h, vms, "kernel.pid_max", pidMaxLimit)
}

func checkThreadsMax(h *Host, vms int) Result {
	// threads-max has no fixed ceiling below INT_MAX (kernel/fork.c
	// MAX_THREADS is FUTEX_TID_MASK, 2^30 - 1).
	return threadsLimit(h, vms, "kernel.threads-max", 1<<30-1)
}

// checkPidsCgroup checks the pids limits of the cgroup the manager runs
// in and of its ancestors (VMs it starts land in the same cgroup).
func checkPidsCgroup(h *Host, vms int) Result {
	const name = "pids cgroup"
	dirs, err := pidsCgroupDirs(h)
	if err != nil {
		return unreadable(name, err)
	}
	if len(dirs) == 0 {
		return ok(name, "no pids controller: no per-cgroup thread limit")
	}
	need := vms * ThreadsPerVM
	for _, d := range dirs { // innermost first
		maxS, err := h.read(path.Join(d, "pids.max"))
		if err != nil || maxS == "max" {
			continue
		}
		limit, err := strconv.Atoi(maxS)
		if err != nil {
			continue
		}
		cur := 0
		if s, err := h.read(path.Join(d, "pids.current")); err == nil {
			cur, _ = strconv.Atoi(s)
		}
		if limit-cur < need {
			return fail(name, "/%s allows %d threads, %d in use, %d VMs need %d more: raise its pids.max or start the VMs in another cgroup", d, limit, cur, vms, need)
		}
		return ok(name, "/%s allows %d threads, %d in use: room for %d VMs", d, limit, cur, (limit-cur)/ThreadsPerVM)
	}
	return ok(name, "pids.max is \"max\" up to the root: no per-cgroup thread limit")
}

// pidsCgroupDirs returns the directories (below the root, innermost
// first) whose pids.max limits process h.PID: its cgroup in the pids
// hierarchy (cgroup v1 with the pids controller, or v2) and each ancestor
// up to the hierarchy's mount point.
func pidsCgroupDirs(h *Host) ([]string, error) {
	mounts, err := cgroupMounts(h)
	if err != nil {
		return nil, err
	}
	memberships, err := cgroupMemberships(h)
	if err != nil {
		return nil, err
	}
	var mnt, cg string
	if m, ok := mounts["pids"]; ok {
		mnt, cg = m, memberships["pids"]
	} else if m, ok := mounts[""]; ok && hasController(h, m, "pids") {
		mnt, cg = m, memberships[""]
	} else {
		return nil, nil
	}
	var dirs []string
	for p := path.Clean("/" + cg); ; p = path.Dir(p) {
		dirs = append(dirs, strings.TrimPrefix(path.Join(mnt, p), "/"))
		if p == "/" {
			return dirs, nil
		}
	}
}

// hasController reports whether the cgroup v2 root at mnt offers ctrl.
func hasController(h *Host, mnt, ctrl string) bool {
	s, err := h.read(path.Join(mnt, "cgroup.controllers"))
	return err == nil && strings.Contains(" "+s+" ", " "+ctrl+" ")
}

// cgroupMounts maps each cgroup v1 controller to its mount point, and ""
// to the cgroup v2 mount point, from /proc/PID/mountinfo.
func cgroupMounts(h *Host) (map[string]string, error) {
	f, err := os.Open(h.path(fmt.Sprintf("proc/%d/mountinfo", h.PID)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, found := strings.Cut(sc.Text(), " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !found || len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch qf[0] {
		case "cgroup2":
			if _, seen := m[""]; !seen {
				m[""] = pf[4]
			}
		case "cgroup":
			for _, o := range strings.Split(qf[2], ",") {
				if _, seen := m[o]; !seen {
					m[o] = pf[4]
				}
			}
		}
	}
	return m, sc.Err()
}

// cgroupMemberships maps each v1 controller (and "" for v2) to process
// h.PID's cgroup path, from /proc/PID/cgroup.
func cgroupMemberships(h *Host) (map[string]string, error) {
	s, err := h.read(fmt.Sprintf("proc/%d/cgroup", h.PID))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		// HIERARCHY-ID:CONTROLLERS:PATH
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[1] == "" {
			m[""] = f[2]
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			m[c] = f[2]
		}
	}
	return m, nil
}

// rlimit is one line of /proc/PID/limits.
type rlimit struct{ soft, hard uint64 }

// unlimited is RLIM_INFINITY.
const unlimited = ^uint64(0)

// limit reads one of process h.PID's resource limits by its
// /proc/PID/limits name ("Max open files").
func (h *Host) limit(what string) (rlimit, error) {
	s, err := h.read(fmt.Sprintf("proc/%d/limits", h.PID))
	if err != nil {
		return rlimit{}, err
	}
	for _, line := range strings.Split(s, "\n") {
		rest, found := strings.CutPrefix(line, what)
		if !found {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			break
		}
		soft, err1 := parseLimit(f[0])
		hard, err2 := parseLimit(f[1])
		if err := errors.Join(err1, err2); err != nil {
			return rlimit{}, fmt.Errorf("%q: %w", line, err)
		}
		return rlimit{soft, hard}, nil
	}
	return rlimit{}, fmt.Errorf("process %d's limits have no %q", h.PID, what)
}

func parseLimit(s string) (uint64, error) {
	if s == "unlimited" {
		return unlimited, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

func fmtLimit(v uint64) string {
	if v == unlimited {
		return "unlimited"
	}
	return strconv.FormatUint(v, 10)
}

// checkNproc checks RLIMIT_NPROC, which counts the threads of the user
// and does not apply to root.
func checkNproc(h *Host, vms int) Result {
	const name = "RLIMIT_NPROC"
	if h.EUID == 0 {
		return ok(name, "not enforced for root")
	}
	l, err := h.limit("Max processes")
	if err != nil {
		return unreadable(name, err)
	}
	need := uint64(vms*ThreadsPerVM + spareThreads)
	switch {
	case l.soft >= need:
		return ok(name, "%s >= %d needed (%d VMs x %d threads + %d spare)", fmtLimit(l.soft), need, vms, ThreadsPerVM, spareThreads)
	case l.hard >= need:
		r := fail(name, "soft limit %s < %d needed (%d VMs x %d threads + %d spare): ulimit -u %d (or ember doctor --fix)", fmtLimit(l.soft), need, vms, ThreadsPerVM, spareThreads, need)
		r.fix = &fix{what: fmt.Sprintf("RLIMIT_NPROC of process %d %s -> %d", h.PID, fmtLimit(l.soft), need),
			apply: func(h *Host) error { return h.Probe.SetNproc(h.PID, need, l.hard) }}
		return r
	}
	return fail(name, "hard limit %s < %d needed (%d VMs x %d threads + %d spare): raise nproc in /etc/security/limits.conf", fmtLimit(l.hard), need, vms, ThreadsPerVM, spareThreads)
}

// nofileNeed is the open-files limit the manager of vms VMs needs.
func nofileNeed(vms int) int { return vms*ManagerFDsPerVM + spareNofile }

func checkNrOpen(h *Host, vms int) Result {
	const name = "fs.nr_open"
	v, err := h.sysctl(name)
	if err != nil {
		return unreadable(name, err)
	}
	need := nofileNeed(vms)
	if v >= need {
		return ok(name, "%d >= %d, the open-files limit %d VMs need", v, need, vms)
	}
	to := min(roundUpPow2(need), nrOpenMax)
	r := fail(name, "%d < %d, the open-files limit %d VMs need (%d each + %d spare): sysctl -w fs.nr_open=%d (or ember doctor --fix)", v, need, vms, ManagerFDsPerVM, spareNofile, to)
	r.fix = setSysctl(name, v, to)
	return r
}

// checkNofile checks the open-files limit of the process that will start
// the VMs: it holds a pidfd and an API connection per VM. Go programs
// (ember, ember-bench) raise their soft limit to the hard one at start;
// other managers do not.
func checkNofile(h *Host, vms int) Result {
	const name = "RLIMIT_NOFILE"
	l, err := h.limit("Max open files")
	if err != nil {
		return unreadable(name, err)
	}
	need := uint64(nofileNeed(vms))
	why := fmt.Sprintf("%d VMs x %d + %d spare, for the process %d that starts them", vms, ManagerFDsPerVM, spareNofile, h.PID)
	switch {
	case l.soft >= need:
		return ok(name, "%s >= %d needed (%s)", fmtLimit(l.soft), need, why)
	case l.hard >= need:
		r := warn(name, "soft limit %s < %d needed (%s); Go programs raise it to the hard limit %s themselves, others do not: ulimit -n %d (or ember doctor --fix)",
			fmtLimit(l.soft), need, why, fmtLimit(l.hard), need)
		r.fix = &fix{what: fmt.Sprintf("RLIMIT_NOFILE soft limit of process %d %s -> %d", h.PID, fmtLimit(l.soft), need),
			apply: func(h *Host) error { return h.Probe.SetNofile(h.PID, need, l.hard) }}
		return r
	}
	r := fail(name, "hard limit %s < %d needed (%s): ulimit -Hn %d as root, or nofile in /etc/security/limits.conf", fmtLimit(l.hard), need, why, need)
	if h.EUID == 0 {
		r.Detail += " (or ember doctor --fix)"
		r.fix = &fix{what: fmt.Sprintf("RLIMIT_NOFILE of process %d %s/%s -> %d/%d", h.PID, fmtLimit(l.soft), fmtLimit(l.hard), need, need),
			apply: func(h *Host) error { return h.Probe.SetNofile(h.PID, need, need) }}
	}
	return r
}

func checkFileMax(h *Host, vms int) Result {
	const name = "fs.file-max"
	v, err := h.sysctl(name)
	if err != nil {
		return unreadable(name, err)
	}
	s, err := h.read(fileNrPath)
	if err != nil {
		return unreadable(name, err)
	}
	used, err := strconv.Atoi(strings.Fields(s + " x")[0])
	if err != nil {
		return unreadable(name, fmt.Errorf("%s: %q", fileNrPath, s))
	}
	need := used + vms*FDsPerVM + spareFiles
	why := fmt.Sprintf("%d VMs x %d + %d open now + %d spare", vms, FDsPerVM, used, spareFiles)
	if v >= need {
		return ok(name, "%d >= %d needed (%s)", v, need, why)
	}
	to := roundUpPow2(need)
	r := fail(name, "%d < %d needed (%s): sysctl -w fs.file-max=%d (or ember doctor --fix)", v, need, why, to)
	r.fix = setSysctl(name, v, to)
	return r
}

func checkMaxMapCount(h *Host, _ int) Result {
	const name = "vm.max_map_count"
	v, err := h.sysctl(name)
	if err != nil {
		return unreadable(name, err)
	}
	need := MapsPerVM * mapsFactor
	if v >= need {
		return ok(name, "%d per process; an ember process has about %d mappings, so it does not grow with the VM count", v, MapsPerVM)
	}
	r := fail(name, "%d per process < %d (an ember process has about %d mappings; room to grow %dx): sysctl -w vm.max_map_count=%d (or ember doctor --fix)", v, need, MapsPerVM, mapsFactor, need)
	r.fix = setSysctl(name, v, need)
	return r
}

// meminfo returns a /proc/meminfo field in KiB.
func (h *Host) meminfo(field string) (int, error) {
	s, err := h.read(meminfoPath)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		rest, found := strings.CutPrefix(line, field+":")
		if !found {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		return strconv.Atoi(f[0])
	}
	return 0, fmt.Errorf("%s has no %s", meminfoPath, field)
}

func checkMemory(h *Host, vms int) Result {
	const name = "memory"
	kib, err := h.meminfo("MemAvailable")
	if err != nil {
		return unreadable(name, err)
	}
	avail := kib / 1024
	need := vms*HostMiBPerVM + spareMemMiB
	why := fmt.Sprintf("%d VMs x %d MiB for idle tiny guests + %d MiB spare; a guest's own working set comes on top", vms, HostMiBPerVM, spareMemMiB)
	if avail >= need {
		return ok(name, "%d MiB available >= %d MiB needed (%s)", avail, need, why)
	}
	return fail(name, "%d MiB available < %d MiB needed (%s): free memory or run fewer VMs", avail, need, why)
}

func checkOvercommit(h *Host, _ int) Result {
	const name = "vm.overcommit_memory"
	v, err := h.sysctl(name)
	if err != nil {
		return unreadable(name, err)
	}
	if v == 2 {
		return fail(name, "2 (strict): every VM's whole guest RAM is committed although untouched pages cost nothing (Ember maps it MAP_NORESERVE): sysctl -w vm.overcommit_memory=0")
	}
	return ok(name, "%d: guest RAM costs host memory only once the guest touches it", v)
}

func checkCgroup2(h *Host, _ int) Result {
	const name = "cgroup v2"
	mounts, err := cgroupMounts(h)
	if err != nil {
		return unreadable(name, err)
	}
	mnt, found := mounts[""]
	if !found {
		return warn(name, "not mounted: per-VM CPU, memory and pids limits need cgroup v2 (mount -t cgroup2 none /sys/fs/cgroup)")
	}
	ctrls, _ := h.read(path.Join(mnt, "cgroup.controllers"))
	if strings.TrimSpace(ctrls) == "" || !strings.Contains(" "+ctrls+" ", " cpu ") || !strings.Contains(" "+ctrls+" ", " memory ") {
		var v1 []string
		for _, c := range []string{"cpu", "memory", "pids"} {
			if _, on := mounts[c]; on {
				v1 = append(v1, c)
			}
		}
		return warn(name, "mounted at %s with controllers %q; hybrid set-up with %s on cgroup v1: per-VM CPU and memory limits need them on v2 (boot with systemd.unified_cgroup_hierarchy=1)", mnt, ctrls, strings.Join(v1, ", "))
	}
	return ok(name, "mounted at %s, controllers: %s", mnt, ctrls)
}

func checkTun(h *Host, _ int) Result {
	const name = "/dev/net/tun"
	if _, err := os.Stat(h.path(devTun)); err != nil {
		return warn(name, "missing (%v): virtio-net needs it (modprobe tun)", errors.Unwrap(err))
	}
	if err := h.Probe.OpenTun(); err != nil {
		return warn(name, "%v: virtio-net needs it (ember needs CAP_NET_ADMIN in its network namespace to create taps)", err)
	}
	return ok(name, "opens: virtio-net taps can be made")
}

func checkUserfaultfd(h *Host, _ int) Result {
	const name = "userfaultfd"
	unpriv, uerr := h.sysctl("vm.unprivileged_userfaultfd")
	_, derr := os.Stat(h.path(devUffd))
	ctx := fmt.Sprintf("vm.unprivileged_userfaultfd=%s, /dev/userfaultfd %s", orUnknown(unpriv, uerr), present(derr == nil))
	if err := h.Probe.Userfaultfd(); err != nil {
		advice := "run ember as root (CAP_SYS_PTRACE) or sysctl -w vm.unprivileged_userfaultfd=1"
		if errors.Is(err, syscall.ENOSYS) {
			advice = "the kernel lacks CONFIG_USERFAULTFD"
		}
		return warn(name, "the syscall fails (%v; %s): snapshot loads with backend_type Uffd fail, File loads work; %s", err, ctx, advice)
	}
	return ok(name, "the syscall works (%s): Uffd snapshot loads work", ctx)
}

func orUnknown(v int, err error) string {
	if err != nil {
		return "?"
	}
	return strconv.Itoa(v)
}

func present(b bool) string {
	if b {
		return "present"
	}
	return "absent"
}

func checkSwap(h *Host, _ int) Result {
	const name = "swap"
	kib, err := h.meminfo("SwapTotal")
	if err != nil {
		return unreadable(name, err)
	}
	if kib == 0 {
		return ok(name, "none: guest memory stays resident, so the memory check above is the whole budget")
	}
	return ok(name, "%d MiB: idle guests' pages can be swapped out (more VMs fit; a swapped-out guest is slow to wake)", kib/1024)
}

func checkKSM(h *Host, _ int) Result {
	const name = "KSM"
	s, err := h.read(ksmRunPath)
	if err != nil {
		return ok(name, "not built in (%s absent): Ember does not ask for page merging (MADV_MERGEABLE) anyway", ksmRunPath)
	}
	state := map[string]string{"0": "stopped", "1": "running", "2": "unmerging"}[s]
	if state == "" {
		state = s
	}
	return ok(name, "%s: Ember does not mark guest memory MADV_MERGEABLE, so KSM does not merge its pages", state)
}

func checkTHP(h *Host, _ int) Result {
	const name = "THP"
	s, err := h.read(thpPath)
	if err != nil {
		return ok(name, "transparent huge pages not built in: huge_pages Transparent has no effect")
	}
	mode := s
	if i, j := strings.Index(s, "["), strings.Index(s, "]"); i >= 0 && j > i {
		mode = s[i+1 : j]
	}
	switch mode {
	case "madvise":
		return ok(name, "madvise: only VMs configured with huge_pages Transparent get 2 MiB pages")
	case "always":
		return warn(name, "always: every guest touch may fault in a 2 MiB page, which raises idle VMs' memory; madvise is better for density (echo madvise > /%s)", thpPath)
	}
	return warn(name, "%s: huge_pages Transparent has no effect (echo madvise > /%s)", mode, thpPath)
}

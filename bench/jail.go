package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/embervm/ember/jail"
)

// jailBenchUID is the user and group the jailed starts run as.
const jailBenchUID = 10000

// jailLimits are the cgroup values of the jailed start, per cgroup version:
// a 256 MiB memory limit, 64 tasks, half a CPU.
var jailLimits = map[int][]string{
	2: {"memory.max=268435456", "pids.max=64", "cpu.max=50000 100000"},
	1: {"memory.limit_in_bytes=268435456", "pids.max=64", "cpu.cfs_quota_us=50000"},
}

// JailedStartToSocket measures what the jail adds to the API's start-up:
// the median, over runs starts, of the time from exec of `ember jail` until
// the jailed ember's socket (<jail root>/run/api.sock) accepts. The jail is
// what the lab's jailed boot uses: uid/gid 10000, a new mount namespace and
// pivot_root, the device nodes, no capabilities, and the host's cgroups
// with memory, pids and cpu limits (v2 where the host has them there, else
// v1). The jail base is beside the ember binary, so the binary is hard-linked
// into each jail as it would be in production, not copied. Each start waits
// for the previous jail's removal. It returns 0 when not root.
func JailedStartToSocket(ctx context.Context, ember string, runs int, progress io.Writer) (float64, error) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(progress, "jailed exec to socket: skipped (the jailer needs root)")
		return 0, nil
	}
	base, err := os.MkdirTemp(filepath.Dir(ember), ".bench-jails-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(base)
	parent := fmt.Sprintf("ember-bench-%d", os.Getpid())
	var cgFlags []string
	version, hierarchies := jail.HostCgroups("memory", "pids", "cpu")
	if version != 0 {
		cgFlags = []string{"--cgroup-version", strconv.Itoa(version), "--parent-cgroup", parent}
		for _, v := range jailLimits[version] {
			cgFlags = append(cgFlags, "--cgroup", v)
		}
		defer func() {
			for _, h := range hierarchies {
				os.Remove(filepath.Join(h, parent)) // empty once each jail is removed
			}
		}()
	}
	var starts []float64
	for i := range runs {
		id := fmt.Sprintf("bench-%d", i)
		args := append([]string{"jail", "--id", id, "--exec-file", ember, "--uid", strconv.Itoa(jailBenchUID),
			"--gid", strconv.Itoa(jailBenchUID), "--chroot-base-dir", base}, cgFlags...)
		args = append(args, "--", "--api-sock", "/run/api.sock", "--level", "Warning")
		dir := filepath.Join(base, filepath.Base(ember), id)
		d, err := execToSocket(ctx, ember, args, filepath.Join(dir, "root", "run", "api.sock"))
		if err != nil {
			return 0, fmt.Errorf("start %d: %w", i, err)
		}
		if err := waitRemoved(dir); err != nil {
			return 0, err
		}
		starts = append(starts, ms(d))
	}
	m := Median(starts)
	cg := "no cgroups (the host has no memory, pids and cpu controllers)"
	if version != 0 {
		cg = fmt.Sprintf("cgroup v%d limits %v", version, jailLimits[version])
	}
	fmt.Fprintf(progress, "jailed exec to socket: median %.2f ms over %d starts (uid/gid %d, %s)\n", m, runs, jailBenchUID, cg)
	return m, nil
}

// waitRemoved waits for the reaper to remove a jail (well under a second;
// 10 s is a hang).
func waitRemoved(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("jail %s not removed after 10 s", dir)
}

// Package doctor checks whether a host is ready to run many Ember VMs, and
// can raise the kernel limits that stand in the way (`ember doctor [--vms
// N] [--fix]`).
//
// Each check reads what it needs from the host's files (sysctls under
// /proc/sys, /proc/meminfo, /proc/PID/limits, cgroup files, /sys) below a
// root directory, so the tests feed it a fake tree, and compares the value
// with what N VMs need. The needs are derived from per-VM figures measured
// on a running VM (threads, file descriptors, mappings and host memory of
// one idle `ember --api-sock` with a one-vCPU guest; see needs.go), plus a
// headroom for everything else the host runs. Checks that need system
// calls (opening /dev/kvm and creating a VM, a userfaultfd, /dev/net/tun,
// changing a process's limits) go through the Probe interface, which the
// tests replace.
//
// A check gives ok, warn (works, with a caveat: e.g. Linux guests cannot
// run natively on a PVM host) or fail (N VMs will not all start), one line
// each with what to change. Fix applies the changes that are a sysctl
// write or a resource limit raise, in check order (fs.nr_open before the
// open-files limit it caps), and says what it changed; the others (memory,
// cgroup limits, overcommit policy) are left to the administrator because
// they are policy, not a forgotten default. The host is ready when no
// check fails.
//
// The KVM host check (native KVM or PVM) is package vmm's: doctor reuses
// vmm.HostProblemFS rather than repeating it.
package doctor

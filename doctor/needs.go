package doctor

// Per-VM needs of one idle `ember --api-sock` whose one-vCPU tiny guest
// (guest/tiny Idle, 128 MiB) has booted and halted, measured on this
// project's host (Linux 6.18, Go 1.26) by `ember-bench density --max
// 4000`, which prints the same figures (density_threads_per_vm,
// density_threads_max, density_fds_per_vm, density_maps_per_vm,
// density_host_mib_per_vm) on every run, so these constants can be
// checked against a new measurement.
const (
	// ThreadsPerVM: an idle ember had 8.8 threads on average with 4000
	// running, 12 at most (/proc/PID/status Threads): 7 to 11 Go runtime
	// threads (sysmon, one per GOMAXPROCS P that has run, spares parked
	// after blocking system calls, the vCPU's locked thread) and the
	// kernel's kvm-nx-lpage-recovery worker, which KVM starts in the
	// process at the first KVM_RUN. The mean, rounded up with a margin,
	// is what thousands of VMs add up to. A VM with more vCPUs has one
	// more per vCPU. Each thread takes a PID, so this drives
	// kernel.pid_max, kernel.threads-max, the pids cgroup and
	// RLIMIT_NPROC.
	ThreadsPerVM = 10
	// FDsPerVM: /proc/PID/fd of an idle ember held 12 (stdin, stdout,
	// stderr, /dev/kvm, the VM, the vCPU, the Go runtime's epoll and
	// eventfd and the two cgroup CPU-quota files it keeps open, the
	// listening API socket, one more /dev/null); density_fds_per_vm was
	// 13, with the connection of the last API request; one more for
	// margin. Counted against fs.file-max.
	FDsPerVM = 14
	// MapsPerVM: /proc/PID/maps had 32 lines on average, 33 rounded up
	// for a VM with more devices. vm.max_map_count limits each process
	// on its own, so it does not grow with the VM count.
	MapsPerVM = 33
	// ManagerFDsPerVM: what the process that starts and watches the VMs
	// holds per VM: the child's pidfd (Go's os.StartProcess keeps one)
	// and one API connection. Counted against that process's
	// RLIMIT_NOFILE.
	ManagerFDsPerVM = 2
	// HostMiBPerVM: the drop of MemAvailable per idle VM with 4000 VMs
	// running (density_host_mib_per_vm 2.5; PSS 1.5 MiB of it): the
	// process's private pages, its page tables and KVM's per-VM and
	// per-vCPU kernel memory. Rounded up.
	HostMiBPerVM = 3
)

// Headroom left for the rest of the host when a need is computed.
const (
	// spareThreads: PIDs for everything else that starts while the VMs
	// run (shells, builds, the manager's own threads).
	spareThreads = 2048
	// spareFiles: system-wide file handles for the rest of the host.
	spareFiles = 8192
	// spareNofile: the manager's own descriptors besides its per-VM ones.
	spareNofile = 1024
	// spareMemMiB: memory kept free for the host's page cache and
	// everything else.
	spareMemMiB = 1024
	// mapsFactor: vm.max_map_count must leave an ember process room to
	// grow its mappings this many times (more devices, a Go heap grown by
	// API traffic) before mmap fails.
	mapsFactor = 16
)

// Kernel ceilings (include/linux/threads.h, fs/file.c).
const (
	// pidMaxLimit is PID_MAX_LIMIT on 64-bit: 4 Mi.
	pidMaxLimit = 4 << 20
	// nrOpenMax is the largest fs.nr_open the kernel accepts
	// (sysctl_nr_open_max: INT_MAX rounded down to a multiple of
	// BITS_PER_LONG, and at most what fits the fd bitmaps; 1<<30 is safe).
	nrOpenMax = 1 << 30
)

// threadsNeed is how many threads the host must allow for vms VMs on top
// of the current ones.
func threadsNeed(vms, current int) int { return current + vms*ThreadsPerVM + spareThreads }

// roundUpPow2 rounds n up to a power of two (a tidy sysctl value that
// leaves room to grow).
func roundUpPow2(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}

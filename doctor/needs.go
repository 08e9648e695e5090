package doctor

// Per-VM needs of one idle `ember --api-sock` whose one-vCPU tiny guest
// (guest/tiny Idle, 128 MiB) has booted and halted, measured on this
// project's host (Linux 6.18, Go 1.26) by `ember-bench density`, which
// prints the same figures (density_threads_per_vm, density_fds_per_vm,
// density_maps_per_vm, density_host_mib_per_vm) for every run, so these
// constants can be checked against a new measurement.
const (
	// ThreadsPerVM: /proc/PID/task of an idle ember held 8 to 10 threads
	// (density_threads_per_vm is the most seen): 7 to 9 Go runtime
	// threads (sysmon, one per GOMAXPROCS P that has run, spares parked
	// after blocking system calls, the vCPU's locked thread) and the
	// kernel's kvm-nx-lpage-recovery worker, which KVM starts in the
	// process at the first KVM_RUN. A VM with more vCPUs has one more per
	// vCPU. Each thread takes a PID, so this drives kernel.pid_max,
	// kernel.threads-max, the pids cgroup and RLIMIT_NPROC.
	ThreadsPerVM = 10
	// FDsPerVM: ls /proc/PID/fd gave 13 (stdin, stdout, stderr, /dev/kvm,
	// the VM, the vCPU, the runtime's epoll and eventfd, the listening
	// API socket, the two cgroup CPU-quota files the Go runtime keeps
	// open, and /dev/null twice), plus one accepted API connection.
	// Counted against fs.file-max.
	FDsPerVM = 14
	// MapsPerVM: wc -l /proc/PID/maps gave 33. vm.max_map_count limits
	// each process on its own, so it does not grow with the VM count.
	MapsPerVM = 33
	// ManagerFDsPerVM: what the process that starts and watches the VMs
	// holds per VM: the child's pidfd (Go's os.StartProcess keeps one)
	// and one API connection. Counted against that process's
	// RLIMIT_NOFILE.
	ManagerFDsPerVM = 2
	// HostMiBPerVM: the drop of MemAvailable per idle VM with 1000 VMs
	// running (ember-bench density: density_host_mib_per_vm 2.2): the
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

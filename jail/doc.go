// Package jail is Ember's jailer: `ember jail`, and the ember binary when
// it is invoked as "jailer". It takes Firecracker's jailer flags with their
// meaning (--id, --exec-file, --uid, --gid, --chroot-base-dir, --netns,
// --cgroup-version, --cgroup, --parent-cgroup, --resource-limit,
// --daemonize, --new-pid-ns, -- VMM ARGS) and makes Firecracker's layout,
// <chroot-base-dir>/<exec file name>/<id>/root, so tools built for
// Firecracker's jailer (firecracker-go-sdk's JailerCommandBuilder) drive
// it unchanged. The exec file's name is taken as given, not resolved, so
// ember linked as "firecracker" gets the jail that SDK expects. It wraps
// an ember process; it does not link the VMM.
//
// # What the jailer does
//
//  1. Validate every flag and host feature before making anything: the exec
//     file is a static ELF (the jail holds nothing else), the base directory
//     exists on a filesystem that allows device nodes and programs, the
//     netns file is a network namespace, each cgroup controller is where
//     --cgroup-version says. The inherited descriptors are closed and the
//     environment cleared first.
//  2. Build the jail, with the umask cleared so every mode is the one given:
//     the directories (root, /dev, /dev/net, /run, owned by uid:gid, mode
//     0700), the exec file at /<name> (a hard link when it is on the same
//     filesystem and uid:gid cannot write it, else a root-owned copy, as
//     Firecracker always makes), the device nodes /dev/kvm, /dev/net/tun,
//     /dev/urandom and /dev/userfaultfd where the host has it (owner uid:gid,
//     mode 0600), and the cgroups with their values. Below the root,
//     everything is made through directory descriptors opened without
//     following links: a jail made ahead (Firecracker's jailer adopts one,
//     and scripts that put the kernel in first rely on it) may hold a link
//     such as root/dev -> /etc left by its last occupant. What is made is
//     listed as it is made; any failure removes exactly that.
//  3. Enter, on one locked OS thread: open what lies outside the jail (the
//     netns, the cgroups' files, /dev/null), unshare the mount namespace,
//     make every mount a slave, bind the jail onto itself, pivot_root into
//     it and detach the host's tree; then join the cgroups, set the resource
//     limits (no-file defaults to Firecracker's 2048), join the network
//     namespace, start a session and put stdio on /dev/null (--daemonize),
//     empty the capability bounding set, drop to uid:gid with no
//     supplementary groups and no capabilities, set no_new_privs, and
//     execve the VMM with an empty environment and Firecracker's leading
//     arguments (--id, --start-time-us, --start-time-cpu-us) unless the VMM
//     arguments name an ember subcommand (`-- run --kernel /vmlinux`).
//
// Paths given to the VMM are inside the jail, as with Firecracker: the API
// socket --api-sock /run/api.sock is <root>/run/api.sock on the host. The
// VMM's PID is written to <root>/<exec name>.pid, as Firecracker's jailer
// does since it learned to daemonize by forking (PRs #4259, #4442).
//
// # Go and namespaces
//
// A mount or network namespace, the root directory, credentials,
// capabilities and no_new_privs belong to a thread, and a Go program has
// many. unshare(CLONE_NEWNS) on a thread gives that thread alone a new
// mount namespace (and its own filesystem context, so its pivot_root and
// chdir touch no other thread). So all of step 3 runs on a thread locked
// with runtime.LockOSThread, which then calls execve: the kernel keeps the
// calling thread, with its namespaces, root and credentials, and ends the
// others, so the new program starts whole inside the jail. (The Go runtime
// starts new threads from a clean template thread, never from a locked
// one, so none inherits the half-made state.) The integration tests check
// it from the host on every thread of the VMM: /proc/PID/root is the jail,
// the mount namespace is a new one with the jail as its only mount, the
// credentials, capability sets and no_new_privs are as promised.
//
// # Process shapes
//
//   - Plain: the jailer process becomes the VMM (same PID), as Firecracker's
//     does without --daemonize or --new-pid-ns, so a caller that waits for or
//     signals the jailer's PID reaches the VMM, and gets its exit status.
//   - --new-pid-ns and --daemonize: as Firecracker's does now, a child enters
//     the jail and execs the VMM (as PID 1 of a new PID namespace, and/or in
//     a new session with stdio on /dev/null, which a jailer that leads its
//     own process group could not start); the jailer writes the child's PID
//     file and exits 0 once the child has exec'd the VMM, or 1 with the
//     child's error, which the child sends on a pipe that its exec closes.
//     The child is a re-executed jailer (`ember jail __enter PLAN`): a Go
//     process cannot fork without exec.
//
// # Removal when the VM ends
//
// Firecracker leaves the jail and its cgroups to the user. Ember removes
// them when the VM ends (--keep-jail keeps them), which needs something
// that outlives the VMM: a reaper, the jailer re-executed as `ember jail
// __reap DIR` in a session of its own, started before the VMM runs and
// left outside its cgroups. It holds a pidfd of the VMM's process (plain
// mode: the jailer's own, which the exec keeps) and the jail directory's
// flock, so the VMM's PID is never mistaken for a reused one and `ember jail
// sweep` knows the jail is looked after. When the pidfd reports the exit,
// the reaper says on the jailer's stderr (unless --daemonize) if the
// kernel's OOM killer ended the VM for reaching its cgroup's memory limit
// (memory.events or memory.oom_control: oom_kill), removes the VM's
// cgroups (killing anything the VM left in them) and then the jail
// directory, never following a mount out of it: a jail with something
// mounted inside is left, with an error. A caller that reads the jailer's
// stderr to its end therefore sees the end after the removal. The reaper
// is a second small Go process per VM; the alternative, the jailer staying
// as the VMM's parent, would change the PID callers see, as Firecracker's
// does not.
//
// Beside root, <id>/ember-jail.json (out of the jail's reach) records the
// jail's cgroups and whether it is kept. `ember jail sweep` removes jails
// whose reaper never finished (killed, or the host went down): those it can
// lock, in which no process has its root and whose cgroups are empty.
//
// # Cgroups
//
// Cgroups are written directly in cgroupfs, not through
// github.com/containerd/cgroups: the jailer's contract is Firecracker's
// "write this value to this file" (--cgroup FILE=VALUE), which maps onto
// a handful of mkdir, read and write calls, whereas that library maps
// typed OCI resources onto files and would add a dependency to the ember
// binary for less. The group is <hierarchy>/<parent-cgroup>/<id> (parent
// defaults to the exec file's name). On v2 the controllers named are
// enabled in cgroup.subtree_control from the root down, as Firecracker's
// jailer does; with --parent-cgroup and no --cgroup values the process
// only joins that existing group. On v1 each controller's hierarchy gets
// its own group, and new cpuset groups inherit cpuset.cpus and
// cpuset.mems. VALUE is written as given, split from FILE at the first
// '=', so values such as io.max's "8:0 rbps=1048576" pass.
//
// Moving a whole process into a group (cgroup.procs) takes the kernel's
// cgroup_threadgroup_rwsem for writing, which waits for an RCU grace
// period: 10-15 ms on these hosts, more than everything else the jailer
// does, unless the hierarchy is mounted with favordynmods (Linux 6.0). So
// on v1 only the thread that will exec moves (0 written to tasks, which
// needs no such lock; exec makes that thread the process and ends the
// others), and a child (--new-pid-ns, --daemonize) on v2 is made in its
// group by clone3's CLONE_INTO_CGROUP. A plain jail on v2 moves itself
// through cgroup.procs and pays the wait on hosts without favordynmods.
//
// # Start-up cost
//
// Measured on this project's hosts (2 vCPUs, loaded), from exec to the
// jailed VMM's API socket accepting: the jailer is a Go process of its own
// (its start alone, about 1.2 ms for an empty Go program here and 1.6-2 ms
// for the ember binary, is more than the 1 ms aimed for); validation takes
// about 0.3 ms, the jail and its cgroups 0.7 ms, starting the reaper 0.5-1.5
// ms, the namespace, pivot and unmount (an expedited RCU grace period)
// 0.3-1 ms; then the VMM starts as it would unjailed. See `ember-bench api`
// (api_start_to_socket_jailed_ms beside api_start_to_socket_ms).
//
// # Exit status
//
// 1 for any failure, bad flags included (Firecracker's jailer exits 1 on
// a bad argument), with one line on stderr naming the flag or host feature.
package jail

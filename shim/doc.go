// Package shim is containerd-shim-ember-v2, containerd's runtime v2 shim
// for Ember (runtime type io.containerd.ember.v2): every task (container)
// runs in its own Ember microVM, and its processes run under the guest's
// agent.
//
// # Which protocol
//
// The shim serves containerd.task.v2.Task over ttrpc (generated types
// from github.com/containerd/containerd/api/runtime/task/v2,
// github.com/containerd/ttrpc), which is what containerd 1.6 (Debian 12)
// calls. containerd v2.x's pkg/shim is not used: from v2.3 it speaks the
// new bootstrap protocol (protobuf BootstrapParams on stdin and stdout)
// and refuses a containerd that does not ("shim was started through the
// deprecated API"), while containerd 1.6 reads a plain address from the
// start command's output. So the shim carries the 1.6 binary protocol
// itself (bootstrap.go): `start` listens on
// /run/containerd/s/sha256(address/namespace/id), starts the server with
// the socket as fd 3 and prints the address; the server logs to the
// bundle's "log" FIFO and forwards events to containerd's ttrpc socket
// (TTRPC_ADDRESS, Events/Forward); `delete` cleans up after a shim that
// is gone. containerd 2.x also serves task v2 shims; the v3 API is not
// registered.
//
// # Root filesystems
//
// Create turns containerd's rootfs mounts into the VM's drives
// (rootfs.go): an overlay's lowerdirs (lowest first; its upperdir on top
// when not empty), a bind mount's source, or, with no mounts, the spec's
// root.path. Each directory becomes a read-only EROFS image (mkfs.erofs)
// in a cache shared by every VM of the host (EMBER_HOME/shim/layers),
// keyed by a SHA-256 of a metadata walk of the directory (paths, modes,
// owners, sizes, mtimes to the nanosecond, device numbers, link targets,
// xattrs; contents are not read: committed snapshots do not change, and
// a write changes size or mtime); the path is not in the key, so equal
// layers share an image. The VM also gets a copy-on-write writable drive
// over the blank ext4 base (package image/boot), and ember-init stacks
// them with overlayfs in the guest: no host directory is shared into the
// guest, and nothing the container writes goes back to the host's
// snapshot.
//
// # Tasks
//
// Create boots the VM (ember with the Firecracker API through
// api/client, ember-init serving the agent) and waits for its agent;
// Start runs the spec's process through agent/client ExecStart (args,
// env, cwd, numeric uid:gid, a terminal of the console size, or pipes)
// and copies stdio between containerd's FIFOs and the agent. Exec runs
// more processes in the same VM; Kill signals through the agent (All:
// the process group); Wait, State, Pids (the agent's running processes),
// ResizePty, CloseIO, Pause and Resume (the VM's vCPUs), Delete (ends the
// VM and removes its files), Connect, Shutdown. Exits are published as
// TaskExit with the agent's status (128+N for signal N), and the other
// task events containerd's own shims send.
//
// The task's pid is the ember process on the host until its process
// starts, then the process's pid in the guest.
//
// # Pods
//
// With containerd's CRI, a pod is one VM (pod.go): the sandbox (pause)
// container's Create boots it with spare read-only drives; `start` of a
// pod's other containers returns the sandbox shim's address (grouped by
// the io.kubernetes.cri.sandbox-id annotation, as runc's shim groups),
// and their Create swaps their layer images onto free spare drives
// (PATCH /drives/{id}) and has the agent mount them as the container's
// own root (agent container.create), where its processes run
// (ExecStart.Container: chroot; the first process in its own mount, PID
// and UTS namespaces). Host bind mounts (emptyDir, configMaps,
// /etc/hosts) become volumes on the VM's writable drive, shared by the
// pod's containers and filled once from the host; nothing goes back.
//
// Stats (stats.go) answers with cgroup v2 metrics from the guest's agent:
// a pod's container gets its own processes' CPU time, memory (summed
// proportional set sizes) and count; a task with its own VM, the guest's
// CPU time since boot and memory in use out of the VM's. A process the
// guest's kernel OOM-killed (the agent's ExitStatus.OOMKilled) gets a
// TaskOOM event before its TaskExit, as runc's shim sends one.
//
// With Config.WarmPods (warm_pods), a pod's VM is not booted but restored
// (warm.go): every pod VM of a host
// boots the same kernel, init and sandbox image at the same size, so the
// first shim to need one boots it once, takes a full snapshot when its
// agent answers (the pod template, EMBER_HOME/shim/templates/KEY, built
// under a file lock while other shims wait), and every pod's VM loads
// that snapshot with its own overlay over the template's writable drive
// (ember_drive_overrides), its own vsock socket, and, through the agent's
// restore transaction, a new clock, entropy and the pod's host name. The
// key covers the ember, kernel and init binaries (path, size, mtime), the
// layer images, the environment and the VM's size; a template that fails
// is logged and the pod's VM boots instead. It is off by default: in the
// lab, a restored pod VM now and then died soon after its restore (not
// yet understood).
//
// Not yet: cgroup limits inside the VM (a pod VM is PodMemoryMiB and
// PodVCPUs at least, whatever its containers ask); execs joining the
// container's PID and UTS namespaces (they are chrooted into its root in
// the VM's namespaces); Update; the pod's network
// namespace (CNI) into the guest; removing templates no VM uses any
// more (a rebuilt ember or kernel leaves the old ones); the jailer; more layers than image/boot.MaxLayerDrives; a layer shared
// by two containers takes a drive for each.
package shim

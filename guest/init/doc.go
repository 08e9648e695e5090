// Command ember-init is PID 1 of an Ember VM that boots an OCI image. Ember
// puts it as /init in a small initramfs, with the VM's config beside it at
// /ember/config.json (package guest/initconfig is the contract, and its
// documentation the full story); the image's layers and the writable drive
// come as virtio-blk drives.
//
// What it does, in order (boot.go):
//
//  1. In the initramfs: mounts /dev, /proc and /sys, opens the console and
//     Ember's exit-status register (/dev/mem, one page), reads the config.
//  2. Finds each drive by its virtio-blk serial in /sys/block/*/serial
//     (drives.go), never by /dev/vdX order.
//  3. Assembles the root (plan.go computes the steps as data, mount.go
//     carries them out): each layer read-only at /ember/layers/N, the
//     writable drive at /ember/rw with upper/ and work/ (created once,
//     reused after), the overlay at /ember/root, topmost layer first.
//  4. Switches root (MS_MOVE onto / and chroot, as switch_root does) and
//     mounts proc, sysfs, devtmpfs, devpts, /dev/shm, /run and /tmp there.
//  5. Sets the hostname and the runtime-managed /etc files (etc.go).
//  6. By mode: ModeRun resolves the user, completes the environment
//     (env.go) and runs the workload (package guest/workload) on the
//     console. ModeAgent serves the sandbox agent (package guest/agent,
//     agent.go) in this process on AF_VSOCK port 1024 instead: the host
//     runs commands and moves files through it, and runs the restore
//     transaction after each snapshot restore. The agent's reaper, not
//     workload.Supervise, then collects every child, orphans included.
//  7. When the workload exits (ModeRun), or SIGTERM or SIGINT stops the
//     agent (ModeAgent): kills what is left, reaps it, syncs, writes the
//     status to the exit-status register (exitstatus.go) and resets the
//     machine.
//
// Exit statuses: the workload's own (0-255; 128+N when signal N killed it);
// 127 when its command is not found, 126 when it cannot be executed, 125
// when the init itself failed (bad config, missing drive, mount failure).
// Every init failure prints one line starting "ember-init:" on the console.
//
// PID 1 must never die: a panic is recovered and reported as 125, and the
// init ends only by resetting the machine. It refuses to run as any other
// PID, so starting it by mistake on a host mounts nothing.
//
// Ending: reboot(LINUX_REBOOT_CMD_RESTART), not POWER_OFF. Ember's machine
// has no ACPI power-off (a hardware-reduced FADT without a sleep control
// register, and no _S5): Linux's power-off finds nothing to call, returns,
// and the reboot syscall then exits PID 1, which panics the kernel and
// resets only after panic=1's second. A restart goes out through the i8042
// (reboot=k, or Linux's fallback to the keyboard controller) at once, and
// Ember ends the run with the status already recorded.
//
// Ctrl-Alt-Del (Ember's SendCtrlAltDel) is turned into SIGINT for PID 1
// (reboot(LINUX_REBOOT_CMD_CAD_OFF)), which forwards it to the workload like
// SIGTERM: the host's way to ask a workload to stop.
//
// Build it static: CGO_ENABLED=0 go build -o bin/ember-init ./guest/init
// (make build does).
package main

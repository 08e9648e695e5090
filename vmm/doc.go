// Package vmm builds a virtual machine from a Config and runs it: it opens
// KVM, maps guest memory, loads the kernel and initrd, writes the x86 boot
// structures, attaches the legacy devices to the port-I/O and MMIO buses and
// runs one locked OS thread per vCPU until the guest's fate is known (reset,
// shutdown, or an error).
//
// Flow of a run: New (build; nothing runs) → Run (vCPUs start; returns the
// Fate) → Close. Stop, callable from any goroutine, kicks every vCPU out of
// KVM_RUN with immediate_exit and a signal; pause and snapshots build on the
// same kick.
//
// Pause (pause.go) kicks the vCPUs and parks each after one more KVM_RUN
// with immediate_exit (which completes a pending I/O exit), calls
// KVM_KVMCLOCK_CTRL and parks the virtio workers; Resume releases them.
// Pause waits at most pauseTimeout for the vCPUs: one stuck outside the
// guest makes it fail with ErrPauseTimeout and leaves the VM running, never
// half paused. Nothing on a vCPU thread waits for the host's console: the
// serial port writes into a devices.ConsoleOutput, whose own goroutine
// feeds stdout or serial_out_path (capped by a rate limiter).
// CreateSnapshot (snapshot.go) saves a paused VM: the state file
// (snapshot.Write: header, KVM VM and vCPU state, the machine
// configuration, serial, i8042 and each virtio-mmio transport with its
// device's own state) and the memory file (Full, or Diff from KVM's dirty
// log plus the pages the virtio queues wrote). Reading the dirty log clears
// it, so the pages read stay in the VM until a snapshot holding them is
// durable: a snapshot that fails (a full disk) leaves them for the next.
// LoadSnapshot builds a VM
// from them, paused: memory is the file mapped MAP_PRIVATE, or anonymous
// memory served by a userfaultfd handler; the devices are rebuilt from the
// saved configuration with the caller's overrides and re-activated at their
// saved ring positions. The Controller exposes all of it to the API.
package vmm

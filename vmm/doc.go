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
package vmm

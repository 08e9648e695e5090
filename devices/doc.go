// Package devices holds Ember's device bus and its legacy (non-virtio)
// devices: the 16550A-compatible 8250 UART on COM1, the minimal i8042 PS/2
// keyboard controller used for guest reboot and Ctrl+Alt+Del,
// Firecracker's boot-timer pseudo-device, and Ember's exit-status register,
// through which a guest's init reports its workload's exit status.
//
// The vCPU loop dispatches every port-I/O and MMIO exit through a [Bus]. A
// Bus is filled with [Bus.Insert] before any vCPU runs and is read-only
// afterwards, so lookups take no lock and do not allocate. Devices implement
// [Device]; offsets they receive are relative to the base they were inserted
// at. Devices that signal the guest do so through an [IRQ], which the VMM
// implements on the in-kernel irqchip.
//
// The UART's transmitter writes into a [ConsoleOutput], a bounded buffer
// that a goroutine of its own drains to the host (stdout or a file,
// optionally through a rate limiter): a vCPU thread never waits for a
// console reader, and output the host does not take in time is dropped and
// counted rather than held.
//
// Devices that may be touched from more than one goroutine (a vCPU thread and
// a host input goroutine, say) do their own locking; nothing in this package
// holds package-level mutable state.
package devices

// Package kvm is Ember's typed layer over the Linux KVM ioctl API
// (include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h), for
// x86-64 hosts.
//
// The package has three handle types that mirror KVM's three file
// descriptors:
//
//   - System wraps /dev/kvm: API version check, capability queries,
//     supported CPUID and MSR lists, and VM creation.
//   - VM wraps a VM file descriptor: guest memory slots, the in-kernel
//     interrupt controllers and PIT, ioeventfd/irqfd, interrupt lines, and
//     the VM-wide state used by snapshots (irqchip, PIT, kvmclock, dirty log).
//   - VCPU wraps a vCPU file descriptor and its mmapped struct kvm_run:
//     KVM_RUN, exit decoding, and register/state access.
//
// Every ioctl is issued with a raw unix.Syscall(SYS_IOCTL, ...). The calls on
// the hot path — VCPU.Run, the kvm_run exit accessors (ExitReason, IO, MMIO,
// ...) and VM.IRQLine — do not allocate. VCPU.Run returns unix.EINTR and
// unix.EAGAIN unwrapped (as the bare errno) so that a run loop can test for
// them cheaply; every other error is wrapped with the name of the ioctl that
// failed, e.g. "KVM_SET_REGS: invalid argument".
//
// State accessors follow one convention: GetX() returns the struct by
// value; SetX(*X) takes a pointer (the kernel only reads it), so large
// structs such as XSave and LAPICState are not copied on the way in.
//
// Snapshots: VCPU.SaveState/RestoreState and VM.SaveState/RestoreState
// capture and load everything KVM holds for a vCPU (VCPUState) and for the
// VM (VMState), in Firecracker's order; System.MSRsToSave and
// VCPU.ReadableMSRs pick the MSRs to save; VM.DirtyBitmap reads a slot's
// dirty log. Package snapshot stores them in files.
//
// The structures in types.go are byte-for-byte copies of the kernel's; their
// sizes and the offsets that matter are pinned by uapi_test.go, and so are
// the ioctl request numbers.
//
// Threading: KVM lets any thread issue vCPU ioctls, but KVM_RUN is cheapest
// (and signals aimed at a vCPU reach it) when one OS thread owns the vCPU.
// Callers should run each vCPU on its own goroutine locked with
// runtime.LockOSThread. Handles are not safe for concurrent Close.
package kvm

// Package x86 builds the data a Linux guest expects to find when an x86-64
// vCPU starts: the guest-physical memory layout, the e820 map, the Linux
// boot_params "zero page", the Xen PVH start info, the MP table, boot-time
// page tables, GDT and IDT, and the initial register, FPU, MSR, LAPIC and
// CPUID state.
//
// Everything here is pure data. Structures that live in guest memory are
// written into a *memory.Guest; register state is returned (or filled in) as
// the kvm package's UAPI types for the caller to hand to KVM. No function in
// this package issues an ioctl.
//
// The layout and boot conventions follow Firecracker's x86_64 boot path. The
// formats follow their specifications: the Linux x86 boot protocol
// (Documentation/arch/x86/boot.rst, arch/x86/include/uapi/asm/bootparam.h),
// the Xen PVH ABI (xen/include/public/arch-x86/hvm/start_info.h), the Intel
// MultiProcessor Specification 1.4, the Intel SDM and the AMD APM.
package x86

// Package loader puts an x86-64 guest kernel into guest memory.
//
// Two formats are recognised by content, never by file name:
//
//   - an ELF vmlinux (ELF64, EM_X86_64, ET_EXEC): every PT_LOAD segment is
//     copied to its physical address (p_paddr) and its bss zeroed. The 64-bit
//     entry is e_entry. If a PT_NOTE segment carries the Xen note
//     XEN_ELFNOTE_PHYS32_ENTRY, the kernel can also be started through the
//     PVH boot protocol at that 32-bit entry. A 32-bit ELF is accepted only
//     when it has that note, because PVH is then its only way in.
//   - a bzImage (Linux boot protocol 2.12 or newer with XLF_KERNEL_64): the
//     protected-mode part is copied to 0x100000, as Firecracker does, and the
//     64-bit entry is 0x200 bytes into it. The setup header is returned so the
//     VMM can copy it into boot_params.
//
// ExtractVmlinux recovers the ELF vmlinux compressed inside a bzImage (gzip,
// LZ4 legacy frames, or uncompressed), for example to boot a distribution
// kernel through PVH.
//
// References: Linux Documentation/arch/x86/boot.rst (boot protocol and setup
// header), the System V ABI / ELF-64 Object File Format (headers, program
// headers and notes), Xen include/public/elfnote.h (PVH entry note) and the
// LZ4 Frame Format description (legacy frame).
//
// Every length and address taken from the kernel file is checked, overflow
// safe, before it is used; no input makes the package panic or write outside
// guest memory.
package loader

package x86

// Guest-physical memory layout used during boot. The addresses are
// Firecracker's (arch/src/x86_64/layout.rs), which in turn follow the PC
// conventions the Linux boot protocol assumes.
const (
	// BootGDTAddr is where the boot GDT is written (4 descriptors of 8 bytes).
	BootGDTAddr = 0x500
	// BootIDTAddr is where the (empty) boot IDT is written.
	BootIDTAddr = 0x520

	// PVHInfoAddr is where struct hvm_start_info is written for a PVH boot;
	// the vCPU starts with RBX pointing here (Xen PVH ABI).
	PVHInfoAddr = 0x6000
	// PVHModlistAddr is where the PVH module list (struct hvm_modlist_entry
	// array, the initrd) is written.
	PVHModlistAddr = 0x6040
	// PVHMemmapAddr is where the PVH memory map (struct
	// hvm_memmap_table_entry array) is written. It shares the page with the
	// zero page: the two boot paths are mutually exclusive.
	PVHMemmapAddr = 0x7000

	// ZeroPageAddr is where the Linux boot_params ("zero page") is written;
	// the vCPU starts with RSI pointing here (boot.rst, 64-bit boot protocol).
	ZeroPageAddr = 0x7000
	// ZeroPageSize is sizeof(struct boot_params) (bootparam.h).
	ZeroPageSize = 4096

	// BootStackPointer is the initial RSP and RBP of a Linux 64-bit boot.
	BootStackPointer = 0x8ff0

	// PML4Addr, PDPTAddr and PDAddr hold the boot identity map: one PML4
	// entry, one PDPT entry and 512 2 MiB page-directory entries (1 GiB).
	PML4Addr = 0x9000
	PDPTAddr = 0xa000
	PDAddr   = 0xb000

	// CmdlineAddr is where the kernel command line is written.
	CmdlineAddr = 0x20000
	// CmdlineMaxSize is the largest command line including its terminating
	// NUL: Linux x86 COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h).
	CmdlineMaxSize = 2048

	// SystemAreaStart is the start of the system area holding the MP table
	// and (later) ACPI tables: the last KiB of the 640 KiB of conventional
	// memory, one of the places MP spec 1.4 section 4 says to search for the
	// MP floating pointer (and where a BIOS keeps its EBDA).
	SystemAreaStart = 0x9fc00
	// SystemAreaEnd is the end of the system area.
	SystemAreaEnd = 0xe0000
	// MPTableAddr is where the MP floating pointer structure is written.
	MPTableAddr = SystemAreaStart

	// RSDPAddr is where the ACPI RSDP goes: inside the BIOS read-only area
	// [0xE0000, 0xFFFFF] that ACPI 6.x section 5.2.5.1 says OSPM scans.
	RSDPAddr = 0xe0000
	// VMGenIDAddr is where the 16-byte VM generation ID lives: a page in
	// the reserved ACPI area above the tables (which get [RSDPAddr,
	// VMGenIDAddr)), below the 0xF0000 area that OSes scan for SMBIOS and
	// MP signatures.
	VMGenIDAddr = 0xef000

	// HighMemStart is the first address above the legacy 1 MiB area, where
	// the kernel is loaded.
	HighMemStart = 0x100000

	// TSSAddr is the 3-page region handed to KVM_SET_TSS_ADDR (needed by
	// Intel VMX for real-mode emulation); it lies in the MMIO hole.
	TSSAddr = 0xfffbd000
	// IdentityMapAddr is the page handed to KVM_SET_IDENTITY_MAP_ADDR, just
	// below the TSS.
	IdentityMapAddr = 0xfffbc000

	// BootTimerAddr is the boot-time measurement device's MMIO page, the
	// first page of the 32-bit MMIO hole.
	BootTimerAddr = 0xc0000000
	// VirtioMMIOBase is the first virtio-mmio device window.
	VirtioMMIOBase = 0xc0001000
	// VirtioMMIOSize is the window of one virtio-mmio device (MMIO_LEN).
	VirtioMMIOSize = 0x1000
	// MMIODevicesEnd bounds the 32-bit device windows: Firecracker puts the
	// PCIe ECAM here.
	MMIODevicesEnd = 0xeec00000
	// ExitStatusAddr is Ember's exit-status register page
	// (devices.ExitStatus), the last page below MMIODevicesEnd: the
	// virtio windows grow upwards from VirtioMMIOBase towards it.
	ExitStatusAddr = MMIODevicesEnd - 0x1000

	// IOAPICAddr is the IOAPIC's MMIO base (IO_APIC_DEFAULT_PHYS_BASE; the
	// 82093AA default, MP spec 1.4 section 3.6.5).
	IOAPICAddr = 0xfec00000
	// LAPICAddr is the local APIC's MMIO base (IA32_APIC_BASE reset value,
	// Intel SDM Vol. 3A, "Local APIC Status and Location").
	LAPICAddr = 0xfee00000
)

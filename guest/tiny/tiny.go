// Package tiny builds the smallest useful guest: a PVH-bootable ELF whose code
// reports "booted" to the boot timer and then resets the machine. It needs no
// Linux kernel, so VMM start-up, memory and launch rate can be measured on any
// /dev/kvm, including hosts that cannot run a stock Linux guest.
//
// The same image runs on Ember and on QEMU's microvm machine:
//  1. a byte 123 written to the boot-timer device at 0xC000_0000 (Ember logs the
//     boot time; on QEMU the address is unassigned and the write is dropped);
//  2. an OUT to port 0xf4, QEMU's isa-debug-exit (QEMU exits; Ember ignores the
//     unknown port);
//  3. 0xFE written to the i8042 command port 0x64, a CPU reset (Ember exits 0).
package tiny

import (
	"bytes"
	"encoding/binary"
)

// Addresses and values the guest uses.
const (
	// LoadAddr is where the code is loaded: the 1 MiB "high memory" start,
	// the lowest address Ember's ELF loader accepts.
	LoadAddr = 0x10_0000
	// BootTimerAddr is Firecracker's boot-timer MMIO device on x86.
	BootTimerAddr = 0xC000_0000
	// BootTimerMagic is the byte that tells the boot timer the guest is up.
	BootTimerMagic = 123
	// ExitStatusAddr is Ember's exit-status register (devices.ExitStatus).
	ExitStatusAddr = 0xEEBF_F000
	// DebugExitPort is where QEMU's isa-debug-exit device is placed for the
	// comparison runs (-device isa-debug-exit,iobase=0xf4,iosize=4).
	DebugExitPort = 0xf4
	// I8042CommandPort and I8042ResetCPU: writing 0xFE to the keyboard
	// controller's command port pulses the CPU reset line.
	I8042CommandPort = 0x64
	I8042ResetCPU    = 0xfe
)

// ELF constants (System V ABI, ELF-64 Object File Format) and the Xen PVH
// entry note (xen/include/public/elfnote.h: XEN_ELFNOTE_PHYS32_ENTRY = 18).
const (
	elfHeaderSize     = 64
	elfPhdrSize       = 56
	elfClass64        = 2
	elfData2LSB       = 1
	elfVersionCurrent = 1
	elfTypeExec       = 2
	elfMachineX86_64  = 62
	ptLoad            = 1
	ptNote            = 4
	pfX, pfR          = 1, 4
	xenPhys32Entry    = 18
)

// code is 32-bit protected-mode code (PVH enters with paging off).
var code = []byte{
	0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, BootTimerMagic, // mov byte [0xC0000000], 123
	0xb0, 0x00, // mov al, 0
	0xe6, DebugExitPort, // out 0xf4, al
	0xb0, I8042ResetCPU, // mov al, 0xfe
	0xe6, I8042CommandPort, // out 0x64, al
	0xf4,       // hlt
	0xeb, 0xfd, // jmp back to hlt
}

// Idle guest: it prints IdleLine on COM1, then halts with interrupts off,
// so it never runs again and costs the host no CPU (the density benchmark's
// guest: many VMs that exist, answer their VMM's API and do nothing).
const (
	// IdleLine is what the Idle guest prints on the serial console.
	IdleLine = "idle\n"
	// COM1DataPort is the 8250 UART's transmit register at COM1's base
	// (I/O port 0x3f8); with DLAB clear a byte written there is sent.
	COM1DataPort = 0x3f8
)

// idleCode prints IdleLine one byte at a time, then cli; hlt forever.
func idleCode() []byte {
	c := []byte{0x66, 0xba, COM1DataPort & 0xff, COM1DataPort >> 8} // mov dx, 0x3f8
	for _, ch := range []byte(IdleLine) {
		c = append(c, 0xb0, ch, 0xee) // mov al, ch; out dx, al
	}
	return append(c,
		0xfa,       // cli
		0xf4,       // hlt
		0xeb, 0xfd, // jmp back to hlt (an NMI or SMI could wake it)
	)
}

// spinCode loops forever: a guest that never exits on its own.
var spinCode = []byte{0xeb, 0xfe} // jmp $

// tripleFaultCode raises #UD with no usable IDT: the exception cannot be
// delivered, which escalates to a double fault and then a triple fault.
var tripleFaultCode = []byte{0x0f, 0x0b} // ud2

// Counter guest addresses: CounterAddr holds a 32-bit count the guest
// increments in a loop; a non-zero byte at ExitFlagAddr makes it reset the
// machine through the i8042 at once. Both lie in RAM just past the code.
const (
	CounterAddr  = LoadAddr + 0x804
	ExitFlagAddr = LoadAddr + 0x800
)

// counterCode counts at CounterAddr until the byte at ExitFlagAddr is
// non-zero, then signals the boot timer and resets the machine. A snapshot taken while it counts,
// with the flag set in its memory file, gives a guest that exits as soon
// as it runs again (the restore benchmark).
var counterCode = []byte{
	0xff, 0x05, 0x04, 0x08, 0x10, 0x00, // loop: inc dword [CounterAddr]
	0x80, 0x3d, 0x00, 0x08, 0x10, 0x00, 0x00, // cmp byte [ExitFlagAddr], 0
	0x74, 0xf1, // je loop
	0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, BootTimerMagic, // mov byte [0xC0000000], 123
	0xb0, I8042ResetCPU, // mov al, 0xfe
	0xe6, I8042CommandPort, // out 0x64, al
	0xf4,       // hlt
	0xeb, 0xfd, // jmp back to hlt
}

// exitStatusCode stores a 32-bit status in Ember's exit-status register,
// then resets the machine; the status's bytes are patched in by ExitStatus.
var exitStatusCode = []byte{
	0xc7, 0x05, 0x00, 0xf0, 0xbf, 0xee, 0, 0, 0, 0, // mov dword [0xEEBFF000], status
	0xb0, I8042ResetCPU, // mov al, 0xfe
	0xe6, I8042CommandPort, // out 0x64, al
	0xf4,       // hlt
	0xeb, 0xfd, // jmp back to hlt
}

// exitStatusImm is the offset of the status immediate in exitStatusCode.
const exitStatusImm = 6

// ExitStatus returns a guest that writes status to Ember's exit-status
// register and resets the machine: what an image's init does when its
// workload has exited.
func ExitStatus(status uint32) []byte {
	code := append([]byte(nil), exitStatusCode...)
	binary.LittleEndian.PutUint32(code[exitStatusImm:], status)
	return elfImage(code)
}

// Counter returns the counting guest (see counterCode).
func Counter() []byte { return elfImage(counterCode) }

// PointerAddr holds, for the Scribbler guest, the guest-physical address of
// the 32-bit word it increments; the host changes it to move the guest's
// writes to another page. It lies in the page of CounterAddr, which the
// guest dirties on every iteration.
const PointerAddr = LoadAddr + 0x808

// scribblerCode is counterCode that also increments the word whose address
// is at PointerAddr (address 0 until the host sets it): a guest whose
// dirty pages the host chooses, for diff snapshot tests.
var scribblerCode = []byte{
	0xa1, 0x08, 0x08, 0x10, 0x00, // loop: mov eax, [PointerAddr]
	0xff, 0x00, //                   inc dword [eax]
	0xff, 0x05, 0x04, 0x08, 0x10, 0x00, // inc dword [CounterAddr]
	0x80, 0x3d, 0x00, 0x08, 0x10, 0x00, 0x00, // cmp byte [ExitFlagAddr], 0
	0x74, 0xea, // je loop
	0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, BootTimerMagic, // mov byte [0xC0000000], 123
	0xb0, I8042ResetCPU, // mov al, 0xfe
	0xe6, I8042CommandPort, // out 0x64, al
	0xf4,       // hlt
	0xeb, 0xfd, // jmp back to hlt
}

// Scribbler returns the guest that counts and writes where PointerAddr
// says (see scribblerCode).
func Scribbler() []byte { return elfImage(scribblerCode) }

// COM1Port is the first I/O port of the PC's first serial port (the UART's
// transmit holding register).
const COM1Port = 0x3f8

// ChatterChunk is how many bytes the Chatter guest writes to the serial
// port at a time, with one rep outsb (which KVM hands to the VMM in exits
// of up to a page each, so the guest prints at thousands of bytes per
// exit), and adds to its count.
const ChatterChunk = 4096

// chatterSource is where the bytes the Chatter guest prints come from:
// RAM it never writes (zeros).
const chatterSource = 0x20_0000

// chatterCode is counterCode that writes ChatterChunk bytes to COM1 on
// every iteration: a guest that prints as fast as the VMM takes its
// output, for console back-pressure tests. CounterAddr counts the bytes
// written (the chunk being written is not counted yet).
var chatterCode = []byte{
	0xbe, 0x00, 0x00, 0x20, 0x00, // loop: mov esi, chatterSource
	0xb9, 0x00, 0x10, 0x00, 0x00, //       mov ecx, ChatterChunk
	0x66, 0xba, 0xf8, 0x03, //             mov dx, COM1Port
	0xfc,       //                         cld
	0xf3, 0x6e, //                         rep outsb
	0x81, 0x05, 0x04, 0x08, 0x10, 0x00, 0x00, 0x10, 0x00, 0x00, // add dword [CounterAddr], ChatterChunk
	0x80, 0x3d, 0x00, 0x08, 0x10, 0x00, 0x00, // cmp byte [ExitFlagAddr], 0
	0x74, 0xdc, // je loop
	0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, BootTimerMagic, // mov byte [0xC0000000], 123
	0xb0, I8042ResetCPU, // mov al, 0xfe
	0xe6, I8042CommandPort, // out 0x64, al
	0xf4,       // hlt
	0xeb, 0xfd, // jmp back to hlt
}

// Chatter returns the guest that counts and writes to the serial port (see
// chatterCode).
func Chatter() []byte { return elfImage(chatterCode) }

// Image returns the guest as an ELF64 executable for x86-64 with a PVH entry
// note: boot timer, isa-debug-exit, i8042 reset.
func Image() []byte { return elfImage(code) }

// Idle returns the idle guest (see idleCode): prints IdleLine and halts.
func Idle() []byte { return elfImage(idleCode()) }

// Spin returns a guest that loops forever (for stop and kick tests).
func Spin() []byte { return elfImage(spinCode) }

// TripleFault returns a guest that triple-faults at once.
func TripleFault() []byte { return elfImage(tripleFaultCode) }

// elfImage wraps 32-bit code in a PVH-bootable ELF64 image.
func elfImage(code []byte) []byte {
	const phnum = 2
	note := new(bytes.Buffer)
	le := binary.LittleEndian
	codeOff := uint64(elfHeaderSize + phnum*elfPhdrSize)
	// The note follows the code; it is not loaded.
	noteOff := codeOff + uint64(len(code))
	noteOff = (noteOff + 3) &^ 3
	entry := uint32(LoadAddr + codeOff)
	binary.Write(note, le, [3]uint32{4, 4, xenPhys32Entry})
	note.WriteString("Xen\x00")
	binary.Write(note, le, entry)

	b := new(bytes.Buffer)
	ident := [16]byte{0x7f, 'E', 'L', 'F', elfClass64, elfData2LSB, elfVersionCurrent}
	b.Write(ident[:])
	binary.Write(b, le, struct {
		Type, Machine              uint16
		Version                    uint32
		Entry, Phoff, Shoff        uint64
		Flags                      uint32
		Ehsize, Phentsize, Phnum   uint16
		Shentsize, Shnum, Shstrndx uint16
	}{elfTypeExec, elfMachineX86_64, elfVersionCurrent, uint64(entry), elfHeaderSize, 0, 0,
		elfHeaderSize, elfPhdrSize, phnum, 0, 0, 0})
	type phdr struct {
		Type, Flags                          uint32
		Off, Vaddr, Paddr, Filesz, Memsz, Al uint64
	}
	// The load segment covers the headers and the code, so file offset 0
	// lands at LoadAddr.
	loadSize := codeOff + uint64(len(code))
	binary.Write(b, le, phdr{ptLoad, pfR | pfX, 0, LoadAddr, LoadAddr, loadSize, loadSize, 0x1000})
	binary.Write(b, le, phdr{ptNote, pfR, noteOff, 0, 0, uint64(note.Len()), uint64(note.Len()), 4})
	b.Write(code)
	for uint64(b.Len()) < noteOff {
		b.WriteByte(0)
	}
	b.Write(note.Bytes())
	return b.Bytes()
}

// Sandbox guest: the smallest guest a sandbox daemon can template and
// restore. At boot it prints SandboxBootLine and signals the boot timer
// (the template is ready), then polls the first 8 bytes of the VM
// generation ID (x86.VMGenIDAddr, 0xef000, which every snapshot load
// rewrites before the guest runs again: vmm/vmgenid.go). While the ID is
// unchanged it spins with PAUSE: that is only between the template's boot
// and its snapshot. A restored clone sees a new ID at its first
// instruction, signals the boot timer again (the clone is ready), prints
// SandboxReadyLine and halts with interrupts off, costing the host no CPU
// until it is killed.
const (
	// SandboxVMGenIDAddr is where the guest reads the generation ID
	// (x86.VMGenIDAddr; the platform does not import x86).
	SandboxVMGenIDAddr = 0xef000
	// SandboxBootLine and SandboxReadyLine are its console lines.
	SandboxBootLine  = "boot\n"
	SandboxReadyLine = "ready\n"
)

// print appends code that writes s to COM1 a byte at a time.
func printCode(c []byte, s string) []byte {
	c = append(c, 0x66, 0xba, COM1DataPort&0xff, COM1DataPort>>8) // mov dx, 0x3f8
	for _, ch := range []byte(s) {
		c = append(c, 0xb0, ch, 0xee) // mov al, ch; out dx, al
	}
	return c
}

// sandboxCode is the Sandbox guest (see SandboxBootLine).
func sandboxCode() []byte {
	timer := []byte{0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, BootTimerMagic} // mov byte [0xC0000000], 123
	c := printCode(nil, SandboxBootLine)
	c = append(c, timer...)
	c = append(c,
		0xa1, 0x00, 0xf0, 0x0e, 0x00, // mov eax, [0xef000]
		0x8b, 0x1d, 0x04, 0xf0, 0x0e, 0x00, // mov ebx, [0xef004]
		// loop:
		0x3b, 0x05, 0x00, 0xf0, 0x0e, 0x00, // cmp eax, [0xef000]
		0x75, 0x0c, // jne changed
		0x3b, 0x1d, 0x04, 0xf0, 0x0e, 0x00, // cmp ebx, [0xef004]
		0x75, 0x04, // jne changed
		0xf3, 0x90, // pause
		0xeb, 0xec, // jmp loop
		// changed:
	)
	c = append(c, timer...)
	c = printCode(c, SandboxReadyLine)
	return append(c,
		0xfa,       // cli
		0xf4,       // hlt
		0xeb, 0xfd, // jmp back to hlt
	)
}

// Sandbox returns the sandbox guest (see SandboxBootLine).
func Sandbox() []byte { return elfImage(sandboxCode()) }

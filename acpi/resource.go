package acpi

import (
	"encoding/binary"
	"fmt"
)

// Resource data descriptors (ACPI 6.4, "Resource Data Types for ACPI"), the
// contents of a _CRS ResourceTemplate buffer.
const (
	// Small resource descriptors (ACPI 6.4.2): byte 0 is
	// 0 | type << 3 | length, length not counting byte 0.
	smallTypeShift = 3

	// IRQ descriptor, no information byte (ACPI 6.4.2.1): type 0x04,
	// length 2, a 16-bit mask of ISA IRQs.
	smallIRQType  = 0x04
	irqNoFlagsLen = 2
	// maxISAIRQ is the highest IRQ an IRQ descriptor's mask holds.
	maxISAIRQ = 15

	// I/O port descriptor (ACPI 6.4.2.5): type 0x08, length 7.
	smallIOType = 0x08
	ioPortLen   = 7
	// ioDecode16 is the information byte's bit 0: the device decodes all
	// 16 address bits (ASL Decode16).
	ioDecode16 = 1 << 0

	// End tag (ACPI 6.4.2.9): type 0x0F, length 1 (the checksum byte).
	smallEndType = 0x0f
	endTagLen    = 1

	// Large resource descriptors (ACPI 6.4.3): byte 0 is 0x80 | type,
	// bytes 1-2 the length of what follows them.
	largeBit = 0x80

	// 32-bit fixed memory range descriptor (ACPI 6.4.3.4): type 0x06,
	// length 9.
	largeMemory32FixedType = 0x06
	memory32FixedLen       = 9
	// memReadWrite is the information byte's bit 0: writeable (ASL
	// ReadWrite).
	memReadWrite = 1 << 0

	// Extended interrupt descriptor (ACPI 6.4.3.6): type 0x09, length 2 +
	// 4 per interrupt (no resource source).
	largeExtIRQType = 0x09
	extIRQBaseLen   = 2
	extIRQEntryLen  = 4
	// Interrupt vector flags (ACPI 6.4.3.6, byte 3).
	extIRQConsumer   = 1 << 0 // ResourceConsumer (0: ResourceProducer)
	extIRQEdge       = 1 << 1 // Edge (0: Level)
	extIRQActiveLow  = 1 << 2 // ActiveLow (0: ActiveHigh)
	extIRQShared     = 1 << 3 // Shared (0: Exclusive)
	extIRQWake       = 1 << 4 // ExclusiveAndWake / SharedAndWake
	maxExtIRQEntries = 255    // the interrupt table length is a byte
)

// smallTag returns byte 0 of a small resource descriptor.
func smallTag(typ, length byte) byte { return typ<<smallTypeShift | length }

// ioPort16 encodes IO(Decode16, min, max, align, length) (ACPI 6.4.2.5).
func ioPort16(min, max uint16, align, length uint8) []byte {
	b := []byte{smallTag(smallIOType, ioPortLen), ioDecode16, 0, 0, 0, 0, align, length}
	binary.LittleEndian.PutUint16(b[2:], min)
	binary.LittleEndian.PutUint16(b[4:], max)
	return b
}

// irqNoFlags encodes IRQNoFlags() { irqs } (ACPI 6.4.2.1): edge-triggered,
// active-high, exclusive ISA interrupts.
func irqNoFlags(irqs ...uint8) ([]byte, error) {
	var mask uint16
	for _, irq := range irqs {
		if irq > maxISAIRQ {
			return nil, fmt.Errorf("IRQ descriptor: IRQ %d is above %d", irq, maxISAIRQ)
		}
		mask |= 1 << irq
	}
	return []byte{smallTag(smallIRQType, irqNoFlagsLen), byte(mask), byte(mask >> 8)}, nil
}

// memory32Fixed encodes Memory32Fixed(ReadWrite or ReadOnly, base, length)
// (ACPI 6.4.3.4).
func memory32Fixed(writeable bool, base, length uint32) []byte {
	b := make([]byte, 3+memory32FixedLen)
	b[0] = largeBit | largeMemory32FixedType
	binary.LittleEndian.PutUint16(b[1:], memory32FixedLen)
	if writeable {
		b[3] = memReadWrite
	}
	binary.LittleEndian.PutUint32(b[4:], base)
	binary.LittleEndian.PutUint32(b[8:], length)
	return b
}

// extendedInterrupt encodes Interrupt(...) { irqs } (ACPI 6.4.3.6) with
// the given vector flags (extIRQ*) and no resource source.
func extendedInterrupt(flags byte, irqs ...uint32) ([]byte, error) {
	if len(irqs) == 0 || len(irqs) > maxExtIRQEntries {
		return nil, fmt.Errorf("extended interrupt descriptor: %d interrupts, want 1 to %d", len(irqs), maxExtIRQEntries)
	}
	n := extIRQBaseLen + extIRQEntryLen*len(irqs)
	b := make([]byte, 3+n)
	b[0] = largeBit | largeExtIRQType
	binary.LittleEndian.PutUint16(b[1:], uint16(n))
	b[3] = flags
	b[4] = byte(len(irqs))
	for i, irq := range irqs {
		binary.LittleEndian.PutUint32(b[5+extIRQEntryLen*i:], irq)
	}
	return b, nil
}

// resourceTemplate encodes ResourceTemplate() { descs }: a Buffer holding
// the descriptors and an End Tag (ACPI 6.4.2.9) whose checksum byte makes
// the descriptors and the tag sum to zero.
func resourceTemplate(descs ...[]byte) ([]byte, error) {
	var data []byte
	for _, d := range descs {
		data = append(data, d...)
	}
	data = append(data, smallTag(smallEndType, endTagLen))
	data = append(data, checksum(data))
	b, err := amlBuffer(data)
	if err != nil {
		return nil, fmt.Errorf("ResourceTemplate: %w", err)
	}
	return b, nil
}

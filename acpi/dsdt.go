package acpi

import "fmt"

// Devices in the DSDT, all in \_SB (ACPI 5.3.1, "Predefined Root
// Namespaces").
const (
	sbScope = `\_SB_`

	// Predefined object names (ACPI chapter 6).
	nameHID = "_HID" // hardware ID (ACPI 6.1.5)
	nameUID = "_UID" // unique ID (ACPI 6.1.12)
	nameCRS = "_CRS" // current resource settings (ACPI 6.2.2)
	nameCCA = "_CCA" // cache coherency attribute (ACPI 6.2.17)

	// COM1, an 8250/16550 UART at the legacy PC address.
	com1Name  = "COM1"
	com1HID   = "PNP0501" // 16550A-compatible COM port
	com1UID   = 0
	com1Base  = 0x3f8
	com1Align = 0 // min == max: the alignment does not matter
	com1Ports = 8
	com1IRQ   = 4

	// The i8042 PS/2 keyboard controller: data port 0x60, command/status
	// port 0x64.
	ps2Name      = "PS2_"
	ps2HID       = "PNP0303" // IBM Enhanced (101/102-key) keyboard controller
	ps2DataPort  = 0x60
	ps2CmdPort   = 0x64
	ps2PortAlign = 1
	ps2PortLen   = 1
	ps2IRQ       = 1

	// virtio-mmio devices: Linux's virtio_mmio driver matches this _HID
	// (drivers/virtio/virtio_mmio.c, virtio_mmio_acpi_match).
	virtioHID = "LNRO0005"
	// virtioNameFormat names device i V000, V001, ...
	virtioNameFormat = "V%03d"
	// virtioCCA is _CCA One: the device's DMA is cache-coherent.
	virtioCCA = 1
	// virtioIRQFlags is Interrupt(ResourceConsumer, Edge, ActiveHigh,
	// Exclusive): KVM_IRQFD injects an edge on a GSI of its own.
	virtioIRQFlags = extIRQConsumer | extIRQEdge

	// The VM generation ID device. Linux's vmgenid driver matches the
	// _CID "VM_Gen_Counter" (ACPICA upper-cases _HID and _CID strings,
	// and the driver lists "VM_GEN_COUNTER") or the _HID "VMGENCTR"; the
	// latter is not a valid ACPI or PNP ID (iasl refuses it), so the _HID
	// is an ID of Ember's own, as QEMU's "QEMUVGID" and Firecracker's
	// "FCVMGID" are theirs.
	vgenName = "VGEN"
	vgenPath = sbScope + "." + vgenName
	vgenHID  = "EMBR0001"
	vgenCID  = "VM_Gen_Counter"
	vgenDDN  = "VM_Gen_Counter"
	nameCID  = "_CID" // compatible ID (ACPI 6.1.2)
	nameDDN  = "_DDN" // DOS device name (ACPI 6.1.4)
	// vgenAddr is the driver's name for the package of the ID's address:
	// Package { low 32 bits, high 32 bits }.
	vgenAddr = "ADDR"
	// vgenNotify is the notification value the driver acts on (0x80, the
	// first device-specific one).
	vgenNotify = 0x80

	// The Generic Event Device (ACPI 5.6.9): an interrupt whose _EVT
	// method the guest runs (Linux's drivers/acpi/evged.c), the
	// hardware-reduced ACPI way to deliver events.
	gedName     = "GED_"
	gedHID      = "ACPI0013"
	gedUID      = 0
	gedEVT      = "_EVT"
	gedIRQFlags = extIRQConsumer | extIRQEdge
)

// amlBuilder chains AML encoder calls and keeps the first error, so that a
// device reads as one expression.
type amlBuilder struct{ err error }

// check returns b, remembering err if it is the first.
func (a *amlBuilder) check(b []byte, err error) []byte {
	if err != nil && a.err == nil {
		a.err = err
	}
	return b
}

// dsdtAML returns the DSDT's definition block:
//
//	Scope (\_SB) { COM1, PS2_, V000, V001, ..., VGEN, GED_ }
func dsdtAML(cfg Config) ([]byte, error) {
	var a amlBuilder
	var devs [][]byte
	if cfg.Serial {
		devs = append(devs, a.check(com1Device()))
	}
	if cfg.I8042 {
		devs = append(devs, a.check(ps2Device()))
	}
	for i, d := range cfg.VirtioMMIO {
		devs = append(devs, a.check(virtioDevice(i, d)))
	}
	if cfg.VMGenID != nil {
		devs = append(devs, a.check(vmgenidDevice(*cfg.VMGenID)), a.check(gedDevice(*cfg.VMGenID)))
	}
	sb := a.check(amlScope(sbScope, devs...))
	if a.err != nil {
		return nil, fmt.Errorf("DSDT: %w", a.err)
	}
	return sb, nil
}

// com1Device returns
//
//	Device (COM1) {
//	    Name (_HID, EisaId ("PNP0501"))
//	    Name (_UID, Zero)
//	    Name (_CRS, ResourceTemplate () {
//	        IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
//	        IRQNoFlags () {4}
//	    })
//	}
func com1Device() ([]byte, error) {
	var a amlBuilder
	irq := a.check(irqNoFlags(com1IRQ))
	crs := a.check(resourceTemplate(ioPort16(com1Base, com1Base, com1Align, com1Ports), irq))
	dev := a.check(amlDevice(com1Name,
		a.check(amlName(nameHID, a.check(amlEISAID(com1HID)))),
		a.check(amlName(nameUID, amlInteger(com1UID))),
		a.check(amlName(nameCRS, crs)),
	))
	if a.err != nil {
		return nil, fmt.Errorf("COM1: %w", a.err)
	}
	return dev, nil
}

// ps2Device returns
//
//	Device (PS2_) {
//	    Name (_HID, EisaId ("PNP0303"))
//	    Name (_CRS, ResourceTemplate () {
//	        IO (Decode16, 0x0060, 0x0060, 0x01, 0x01)
//	        IO (Decode16, 0x0064, 0x0064, 0x01, 0x01)
//	        IRQNoFlags () {1}
//	    })
//	}
func ps2Device() ([]byte, error) {
	var a amlBuilder
	irq := a.check(irqNoFlags(ps2IRQ))
	crs := a.check(resourceTemplate(
		ioPort16(ps2DataPort, ps2DataPort, ps2PortAlign, ps2PortLen),
		ioPort16(ps2CmdPort, ps2CmdPort, ps2PortAlign, ps2PortLen),
		irq,
	))
	dev := a.check(amlDevice(ps2Name,
		a.check(amlName(nameHID, a.check(amlEISAID(ps2HID)))),
		a.check(amlName(nameCRS, crs)),
	))
	if a.err != nil {
		return nil, fmt.Errorf("i8042: %w", a.err)
	}
	return dev, nil
}

// virtioDevice returns, for device i (whose window and IRQ Build has
// validated),
//
//	Device (Vnnn) {
//	    Name (_HID, "LNRO0005")
//	    Name (_UID, i)
//	    Name (_CCA, One)
//	    Name (_CRS, ResourceTemplate () {
//	        Memory32Fixed (ReadWrite, Addr, Size)
//	        Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {IRQ}
//	    })
//	}
func virtioDevice(i int, d MMIODevice) ([]byte, error) {
	var a amlBuilder
	irq := a.check(extendedInterrupt(virtioIRQFlags, d.IRQ))
	crs := a.check(resourceTemplate(memory32Fixed(true, uint32(d.Addr), uint32(d.Size)), irq))
	dev := a.check(amlDevice(fmt.Sprintf(virtioNameFormat, i),
		a.check(amlName(nameHID, a.check(amlString(virtioHID)))),
		a.check(amlName(nameUID, amlInteger(uint64(i)))),
		a.check(amlName(nameCCA, amlInteger(virtioCCA))),
		a.check(amlName(nameCRS, crs)),
	))
	if a.err != nil {
		return nil, fmt.Errorf("virtio-mmio device %d: %w", i, a.err)
	}
	return dev, nil
}

// vmgenidDevice returns
//
//	Device (VGEN) {
//	    Name (_HID, "EMBR0001")
//	    Name (_CID, "VM_Gen_Counter")
//	    Name (_DDN, "VM_Gen_Counter")
//	    Name (ADDR, Package (0x02) { low 32 bits, high 32 bits })
//	}
func vmgenidDevice(g VMGenID) ([]byte, error) {
	var a amlBuilder
	addr := a.check(amlPackageOf(amlInteger(g.Addr&0xffffffff), amlInteger(g.Addr>>32)))
	dev := a.check(amlDevice(vgenName,
		a.check(amlName(nameHID, a.check(amlString(vgenHID)))),
		a.check(amlName(nameCID, a.check(amlString(vgenCID)))),
		a.check(amlName(nameDDN, a.check(amlString(vgenDDN)))),
		a.check(amlName(vgenAddr, addr)),
	))
	if a.err != nil {
		return nil, fmt.Errorf("VMGenID: %w", a.err)
	}
	return dev, nil
}

// gedDevice returns
//
//	Device (GED_) {
//	    Name (_HID, "ACPI0013")
//	    Name (_UID, Zero)
//	    Name (_CRS, ResourceTemplate () {
//	        Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {GSI}
//	    })
//	    Method (_EVT, 1, Serialized) {
//	        If ((Arg0 == GSI)) { Notify (\_SB.VGEN, 0x80) }
//	    }
//	}
func gedDevice(g VMGenID) ([]byte, error) {
	var a amlBuilder
	irq := a.check(extendedInterrupt(gedIRQFlags, g.GSI))
	crs := a.check(resourceTemplate(irq))
	notify := a.check(amlNotify(vgenPath, vgenNotify))
	evt := a.check(amlMethod(gedEVT, 1, true,
		a.check(amlIf(amlLEqual(amlArg0(), amlInteger(uint64(g.GSI))), notify))))
	dev := a.check(amlDevice(gedName,
		a.check(amlName(nameHID, a.check(amlString(gedHID)))),
		a.check(amlName(nameUID, amlInteger(gedUID))),
		a.check(amlName(nameCRS, crs)),
		evt,
	))
	if a.err != nil {
		return nil, fmt.Errorf("GED: %w", a.err)
	}
	return dev, nil
}

package devices

// IRQ is one guest interrupt line as seen by a device. Trigger delivers an
// edge (a pulse) on the line; the VMM implements it with KVM_IRQ_LINE on the
// in-kernel irqchip, raising the line to 1 and back to 0.
//
// Devices may call Trigger with their own lock held, so implementations must
// not call back into the device.
type IRQ interface {
	Trigger() error
}

// IRQFunc adapts an ordinary function to the IRQ interface.
type IRQFunc func() error

// Trigger calls f.
func (f IRQFunc) Trigger() error { return f() }

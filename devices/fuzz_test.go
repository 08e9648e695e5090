package devices

import (
	"io"
	"testing"
)

// FuzzGuestRegisterAccess drives the UART and the i8042 with arbitrary
// guest port accesses (each op: port selector, direction, width, value) and
// host input, checking that no sequence panics or wedges the devices.
func FuzzGuestRegisterAccess(f *testing.F) {
	f.Add([]byte{0x03, 0x80, 0x00, 0x0c, 0x01, 0x00, 0x03, 0x03, 0x04, 0x08, 0x00, 0x41})
	f.Add([]byte{0x64, 0x20, 0x64, 0x60, 0x60, 0x45, 0x64, 0xfe})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var bus Bus
		irq := IRQFunc(func() error { return nil })
		s := NewSerial(io.Discard, irq, nil)
		k := NewI8042(irq, func() {}, nil)
		if err := bus.Insert(s, COM1Base, COM1Size); err != nil {
			t.Fatal(err)
		}
		if err := k.Attach(&bus); err != nil {
			t.Fatal(err)
		}
		ports := []uint64{COM1Base, COM1Base + 1, COM1Base + 2, COM1Base + 3, COM1Base + 4,
			COM1Base + 5, COM1Base + 6, COM1Base + 7, I8042DataPort, I8042CommandPort, 0x80}
		buf := make([]byte, 8)
		for len(ops) >= 3 {
			sel, val, mode := ops[0], ops[1], ops[2]
			ops = ops[3:]
			port := ports[int(sel)%len(ports)]
			width := []int{1, 2, 4, 1}[mode&3]
			data := buf[:width]
			for i := range data {
				data[i] = val
			}
			switch {
			case mode&0x10 != 0:
				s.Enqueue([]byte{val, val ^ 0xff})
			case mode&0x20 != 0:
				k.SendCtrlAltDel()
			case mode&0x80 != 0:
				bus.Write(port, data)
			default:
				bus.Read(port, data)
			}
		}
	})
}

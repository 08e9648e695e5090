package devices

import (
	"errors"
	"testing"
)

func TestI8042Reset(t *testing.T) {
	resets := 0
	k := NewI8042(&fakeIRQ{}, func() { resets++ }, nil)
	var b Bus
	if err := k.Attach(&b); err != nil {
		t.Fatal(err)
	}
	b.Write(I8042CommandPort, []byte{0x20}) // a non-reset command
	if resets != 0 {
		t.Fatal("reset on CMD_READ_CTR")
	}
	b.Write(I8042CommandPort, []byte{i8042CmdResetCPU})
	if resets != 1 {
		t.Fatalf("resets = %d, want 1", resets)
	}
	b.Write(I8042DataPort, []byte{i8042CmdResetCPU}) // a keyboard byte, not a reset
	if resets != 1 {
		t.Fatalf("resets = %d after data write", resets)
	}
	// Port 0x61 is left to the in-kernel PIT.
	if b.Read(0x61, []byte{0}) {
		t.Error("i8042 decodes port 0x61")
	}
	// A nil callback is allowed.
	NewI8042(nil, nil, nil).Write(i8042OffCommand, []byte{i8042CmdResetCPU})
}

func TestI8042Commands(t *testing.T) {
	k := NewI8042(nil, nil, nil)
	if v := rd(k, i8042OffCommand); v != i8042StatKbdEna|i8042StatSys {
		t.Errorf("status = %#x", v)
	}
	wr(k, i8042OffCommand, i8042CmdReadCTR)
	if v := rd(k, i8042OffCommand); v&i8042StatOBF == 0 {
		t.Fatalf("status = %#x, want OBF", v)
	}
	if v := rd(k, i8042OffData); v != i8042ResetCTR {
		t.Errorf("CTR = %#x, want %#x", v, i8042ResetCTR)
	}
	if v := rd(k, i8042OffCommand); v&i8042StatOBF != 0 {
		t.Errorf("OBF still set: %#x", v)
	}

	wr(k, i8042OffCommand, i8042CmdWriteCTR)
	if v := rd(k, i8042OffCommand); v&i8042StatCmd == 0 {
		t.Errorf("status = %#x, want command-parameter bit", v)
	}
	wr(k, i8042OffData, 0x45)
	wr(k, i8042OffCommand, i8042CmdReadCTR)
	if v := rd(k, i8042OffData); v != 0x45 {
		t.Errorf("CTR = %#x after write", v)
	}

	wr(k, i8042OffCommand, i8042CmdWriteOutP)
	wr(k, i8042OffData, 0xdf)
	wr(k, i8042OffCommand, i8042CmdReadOutP)
	if v := rd(k, i8042OffData); v != 0xdf {
		t.Errorf("output port = %#x", v)
	}

	// Bytes for the keyboard are acknowledged.
	wr(k, i8042OffData, 0xed) // set LEDs
	if v := rd(k, i8042OffData); v != ps2Ack {
		t.Errorf("keyboard reply = %#x, want ACK", v)
	}
	if v := rd(k, i8042OffData); v != 0 {
		t.Errorf("empty data port = %#x", v)
	}
	// Wide accesses and unused offsets are not decoded.
	wide := []byte{0, 0}
	k.Read(i8042OffCommand, wide)
	if wide[0] != 0xff || wide[1] != 0xff {
		t.Errorf("wide read = %x", wide)
	}
	if v := rd(k, 2); v != 0xff {
		t.Errorf("offset 2 = %#x", v)
	}
}

func TestI8042CtrlAltDel(t *testing.T) {
	irq := &fakeIRQ{}
	k := NewI8042(irq, nil, nil)
	if err := k.SendCtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	if irq.count() != 1 {
		t.Fatalf("IRQ count %d, want 1", irq.count())
	}
	want := []byte{0x14, 0x11, 0xe0, 0x71}
	for i, w := range want {
		if rd(k, i8042OffCommand)&i8042StatOBF == 0 {
			t.Fatalf("OBF clear before byte %d", i)
		}
		if v := rd(k, i8042OffData); v != w {
			t.Errorf("byte %d = %#x, want %#x", i, v, w)
		}
		// Every read that leaves bytes behind interrupts again.
		if got, want := irq.count(), int64(min(i+2, len(want))); got != want {
			t.Errorf("after byte %d: IRQ count %d, want %d", i, got, want)
		}
	}
	if rd(k, i8042OffCommand)&i8042StatOBF != 0 {
		t.Error("OBF set after draining")
	}

	// The queue holds 16 bytes: four sequences fit, the fifth does not.
	for range 4 {
		if err := k.SendCtrlAltDel(); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.SendCtrlAltDel(); !errors.Is(err, ErrI8042Full) {
		t.Errorf("fifth SendCtrlAltDel = %v, want ErrI8042Full", err)
	}
}

func TestI8042InterruptsDisabled(t *testing.T) {
	irq := &fakeIRQ{}
	k := NewI8042(irq, nil, nil)
	wr(k, i8042OffCommand, i8042CmdWriteCTR)
	wr(k, i8042OffData, i8042CtrSys) // keyboard interrupt off
	if err := k.SendCtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	rd(k, i8042OffData)
	wr(k, i8042OffData, 0xf4)
	if irq.count() != 0 {
		t.Errorf("IRQ count %d with interrupts disabled", irq.count())
	}

	failing := &fakeIRQ{err: errors.New("boom")}
	if err := NewI8042(failing, nil, nil).SendCtrlAltDel(); err == nil {
		t.Error("trigger error not reported")
	}
}

func TestI8042SingleRange(t *testing.T) {
	resets := 0
	k := NewI8042(nil, func() { resets++ }, nil)
	var b Bus
	if err := b.Insert(k, I8042DataPort, I8042Size); err != nil {
		t.Fatal(err)
	}
	b.Write(I8042CommandPort, []byte{i8042CmdResetCPU})
	if resets != 1 {
		t.Errorf("resets = %d", resets)
	}
}

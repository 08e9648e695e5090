package devices

import (
	"reflect"
	"testing"
)

func TestSerialStateRoundTrip(t *testing.T) {
	a := NewSerial(nil, nil, nil)
	a.Write(uartLCR, []byte{0x83}) // DLAB, 8 bits
	a.Write(uartRBR, []byte{1})    // divisor low
	a.Write(uartLCR, []byte{0x03})
	a.Write(uartIER, []byte{0x05})
	a.Write(uartMCR, []byte{0x08})
	a.Write(7, []byte{0x5a}) // scratch
	a.Enqueue([]byte("hi"))
	st := a.SaveState()
	b := NewSerial(nil, nil, nil)
	if err := b.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	if got := b.SaveState(); !reflect.DeepEqual(got, st) {
		t.Fatalf("restored %+v, saved %+v", got, st)
	}
	d := make([]byte, 1)
	b.Read(uartRBR, d)
	if d[0] != 'h' {
		t.Fatalf("first byte after restore %q, want 'h'", d[0])
	}
	if err := b.RestoreState(SerialState{RX: make([]byte, serialFIFOSize+1)}); err == nil {
		t.Error("an oversize receive FIFO was accepted")
	}
}

func TestI8042StateRoundTrip(t *testing.T) {
	a := NewI8042(nil, nil, nil)
	a.Write(I8042CommandPort-I8042DataPort, []byte{0x20}) // read CTR: queues a byte
	st := a.SaveState()
	b := NewI8042(nil, nil, nil)
	if err := b.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	if got := b.SaveState(); !reflect.DeepEqual(got, st) {
		t.Fatalf("restored %+v, saved %+v", got, st)
	}
}

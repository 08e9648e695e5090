package devices

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func rd(d Device, off uint64) byte {
	b := []byte{0}
	d.Read(off, b)
	return b[0]
}

func wr(d Device, off uint64, v byte) { d.Write(off, []byte{v}) }

func newTestSerial(t *testing.T) (*Serial, *bytes.Buffer, *fakeIRQ) {
	t.Helper()
	var out bytes.Buffer
	irq := &fakeIRQ{}
	return NewSerial(&out, irq, nil), &out, irq
}

func TestSerialResetState(t *testing.T) {
	s, _, _ := newTestSerial(t)
	if v := rd(s, uartLSR); v != lsrTHRE|lsrTEMT {
		t.Errorf("LSR = %#x, want THRE|TEMT", v)
	}
	if v := rd(s, uartIIR); v != iirNoInt {
		t.Errorf("IIR = %#x, want no interrupt", v)
	}
	if v := rd(s, uartMSR); v != msrCTS|msrDSR|msrDCD {
		t.Errorf("MSR = %#x", v)
	}
	if v := rd(s, uartIER); v != 0 {
		t.Errorf("IER = %#x", v)
	}
	if v := rd(s, 8); v != 0xff {
		t.Errorf("offset 8 = %#x, want 0xff", v)
	}
}

func TestSerialDLAB(t *testing.T) {
	s, out, _ := newTestSerial(t)
	wr(s, uartIER, ierRDA)
	wr(s, uartLCR, lcrDLAB|0x03)
	wr(s, uartDLL, 0x01) // 115200 baud
	wr(s, uartDLM, 0x02)
	if v := rd(s, uartDLL); v != 0x01 {
		t.Errorf("DLL = %#x", v)
	}
	if v := rd(s, uartDLM); v != 0x02 {
		t.Errorf("DLM = %#x", v)
	}
	if out.Len() != 0 {
		t.Errorf("DLL write transmitted %q", out.Bytes())
	}
	wr(s, uartLCR, 0x03)
	if v := rd(s, uartIER); v != ierRDA {
		t.Errorf("IER after DLAB = %#x, want %#x", v, ierRDA)
	}
	if v := rd(s, uartLCR); v != 0x03 {
		t.Errorf("LCR = %#x", v)
	}
	wr(s, uartTHR, 'x')
	if out.String() != "x" {
		t.Errorf("output %q", out.String())
	}
	wr(s, uartSCR, 0x5a)
	if v := rd(s, uartSCR); v != 0x5a {
		t.Errorf("SCR = %#x", v)
	}
	wr(s, uartIER, 0xff)
	if v := rd(s, uartIER); v != ierMask {
		t.Errorf("IER = %#x, want %#x", v, ierMask)
	}
}

func TestSerialTransmit(t *testing.T) {
	s, out, _ := newTestSerial(t)
	for _, c := range []byte("hello\n") {
		if rd(s, uartLSR)&lsrTHRE == 0 {
			t.Fatal("THRE clear")
		}
		wr(s, uartTHR, c)
	}
	// A wide access is a sequence of byte accesses to consecutive ports.
	s.Write(uartTHR, []byte{'!', 0})
	if out.String() != "hello\n!" {
		t.Errorf("output %q", out.String())
	}
	if st := s.Stats(); st.TxBytes != 7 || st.WriteErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

type failWriter struct{ calls int }

func (w *failWriter) Write(p []byte) (int, error) {
	w.calls++
	return 0, errors.New("broken pipe")
}

func TestSerialWriteError(t *testing.T) {
	var logs bytes.Buffer
	w := &failWriter{}
	s := NewSerial(w, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	for range 3 {
		wr(s, uartTHR, 'x')
	}
	if st := s.Stats(); st.WriteErrors != 3 || st.TxBytes != 0 {
		t.Errorf("stats %+v", st)
	}
	if n := strings.Count(logs.String(), "serial output write failed"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs.String())
	}
	if rd(s, uartLSR)&lsrTHRE == 0 {
		t.Error("THRE clear after failed write")
	}
}

func TestSerialReceiveOrder(t *testing.T) {
	s, _, irq := newTestSerial(t)
	if n := s.Enqueue([]byte("abc")); n != 3 {
		t.Fatalf("Enqueue = %d", n)
	}
	if n := s.Enqueue([]byte("de")); n != 2 {
		t.Fatalf("Enqueue = %d", n)
	}
	var got []byte
	for rd(s, uartLSR)&lsrDR != 0 {
		got = append(got, rd(s, uartRBR))
	}
	if string(got) != "abcde" {
		t.Errorf("received %q", got)
	}
	if v := rd(s, uartRBR); v != 0 {
		t.Errorf("empty RBR = %#x", v)
	}
	if irq.count() != 0 {
		t.Errorf("IRQ raised with interrupts disabled")
	}
	if st := s.Stats(); st.RxBytes != 5 {
		t.Errorf("stats %+v", st)
	}
}

func TestSerialReceiveBounded(t *testing.T) {
	s, _, _ := newTestSerial(t)
	in := bytes.Repeat([]byte("0123456789"), 10)
	n := s.Enqueue(in)
	if n != serialFIFOSize || s.Space() != 0 {
		t.Fatalf("Enqueue = %d, Space = %d", n, s.Space())
	}
	if m := s.Enqueue(in[n:]); m != 0 {
		t.Fatalf("Enqueue into full FIFO = %d", m)
	}
	if rd(s, uartLSR)&lsrOE != 0 {
		t.Error("refused host input flagged as overrun")
	}
	if c := rd(s, uartRBR); c != in[0] {
		t.Errorf("first byte %q", c)
	}
	if s.Space() != 1 || s.Enqueue(in[n:]) != 1 {
		t.Error("one byte of room not reused")
	}
	var got []byte
	for rd(s, uartLSR)&lsrDR != 0 {
		got = append(got, rd(s, uartRBR))
	}
	if want := in[1 : n+1]; !bytes.Equal(got, want) {
		t.Errorf("received %q, want %q", got, want)
	}
	select {
	case <-s.Drained():
	default:
		t.Error("no drain notification")
	}
	if st := s.Stats(); st.Overruns != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestSerialFeed(t *testing.T) {
	s, _, _ := newTestSerial(t)
	in := bytes.Repeat([]byte("The quick brown fox. "), 30) // 630 bytes, many FIFOs
	done := make(chan error, 1)
	go func() { done <- s.Feed(context.Background(), in) }()

	var got []byte
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(in) && time.Now().Before(deadline) {
		if rd(s, uartLSR)&lsrDR != 0 {
			got = append(got, rd(s, uartRBR))
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	if !bytes.Equal(got, in) {
		t.Fatalf("received %d bytes, want %d (equal prefix: %v)", len(got), len(in), bytes.HasPrefix(in, got))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Feed gives up when its context ends while the guest is not reading.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := s.Feed(ctx, in)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Feed on a stuck guest = %v", err)
	}
}

func TestSerialLoopback(t *testing.T) {
	s, out, irq := newTestSerial(t)
	// Linux's 8250 autoconfig check: MCR = LOOP|OUT2|RTS must read back
	// MSR status 0x90 (DCD|CTS).
	wr(s, uartMCR, mcrLoop|mcrOUT2|mcrRTS)
	if v := rd(s, uartMSR) & 0xf0; v != msrDCD|msrCTS {
		t.Errorf("loopback MSR = %#x, want 0x90", v)
	}
	wr(s, uartMCR, mcrLoop|mcrDTR|mcrOUT1)
	if v := rd(s, uartMSR); v != msrDSR|msrRI|msrDDSR|msrDCTS|msrDDCD {
		t.Errorf("loopback MSR = %#x", v)
	}
	if v := rd(s, uartMSR); v != msrDSR|msrRI {
		t.Errorf("MSR deltas not cleared on read: %#x", v)
	}
	wr(s, uartMCR, mcrLoop)
	if v := rd(s, uartMSR); v != msrTERI|msrDDSR {
		t.Errorf("MSR after dropping RI = %#x, want TERI|DDSR", v)
	}

	wr(s, uartIER, ierRDA)
	wr(s, uartTHR, 'A')
	wr(s, uartTHR, 'B')
	if out.Len() != 0 {
		t.Errorf("loopback data transmitted: %q", out.Bytes())
	}
	if rd(s, uartLSR)&lsrDR == 0 || rd(s, uartRBR) != 'A' || rd(s, uartRBR) != 'B' {
		t.Error("loopback data not received in order")
	}
	if irq.count() != 0 {
		t.Errorf("IRQ raised in loopback mode")
	}

	// Overrun: the FIFO is full and the transmitter keeps sending.
	for i := range serialFIFOSize + 2 {
		wr(s, uartTHR, byte(i))
	}
	if st := s.Stats(); st.Overruns != 2 {
		t.Errorf("overruns = %d, want 2", st.Overruns)
	}
	if v := rd(s, uartLSR); v&lsrOE == 0 || v&lsrDR == 0 {
		t.Errorf("LSR = %#x, want OE|DR", v)
	}
	if v := rd(s, uartLSR); v&lsrOE != 0 {
		t.Error("OE not cleared by reading LSR")
	}
	for i := range serialFIFOSize {
		if c := rd(s, uartRBR); c != byte(i) {
			t.Fatalf("byte %d = %d", i, c)
		}
	}

	wr(s, uartMCR, 0)
	if v := rd(s, uartMSR); v&0xf0 != serialModemLines {
		t.Errorf("MSR after loopback = %#x", v)
	}
	wr(s, uartTHR, 'z')
	if out.String() != "z" {
		t.Errorf("output after loopback %q", out.String())
	}
}

func TestSerialRXInterrupt(t *testing.T) {
	s, _, irq := newTestSerial(t)
	wr(s, uartIER, ierRDA)
	s.Enqueue([]byte("a"))
	if irq.count() != 0 {
		t.Fatal("IRQ raised without OUT2")
	}
	if v := rd(s, uartIIR); v != iirRDA {
		t.Errorf("IIR = %#x, want RDA", v)
	}
	// Setting OUT2 with data pending raises the line.
	wr(s, uartMCR, mcrOUT2|mcrDTR|mcrRTS)
	if irq.count() != 1 {
		t.Fatalf("IRQ count %d after OUT2", irq.count())
	}
	rd(s, uartRBR)
	if v := rd(s, uartIIR); v != iirNoInt {
		t.Errorf("IIR after read = %#x", v)
	}
	s.Enqueue([]byte("bc"))
	if irq.count() != 2 {
		t.Errorf("IRQ count %d after Enqueue", irq.count())
	}
	// More input while the interrupt is still pending re-triggers.
	s.Enqueue([]byte("d"))
	if irq.count() != 3 {
		t.Errorf("IRQ count %d after second Enqueue", irq.count())
	}
	// Disabling RDA stops interrupts.
	wr(s, uartIER, 0)
	for rd(s, uartLSR)&lsrDR != 0 {
		rd(s, uartRBR)
	}
	s.Enqueue([]byte("e"))
	if irq.count() != 3 {
		t.Errorf("IRQ count %d with RDA disabled", irq.count())
	}
}

func TestSerialTHREInterrupt(t *testing.T) {
	s, out, irq := newTestSerial(t)
	wr(s, uartMCR, mcrOUT2)
	wr(s, uartIER, ierTHRE)
	if irq.count() != 1 {
		t.Fatalf("IRQ count %d after enabling THRE", irq.count())
	}
	if v := rd(s, uartIIR); v != iirTHRE {
		t.Fatalf("IIR = %#x, want THRE", v)
	}
	if v := rd(s, uartIIR); v != iirNoInt {
		t.Fatalf("THRE not cleared by reading IIR: %#x", v)
	}
	// Each burst of writes after the IIR read raises the line once.
	wr(s, uartTHR, 'a')
	wr(s, uartTHR, 'b')
	if irq.count() != 2 {
		t.Errorf("IRQ count %d after writes", irq.count())
	}
	if v := rd(s, uartIIR); v != iirTHRE {
		t.Errorf("IIR = %#x, want THRE", v)
	}
	// Re-enabling ETBEI raises THRE again (Linux's start_tx depends on it).
	wr(s, uartIER, 0)
	wr(s, uartIER, ierTHRE)
	if irq.count() != 3 {
		t.Errorf("IRQ count %d after re-enabling THRE", irq.count())
	}
	if v := rd(s, uartIIR); v != iirTHRE {
		t.Errorf("IIR = %#x, want THRE", v)
	}
	if out.String() != "ab" {
		t.Errorf("output %q", out.String())
	}
}

func TestSerialIIRPriority(t *testing.T) {
	s, _, _ := newTestSerial(t)
	wr(s, uartIER, ierMask)
	wr(s, uartMCR, mcrLoop|mcrRTS) // loopback: no IRQ, but IIR still works
	for range serialFIFOSize + 1 {
		wr(s, uartTHR, 'x') // fills the FIFO and overruns; THRE pending
	}
	want := []struct {
		id    byte
		clear func()
	}{
		{iirRLS, func() { rd(s, uartLSR) }},
		{iirRDA, func() {
			for rd(s, uartLSR)&lsrDR != 0 {
				rd(s, uartRBR)
			}
		}},
		{iirTHRE, func() {}}, // the IIR read itself clears THRE
		{iirModemStatus, func() { rd(s, uartMSR) }},
		{iirNoInt, func() {}},
	}
	for _, w := range want {
		if v := rd(s, uartIIR) & iirIDMask; v != w.id {
			t.Fatalf("IIR = %#x, want %#x", v, w.id)
		}
		w.clear()
	}
}

func TestSerialFIFOControl(t *testing.T) {
	s, _, _ := newTestSerial(t)
	s.Enqueue([]byte("stale"))
	wr(s, uartFCR, fcrEnable) // enabling the FIFOs clears them
	if v := rd(s, uartIIR); v != iirFIFOEnabled|iirNoInt {
		t.Errorf("IIR = %#x, want FIFO bits", v)
	}
	if rd(s, uartLSR)&lsrDR != 0 {
		t.Error("FIFO not cleared on enable")
	}
	s.Enqueue([]byte("more"))
	wr(s, uartFCR, fcrEnable|fcrClearRX|fcrClearTX)
	if rd(s, uartLSR)&lsrDR != 0 {
		t.Error("FIFO not cleared by FCR")
	}
	wr(s, uartFCR, 0)
	if v := rd(s, uartIIR); v != iirNoInt {
		t.Errorf("IIR = %#x with FIFOs disabled", v)
	}
}

func TestSerialIRQError(t *testing.T) {
	irq := &fakeIRQ{err: errors.New("no irqchip")}
	s := NewSerial(nil, irq, nil)
	wr(s, uartMCR, mcrOUT2)
	wr(s, uartIER, ierRDA)
	s.Enqueue([]byte("x"))
	if st := s.Stats(); st.IRQErrors != 1 {
		t.Errorf("stats %+v", st)
	}
}

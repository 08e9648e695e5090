package devices

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
)

// COM1 wiring on a PC (and in Firecracker): eight consecutive I/O ports at
// 0x3f8 on ISA IRQ 4. The VMM inserts the Serial on the port-I/O bus with
// these values and connects the IRQ to the matching GSI.
const (
	COM1Base = 0x3f8 // first I/O port of COM1
	COM1Size = 8     // number of I/O ports a 16550A decodes
	COM1IRQ  = 4     // ISA IRQ (and GSI) of COM1
)

// Register offsets from the base port (PC16550D datasheet, Table II
// "Summary of Registers"). Several offsets are shared: LCR.DLAB selects the
// divisor latch at offsets 0 and 1, and offset 2 is IIR on reads, FCR on
// writes.
const (
	uartRBR = 0 // receiver buffer (read, DLAB=0)
	uartTHR = 0 // transmitter holding register (write, DLAB=0)
	uartDLL = 0 // divisor latch LSB (DLAB=1)
	uartIER = 1 // interrupt enable (DLAB=0)
	uartDLM = 1 // divisor latch MSB (DLAB=1)
	uartIIR = 2 // interrupt identification (read)
	uartFCR = 2 // FIFO control (write)
	uartLCR = 3 // line control
	uartMCR = 4 // modem control
	uartLSR = 5 // line status
	uartMSR = 6 // modem status
	uartSCR = 7 // scratch
)

// IER bits (PC16550D datasheet, section 8.5 "Interrupt Enable Register").
const (
	ierRDA  = 0x01 // ERBFI: received data available (and FIFO timeout)
	ierTHRE = 0x02 // ETBEI: transmitter holding register empty
	ierRLS  = 0x04 // ELSI: receiver line status
	ierMS   = 0x08 // EDSSI: modem status
	ierMask = 0x0f // bits 4-7 are always zero
)

// IIR values (PC16550D datasheet, Table IV "Interrupt Control Functions").
// Bit 0 is clear while an interrupt is pending; bits 1-3 identify the
// highest-priority one; bits 6-7 read as ones when FCR enabled the FIFOs.
const (
	iirNoInt       = 0x01 // no interrupt pending
	iirModemStatus = 0x00 // priority 4: modem status changed
	iirTHRE        = 0x02 // priority 3: transmitter holding register empty
	iirRDA         = 0x04 // priority 2: received data available
	iirRLS         = 0x06 // priority 1: receiver line status (overrun etc.)
	iirIDMask      = 0x0f // interrupt pending bit plus identification bits
	iirFIFOEnabled = 0xc0 // FIFOs enabled (16550A)
)

// FCR bits (PC16550D datasheet, section 8.4 "FIFO Control Register").
const (
	fcrEnable  = 0x01 // enable both FIFOs; changing it clears them
	fcrClearRX = 0x02 // clear the receiver FIFO (self-clearing)
	fcrClearTX = 0x04 // clear the transmitter FIFO (self-clearing)
)

// LCR bits (PC16550D datasheet, section 8.1 "Line Control Register").
const (
	lcrDLAB = 0x80 // divisor latch access bit
)

// MCR bits (PC16550D datasheet, section 8.6 "Modem Control Register").
const (
	mcrDTR  = 0x01 // data terminal ready
	mcrRTS  = 0x02 // request to send
	mcrOUT1 = 0x04 // user output 1
	mcrOUT2 = 0x08 // user output 2; gates INTR onto the bus on PCs
	mcrLoop = 0x10 // local loopback (diagnostic) mode
	mcrMask = 0x1f // bits 5-7 are always zero
)

// LSR bits (PC16550D datasheet, section 8.2 "Line Status Register").
const (
	lsrDR   = 0x01 // data ready: receive FIFO not empty
	lsrOE   = 0x02 // overrun error
	lsrPE   = 0x04 // parity error
	lsrFE   = 0x08 // framing error
	lsrBI   = 0x10 // break interrupt
	lsrTHRE = 0x20 // transmitter holding register empty
	lsrTEMT = 0x40 // transmitter empty
	lsrErrs = lsrOE | lsrPE | lsrFE | lsrBI
)

// MSR bits (PC16550D datasheet, section 8.7 "Modem Status Register").
const (
	msrDCTS   = 0x01 // delta clear to send
	msrDDSR   = 0x02 // delta data set ready
	msrTERI   = 0x04 // trailing edge ring indicator
	msrDDCD   = 0x08 // delta data carrier detect
	msrCTS    = 0x10 // clear to send
	msrDSR    = 0x20 // data set ready
	msrRI     = 0x40 // ring indicator
	msrDCD    = 0x80 // data carrier detect
	msrDeltas = msrDCTS | msrDDSR | msrTERI | msrDDCD
)

const (
	// serialFIFOSize is the receive FIFO depth. A real 16550A holds 16
	// bytes; a deeper FIFO lets the host hand over a paste in fewer wakeups
	// and the guest driver does not care.
	serialFIFOSize = 64

	// serialModemLines is what MSR reports outside loopback: a null-modem
	// connection with the peer always present (CTS, DSR and DCD asserted).
	serialModemLines = msrCTS | msrDSR | msrDCD

	// serialResetDivisor is the divisor latch after reset: 115200/12 = 9600
	// baud. The datasheet leaves it undefined; the value is never used.
	serialResetDivisor = 12
)

// SerialStats are cumulative counters of a Serial.
type SerialStats struct {
	TxBytes     uint64 // bytes the guest transmitted and the output accepted
	RxBytes     uint64 // bytes accepted by Enqueue
	Overruns    uint64 // received bytes lost to a full FIFO (LSR.OE set)
	WriteErrors uint64 // transmitted bytes the output failed to take
	IRQErrors   uint64 // failed IRQ.Trigger calls
}

// Serial is a 16550A-compatible 8250 UART. Transmitted bytes go straight to
// an io.Writer (the VMM's is a ConsoleOutput, which never blocks: Write
// runs on a vCPU thread under the UART's lock), so the transmitter is
// always empty (LSR.THRE and LSR.TEMT
// are always set). Received bytes come from the host through Enqueue into a
// bounded FIFO.
//
// The interrupt output is modelled as a level: whenever it rises, the IRQ is
// triggered once. As on a PC, the output reaches the IRQ line only while
// MCR.OUT2 is set and loopback mode is off (in loopback the OUT pins are
// forced inactive, datasheet section 8.6). Enqueue re-triggers while
// received data is pending so that a missed edge cannot stall input.
//
// Serial is safe for concurrent use: the vCPU thread calls Read and Write,
// a host goroutine calls Enqueue or Feed.
type Serial struct {
	mu  sync.Mutex
	out io.Writer
	irq IRQ
	log *slog.Logger

	ier, lcr, mcr, scr byte
	dll, dlm           byte
	lsrErrs            byte // sticky LSR error bits, cleared by reading LSR
	msrDelta           byte // MSR delta bits, cleared by reading MSR
	fifoEnabled        bool
	threPending        bool // THRE interrupt condition, cleared by IIR read or THR write
	intr               bool // last computed level of the interrupt output

	rx     [serialFIFOSize]byte
	rxHead int
	rxLen  int

	tx [1]byte // THR staging buffer for out.Write; avoids an allocation per byte

	drained chan struct{} // signalled when the guest empties the receive FIFO

	stats         SerialStats
	loggedWrite   bool
	loggedTrigger bool
}

// NewSerial returns a UART in its reset state that writes transmitted bytes
// to out and signals irq. A nil out discards output, a nil irq leaves the
// UART without an interrupt line, and a nil log discards log records.
func NewSerial(out io.Writer, irq IRQ, log *slog.Logger) *Serial {
	if out == nil {
		out = io.Discard
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Serial{
		out:     out,
		irq:     irq,
		log:     log,
		dll:     serialResetDivisor,
		drained: make(chan struct{}, 1),
	}
}

// Read implements Device. Each byte of data is a read of consecutive
// registers, the way an 8-bit ISA device sees a wider access.
func (s *Serial) Read(offset uint64, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range data {
		data[i] = s.readReg(offset + uint64(i))
	}
	s.updateIRQ(false)
}

// Write implements Device. Each byte of data is a write to consecutive
// registers.
func (s *Serial) Write(offset uint64, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, v := range data {
		s.writeReg(offset+uint64(i), v)
	}
	s.updateIRQ(false)
}

// Enqueue hands bytes received from the host to the guest. It copies as much
// of p as fits in the receive FIFO and returns that count; the caller keeps
// the rest and retries after Drained fires (or uses Feed). Nothing is lost.
func (s *Serial) Enqueue(p []byte) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, b := range p {
		if !s.pushRX(b) {
			break
		}
		n++
	}
	s.stats.RxBytes += uint64(n)
	s.updateIRQ(n > 0)
	return n
}

// Space returns how many bytes Enqueue would accept right now.
func (s *Serial) Space() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return serialFIFOSize - s.rxLen
}

// Drained returns a channel that receives a value after the guest empties
// the receive FIFO (by reading it or clearing it through FCR). It holds at
// most one pending notification, so a wakeup may be stale: callers loop on
// Enqueue, which simply returns 0 if there is still no room.
func (s *Serial) Drained() <-chan struct{} {
	return s.drained
}

// Feed enqueues all of p, waiting for the guest to drain the FIFO whenever
// it is full. It returns ctx.Err() if ctx ends first; bytes accepted before
// that stay queued.
func (s *Serial) Feed(ctx context.Context, p []byte) error {
	for {
		p = p[s.Enqueue(p):]
		if len(p) == 0 {
			return nil
		}
		select {
		case <-s.drained:
		case <-ctx.Done():
			return fmt.Errorf("serial input: %d bytes not delivered: %w", len(p), ctx.Err())
		}
	}
}

// Stats returns a snapshot of the counters.
func (s *Serial) Stats() SerialStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *Serial) dlab() bool { return s.lcr&lcrDLAB != 0 }
func (s *Serial) loop() bool { return s.mcr&mcrLoop != 0 }

func (s *Serial) readReg(off uint64) byte {
	switch off {
	case uartRBR: // also DLL
		if s.dlab() {
			return s.dll
		}
		return s.popRX()
	case uartIER: // also DLM
		if s.dlab() {
			return s.dlm
		}
		return s.ier
	case uartIIR:
		id := s.pendingID()
		if id == iirTHRE {
			// Reading IIR while it reports THRE clears that interrupt
			// (datasheet Table IV, "Reset Control").
			s.threPending = false
		}
		if s.fifoEnabled {
			id |= iirFIFOEnabled
		}
		return id
	case uartLCR:
		return s.lcr
	case uartMCR:
		return s.mcr
	case uartLSR:
		v := s.lineStatus()
		s.lsrErrs = 0 // error bits reset on read (datasheet section 8.2)
		return v
	case uartMSR:
		v := s.modemLines() | s.msrDelta
		s.msrDelta = 0 // delta bits reset on read (datasheet section 8.7)
		return v
	case uartSCR:
		return s.scr
	}
	return emptyBusByte
}

func (s *Serial) writeReg(off uint64, v byte) {
	switch off {
	case uartTHR: // also DLL
		if s.dlab() {
			s.dll = v
			return
		}
		s.transmit(v)
	case uartIER: // also DLM
		if s.dlab() {
			s.dlm = v
			return
		}
		old := s.ier
		s.ier = v & ierMask
		if s.ier&ierTHRE != 0 && old&ierTHRE == 0 {
			// Enabling ETBEI while the holding register is empty (it always
			// is) raises THRE at once; Linux's 8250 driver relies on this
			// to start transmitting.
			s.threPending = true
		}
	case uartFCR:
		enable := v&fcrEnable != 0
		if v&fcrClearRX != 0 || enable != s.fifoEnabled {
			s.clearRX()
		}
		// fcrClearTX: the transmitter never holds data, nothing to clear.
		s.fifoEnabled = enable
	case uartLCR:
		s.lcr = v
	case uartMCR:
		before := s.modemLines()
		s.mcr = v & mcrMask
		s.msrDelta |= modemDeltas(before, s.modemLines())
	case uartLSR, uartMSR:
		// Writable only for factory testing; ignored.
	case uartSCR:
		s.scr = v
	}
}

// transmit handles a THR write: the byte goes out (or, in loopback, comes
// back as received data) and the holding register is empty again at once.
func (s *Serial) transmit(v byte) {
	if s.loop() {
		if !s.pushRX(v) {
			s.lsrErrs |= lsrOE
			s.stats.Overruns++
		}
	} else {
		s.tx[0] = v
		if _, err := s.out.Write(s.tx[:]); err != nil {
			s.stats.WriteErrors++
			if !s.loggedWrite {
				s.loggedWrite = true
				s.log.Warn("serial output write failed; further failures are only counted", "err", err)
			}
		} else {
			s.stats.TxBytes++
		}
	}
	s.threPending = true
}

func (s *Serial) pushRX(b byte) bool {
	if s.rxLen == serialFIFOSize {
		return false
	}
	s.rx[(s.rxHead+s.rxLen)%serialFIFOSize] = b
	s.rxLen++
	return true
}

func (s *Serial) popRX() byte {
	if s.rxLen == 0 {
		return 0
	}
	b := s.rx[s.rxHead]
	s.rxHead = (s.rxHead + 1) % serialFIFOSize
	s.rxLen--
	if s.rxLen == 0 {
		s.notifyDrained()
	}
	return b
}

func (s *Serial) clearRX() {
	wasFull := s.rxLen > 0
	s.rxHead, s.rxLen = 0, 0
	if wasFull {
		s.notifyDrained()
	}
}

func (s *Serial) notifyDrained() {
	select {
	case s.drained <- struct{}{}:
	default:
	}
}

func (s *Serial) lineStatus() byte {
	v := byte(lsrTHRE|lsrTEMT) | s.lsrErrs
	if s.rxLen > 0 {
		v |= lsrDR
	}
	return v
}

// modemLines returns the MSR status bits (4-7). In loopback mode the modem
// control outputs feed them: RTS to CTS, DTR to DSR, OUT1 to RI and OUT2 to
// DCD (datasheet section 8.6).
func (s *Serial) modemLines() byte {
	if !s.loop() {
		return serialModemLines
	}
	var v byte
	if s.mcr&mcrRTS != 0 {
		v |= msrCTS
	}
	if s.mcr&mcrDTR != 0 {
		v |= msrDSR
	}
	if s.mcr&mcrOUT1 != 0 {
		v |= msrRI
	}
	if s.mcr&mcrOUT2 != 0 {
		v |= msrDCD
	}
	return v
}

// modemDeltas returns the MSR delta bits for a change of the status bits.
// TERI is set only on the trailing edge of RI.
func modemDeltas(before, after byte) byte {
	changed := before ^ after
	var d byte
	if changed&msrCTS != 0 {
		d |= msrDCTS
	}
	if changed&msrDSR != 0 {
		d |= msrDDSR
	}
	if before&msrRI != 0 && after&msrRI == 0 {
		d |= msrTERI
	}
	if changed&msrDCD != 0 {
		d |= msrDDCD
	}
	return d
}

// pendingID returns the IIR identification of the highest-priority enabled
// pending interrupt, or iirNoInt.
func (s *Serial) pendingID() byte {
	switch {
	case s.ier&ierRLS != 0 && s.lsrErrs != 0:
		return iirRLS
	case s.ier&ierRDA != 0 && s.rxLen > 0:
		return iirRDA
	case s.ier&ierTHRE != 0 && s.threPending:
		return iirTHRE
	case s.ier&ierMS != 0 && s.msrDelta != 0:
		return iirModemStatus
	}
	return iirNoInt
}

// updateIRQ recomputes the interrupt output and triggers the IRQ on a rising
// edge, or whenever it is high if force is set.
func (s *Serial) updateIRQ(force bool) {
	level := s.mcr&(mcrOUT2|mcrLoop) == mcrOUT2 && s.pendingID() != iirNoInt
	rising := level && !s.intr
	s.intr = level
	if !(rising || (force && level)) || s.irq == nil {
		return
	}
	if err := s.irq.Trigger(); err != nil {
		s.stats.IRQErrors++
		if !s.loggedTrigger {
			s.loggedTrigger = true
			s.log.Warn("serial interrupt trigger failed; further failures are only counted", "err", err)
		}
	}
}

package devices

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

// i8042 wiring on a PC (and in Firecracker): the data port at 0x60, the
// status/command port at 0x64, keyboard interrupts on ISA IRQ 1. Port 0x61
// (PC speaker / NMI status) in between belongs to KVM's in-kernel PIT, so
// Attach registers the two ports as separate one-byte ranges. Alternatively
// the controller can be inserted as one range of I8042Size ports at
// I8042DataPort, as Firecracker does; offsets 1-3 then read as 0xff.
const (
	I8042DataPort    = 0x60 // data port: output buffer (read), input buffer (write)
	I8042CommandPort = 0x64 // status register (read), controller command (write)
	I8042Size        = 5    // ports 0x60-0x64 as one range
	I8042IRQ         = 1    // ISA IRQ (and GSI) of the keyboard
)

// Offsets of the two ports relative to I8042DataPort, as seen by Read and
// Write.
const (
	i8042OffData    = 0
	i8042OffCommand = I8042CommandPort - I8042DataPort
)

// Controller commands written to port 0x64 (IBM PC AT Technical Reference,
// "Keyboard Controller Commands"; OSDev "8042 PS/2 Controller").
const (
	i8042CmdReadCTR   = 0x20 // read controller configuration byte (RAM byte 0)
	i8042CmdWriteCTR  = 0x60 // write controller configuration byte; value follows on 0x60
	i8042CmdReadOutP  = 0xd0 // read controller output port
	i8042CmdWriteOutP = 0xd1 // write controller output port; value follows on 0x60
	i8042CmdResetCPU  = 0xfe // pulse output port bit 0: CPU reset
)

// Status register bits, read from port 0x64 (OSDev "8042 PS/2 Controller",
// "Status Register").
const (
	i8042StatOBF    = 0x01 // output buffer full: a byte waits at port 0x60
	i8042StatSys    = 0x04 // system flag, mirrors the CTR system flag (POST passed)
	i8042StatCmd    = 0x08 // last write was a controller command; a parameter is expected on 0x60
	i8042StatKbdEna = 0x10 // keyboard not inhibited
)

// Controller configuration byte (CTR) bits (OSDev "8042 PS/2 Controller",
// "Controller Configuration Byte").
const (
	i8042CtrKbdInt = 0x01 // first-port (keyboard) interrupt enabled
	i8042CtrSys    = 0x04 // system flag: POST passed
)

// Output port bits (IBM PC AT Technical Reference, "Output Port Definitions").
const (
	i8042OutPNotReset = 0x01 // system reset line, active low
	i8042OutPA20      = 0x02 // A20 gate enabled
)

// Keyboard protocol bytes (PS/2 keyboard, scan code set 2).
const (
	ps2Ack        = 0xfa // reply to every command byte sent to the keyboard
	ps2KeyCtrl    = 0x14 // left Ctrl make code
	ps2KeyAlt     = 0x11 // left Alt make code
	ps2KeyExtend  = 0xe0 // prefix of extended keys
	ps2KeyDelete  = 0x71 // Delete make code, after ps2KeyExtend
	i8042BufSize  = 16   // output queue depth, in bytes
	i8042ResetCTR = i8042CtrKbdInt | i8042CtrSys
	i8042ResetOut = i8042OutPNotReset | i8042OutPA20
)

// ErrI8042Full means the controller's output queue has no room for a whole
// key sequence; the guest has not read the previous bytes yet.
var ErrI8042Full = errors.New("i8042 output buffer full")

// I8042 is the minimal i8042 keyboard controller Firecracker provides: just
// enough for Linux's i8042 and atkbd drivers to attach (with
// "i8042.noaux i8042.nomux i8042.dumbkbd"), for the guest to request a reset
// with command 0xFE (reboot=k), and for the host to inject Ctrl+Alt+Del.
//
// Every byte sent to the keyboard is acknowledged with 0xFA. I8042 is safe
// for concurrent use.
type I8042 struct {
	mu      sync.Mutex
	irq     IRQ
	onReset func()
	log     *slog.Logger

	ctr       byte // controller configuration byte
	outp      byte // output port
	cmd       byte // command awaiting a parameter byte on port 0x60, if cmdParam
	cmdParam  bool
	buf       [i8042BufSize]byte
	head, len int

	loggedTrigger bool
}

// NewI8042 returns a controller that signals irq when a byte is ready and
// calls onReset (from the vCPU thread, with no lock held) when the guest
// asks for a CPU reset. nil irq, onReset or log are allowed.
func NewI8042(irq IRQ, onReset func(), log *slog.Logger) *I8042 {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &I8042{
		irq:     irq,
		onReset: onReset,
		log:     log,
		ctr:     i8042ResetCTR,
		outp:    i8042ResetOut,
	}
}

// Attach inserts the controller on a port-I/O bus as two one-byte ranges,
// I8042DataPort and I8042CommandPort, leaving port 0x61 to the kernel.
func (k *I8042) Attach(bus *Bus) error {
	if err := bus.Insert(i8042Port{k, i8042OffData}, I8042DataPort, 1); err != nil {
		return fmt.Errorf("i8042 data port: %w", err)
	}
	if err := bus.Insert(i8042Port{k, i8042OffCommand}, I8042CommandPort, 1); err != nil {
		return fmt.Errorf("i8042 command port: %w", err)
	}
	return nil
}

// i8042Port is one port of the controller inserted on its own.
type i8042Port struct {
	k   *I8042
	off uint64
}

func (p i8042Port) Read(offset uint64, data []byte)  { p.k.Read(p.off+offset, data) }
func (p i8042Port) Write(offset uint64, data []byte) { p.k.Write(p.off+offset, data) }

// Read implements Device for offsets from I8042DataPort. Only byte accesses
// are decoded; wider ones read as 0xff.
func (k *I8042) Read(offset uint64, data []byte) {
	fill(data, emptyBusByte)
	if len(data) != 1 {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch offset {
	case i8042OffCommand:
		data[0] = k.status()
	case i8042OffData:
		data[0] = k.pop()
		if k.len > 0 {
			// More bytes queued: interrupt again so the guest reads on.
			k.interrupt()
		}
	}
}

// Write implements Device for offsets from I8042DataPort. Only byte accesses
// are decoded.
func (k *I8042) Write(offset uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	v := data[0]
	k.mu.Lock()
	reset := false
	switch offset {
	case i8042OffCommand:
		reset = k.command(v)
	case i8042OffData:
		k.data(v)
	}
	k.mu.Unlock()
	if reset {
		k.log.Info("guest requested a CPU reset through the i8042")
		if k.onReset != nil {
			k.onReset()
		}
	}
}

// data handles a byte written to port 0x60: the parameter of a pending
// controller command, or else a command for the keyboard itself, which our
// keyboard acknowledges whatever it is.
func (k *I8042) data(v byte) {
	if !k.cmdParam {
		k.flush()
		k.push(ps2Ack)
		k.interrupt()
		return
	}
	k.cmdParam = false
	switch k.cmd {
	case i8042CmdWriteCTR:
		k.ctr = v
	case i8042CmdWriteOutP:
		k.outp = v
	}
}

// command executes a controller command and reports whether it was a reset.
func (k *I8042) command(c byte) bool {
	k.cmdParam = false
	switch c {
	case i8042CmdReadCTR:
		k.flush()
		k.push(k.ctr)
	case i8042CmdReadOutP:
		k.flush()
		k.push(k.outp)
	case i8042CmdWriteCTR:
		k.flush()
		k.cmd, k.cmdParam = c, true
	case i8042CmdWriteOutP:
		k.cmd, k.cmdParam = c, true
	case i8042CmdResetCPU:
		return true
	default:
		k.log.Debug("ignoring unsupported i8042 command", "cmd", c)
	}
	return false
}

// SendCtrlAltDel queues the scan-code set 2 make codes of Ctrl, Alt and Delete
// and interrupts the guest, which Linux turns into ctrl_alt_del(). It fails
// with ErrI8042Full if the guest has not drained earlier keys.
func (k *I8042) SendCtrlAltDel() error {
	// The make codes Firecracker injects: Ctrl, Alt, then extended Delete.
	ctrlAltDel := [...]byte{ps2KeyCtrl, ps2KeyAlt, ps2KeyExtend, ps2KeyDelete}
	k.mu.Lock()
	defer k.mu.Unlock()
	if i8042BufSize-k.len < len(ctrlAltDel) {
		return fmt.Errorf("send ctrl-alt-del: %w", ErrI8042Full)
	}
	for _, b := range ctrlAltDel {
		k.push(b)
	}
	if k.ctr&i8042CtrKbdInt == 0 {
		k.log.Debug("ctrl-alt-del queued but keyboard interrupts are disabled by the guest")
		return nil
	}
	if k.irq != nil {
		if err := k.irq.Trigger(); err != nil {
			return fmt.Errorf("send ctrl-alt-del: trigger keyboard interrupt: %w", err)
		}
	}
	return nil
}

func (k *I8042) status() byte {
	v := byte(i8042StatKbdEna)
	if k.len > 0 {
		v |= i8042StatOBF
	}
	if k.ctr&i8042CtrSys != 0 {
		v |= i8042StatSys
	}
	if k.cmdParam {
		v |= i8042StatCmd
	}
	return v
}

// interrupt raises IRQ 1 if the guest enabled keyboard interrupts.
func (k *I8042) interrupt() {
	if k.ctr&i8042CtrKbdInt == 0 || k.irq == nil {
		return
	}
	if err := k.irq.Trigger(); err != nil && !k.loggedTrigger {
		k.loggedTrigger = true
		k.log.Warn("i8042 interrupt trigger failed; further failures are not logged", "err", err)
	}
}

// push appends to the output queue, dropping the byte if it is full.
func (k *I8042) push(b byte) {
	if k.len == i8042BufSize {
		return
	}
	k.buf[(k.head+k.len)%i8042BufSize] = b
	k.len++
}

// pop removes the oldest queued byte; an empty queue reads as 0.
func (k *I8042) pop() byte {
	if k.len == 0 {
		return 0
	}
	b := k.buf[k.head]
	k.head = (k.head + 1) % i8042BufSize
	k.len--
	return b
}

func (k *I8042) flush() { k.head, k.len = 0, 0 }

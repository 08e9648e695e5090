package devices

import "fmt"

// SerialState is the UART's register state for a snapshot. The receive
// FIFO is saved too; the host side (output file, console input) is not.
type SerialState struct {
	IER, LCR, MCR, SCR byte
	DLL, DLM           byte
	LSRErrs, MSRDelta  byte
	FIFOEnabled        bool
	THREPending        bool
	Intr               bool
	RX                 []byte // received bytes the guest has not read, oldest first
}

// SaveState returns the UART's state.
func (s *Serial) SaveState() SerialState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SerialState{IER: s.ier, LCR: s.lcr, MCR: s.mcr, SCR: s.scr, DLL: s.dll, DLM: s.dlm,
		LSRErrs: s.lsrErrs, MSRDelta: s.msrDelta, FIFOEnabled: s.fifoEnabled,
		THREPending: s.threPending, Intr: s.intr}
	for i := 0; i < s.rxLen; i++ {
		st.RX = append(st.RX, s.rx[(s.rxHead+i)%serialFIFOSize])
	}
	return st
}

// RestoreState loads a state saved by SaveState into a fresh UART.
func (s *Serial) RestoreState(st SerialState) error {
	if len(st.RX) > serialFIFOSize {
		return fmt.Errorf("serial state: %d bytes in a %d-byte receive FIFO", len(st.RX), serialFIFOSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm = st.IER, st.LCR, st.MCR, st.SCR, st.DLL, st.DLM
	s.lsrErrs, s.msrDelta, s.fifoEnabled, s.threPending, s.intr = st.LSRErrs, st.MSRDelta, st.FIFOEnabled, st.THREPending, st.Intr
	s.rxHead, s.rxLen = 0, copy(s.rx[:], st.RX)
	return nil
}

// I8042State is the keyboard controller's state for a snapshot.
type I8042State struct {
	CTR, Outp, Cmd byte
	CmdParam       bool
	Buf            []byte // queued output bytes, oldest first
}

// SaveState returns the controller's state.
func (k *I8042) SaveState() I8042State {
	k.mu.Lock()
	defer k.mu.Unlock()
	st := I8042State{CTR: k.ctr, Outp: k.outp, Cmd: k.cmd, CmdParam: k.cmdParam}
	for i := 0; i < k.len; i++ {
		st.Buf = append(st.Buf, k.buf[(k.head+i)%i8042BufSize])
	}
	return st
}

// RestoreState loads a state saved by SaveState into a fresh controller.
func (k *I8042) RestoreState(st I8042State) error {
	if len(st.Buf) > i8042BufSize {
		return fmt.Errorf("i8042 state: %d bytes in a %d-byte buffer", len(st.Buf), i8042BufSize)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ctr, k.outp, k.cmd, k.cmdParam = st.CTR, st.Outp, st.Cmd, st.CmdParam
	k.head, k.len = 0, copy(k.buf[:], st.Buf)
	return nil
}

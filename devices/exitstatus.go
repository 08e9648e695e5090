package devices

import "sync/atomic"

// Ember's exit-status register: how a guest's init tells the host the
// status its workload ended with, so that `ember run --image` can exit
// with it. The guest writes one 32-bit value, 0-255 (an exit code, or
// 128+N for a workload killed by signal N, or the init's own 125/126/127),
// at offset 0 of the page, then resets or powers off. Ember-init writes it
// through /dev/mem.
//
// The page is the last one below x86.MMIODevicesEnd: virtio-mmio windows
// grow upwards from 0xC000_1000 and the boot timer holds 0xC000_0000, so
// the top of the device range is where nothing else will be put. It is not
// RAM in the e820 map, so /dev/mem lets root map it (STRICT_DEVMEM only
// refuses RAM and exclusive resources).
//
// The guest is hostile and may write anything, any number of times: the
// last valid write wins; a value above 255, a write of another width or at
// another offset changes nothing; nothing is logged per write. Reads return
// zeros. The register is not part of a snapshot: a guest writes it as its
// last act before the reset.
const (
	ExitStatusBase = 0xeebf_f000 // guest-physical MMIO base: x86.MMIODevicesEnd - one page
	ExitStatusSize = 0x1000      // one page

	exitStatusOffValue = 0 // offset of the status register
	exitStatusWidth    = 4 // the register is 32 bits wide
	// MaxExitStatus is the largest status: an exit code is 8 bits (wait(2)).
	MaxExitStatus = 255
	// exitStatusWritten marks a stored status, so the zero value of the
	// register means "never written".
	exitStatusWritten = 1 << 31
)

// ExitStatus is the exit-status register. The zero value is ready to use
// and safe for concurrent use by every vCPU.
type ExitStatus struct {
	v atomic.Uint32 // exitStatusWritten | status, or 0
}

// Status returns the last status the guest wrote and whether it wrote one.
func (e *ExitStatus) Status() (int, bool) {
	v := e.v.Load()
	return int(v &^ exitStatusWritten), v&exitStatusWritten != 0
}

// Read implements Device: the register reads as zero.
func (e *ExitStatus) Read(offset uint64, data []byte) {
	fill(data, 0)
}

// Write implements Device: a 32-bit little-endian store of 0-255 at offset
// 0 records the status; anything else is ignored.
func (e *ExitStatus) Write(offset uint64, data []byte) {
	if offset != exitStatusOffValue || len(data) != exitStatusWidth {
		return
	}
	v := uint32(data[0]) | uint32(data[1])<<8 | uint32(data[2])<<16 | uint32(data[3])<<24
	if v > MaxExitStatus {
		return
	}
	e.v.Store(exitStatusWritten | v)
}

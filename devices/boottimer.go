package devices

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Firecracker's boot-timer pseudo-device (--boot-timer): always the first
// MMIO device, one page at the bottom of the 32-bit MMIO hole on x86. The
// guest's init writes the byte 123 at offset 0 just before exec'ing
// /sbin/init, marking the end of boot.
const (
	BootTimerBase = 0xc000_0000 // guest-physical MMIO base
	BootTimerSize = 0x1000      // one page

	bootTimerOffMagic = 0   // offset of the boot-complete register
	bootTimerMagic    = 123 // byte that signals boot completion
)

// BootTime is what the boot timer measured when the guest signalled.
type BootTime struct {
	// SinceStart is the wall time from the start passed to NewBootTimer
	// (process start) to the signal.
	SinceStart time.Duration
	// SinceGuestStart is the wall time from MarkGuestStart (the guest's
	// first instruction) to the signal; zero if MarkGuestStart was never
	// called.
	SinceGuestStart time.Duration
	// CPU is the CPU time (user and system, all threads) the process had
	// consumed when the guest signalled.
	CPU time.Duration
}

// BootTimer is the boot-timer device. It logs one line the first time the
// guest writes 123 at offset 0 and ignores everything else; reads return 0.
// It is safe for concurrent use.
type BootTimer struct {
	start time.Time
	log   *slog.Logger

	mu         sync.Mutex
	guestStart time.Time
	result     BootTime
	done       bool
}

// NewBootTimer returns a boot timer measuring from start, normally the time
// the process started. A nil log discards the record.
func NewBootTimer(start time.Time, log *slog.Logger) *BootTimer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BootTimer{start: start, log: log}
}

// MarkGuestStart records now as the moment the guest started running. Only
// the first call counts.
func (t *BootTimer) MarkGuestStart() {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.guestStart.IsZero() {
		t.guestStart = now
	}
}

// Result returns the measurement and whether the guest has signalled yet.
func (t *BootTimer) Result() (BootTime, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.result, t.done
}

// Read implements Device: the device has no readable registers.
func (t *BootTimer) Read(offset uint64, data []byte) {
	fill(data, 0)
}

// Write implements Device.
func (t *BootTimer) Write(offset uint64, data []byte) {
	if offset != bootTimerOffMagic || len(data) != 1 || data[0] != bootTimerMagic {
		return
	}
	now := time.Now()
	cpu, cpuErr := processCPUTime()

	t.mu.Lock()
	if t.done {
		t.mu.Unlock()
		return
	}
	r := BootTime{SinceStart: now.Sub(t.start), CPU: cpu}
	if !t.guestStart.IsZero() {
		r.SinceGuestStart = now.Sub(t.guestStart)
	}
	t.result, t.done = r, true
	t.mu.Unlock()

	if cpuErr != nil {
		t.log.Warn("boot timer: no CPU time", "err", cpuErr)
	}
	boot, guest := r.SinceStart.Microseconds(), r.SinceGuestStart.Microseconds()
	cpuUS := r.CPU.Microseconds()
	t.log.Info(fmt.Sprintf("Guest-boot-time = %d us (%d ms), %d CPU us (%d CPU ms); since VM start = %d us (%d ms)",
		boot, boot/1000, cpuUS, cpuUS/1000, guest, guest/1000),
		"boot_us", boot, "cpu_us", cpuUS, "guest_us", guest)
}

// processCPUTime returns the CPU time consumed by all threads of the process.
func processCPUTime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime(CLOCK_PROCESS_CPUTIME_ID): %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

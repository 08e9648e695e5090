package virtio

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The limit on guest-caused log lines: Linux's own for messages a user can
// cause (printk_ratelimit: DEFAULT_RATELIMIT_BURST 10 messages every
// DEFAULT_RATELIMIT_INTERVAL 5 s). A guest gets its first messages through
// whole, and a flood costs Ember two or three lines a second per device.
const (
	guestLogBurst    = 10
	guestLogInterval = 5 * time.Second
)

// GuestLog writes the log lines a guest can cause: a bad register write, a
// malformed chain, a broken queue, a host I/O error on a request. A hostile
// guest can repeat those at will, so a GuestLog writes at most
// guestLogBurst lines per guestLogInterval and counts the rest
// (Suppressed). The first line it writes after some were suppressed is
// preceded by one saying how many were, so the log shows every gap.
//
// Each device and each transport has one: a guest flooding one device does
// not silence another's messages. Lines below the logger's level are
// neither written nor counted. A GuestLog is safe for concurrent use (vCPU
// threads and the device's worker); the lines it lets through take a
// mutex, so it is not for the data path's success cases.
type GuestLog struct {
	log *slog.Logger
	now func() time.Time // time.Now; tests move it

	mu      sync.Mutex
	start   time.Time // start of the current interval
	lines   int       // lines written in it
	pending uint64    // lines suppressed since the last one written

	suppressed atomic.Uint64
}

// NewGuestLog returns a GuestLog writing to log (slog.Default if nil).
func NewGuestLog(log *slog.Logger) *GuestLog {
	if log == nil {
		log = slog.Default()
	}
	return &GuestLog{log: log, now: time.Now}
}

// Logger is the underlying logger, for the lines a guest cannot cause.
func (g *GuestLog) Logger() *slog.Logger { return g.log }

// Enabled reports whether lines at level would be written (unless
// suppressed): a caller on a hot path checks it before building arguments.
func (g *GuestLog) Enabled(level slog.Level) bool {
	return g.log.Enabled(context.Background(), level)
}

// Warn writes a warning, unless the limit suppresses it.
func (g *GuestLog) Warn(msg string, args ...any) { g.write(slog.LevelWarn, msg, args) }

// Debug writes a debug line, unless the limit suppresses it.
func (g *GuestLog) Debug(msg string, args ...any) { g.write(slog.LevelDebug, msg, args) }

// Suppressed is how many lines the limit has left out: Firecracker's
// logger.missed_log_count counts them with the lines a full log pipe lost.
func (g *GuestLog) Suppressed() uint64 { return g.suppressed.Load() }

func (g *GuestLog) write(level slog.Level, msg string, args []any) {
	ctx := context.Background()
	if !g.log.Enabled(ctx, level) {
		return
	}
	now := g.now()
	g.mu.Lock()
	if now.Sub(g.start) >= guestLogInterval {
		g.start, g.lines = now, 0
	}
	if g.lines >= guestLogBurst {
		g.pending++
		g.mu.Unlock()
		g.suppressed.Add(1)
		return
	}
	g.lines++
	gap := g.pending
	g.pending = 0
	g.mu.Unlock()

	// The record carries the caller's source position, as if it had
	// called the logger itself (skip runtime.Callers, write, Warn/Debug).
	var pcs [1]uintptr
	runtime.Callers(3, pcs[:])
	h := g.log.Handler()
	if gap > 0 {
		r := slog.NewRecord(now, slog.LevelWarn, "virtio: guest-caused log lines suppressed (rate limit)", pcs[0])
		r.AddAttrs(slog.Uint64("count", gap))
		_ = h.Handle(ctx, r)
	}
	r := slog.NewRecord(now, level, msg, pcs[0])
	r.Add(args...)
	_ = h.Handle(ctx, r)
}

// SuppressedLogger is a Device with a GuestLog of its own: the transport
// adds the device's count to its own in SuppressedLogs.
type SuppressedLogger interface {
	SuppressedLogs() uint64
}

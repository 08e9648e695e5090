package virtio

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

type recordHandler struct{ recs []slog.Record }

func (h *recordHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h *recordHandler) WithGroup(string) slog.Handler                { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.recs = append(h.recs, r)
	return nil
}

// TestGuestLogWindow: guestLogBurst lines per interval get through, the
// rest are counted; the first line of a later interval is preceded by one
// giving the count; lines below the level are neither written nor counted.
func TestGuestLogWindow(t *testing.T) {
	h := &recordHandler{}
	g := NewGuestLog(slog.New(h))
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	for range 100 {
		g.Warn("bad", "k", 1)
		g.Debug("below the level")
	}
	if len(h.recs) != guestLogBurst || g.Suppressed() != 100-guestLogBurst {
		t.Fatalf("%d lines written, %d suppressed; want %d and %d", len(h.recs), g.Suppressed(), guestLogBurst, 100-guestLogBurst)
	}
	now = now.Add(guestLogInterval)
	g.Warn("again")
	if len(h.recs) != guestLogBurst+2 {
		t.Fatalf("%d lines after the interval, want %d", len(h.recs), guestLogBurst+2)
	}
	sum, next := h.recs[guestLogBurst], h.recs[guestLogBurst+1]
	var count uint64
	sum.Attrs(func(a slog.Attr) bool {
		if a.Key == "count" {
			count = a.Value.Uint64()
		}
		return true
	})
	if count != 100-guestLogBurst || next.Message != "again" {
		t.Fatalf("after the interval: %q count=%d, then %q; want the count %d, then the line", sum.Message, count, next.Message, 100-guestLogBurst)
	}
	// The record points at the caller, not at GuestLog.
	if f := next.Source(); f == nil || f.Function != "github.com/embervm/ember/virtio.TestGuestLogWindow" {
		t.Fatalf("source %+v, want the caller", f)
	}
}

package virtio_test

import (
	"context"
	"encoding/binary"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/virtiotest"
)

// countingHandler counts the lines written at every level, keeping the
// first few for failure messages.
type countingHandler struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	if len(h.first) < 20 {
		h.first = append(h.first, r.Message)
	}
	return nil
}

func (h *countingHandler) lines() (int, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n, strings.Join(h.first, "\n")
}

// Register offsets (virtio 4.2.2) for the hostile driver below.
const (
	regDriverFeatures = 0x020
	regQueueSel       = 0x030
	regQueueNum       = 0x038
	regQueueReady     = 0x044
	regStatus         = 0x070
)

// TestGuestLogRateLimited: a driver that rewrites the registers wrongly in
// a loop (features the device does not offer, DRIVER_OK without
// FEATURES_OK, a queue of a bad size, unaligned and unknown registers)
// 100,000 times, each attempt a line before, gets a few lines into Ember's
// log, at debug level too; the rest are counted in SuppressedLogs.
func TestGuestLogRateLimited(t *testing.T) {
	h := &countingHandler{}
	dev, err := rng.New(rng.Config{}, slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(dev, mem, slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tr.Close(); dev.Close() }()
	set := func(off uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		tr.Write(off, b[:])
	}
	const attempts = 100_000
	for i := range attempts {
		set(regStatus, 0)
		set(regStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
		switch i % 5 {
		case 0: // a feature the device does not offer
			set(regDriverFeatures, 1<<20)
			set(regStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
		case 1: // DRIVER_OK without FEATURES_OK
			set(regStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusDriverOK)
		case 2: // a queue of a size that is not a power of two
			set(0x024, 1) // DriverFeaturesSel: the word of VERSION_1
			set(regDriverFeatures, 1)
			set(regStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
			set(regQueueSel, 0)
			set(regQueueNum, 3)
			set(regQueueReady, 1)
			set(regStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
		case 3: // unaligned
			tr.Write(0x071, []byte{1, 2})
			tr.Read(0x013, make([]byte, 4))
		case 4: // read-only and unknown registers
			set(0x0fc, 1)
			set(0x0f0, 1)
		}
	}
	n, first := h.lines()
	if n > 300 {
		t.Fatalf("%d log lines for %d bad register sequences; the first:\n%s", n, attempts, first)
	}
	if s := tr.SuppressedLogs(); s < attempts {
		t.Fatalf("SuppressedLogs %d; want at least %d (every attempt causes a line at least)", s, attempts)
	}
	t.Logf("%d lines written, %d suppressed", n, tr.SuppressedLogs())
}

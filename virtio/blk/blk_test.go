package blk

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

const wait = 5 * time.Second

func header(typ uint32, sector uint64) []byte {
	b := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint64(b[8:], sector)
	return b
}

// disk makes a file of sectors sectors, sector i filled with byte i.
func disk(t *testing.T, sectors int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	b := make([]byte, sectors*SectorSize)
	for i := range sectors {
		for j := range SectorSize {
			b[i*SectorSize+j] = byte(i)
		}
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t *testing.T, cfg Config) (*Device, *virtiotest.MMIODriver) {
	t.Helper()
	d, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); d.Close() })
	m, err := virtiotest.SetupMMIO(tr, mem, ^uint64(0), 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	return d, m
}

// do sends one request and returns the status byte and the used length.
func do(t *testing.T, m *virtiotest.MMIODriver, bufs ...virtiotest.Buf) (head uint16, status byte, n uint32) {
	t.Helper()
	bufs = append(bufs, virtiotest.Buf{WriteLen: 1})
	head = m.Queues[0].Add(bufs...)
	m.Notify(0)
	h, n, err := m.WaitUsed(0, wait)
	if err != nil {
		t.Fatal(err)
	}
	if h != head {
		t.Fatalf("used head %d, want %d", h, head)
	}
	nw := 0
	for _, b := range bufs {
		if b.WriteLen > 0 {
			nw++
		}
	}
	return head, m.Queues[0].Written(head, nw-1, 1)[0], n
}

func TestReadWriteFlushGetID(t *testing.T) {
	path := disk(t, 16)
	d, m := start(t, Config{ID: "rootfs", Path: path, CacheType: CacheWriteback})
	if got := binary.LittleEndian.Uint64(m.Config(0, 8)); got != 16 {
		t.Fatalf("capacity %d sectors, want 16", got)
	}
	if m.Features&featFlush == 0 || m.Features&featRO != 0 {
		t.Fatalf("features %#x: want FLUSH and not RO", m.Features)
	}
	// Read sectors 3-4 into two buffers.
	head, st, n := do(t, m, virtiotest.Buf{Data: header(typeIn, 3)}, virtiotest.Buf{WriteLen: 512}, virtiotest.Buf{WriteLen: 512})
	if st != statusOK || n != 1025 {
		t.Fatalf("read: status %d, used %d", st, n)
	}
	if b := m.Queues[0].Written(head, 0, 512); b[0] != 3 || b[511] != 3 {
		t.Fatalf("read sector 3 = %d...", b[0])
	}
	if b := m.Queues[0].Written(head, 1, 512); b[0] != 4 || b[511] != 4 {
		t.Fatalf("read sector 4 = %d...", b[0])
	}
	// Write sector 5 and read the file.
	data := bytes.Repeat([]byte{0xab}, 512)
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeOut, 5)}, virtiotest.Buf{Data: data}); st != statusOK {
		t.Fatalf("write: status %d", st)
	}
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeFlush, 0)}); st != statusOK {
		t.Fatalf("flush: status %d", st)
	}
	// Write sectors 8-10 from two buffers of 512 and 1024 bytes.
	two := bytes.Repeat([]byte{0xcd}, 1024)
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeOut, 8)}, virtiotest.Buf{Data: data}, virtiotest.Buf{Data: two}); st != statusOK {
		t.Fatalf("write from two buffers: status %d", st)
	}
	f, _ := os.ReadFile(path)
	if !bytes.Equal(f[5*512:6*512], data) || f[6*512] != 6 {
		t.Fatal("the write did not reach the file (or spilled over)")
	}
	if !bytes.Equal(f[8*512:9*512], data) || !bytes.Equal(f[9*512:11*512], two) || f[11*512] != 11 {
		t.Fatal("the two-buffer write did not reach the file in order (or spilled over)")
	}
	head, st, n = do(t, m, virtiotest.Buf{Data: header(typeGetID, 0)}, virtiotest.Buf{WriteLen: IDBytes})
	if st != statusOK || string(bytes.TrimRight(m.Queues[0].Written(head, 0, IDBytes), "\x00")) != "rootfs" {
		t.Fatalf("GET_ID: status %d, %q", st, m.Queues[0].Written(head, 0, IDBytes))
	}
	if d.Metrics.ReadBytes.Load() != 1024 || d.Metrics.WriteBytes.Load() != 512+1536 || d.Metrics.FlushCount.Load() != 1 {
		t.Fatalf("metrics: read %d write %d flush %d", d.Metrics.ReadBytes.Load(), d.Metrics.WriteBytes.Load(), d.Metrics.FlushCount.Load())
	}
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	path := disk(t, 4)
	_, m := start(t, Config{ID: "ro", Path: path, ReadOnly: true})
	if m.Features&featRO == 0 {
		t.Fatal("read-only drive does not offer VIRTIO_BLK_F_RO")
	}
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeOut, 0)}, virtiotest.Buf{Data: make([]byte, 512)}); st != statusIOErr {
		t.Fatalf("write to a read-only drive: status %d, want IOERR", st)
	}
	if f, _ := os.ReadFile(path); f[0] != 0 || f[511] != 0 || f[512] != 1 {
		t.Fatal("read-only file changed")
	}
}

// TestBadRequests: requests no honest driver sends get an error status, the
// device keeps serving.
func TestBadRequests(t *testing.T) {
	_, m := start(t, Config{ID: "d", Path: disk(t, 4)})
	for _, tc := range []struct {
		name string
		bufs []virtiotest.Buf
		want byte
	}{
		{"read past the end", []virtiotest.Buf{{Data: header(typeIn, 4)}, {WriteLen: 512}}, statusIOErr},
		{"read straddling the end", []virtiotest.Buf{{Data: header(typeIn, 3)}, {WriteLen: 1024}}, statusIOErr},
		{"huge sector", []virtiotest.Buf{{Data: header(typeIn, ^uint64(0))}, {WriteLen: 512}}, statusIOErr},
		{"partial sector", []virtiotest.Buf{{Data: header(typeIn, 0)}, {WriteLen: 100}}, statusIOErr},
		{"read into readable buffer", []virtiotest.Buf{{Data: header(typeIn, 0)}, {Data: make([]byte, 512)}}, statusIOErr},
		{"unknown type", []virtiotest.Buf{{Data: header(99, 0)}}, statusUnsupp},
	} {
		if _, st, _ := do(t, m, tc.bufs...); st != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, st, tc.want)
		}
	}
	// A chain without a writable status is returned untouched.
	head := m.Queues[0].Add(virtiotest.Buf{Data: header(typeIn, 0)})
	m.Notify(0)
	if h, n, err := m.WaitUsed(0, wait); err != nil || h != head || n != 0 {
		t.Fatalf("status-less chain: %d,%d,%v", h, n, err)
	}
	// Still serving.
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 1)}, virtiotest.Buf{WriteLen: 512}); st != statusOK {
		t.Fatalf("after bad requests: status %d", st)
	}
}

func TestHostIOErrorReachesGuest(t *testing.T) {
	path := disk(t, 4)
	d, m := start(t, Config{ID: "d", Path: path})
	// The file shrinks under the device: reads of the lost sectors fail.
	if err := os.Truncate(path, 512); err != nil {
		t.Fatal(err)
	}
	if _, st, _ := do(t, m, virtiotest.Buf{Data: header(typeIn, 2)}, virtiotest.Buf{WriteLen: 512}); st != statusIOErr {
		t.Fatalf("read of a vanished sector: status %d, want IOERR", st)
	}
	if d.Metrics.IOErrors.Load() == 0 {
		t.Fatal("IO error not counted")
	}
}

func TestNewRejects(t *testing.T) {
	dir := t.TempDir()
	for name, cfg := range map[string]Config{
		"missing file": {ID: "a", Path: filepath.Join(dir, "nope")},
		"directory":    {ID: "a", Path: dir},
		"cache type":   {ID: "a", Path: disk(t, 1), CacheType: "Sometimes"},
		"rate limit":   {ID: "a", Path: disk(t, 1), RateLimit: &ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{Size: 1, RefillTime: 1 << 62}}},
	} {
		if d, err := New(cfg, nil); err == nil {
			d.Close()
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// TestEmptyNotifyNoInterrupt: a notification that finds no new request
// raises no interrupt, with or without EVENT_IDX; one that finds a request
// raises one. The handler is run on the test's goroutine with the worker
// parked, so each notification is handled exactly when the test says.
func TestEmptyNotifyNoInterrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		want uint64
	}{{"event_idx", ^uint64(0)}, {"no_event_idx", ^uint64(0) &^ virtio.FEventIdx}} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(Config{ID: "d", Path: disk(t, 4)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			mem := virtiotest.NewMMIOMemory()
			tr, err := virtio.NewMMIO(d, mem, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close(); d.Close() })
			m, err := virtiotest.SetupMMIO(tr, mem, tc.want, 0x10000)
			if err != nil {
				t.Fatal(err)
			}
			d.Pause()
			defer d.Resume()
			for round := range 3 {
				d.handle(0)
				if n, st := m.Interrupts(), m.Reg(0x060); n != 0 || st != 0 {
					t.Fatalf("round %d: empty notification raised %d interrupts (status %#x)", round, n, st)
				}
				// Ask for an interrupt at the next used buffer, as a
				// driver enabling callbacks does (EVENT_IDX).
				m.Queues[0].SetUsedEvent(m.UsedIdx(0))
				m.Queues[0].Add(virtiotest.Buf{Data: header(typeIn, 0)}, virtiotest.Buf{WriteLen: 512}, virtiotest.Buf{WriteLen: 1})
				d.handle(0)
				if n := m.Interrupts(); n != 1 {
					t.Fatalf("round %d: a served request raised %d interrupts, want 1", round, n)
				}
				if _, _, err := m.WaitUsed(0, wait); err != nil { // acknowledges it
					t.Fatal(err)
				}
			}
		})
	}
}

// lineCounter is a slog handler that counts the lines written.
type lineCounter struct{ n atomic.Int64 }

func (h *lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *lineCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *lineCounter) WithGroup(string) slog.Handler            { return h }
func (h *lineCounter) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}

// TestGuestLogsRateLimited: a guest that breaks its queue, resets the
// device and breaks it again, 500 times, and sends a malformed request
// each time, gets a few lines into the log; the rest are counted.
func TestGuestLogsRateLimited(t *testing.T) {
	h := &lineCounter{}
	log := slog.New(h)
	d, err := New(Config{ID: "d", Path: disk(t, 4)}, log)
	if err != nil {
		t.Fatal(err)
	}
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(d, mem, log)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tr.Close(); d.Close() }()
	const rounds = 500
	rings, _ := mem.Slice(0x10000, 0x3000)
	for i := range rounds {
		tr.Write(0x070, make([]byte, 4)) // reset, then start from zeroed rings as a fresh driver
		clear(rings)
		m, err := virtiotest.SetupMMIO(tr, mem, ^uint64(0), 0x10000)
		if err != nil {
			t.Fatal(err)
		}
		m.Queues[0].Add(virtiotest.Buf{Data: []byte{1}}, virtiotest.Buf{WriteLen: 1}) // header too short
		m.Notify(0)
		if _, _, err := m.WaitUsed(0, wait); err != nil {
			t.Fatal(err)
		}
		m.Queues[0].SetAvailIdx(1 + 1000) // 1000 past the one request: broken
		m.Notify(0)
		deadline := time.Now().Add(wait)
		for d.Metrics.QueueBroken.Load() != uint64(i+1) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the queue was not found broken", i)
			}
			time.Sleep(10 * time.Microsecond)
		}
	}
	if n := h.n.Load(); n > 100 {
		t.Fatalf("%d log lines for %d rounds of a hostile guest", n, rounds)
	}
	// Two lines a round; the metric is counted just before the last
	// round's line, which may not be written yet.
	if s := tr.SuppressedLogs(); s < 2*rounds-100 {
		t.Fatalf("SuppressedLogs %d, want at least %d", s, 2*rounds-100)
	}
}

package devices

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestBootTimer(t *testing.T) {
	var logs bytes.Buffer
	start := time.Now().Add(-50 * time.Millisecond)
	bt := NewBootTimer(start, slog.New(slog.NewTextHandler(&logs, nil)))
	var b Bus
	if err := b.Insert(bt, BootTimerBase, BootTimerSize); err != nil {
		t.Fatal(err)
	}
	bt.MarkGuestStart()
	time.Sleep(2 * time.Millisecond)

	// Wrong value, wrong offset, wrong width: ignored.
	b.Write(BootTimerBase, []byte{122})
	b.Write(BootTimerBase+1, []byte{bootTimerMagic})
	b.Write(BootTimerBase, []byte{bootTimerMagic, 0, 0, 0})
	if _, ok := bt.Result(); ok || logs.Len() != 0 {
		t.Fatalf("signalled by a wrong write; log: %s", logs.String())
	}

	data := []byte{1, 2, 3, 4}
	b.Read(BootTimerBase, data)
	if !bytes.Equal(data, []byte{0, 0, 0, 0}) {
		t.Errorf("read = %x, want zeros", data)
	}

	b.Write(BootTimerBase, []byte{bootTimerMagic})
	r, ok := bt.Result()
	if !ok {
		t.Fatal("no result after 123")
	}
	if r.SinceStart < 50*time.Millisecond || r.SinceGuestStart < 2*time.Millisecond || r.SinceGuestStart > r.SinceStart {
		t.Errorf("result %+v", r)
	}
	if r.CPU <= 0 {
		t.Errorf("CPU time %v", r.CPU)
	}

	b.Write(BootTimerBase, []byte{bootTimerMagic})
	if r2, _ := bt.Result(); r2 != r {
		t.Errorf("second signal changed the result: %+v", r2)
	}
	out := logs.String()
	if n := strings.Count(out, "Guest-boot-time = "); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, out)
	}
	for _, w := range []string{" us (", " ms), ", " CPU us (", "since VM start = ", "level=INFO"} {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %q: %s", w, out)
		}
	}
}

func TestBootTimerWithoutGuestStart(t *testing.T) {
	bt := NewBootTimer(time.Now(), nil)
	bt.Write(0, []byte{bootTimerMagic})
	if r, ok := bt.Result(); !ok || r.SinceGuestStart != 0 {
		t.Errorf("result %+v, %v", r, ok)
	}
}

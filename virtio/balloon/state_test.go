package balloon

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// TestStateRestore: a snapshot keeps the driver's reported size, the
// statistics and the stats buffer the device holds; the restored device
// returns that buffer at its next poll.
func TestStateRestore(t *testing.T) {
	r := start(t, Config{AmountMiB: 4, StatsPollingIntervalS: 1}, time.Hour, ^uint64(0))
	head := r.m.Queues[statsQ].Add(virtiotest.Buf{Data: statsBuf(stat{tagFreeMemory, 1234})})
	r.m.Notify(statsQ)
	deadline := time.Now().Add(wait)
	for s := r.d.Stats(); s.FreeMemory == nil; s = r.d.Stats() {
		if time.Now().After(deadline) {
			t.Fatal("the stats buffer was not processed")
		}
		time.Sleep(time.Millisecond)
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 256)
	r.tr.Write(regConfig+cfgActual, b[:])
	r.d.Pause()
	s, err := r.tr.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	r.d.Resume()

	d2, err := New(Config{AmountMiB: 4, StatsPollingIntervalS: 1}, r.mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	d2.statsPeriod = 20 * time.Millisecond
	tr2, err := virtio.NewMMIO(d2, r.mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tr2.Close(); d2.Close() }()
	r.tr.Close()
	r.d.Close()
	if err := tr2.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if got := d2.Actual(); got != 256 {
		t.Errorf("actual %d after restore, want 256", got)
	}
	if st := d2.Stats(); st.FreeMemory == nil || *st.FreeMemory != 1234 {
		t.Errorf("stats after restore: %s", js(st))
	}
	r.m.T = tr2
	h, _, err := r.m.WaitUsed(statsQ, wait)
	if err != nil || h != head {
		t.Fatalf("held stats buffer after restore: used %d, %v; want %d", h, err, head)
	}
}

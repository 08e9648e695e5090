package vmm

import (
	"testing"

	"github.com/embervm/ember/memory"
)

func TestWriteTracker(t *testing.T) {
	lo, hi := make([]byte, 1<<20), make([]byte, 1<<20)
	tr := newWriteTracker(memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: lo}, {GuestAddr: 1 << 32, Host: hi}}))
	tr.MarkDirty(0x1ff0, 0x20)           // pages 1 and 2
	tr.MarkDirty(0x10_0000-1, 1)         // last page of region 0
	tr.MarkDirty(1<<32+0x5000, 1)        // page 5 of region 1
	tr.MarkDirty(0x20_0000, 0x1000)      // in no region: ignored
	tr.MarkDirty(1<<32+0xff000, 0x10000) // runs off region 1's end: clipped
	got := make([]uint64, 4)
	tr.take(0, got)
	if got[0] != 0b110 || got[3] != 1<<63 {
		t.Errorf("region 0 bitmap %#x", got)
	}
	got1 := make([]uint64, 4)
	tr.take(1, got1)
	if got1[0] != 1<<5 || got1[3] != 1<<63 {
		t.Errorf("region 1 bitmap %#x", got1)
	}
	again := make([]uint64, 4)
	tr.take(0, again)
	if again[0] != 0 || again[3] != 0 {
		t.Errorf("take did not clear: %#x", again)
	}
}

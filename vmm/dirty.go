package vmm

import (
	"sync/atomic"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/snapshot"
)

// writeTracker is guest memory as the virtio devices see it when dirty
// pages are tracked: it records the pages they write (KVM's dirty log only
// sees the guest's own writes), for Diff snapshots. It implements
// virtio.Memory and virtio.DirtyMarker.
type writeTracker struct {
	*memory.Guest
	bitmaps [][]atomic.Uint64 // per region, bit per 4 KiB page
}

func newWriteTracker(g *memory.Guest) *writeTracker {
	t := &writeTracker{Guest: g}
	for _, r := range g.Regions() {
		pages := r.Size() / snapshot.PageSize
		t.bitmaps = append(t.bitmaps, make([]atomic.Uint64, (pages+63)/64))
	}
	return t
}

// MarkDirty records [addr, addr+length) as written. Ranges outside RAM are
// ignored (the queue has already refused them).
func (t *writeTracker) MarkDirty(addr, length uint64) {
	if length == 0 {
		return
	}
	for i, r := range t.Regions() {
		if addr < r.GuestAddr || addr-r.GuestAddr >= r.Size() {
			continue
		}
		first := (addr - r.GuestAddr) / snapshot.PageSize
		last := (min(addr-r.GuestAddr+length, r.Size()) - 1) / snapshot.PageSize
		bm := t.bitmaps[i]
		for p := first; p <= last; p++ {
			if w := &bm[p/64]; w.Load()&(1<<(p%64)) == 0 {
				w.Or(1 << (p % 64))
			}
		}
		return
	}
}

// take ORs region i's recorded pages into dst and clears them.
func (t *writeTracker) take(i int, dst []uint64) {
	for w := range t.bitmaps[i] {
		if w < len(dst) {
			dst[w] |= t.bitmaps[i][w].Swap(0)
		}
	}
}

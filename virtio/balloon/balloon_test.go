package balloon

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

const (
	wait   = 5 * time.Second
	memMiB = 16

	regInterruptStatus = 0x060
	regConfigGen       = 0x0fc
	regConfig          = 0x100
)

type rig struct {
	d   *Device
	tr  *virtio.MMIO
	m   *virtiotest.MMIODriver
	mem *memory.Guest
}

// start boots the device over 16 MiB of real anonymous guest memory with
// its queues at 0x10000. A period > 0 replaces the stats polling period.
func start(t *testing.T, cfg Config, period time.Duration, want uint64) *rig {
	t.Helper()
	mem, err := memory.New(memMiB << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() }) // runs last
	d, err := New(cfg, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	if period > 0 {
		d.statsPeriod = period
	}
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); d.Close() })
	d.SetConfigNotifier(tr.ConfigChanged)
	m, err := virtiotest.SetupMMIO(tr, mem, want, 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{d: d, tr: tr, m: m, mem: mem}
}

// send offers a chain on queue q and waits for the device to return it.
func (r *rig) send(t *testing.T, q int, bufs ...virtiotest.Buf) {
	t.Helper()
	head := r.m.Queues[q].Add(bufs...)
	r.m.Notify(q)
	h, n, err := r.m.WaitUsed(q, wait)
	if err != nil {
		t.Fatal(err)
	}
	if h != head || n != 0 {
		t.Fatalf("queue %d: used %d,%d; want %d,0", q, h, n, head)
	}
}

func (r *rig) page(t *testing.T, pfn uint64) []byte {
	t.Helper()
	b, err := r.mem.Slice(pfn<<PFNShift, pageSize)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pfnList(pfns ...uint32) []byte {
	b := make([]byte, 4*len(pfns))
	for i, p := range pfns {
		binary.LittleEndian.PutUint32(b[4*i:], p)
	}
	return b
}

type stat struct {
	tag uint16
	val uint64
}

func statsBuf(stats ...stat) []byte {
	b := make([]byte, statSize*len(stats))
	for i, s := range stats {
		binary.LittleEndian.PutUint16(b[statSize*i:], s.tag)
		binary.LittleEndian.PutUint64(b[statSize*i+2:], s.val)
	}
	return b
}

// resident reports whether the page at b is in the host's memory (mincore).
func resident(t *testing.T, b []byte) bool {
	t.Helper()
	var vec [1]byte
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	return vec[0]&1 != 0
}

func TestInflateReleasesPages(t *testing.T) {
	r := start(t, Config{}, 0, ^uint64(0))
	dirty := bytes.Repeat([]byte{0x5a}, pageSize)
	for pfn := uint64(255); pfn <= 265; pfn++ {
		copy(r.page(t, pfn), dirty)
	}
	copy(r.page(t, 300), dirty)

	// Pages 256-263 out of order, 300, a duplicate, and PFNs outside RAM:
	// just past its end, in the MMIO hole, the largest. The list is split
	// mid-PFN across two buffers, with a writable buffer between them.
	list := pfnList(263, 256, 0xffffffff, 258, 257, 261, memMiB<<8, 260, 259, 300, 0xc0000, 262, 257)
	r.send(t, inflateQ, virtiotest.Buf{Data: list[:7]}, virtiotest.Buf{WriteLen: 16}, virtiotest.Buf{Data: list[7:]})

	for _, pfn := range []uint64{256, 257, 258, 259, 260, 261, 262, 263, 300} {
		p := r.page(t, pfn)
		if resident(t, p) {
			t.Errorf("page %d still resident after inflation", pfn)
		}
		if !bytes.Equal(p, make([]byte, pageSize)) {
			t.Errorf("page %d does not read back as zero", pfn)
		}
	}
	for _, pfn := range []uint64{255, 264, 265} {
		if !bytes.Equal(r.page(t, pfn), dirty) {
			t.Errorf("page %d (not inflated) changed", pfn)
		}
	}
	mt := &r.d.Metrics
	if mt.InflateCount.Load() != 1 || mt.InflatedPages.Load() != 10 || mt.BadPFNs.Load() != 3 || mt.MadviseFails.Load() != 0 {
		t.Fatalf("metrics: inflate %d, pages %d, bad %d, madvise fails %d; want 1, 10, 3, 0",
			mt.InflateCount.Load(), mt.InflatedPages.Load(), mt.BadPFNs.Load(), mt.MadviseFails.Load())
	}

	// Deflate only counts; the pages come back when touched.
	r.send(t, deflateQ, virtiotest.Buf{Data: pfnList(256, 257, 5000)})
	if mt.DeflateCount.Load() != 1 || mt.DeflatedPages.Load() != 2 || mt.BadPFNs.Load() != 4 {
		t.Fatalf("deflate metrics: %d requests, %d pages, %d bad", mt.DeflateCount.Load(), mt.DeflatedPages.Load(), mt.BadPFNs.Load())
	}
	p := r.page(t, 256)
	copy(p, dirty)
	if !bytes.Equal(p, dirty) {
		t.Fatal("deflated page not usable")
	}
}

// TestInflateAcrossRegions: a run of PFNs that spans two regions adjacent
// in guest space but separately mapped is released region by region.
func TestInflateAcrossRegions(t *testing.T) {
	var regions []memory.Region
	for i := range 2 {
		b, err := unix.Mmap(-1, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		regions = append(regions, memory.Region{GuestAddr: uint64(i) * 64 << 10, Host: b})
	}
	mem := memory.FromRegions(regions)
	defer mem.Close()
	d, err := New(Config{}, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := [][]byte{regions[0].Host, regions[1].Host}
	for _, b := range all {
		for i := range b {
			b[i] = 0x77
		}
	}
	d.inflate(&virtio.Chain{Descs: []virtio.Desc{{Buf: pfnList(17, 14, 16, 15, 32)}}})
	for pfn := range uint64(32) {
		p, _ := mem.Slice(pfn<<PFNShift, pageSize)
		zero := bytes.Count(p, []byte{0}) == pageSize
		if want := pfn >= 14 && pfn <= 17; zero != want {
			t.Errorf("page %d: zeroed %v, want %v", pfn, zero, want)
		}
	}
	if d.Metrics.InflatedPages.Load() != 4 || d.Metrics.BadPFNs.Load() != 1 || d.Metrics.MadviseFails.Load() != 0 {
		t.Fatalf("metrics: pages %d, bad %d, madvise fails %d", d.Metrics.InflatedPages.Load(), d.Metrics.BadPFNs.Load(), d.Metrics.MadviseFails.Load())
	}
}

func TestTargetAndConfigChange(t *testing.T) {
	r := start(t, Config{AmountMiB: 4}, 0, ^uint64(0))
	numPages := func() uint32 { return binary.LittleEndian.Uint32(r.m.Config(cfgNumPages, 4)) }
	if n := numPages(); n != 4*pagesPerMiB {
		t.Fatalf("num_pages %d, want %d", n, 4*pagesPerMiB)
	}
	calls := 0
	r.d.SetConfigNotifier(func() error { calls++; return r.tr.ConfigChanged() })
	gen := r.m.Reg(regConfigGen)
	if err := r.d.SetTarget(8); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || r.m.Reg(regInterruptStatus)&2 == 0 || r.m.Reg(regConfigGen) == gen {
		t.Fatalf("SetTarget: notifier called %d times, interrupt status %#x, config generation %d -> %d",
			calls, r.m.Reg(regInterruptStatus), gen, r.m.Reg(regConfigGen))
	}
	if n := numPages(); n != 8*pagesPerMiB {
		t.Fatalf("num_pages %d after SetTarget(8), want %d", n, 8*pagesPerMiB)
	}
	if err := r.d.SetTarget(memMiB + 1); err == nil {
		t.Fatal("SetTarget accepted a balloon larger than guest memory")
	}
	if n := numPages(); n != 8*pagesPerMiB {
		t.Fatalf("num_pages %d after a refused SetTarget", n)
	}

	// The driver reports actual; num_pages is not its to write.
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 300)
	r.tr.Write(regConfig+cfgActual, b[:])
	binary.LittleEndian.PutUint32(b[:], 1)
	r.tr.Write(regConfig+cfgNumPages, b[:])
	if r.d.Actual() != 300 || numPages() != 8*pagesPerMiB {
		t.Fatalf("actual %d, num_pages %d", r.d.Actual(), numPages())
	}
	if got := binary.LittleEndian.Uint32(r.m.Config(cfgActual, 4)); got != 300 {
		t.Fatalf("config actual reads %d", got)
	}
	s := r.d.Stats()
	if s.TargetPages != 2048 || s.TargetMiB != 8 || s.ActualPages != 300 || s.ActualMiB != 1 {
		t.Fatalf("stats sizes %+v", s)
	}
	if c := r.d.Config(); c.AmountMiB != 8 || c.DeflateOnOOM || c.StatsPollingIntervalS != 0 {
		t.Fatalf("config %+v", c)
	}
}

// TestSetTargetBeforeActivation: no interrupt before the driver runs; it
// reads the target when it starts.
func TestSetTargetBeforeActivation(t *testing.T) {
	d, err := New(Config{}, virtiotest.NewMemory(memMiB<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	d.SetConfigNotifier(func() error { calls++; return nil })
	if err := d.SetTarget(2); err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	d.ReadConfig(cfgNumPages, b[:])
	if calls != 0 || binary.LittleEndian.Uint32(b[:]) != 2*pagesPerMiB {
		t.Fatalf("notifier called %d times, num_pages %d", calls, binary.LittleEndian.Uint32(b[:]))
	}
}

func TestStatsRoundTrip(t *testing.T) {
	r := start(t, Config{StatsPollingIntervalS: 1}, 20*time.Millisecond, ^uint64(0))
	if r.m.Features&featStatsVQ == 0 || len(r.m.Queues) != 3 {
		t.Fatalf("features %#x, %d queues: want STATS_VQ and 3 queues", r.m.Features, len(r.m.Queues))
	}
	if s := r.d.Stats(); s.FreeMemory != nil || s.SwapIn != nil {
		t.Fatal("statistics reported before the guest sent any")
	}
	// The device holds the buffer until the timer asks for fresh stats.
	r.send(t, statsQ, virtiotest.Buf{Data: statsBuf(stat{tagFreeMemory, 1000}, stat{tagTotalMemory, 2000}, stat{99, 7}, stat{tagDirectReclaim, 5})})
	s := r.d.Stats()
	if s.FreeMemory == nil || *s.FreeMemory != 1000 || s.TotalMemory == nil || *s.TotalMemory != 2000 ||
		s.DirectReclaim == nil || *s.DirectReclaim != 5 || s.SwapIn != nil || s.MajorFaults != nil {
		t.Fatalf("stats after the first report: %s", js(s))
	}
	j := js(s)
	if !strings.Contains(j, `"free_memory":1000`) || !strings.Contains(j, `"direct_reclaim":5`) || strings.Contains(j, "swap_in") || !strings.Contains(j, `"target_pages":0`) {
		t.Fatalf("stats JSON %s", j)
	}
	// The guest refreshes; unreported tags keep their last values.
	r.send(t, statsQ, virtiotest.Buf{Data: statsBuf(stat{tagFreeMemory, 1500}, stat{tagSwapIn, 3})})
	s = r.d.Stats()
	if *s.FreeMemory != 1500 || *s.TotalMemory != 2000 || s.SwapIn == nil || *s.SwapIn != 3 {
		t.Fatalf("stats after the second report: %s", js(s))
	}
	if mt := &r.d.Metrics; mt.StatsUpdates.Load() != 2 || mt.StatsRequests.Load() != 2 {
		t.Fatalf("metrics: %d updates, %d requests", mt.StatsUpdates.Load(), mt.StatsRequests.Load())
	}
}

func js(s Stats) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestStatsIntervalUpdate: a new interval asks for statistics at once.
func TestStatsIntervalUpdate(t *testing.T) {
	r := start(t, Config{StatsPollingIntervalS: 1}, time.Hour, ^uint64(0))
	r.m.Queues[statsQ].Add(virtiotest.Buf{Data: statsBuf(stat{tagAvailable, 42})})
	r.m.Notify(statsQ)
	deadline := time.Now().Add(wait)
	for r.d.Metrics.StatsUpdates.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("stats buffer not read")
		}
		time.Sleep(time.Millisecond)
	}
	if s := r.d.Stats(); s.AvailableMemory == nil || *s.AvailableMemory != 42 {
		t.Fatalf("stats %s", js(s))
	}
	time.Sleep(30 * time.Millisecond)
	if _, _, ok := r.m.Queues[statsQ].Used(); ok {
		t.Fatal("stats buffer returned before the polling interval")
	}
	if err := r.d.UpdateStatsInterval(0); err == nil {
		t.Fatal("statistics turned off after boot")
	}
	if err := r.d.UpdateStatsInterval(MaxStatsInterval + 1); err == nil {
		t.Fatal("interval above the maximum accepted")
	}
	if err := r.d.UpdateStatsInterval(3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.m.WaitUsed(statsQ, wait); err != nil {
		t.Fatalf("new interval did not ask for statistics: %v", err)
	}
	if c := r.d.Config(); c.StatsPollingIntervalS != 3 {
		t.Fatalf("interval %d after update, want 3", c.StatsPollingIntervalS)
	}

	d, err := New(Config{}, virtiotest.NewMemory(1<<20), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.UpdateStatsInterval(5); !errors.Is(err, ErrStatsDisabled) || d.StatsEnabled() {
		t.Fatalf("stats-less balloon: UpdateStatsInterval = %v, enabled %v", err, d.StatsEnabled())
	}
}

// TestStatsNotNegotiated: a driver that declines STATS_VQ gets no stats
// service even if it sets up the queue.
func TestStatsNotNegotiated(t *testing.T) {
	r := start(t, Config{StatsPollingIntervalS: 1}, 10*time.Millisecond, ^uint64(featStatsVQ))
	r.m.Queues[statsQ].Add(virtiotest.Buf{Data: statsBuf(stat{tagFreeMemory, 1})})
	r.m.Notify(statsQ)
	time.Sleep(50 * time.Millisecond)
	if r.d.Metrics.StatsUpdates.Load() != 0 || r.d.Stats().FreeMemory != nil {
		t.Fatal("stats read without STATS_VQ")
	}
	r.send(t, inflateQ, virtiotest.Buf{Data: pfnList(1000)}) // the rest works
}

func TestFeatures(t *testing.T) {
	mem := virtiotest.NewMemory(1 << 20)
	for _, tc := range []struct {
		cfg    Config
		feat   uint64
		queues int
	}{
		{Config{}, 0, 2},
		{Config{DeflateOnOOM: true}, featDeflateOnOOM, 2},
		{Config{StatsPollingIntervalS: 5}, featStatsVQ, 3},
		{Config{DeflateOnOOM: true, StatsPollingIntervalS: 1}, featStatsVQ | featDeflateOnOOM, 3},
	} {
		d, err := New(tc.cfg, mem, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d.Type() != virtio.IDBalloon || d.Features() != tc.feat || len(d.QueueSizes()) != tc.queues {
			t.Errorf("%+v: type %d, features %#x, %d queues; want 5, %#x, %d", tc.cfg, d.Type(), d.Features(), len(d.QueueSizes()), tc.feat, tc.queues)
		}
	}
	r := start(t, Config{DeflateOnOOM: true}, 0, ^uint64(0))
	if r.m.Features&featDeflateOnOOM == 0 || r.m.Features&featStatsVQ != 0 {
		t.Fatalf("negotiated %#x: want DEFLATE_ON_OOM, not STATS_VQ", r.m.Features)
	}
	if c := r.d.Config(); !c.DeflateOnOOM {
		t.Fatal("Config() lost deflate_on_oom")
	}
}

func TestNewRejects(t *testing.T) {
	mem := virtiotest.NewMemory(memMiB << 20)
	for name, tc := range map[string]struct {
		cfg Config
		mem Memory
	}{
		"no memory":         {Config{}, nil},
		"larger than RAM":   {Config{AmountMiB: memMiB + 1}, mem},
		"huge":              {Config{AmountMiB: 1 << 31}, mem},
		"negative interval": {Config{StatsPollingIntervalS: -1}, mem},
		"interval too long": {Config{StatsPollingIntervalS: MaxStatsInterval + 1}, mem},
	} {
		if _, err := New(tc.cfg, tc.mem, nil); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if _, err := New(Config{AmountMiB: memMiB}, mem, nil); err != nil {
		t.Errorf("a balloon the size of RAM: %v", err)
	}
}

// FuzzInflate feeds arbitrary PFN lists to the inflate path over real
// anonymous memory: exactly the listed pages inside RAM are released
// (read back as zero), nothing else changes, every PFN is accounted for.
func FuzzInflate(f *testing.F) {
	f.Add(pfnList(1, 2, 3, 10), uint16(5))
	f.Add(pfnList(63, 64, 0xffffffff, 0, 0, 62), uint16(0))
	f.Add(pfnList(40, 39, 38, 37, 1<<20), uint16(9))
	f.Add([]byte{1, 0, 0}, uint16(1))
	const pages = 64
	mem, err := memory.New(pages * pageSize)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	d, err := New(Config{}, mem, nil)
	if err != nil {
		f.Fatal(err)
	}
	all, _ := mem.Slice(0, pages*pageSize)
	pattern := bytes.Repeat([]byte{0xaa}, pageSize)
	zero := make([]byte, pageSize)
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		for i := 0; i < pages; i++ {
			copy(all[i*pageSize:], pattern)
		}
		k := int(split) % (len(data) + 1)
		c := &virtio.Chain{Descs: []virtio.Desc{{Buf: data[:k]}, {Buf: make([]byte, 8), Write: true}, {Buf: data[k:]}}}
		inflated, bad := d.Metrics.InflatedPages.Load(), d.Metrics.BadPFNs.Load()
		d.inflate(c)

		var want [pages]bool
		for i := 0; i+4 <= len(data) && i/4 < maxChainPFNs; i += 4 {
			if p := binary.LittleEndian.Uint32(data[i:]); p < pages {
				want[p] = true
			}
		}
		for p := range pages {
			got := all[p*pageSize : (p+1)*pageSize]
			if want[p] && !bytes.Equal(got, zero) {
				t.Fatalf("page %d listed but not released", p)
			}
			if !want[p] && !bytes.Equal(got, pattern) {
				t.Fatalf("page %d not listed but changed", p)
			}
		}
		if n := d.Metrics.InflatedPages.Load() - inflated + d.Metrics.BadPFNs.Load() - bad; n != uint64(len(data)/4) {
			t.Fatalf("%d PFNs accounted for, want %d", n, len(data)/4)
		}
		if d.Metrics.MadviseFails.Load() != 0 {
			t.Fatal("madvise failed")
		}
	})
}

// FuzzStats feeds arbitrary statistics buffers, cut into up to four
// descriptors with a device-writable one among them, to the stats parser:
// it must not panic, and afterwards each known tag holds the value of its
// last record within the first maxStats whole records of the readable
// bytes taken as one stream (earlier values where the buffer has none),
// unknown tags and a trailing partial record ignored.
func FuzzStats(f *testing.F) {
	f.Add(statsBuf(stat{tagFreeMemory, 1234}, stat{tagTotalMemory, 5678}), uint8(3), uint8(10), uint8(0), uint8(1))
	f.Add(statsBuf(stat{tagSwapIn, 1}, stat{99, 2}, stat{tagSwapIn, 3}), uint8(0), uint8(0), uint8(0), uint8(0))
	f.Add(append(statsBuf(stat{tagDirectReclaim, ^uint64(0)}), 1, 2, 3), uint8(5), uint8(7), uint8(9), uint8(2))
	f.Add(bytes.Repeat(statsBuf(stat{tagOOMKill, 7}), maxStats+3), uint8(100), uint8(200), uint8(250), uint8(3))
	const memSize = 1 << 20
	mem, err := memory.New(memSize)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	f.Fuzz(func(t *testing.T, data []byte, c1, c2, c3, writable uint8) {
		d, err := New(Config{StatsPollingIntervalS: 1}, mem, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Statistics from before this buffer.
		for tag := range numTags {
			if tag%3 == 0 {
				d.stats[tag], d.statsSeen = uint64(1000+tag), d.statsSeen|1<<tag
			}
		}
		wantVals, wantSeen := d.stats, d.statsSeen

		var cuts []int
		for _, c := range []uint8{c1, c2, c3} {
			k := int(c) * len(data) / 256
			if len(cuts) == 0 || k >= cuts[len(cuts)-1] {
				cuts = append(cuts, k)
			}
		}
		c := &virtio.Chain{}
		prev := 0
		for i, k := range append(cuts, len(data)) {
			c.Descs = append(c.Descs, virtio.Desc{Buf: data[prev:k]})
			if i == int(writable%4) {
				c.Descs = append(c.Descs, virtio.Desc{Buf: bytes.Repeat([]byte{0xff}, statSize+1), Write: true})
			}
			prev = k
		}
		d.readStats(c)

		for i := 0; i+statSize <= len(data) && i/statSize < maxStats; i += statSize {
			if tag := binary.LittleEndian.Uint16(data[i:]); tag < numTags {
				wantVals[tag] = binary.LittleEndian.Uint64(data[i+2:])
				wantSeen |= 1 << tag
			}
		}
		if d.statsSeen != wantSeen {
			t.Fatalf("tags seen %#x, want %#x", d.statsSeen, wantSeen)
		}
		for tag := range numTags {
			if wantSeen&(1<<tag) != 0 && d.stats[tag] != wantVals[tag] {
				t.Fatalf("tag %d = %d, want %d", tag, d.stats[tag], wantVals[tag])
			}
		}
		s := d.Stats()
		for tag, p := range s.byTag() {
			if (*p != nil) != (wantSeen&(1<<tag) != 0) || *p != nil && **p != wantVals[tag] {
				t.Fatalf("Stats() tag %d wrong", tag)
			}
		}
		if d.Metrics.StatsUpdates.Load() != 1 {
			t.Fatal("the update was not counted")
		}
	})
}

// Package balloon is Ember's virtio-balloon device (virtio 5.5), with
// Firecracker's semantics: the host sets a target (amount_mib), the guest
// inflates the balloon towards it by handing over 4 KiB pages, and Ember
// releases those pages from its own mapping of guest RAM with
// madvise(MADV_DONTNEED), so its resident memory drops. Deflated pages need
// no work: they fault back in, zero-filled, when the guest touches them.
// Optionally (stats_polling_interval_s > 0) the guest reports memory
// statistics, which the device asks for again every polling interval.
//
// The guest is not trusted. Every page frame number it sends is checked
// against guest RAM before anything is done with it; PFNs outside RAM are
// counted and ignored, so the guest cannot make Ember release host memory
// that is not its own RAM. The work per request is bounded (maxChainPFNs,
// maxStats) and the queue path does not allocate.
//
// Threads: the queues and the stats timer are served on the device's
// worker goroutine; configuration-space accesses come from vCPU threads
// (through the transport) and the target, statistics and polling interval
// are read and changed from the API thread. They share the fields under mu.
package balloon

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/virtio"
)

// virtio-balloon constants (virtio 5.5).
const (
	featStatsVQ      = 1 << 1 // VIRTIO_BALLOON_F_STATS_VQ
	featDeflateOnOOM = 1 << 2 // VIRTIO_BALLOON_F_DEFLATE_ON_OOM

	// Queue indices. The stats queue exists only with STATS_VQ (virtio
	// 5.5.2); the later optional queues (free page hinting, reporting)
	// are not offered.
	inflateQ = 0
	deflateQ = 1
	statsQ   = 2

	queueSize = virtio.MaxQueueSize

	// PFNShift is VIRTIO_BALLOON_PFN_SHIFT: PFNs and num_pages/actual
	// count 4 KiB pages whatever the guest's or host's page size.
	PFNShift    = 12
	pageSize    = 1 << PFNShift
	pagesPerMiB = 1 << (20 - PFNShift)

	// Configuration space (struct virtio_balloon_config). Ember offers
	// num_pages and actual; free_page_hint_cmd_id and poison_val belong
	// to features it does not offer and read as zero.
	cfgNumPages = 0 // le32, the target, written by the device
	cfgActual   = 4 // le32, written by the driver
	cfgSize     = 8

	statSize = 10 // struct virtio_balloon_stat: le16 tag, le64 val, packed
	// maxStats bounds the entries read from one stats buffer (Linux sends
	// at most 16).
	maxStats = 256

	// pfnBatch PFNs are read, sorted and released at a time.
	pfnBatch = 256
	// maxChainPFNs bounds the PFNs served from one chain (64 MiB worth;
	// Linux sends at most 256 per request); the rest are ignored, so one
	// request cannot keep the worker busy for long.
	maxChainPFNs = 1 << 14

	// timerToken is the worker token of the stats polling timer.
	timerToken = 1 << 16

	// MaxStatsInterval is the largest stats_polling_interval_s
	// (Firecracker's field is a u16).
	MaxStatsInterval = math.MaxUint16
)

// Statistic tags (virtio 5.5.6.3; 10 and up are Linux extensions).
const (
	tagSwapIn        = 0  // VIRTIO_BALLOON_S_SWAP_IN
	tagSwapOut       = 1  // VIRTIO_BALLOON_S_SWAP_OUT
	tagMajorFaults   = 2  // VIRTIO_BALLOON_S_MAJFLT
	tagMinorFaults   = 3  // VIRTIO_BALLOON_S_MINFLT
	tagFreeMemory    = 4  // VIRTIO_BALLOON_S_MEMFREE
	tagTotalMemory   = 5  // VIRTIO_BALLOON_S_MEMTOT
	tagAvailable     = 6  // VIRTIO_BALLOON_S_AVAIL
	tagDiskCaches    = 7  // VIRTIO_BALLOON_S_CACHES
	tagHugetlbAllocs = 8  // VIRTIO_BALLOON_S_HTLB_PGALLOC
	tagHugetlbFails  = 9  // VIRTIO_BALLOON_S_HTLB_PGFAIL
	tagOOMKill       = 10 // VIRTIO_BALLOON_S_OOM_KILL
	tagAllocStall    = 11 // VIRTIO_BALLOON_S_ALLOC_STALL
	tagAsyncScan     = 12 // VIRTIO_BALLOON_S_ASYNC_SCAN
	tagDirectScan    = 13 // VIRTIO_BALLOON_S_DIRECT_SCAN
	tagAsyncReclaim  = 14 // VIRTIO_BALLOON_S_ASYNC_RECLAIM
	tagDirectReclaim = 15 // VIRTIO_BALLOON_S_DIRECT_RECLAIM
	numTags          = 16
)

// ErrStatsDisabled is returned when statistics are changed on a balloon
// configured without them: they can be turned on only at boot.
var ErrStatsDisabled = errors.New("balloon statistics were not enabled when the device was configured")

// Config is Firecracker's balloon configuration (PUT /balloon).
type Config struct {
	// AmountMiB is the target balloon size.
	AmountMiB uint32 `json:"amount_mib"`
	// DeflateOnOOM lets the guest take pages back from the balloon when
	// it runs out of memory (VIRTIO_BALLOON_F_DEFLATE_ON_OOM).
	DeflateOnOOM bool `json:"deflate_on_oom"`
	// StatsPollingIntervalS > 0 enables statistics, refreshed this often.
	StatsPollingIntervalS int `json:"stats_polling_interval_s,omitempty"`
}

// Memory is the guest RAM the device releases pages of. *memory.Guest
// implements it. Slice must refuse (never panic on) any range that is not
// wholly inside one RAM region.
type Memory interface {
	Slice(addr, length uint64) ([]byte, error)
	Size() uint64
}

// Stats is Firecracker's GET /balloon/statistics answer: the target and
// actual balloon sizes and the latest value of each statistic the guest
// has reported (nil, and omitted from JSON, if it never reported it).
type Stats struct {
	TargetPages uint32 `json:"target_pages"`
	ActualPages uint32 `json:"actual_pages"`
	TargetMiB   uint32 `json:"target_mib"`
	ActualMiB   uint32 `json:"actual_mib"`

	SwapIn             *uint64 `json:"swap_in,omitempty"`
	SwapOut            *uint64 `json:"swap_out,omitempty"`
	MajorFaults        *uint64 `json:"major_faults,omitempty"`
	MinorFaults        *uint64 `json:"minor_faults,omitempty"`
	FreeMemory         *uint64 `json:"free_memory,omitempty"`
	TotalMemory        *uint64 `json:"total_memory,omitempty"`
	AvailableMemory    *uint64 `json:"available_memory,omitempty"`
	DiskCaches         *uint64 `json:"disk_caches,omitempty"`
	HugetlbAllocations *uint64 `json:"hugetlb_allocations,omitempty"`
	HugetlbFailures    *uint64 `json:"hugetlb_failures,omitempty"`
	OOMKill            *uint64 `json:"oom_kill,omitempty"`
	AllocStall         *uint64 `json:"alloc_stall,omitempty"`
	AsyncScan          *uint64 `json:"async_scan,omitempty"`
	DirectScan         *uint64 `json:"direct_scan,omitempty"`
	AsyncReclaim       *uint64 `json:"async_reclaim,omitempty"`
	DirectReclaim      *uint64 `json:"direct_reclaim,omitempty"`
}

// byTag lists the statistic fields in tag order.
func (s *Stats) byTag() [numTags]**uint64 {
	return [numTags]**uint64{
		tagSwapIn: &s.SwapIn, tagSwapOut: &s.SwapOut,
		tagMajorFaults: &s.MajorFaults, tagMinorFaults: &s.MinorFaults,
		tagFreeMemory: &s.FreeMemory, tagTotalMemory: &s.TotalMemory,
		tagAvailable: &s.AvailableMemory, tagDiskCaches: &s.DiskCaches,
		tagHugetlbAllocs: &s.HugetlbAllocations, tagHugetlbFails: &s.HugetlbFailures,
		tagOOMKill: &s.OOMKill, tagAllocStall: &s.AllocStall,
		tagAsyncScan: &s.AsyncScan, tagDirectScan: &s.DirectScan,
		tagAsyncReclaim: &s.AsyncReclaim, tagDirectReclaim: &s.DirectReclaim,
	}
}

// Metrics counts the device's work (Firecracker-style balloon metrics).
type Metrics struct {
	// Requests (chains) served on the inflate and deflate queues, and the
	// valid pages they carried.
	InflateCount, DeflateCount   atomic.Uint64
	InflatedPages, DeflatedPages atomic.Uint64
	// BadPFNs counts PFNs ignored: outside guest RAM, or past a chain's
	// maxChainPFNs.
	BadPFNs atomic.Uint64
	// StatsUpdates counts stats buffers read; StatsRequests the times the
	// buffer was handed back to ask for fresh statistics;
	// StatsUpdateFails malformed stats chains.
	StatsUpdates, StatsRequests, StatsUpdateFails atomic.Uint64
	// MadviseFails counts page ranges the host refused to release.
	MadviseFails atomic.Uint64

	// InvalidReqs counts malformed inflate/deflate chains.
	InvalidReqs atomic.Uint64

	ActivateFails, EventFails, QueueBroken atomic.Uint64
}

// Device is a virtio-balloon device.
type Device struct {
	mem      Memory
	log      *slog.Logger
	glog     *virtio.GuestLog // for the lines a guest can cause
	features uint64
	hostPage int

	Metrics Metrics

	// mu guards the fields below it. Lock order: the transport's lock,
	// then mu; the config-change notifier (the transport) is called
	// without mu.
	mu        sync.Mutex
	numPages  uint32 // target, 4 KiB pages
	actual    uint32 // driver-reported balloon size, 4 KiB pages
	intervalS int    // stats_polling_interval_s; 0 if stats are disabled
	// statsPeriod is the timer period: intervalS seconds, but tests may
	// set it shorter before activation.
	statsPeriod time.Duration
	stats       [numTags]uint64
	statsSeen   uint32 // bit i: tag i has been reported
	notify      func() error
	act         *virtio.Activation
	timerfd     int // stats polling timer while active, else -1

	// Set by Activate, used on the worker goroutine only.
	worker      *virtio.Worker
	chain       *virtio.Chain
	statsActive bool // STATS_VQ negotiated and the queue set up
	held        bool // the driver's stats buffer is held, at heldHead
	heldHead    uint16
	broken      [3]bool
	pfns        [pfnBatch]uint32
	carry       [statSize]byte
	warnedMadv  bool
}

// New makes the device for guest memory mem.
func New(cfg Config, mem Memory, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	if mem == nil {
		return nil, errors.New("balloon: no guest memory")
	}
	if cfg.StatsPollingIntervalS < 0 || cfg.StatsPollingIntervalS > MaxStatsInterval {
		return nil, fmt.Errorf("balloon: stats_polling_interval_s %d: want 0 (off) to %d", cfg.StatsPollingIntervalS, MaxStatsInterval)
	}
	pages, err := targetPages(cfg.AmountMiB, mem.Size())
	if err != nil {
		return nil, err
	}
	d := &Device{
		mem: mem, log: log, glog: virtio.NewGuestLog(log), hostPage: os.Getpagesize(), chain: virtio.NewChain(),
		numPages: pages, intervalS: cfg.StatsPollingIntervalS,
		statsPeriod: time.Duration(cfg.StatsPollingIntervalS) * time.Second, timerfd: -1,
	}
	if cfg.StatsPollingIntervalS > 0 {
		d.features |= featStatsVQ
	}
	if cfg.DeflateOnOOM {
		d.features |= featDeflateOnOOM
	}
	return d, nil
}

// targetPages converts a target in MiB to 4 KiB pages; the balloon cannot
// be larger than guest RAM.
func targetPages(mib uint32, memSize uint64) (uint32, error) {
	if uint64(mib)<<20 > memSize {
		return 0, fmt.Errorf("balloon: amount_mib %d is more than the guest's %d MiB of memory", mib, memSize>>20)
	}
	if uint64(mib)*pagesPerMiB > math.MaxUint32 {
		return 0, fmt.Errorf("balloon: amount_mib %d is too large", mib)
	}
	return mib * pagesPerMiB, nil
}

// SuppressedLogs counts the guest-caused log lines the device's rate limit
// left out (virtio.SuppressedLogger).
func (d *Device) SuppressedLogs() uint64 { return d.glog.Suppressed() }

func (d *Device) Type() uint32     { return virtio.IDBalloon }
func (d *Device) Features() uint64 { return d.features }

// QueueSizes: inflate, deflate and, with statistics, stats.
func (d *Device) QueueSizes() []uint16 {
	if d.features&featStatsVQ != 0 {
		return []uint16{queueSize, queueSize, queueSize}
	}
	return []uint16{queueSize, queueSize}
}

// ReadConfig serves struct virtio_balloon_config: num_pages and actual.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [cfgSize]byte
	d.mu.Lock()
	binary.LittleEndian.PutUint32(cfg[cfgNumPages:], d.numPages)
	binary.LittleEndian.PutUint32(cfg[cfgActual:], d.actual)
	d.mu.Unlock()
	clear(data)
	if offset < cfgSize {
		copy(data, cfg[offset:])
	}
}

// WriteConfig takes the driver's writes to actual; the rest of the
// configuration space is read-only to it.
func (d *Device) WriteConfig(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], d.actual)
	for i, v := range data {
		if o := offset + uint64(i); o >= cfgActual && o < cfgActual+4 {
			b[o-cfgActual] = v
		}
	}
	d.actual = binary.LittleEndian.Uint32(b[:])
}

// SetConfigNotifier sets the function that tells the driver the
// configuration space changed: the transport's ConfigChanged.
func (d *Device) SetConfigNotifier(f func() error) {
	d.mu.Lock()
	d.notify = f
	d.mu.Unlock()
}

// SetTarget sets the balloon's target size (PATCH /balloon) and, if the
// driver is running, raises a configuration-change interrupt so it acts on
// it. Before that the driver reads the target when it starts.
func (d *Device) SetTarget(mib uint32) error {
	pages, err := targetPages(mib, d.mem.Size())
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.numPages = pages
	notify, active := d.notify, d.act != nil
	d.mu.Unlock()
	if active && notify != nil {
		if err := notify(); err != nil {
			d.Metrics.EventFails.Add(1)
			return fmt.Errorf("balloon: config change interrupt: %w", err)
		}
	}
	return nil
}

// Config is the current configuration (GET /balloon): amount_mib is the
// current target.
func (d *Device) Config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return Config{AmountMiB: d.numPages / pagesPerMiB, DeflateOnOOM: d.features&featDeflateOnOOM != 0, StatsPollingIntervalS: d.intervalS}
}

// Actual is the balloon size the driver last reported, in 4 KiB pages.
func (d *Device) Actual() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.actual
}

// StatsEnabled reports whether statistics were configured; Firecracker
// answers GET /balloon/statistics with an error when they were not.
func (d *Device) StatsEnabled() bool { return d.features&featStatsVQ != 0 }

// Stats returns the sizes and the latest statistics.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{
		TargetPages: d.numPages, ActualPages: d.actual,
		TargetMiB: d.numPages / pagesPerMiB, ActualMiB: d.actual / pagesPerMiB,
	}
	for tag, p := range s.byTag() {
		if d.statsSeen&(1<<tag) != 0 {
			v := d.stats[tag]
			*p = &v
		}
	}
	return s
}

// UpdateStatsInterval changes the polling interval (PATCH
// /balloon/statistics). Statistics cannot be turned on or off after
// configuration. A new interval asks the guest for statistics at once.
func (d *Device) UpdateStatsInterval(s int) error {
	if d.features&featStatsVQ == 0 {
		return ErrStatsDisabled
	}
	if s <= 0 || s > MaxStatsInterval {
		return fmt.Errorf("balloon: stats_polling_interval_s %d: statistics cannot be turned off after configuration; want 1 to %d", s, MaxStatsInterval)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s == d.intervalS {
		return nil
	}
	d.intervalS, d.statsPeriod = s, time.Duration(s)*time.Second
	if d.timerfd >= 0 {
		return d.armLocked(1, d.statsPeriod)
	}
	return nil
}

// armLocked starts the stats timer: first tick after first, then every
// period.
func (d *Device) armLocked(first, period time.Duration) error {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(first)), Interval: unix.NsecToTimespec(int64(period))}
	if err := unix.TimerfdSettime(d.timerfd, 0, &spec, nil); err != nil {
		return fmt.Errorf("balloon: timerfd_settime: %w", err)
	}
	return nil
}

// Activate starts the worker and, with statistics, the polling timer.
func (d *Device) Activate(a *virtio.Activation) error {
	if len(a.Queues) < 2 || !a.Queues[inflateQ].Active() || !a.Queues[deflateQ].Active() {
		d.Metrics.ActivateFails.Add(1)
		return errors.New("virtio-balloon: inflate and deflate queues not set up")
	}
	stats := d.features&featStatsVQ != 0 && a.Features&featStatsVQ != 0 &&
		len(a.Queues) > statsQ && a.Queues[statsQ].Active()
	w, err := virtio.NewWorker(a, d.log, d.handle)
	if err != nil {
		d.Metrics.ActivateFails.Add(1)
		return err
	}
	tfd := -1
	if stats {
		if tfd, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC); err != nil {
			w.Stop()
			d.Metrics.ActivateFails.Add(1)
			return fmt.Errorf("virtio-balloon: timerfd_create: %w", err)
		}
		if err := w.Watch(tfd, timerToken); err != nil {
			unix.Close(tfd)
			w.Stop()
			d.Metrics.ActivateFails.Add(1)
			return err
		}
	}
	d.mu.Lock()
	d.act, d.timerfd = a, tfd
	if tfd >= 0 {
		err = d.armLocked(d.statsPeriod, d.statsPeriod)
	}
	if err == nil {
		d.worker = w // under mu: Pause and Resume read it from the API thread
	}
	d.mu.Unlock()
	if err != nil {
		w.Stop()
		d.Reset()
		d.Metrics.ActivateFails.Add(1)
		return err
	}
	d.statsActive, d.held, d.broken = stats, false, [3]bool{}
	w.Start()
	return nil
}

// Reset stops the worker and the timer. The driver's balloon is gone with
// it (actual returns to 0); the target and the statistics stay.
func (d *Device) Reset() {
	d.mu.Lock()
	w := d.worker
	d.worker = nil
	d.mu.Unlock()
	w.Stop() // without mu: the worker takes it (readStats)
	d.mu.Lock()
	if d.timerfd >= 0 {
		unix.Close(d.timerfd)
		d.timerfd = -1
	}
	d.act, d.actual = nil, 0
	d.mu.Unlock()
	d.statsActive, d.held = false, false
}

// Close stops the device.
func (d *Device) Close() error {
	d.Reset()
	return nil
}

func (d *Device) handle(token uint32) {
	switch token {
	case inflateQ, deflateQ:
		d.process(int(token))
	case statsQ:
		if d.statsActive {
			d.processStats()
		}
	case timerToken:
		d.tick()
	}
}

// process serves every available inflate or deflate request.
func (d *Device) process(qi int) {
	q, c := d.act.Queues[qi], d.chain
	for !d.broken[qi] {
		pushed := false
		for {
			ok, err := q.Pop(c)
			if !ok {
				if err != nil {
					d.queueBroken(qi, err)
				}
				break
			}
			switch {
			case err != nil:
				d.Metrics.InvalidReqs.Add(1)
				d.glog.Debug("virtio-balloon: bad descriptor chain", "queue", qi, "err", err)
			case qi == inflateQ:
				d.inflate(c)
			default:
				d.deflate(c)
			}
			q.PushUsed(c.Head, 0)
			pushed = true
		}
		if pushed && q.NeedInterrupt() {
			d.interrupt()
		}
		if d.broken[qi] || !q.EnableNotify() {
			return
		}
	}
}

func (d *Device) queueBroken(qi int, err error) {
	d.Metrics.QueueBroken.Add(1)
	d.glog.Warn("virtio-balloon: queue broken; waiting for a device reset", "queue", qi, "err", err)
	d.broken[qi] = true
}

func (d *Device) interrupt() {
	if err := d.act.Interrupt.Used(); err != nil {
		d.Metrics.EventFails.Add(1)
	}
}

// inflate releases the pages the chain lists.
func (d *Device) inflate(c *virtio.Chain) {
	d.Metrics.InflateCount.Add(1)
	d.pfnBatches(c, d.release)
}

// deflate counts the pages the chain lists: the guest takes them back
// simply by touching them.
func (d *Device) deflate(c *virtio.Chain) {
	d.Metrics.DeflateCount.Add(1)
	d.pfnBatches(c, func(pfns []uint32) {
		for _, p := range pfns {
			if d.inRAM(uint64(p), 1) {
				d.Metrics.DeflatedPages.Add(1)
			} else {
				d.Metrics.BadPFNs.Add(1)
			}
		}
	})
}

// pfnBatches reads the chain's PFN list (le32 each, its device-readable
// buffers taken as one stream) into d.pfns and calls fn with each batch.
// PFNs past maxChainPFNs are counted as bad and ignored, as are trailing
// bytes short of a whole PFN.
func (d *Device) pfnBatches(c *virtio.Chain, fn func([]uint32)) {
	n := 0
	seen, _ := records(c, 4, maxChainPFNs, &d.carry, func(r []byte) {
		d.pfns[n] = binary.LittleEndian.Uint32(r)
		if n++; n == len(d.pfns) {
			fn(d.pfns[:n])
			n = 0
		}
	})
	if n > 0 {
		fn(d.pfns[:n])
	}
	if extra := readable(c)/4 - uint64(seen); extra > 0 {
		d.Metrics.BadPFNs.Add(extra)
		d.glog.Debug("virtio-balloon: PFNs past the per-request limit ignored", "count", extra)
	}
}

// inRAM reports whether the n pages from pfn lie in one region of guest RAM.
func (d *Device) inRAM(pfn, n uint64) bool {
	_, err := d.mem.Slice(pfn<<PFNShift, n<<PFNShift)
	return err == nil
}

// release sorts a batch of PFNs, drops those outside guest RAM, and
// releases runs of contiguous pages with one madvise each.
func (d *Device) release(pfns []uint32) {
	slices.Sort(pfns)
	var start, n uint64 // the current run, pages [start, start+n)
	for _, p := range pfns {
		pfn := uint64(p)
		if n > 0 && pfn < start+n { // a duplicate, already in the run
			d.Metrics.InflatedPages.Add(1)
			continue
		}
		if !d.inRAM(pfn, 1) {
			d.Metrics.BadPFNs.Add(1)
			continue
		}
		d.Metrics.InflatedPages.Add(1)
		// Extend the run while it stays inside one region (two regions
		// may meet in guest space but not in host space).
		if n > 0 && pfn == start+n && d.inRAM(start, n+1) {
			n++
			continue
		}
		d.discard(start, n)
		start, n = pfn, 1
	}
	d.discard(start, n)
}

// discard releases the n pages from pfn, which lie in one RAM region, from
// the host mapping. Only whole host pages can be released; with 4 KiB host
// pages that is all of them.
func (d *Device) discard(pfn, n uint64) {
	if n == 0 {
		return
	}
	b, err := d.mem.Slice(pfn<<PFNShift, n<<PFNShift)
	if err != nil {
		return // not reached: every page was checked
	}
	ps := uintptr(d.hostPage)
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := 0
	if off := addr % ps; off != 0 {
		lo = int(ps - off)
	}
	hi := len(b) - int((addr+uintptr(len(b)))%ps)
	if hi <= lo {
		return
	}
	if err := unix.Madvise(b[lo:hi], unix.MADV_DONTNEED); err != nil {
		d.Metrics.MadviseFails.Add(1)
		if !d.warnedMadv {
			d.warnedMadv = true
			d.glog.Warn("virtio-balloon: madvise(MADV_DONTNEED) failed; guest pages stay resident", "pfn", pfn, "pages", n, "err", err)
		}
	}
}

// processStats takes the driver's stats buffers: it reads the statistics
// and holds the buffer until the timer asks for fresh ones.
func (d *Device) processStats() {
	q, c := d.act.Queues[statsQ], d.chain
	for !d.broken[statsQ] {
		pushed := false
		for {
			ok, err := q.Pop(c)
			if !ok {
				if err != nil {
					d.queueBroken(statsQ, err)
				}
				break
			}
			if d.held {
				// The driver keeps one buffer in flight; a second one is
				// a protocol error. Return the older.
				d.glog.Debug("virtio-balloon: driver sent a stats buffer while one was held")
				q.PushUsed(d.heldHead, 0)
				pushed, d.held = true, false
			}
			if err != nil {
				d.Metrics.StatsUpdateFails.Add(1)
				d.glog.Debug("virtio-balloon: bad stats chain", "err", err)
				q.PushUsed(c.Head, 0)
				pushed = true
				continue
			}
			d.readStats(c)
			d.held, d.heldHead = true, c.Head
		}
		if pushed && q.NeedInterrupt() {
			d.interrupt()
		}
		if d.broken[statsQ] || !q.EnableNotify() {
			return
		}
	}
}

// readStats records the tagged values of a stats buffer; unknown tags are
// skipped.
func (d *Device) readStats(c *virtio.Chain) {
	var vals [numTags]uint64
	var seen uint32
	records(c, statSize, maxStats, &d.carry, func(r []byte) {
		if tag := binary.LittleEndian.Uint16(r); tag < numTags {
			vals[tag] = binary.LittleEndian.Uint64(r[2:])
			seen |= 1 << tag
		}
	})
	d.mu.Lock()
	for tag := range vals {
		if seen&(1<<tag) != 0 {
			d.stats[tag] = vals[tag]
		}
	}
	d.statsSeen |= seen
	d.mu.Unlock()
	d.Metrics.StatsUpdates.Add(1)
}

// tick is the polling timer: return the held stats buffer, which asks the
// driver for fresh statistics.
func (d *Device) tick() {
	var b [8]byte
	for {
		if _, err := unix.Read(d.timerfd, b[:]); err != unix.EINTR {
			break
		}
	}
	if !d.statsActive || !d.held || d.broken[statsQ] {
		return
	}
	q := d.act.Queues[statsQ]
	d.Metrics.StatsRequests.Add(1)
	q.PushUsed(d.heldHead, 0)
	d.held = false
	if q.NeedInterrupt() {
		d.interrupt()
	}
}

// records calls fn with each size-byte record of the chain's
// device-readable buffers, taken as one byte stream (a record may straddle
// two buffers), up to limit records of at most statSize bytes. It returns the number of records and
// whether bytes were left over.
func records(c *virtio.Chain, size, limit int, carry *[statSize]byte, fn func([]byte)) (n int, rest bool) {
	k := 0 // bytes in carry, a record begun in one buffer
	for _, desc := range c.Descs {
		if desc.Write {
			continue
		}
		b := desc.Buf
		for len(b) > 0 {
			if n == limit {
				return n, true
			}
			if k == 0 && len(b) >= size {
				fn(b[:size])
				b, n = b[size:], n+1
				continue
			}
			m := copy(carry[k:size], b)
			b, k = b[m:], k+m
			if k == size {
				fn(carry[:size])
				k, n = 0, n+1
			}
		}
	}
	return n, k != 0
}

// readable is the total length of the chain's device-readable buffers.
func readable(c *virtio.Chain) uint64 {
	var n uint64
	for _, desc := range c.Descs {
		if !desc.Write {
			n += uint64(len(desc.Buf))
		}
	}
	return n
}

// Pause parks the device's worker: until Resume it touches neither guest
// memory nor its queues (a VM pause or snapshot).
func (d *Device) Pause() {
	d.mu.Lock()
	w := d.worker
	d.mu.Unlock()
	w.Pause()
}

// Resume releases the worker parked by Pause.
func (d *Device) Resume() {
	d.mu.Lock()
	w := d.worker
	d.mu.Unlock()
	w.Resume()
}

// savedState is the balloon's own state in a snapshot: the size the driver
// reported, the latest statistics, and the driver's statistics buffer the
// device holds (returned at the next poll, which asks for fresh ones).
type savedState struct {
	Actual    uint32          `json:"actual"`
	Stats     [numTags]uint64 `json:"stats"`
	StatsSeen uint32          `json:"stats_seen"`
	Held      bool            `json:"held,omitempty"`
	HeldHead  uint16          `json:"held_head,omitempty"`
}

// SaveDeviceState implements virtio.StatefulDevice. The worker must be
// paused.
func (d *Device) SaveDeviceState() ([]byte, error) {
	d.mu.Lock()
	s := savedState{Actual: d.actual, Stats: d.stats, StatsSeen: d.statsSeen}
	d.mu.Unlock()
	s.Held, s.HeldHead = d.held, d.heldHead
	return json.Marshal(s)
}

// RestoreDeviceState implements virtio.StatefulDevice, after Activate.
func (d *Device) RestoreDeviceState(b []byte) error {
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("balloon state: %w", err)
	}
	d.mu.Lock()
	d.actual, d.stats, d.statsSeen = s.Actual, s.Stats, s.StatsSeen
	d.mu.Unlock()
	if s.Held {
		d.worker.Do(func() {
			if d.statsActive && s.HeldHead < d.act.Queues[statsQ].Size {
				d.held, d.heldHead = true, s.HeldHead
			}
		})
	}
	return nil
}

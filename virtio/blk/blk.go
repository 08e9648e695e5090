// Package blk is Ember's virtio-blk device (virtio 5.2) backed by a
// storage.Store, a raw file or (an Ember extension) a copy-on-write overlay
// on a read-only base: reads, writes, flushes and GET_ID, read-only
// drives, Firecracker's cache types, and an optional rate limiter.
//
// Requests are served on the device's worker goroutine straight between the
// store and guest memory (each request's data segments go to the store as
// one vector: preadv/pwritev into the guest's buffers, no copy).
// Every request field comes from the guest and is checked: the header and
// status must be where the spec puts them, the sector range must lie inside
// the disk, data lengths must be whole sectors. A bad request gets
// VIRTIO_BLK_S_IOERR or UNSUPP, never a crash; a host I/O error reaches the
// guest as IOERR.
package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	// Named storage here: the tests' disk helper has the package's name.
	storage "github.com/embervm/ember/disk"
	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/seccomp"
	"github.com/embervm/ember/virtio"
)

// virtio-blk constants (virtio 5.2).
const (
	SectorSize = 512 // the unit of capacity and of a request's sector

	featSegMax = 1 << 2 // VIRTIO_BLK_F_SEG_MAX
	featRO     = 1 << 5 // VIRTIO_BLK_F_RO
	featFlush  = 1 << 9 // VIRTIO_BLK_F_FLUSH

	typeIn    = 0 // VIRTIO_BLK_T_IN
	typeOut   = 1 // VIRTIO_BLK_T_OUT
	typeFlush = 4 // VIRTIO_BLK_T_FLUSH
	typeGetID = 8 // VIRTIO_BLK_T_GET_ID

	statusOK     = 0 // VIRTIO_BLK_S_OK
	statusIOErr  = 1 // VIRTIO_BLK_S_IOERR
	statusUnsupp = 2 // VIRTIO_BLK_S_UNSUPP

	headerSize = 16 // struct virtio_blk_req header: type u32, reserved u32, sector u64
	// IDBytes is VIRTIO_BLK_ID_BYTES, the length of the GET_ID answer.
	IDBytes = 20

	// Configuration space offsets (struct virtio_blk_config).
	cfgCapacity = 0  // le64, in 512-byte sectors
	cfgSegMax   = 12 // le32
	cfgSize     = 24 // through blk_size; later fields read as zero

	queueSize = virtio.MaxQueueSize
	// segMax is the most data segments a request may carry: a chain of
	// queueSize descriptors less the header and the status.
	segMax = queueSize - 2
)

// Cache types, Firecracker's cache_type.
const (
	// CacheUnsafe (the default) does not offer FLUSH: writes reach the host
	// page cache, which survives Ember but not the host.
	CacheUnsafe = "Unsafe"
	// CacheWriteback offers FLUSH and answers it with fsync.
	CacheWriteback = "Writeback"
)

// Config describes one drive.
type Config struct {
	ID        string // drive_id; also the GET_ID serial (first 20 bytes)
	Path      string
	ReadOnly  bool
	CacheType string // CacheUnsafe or CacheWriteback; empty means Unsafe
	RateLimit *ratelimit.Config
	// BasePath, an Ember extension, makes Path a copy-on-write overlay
	// (storage.CreateOverlay) over this read-only base file.
	BasePath string `json:",omitempty"`
}

// open opens the store of a drive configured as c, with its file at path,
// adding flags to every open(2) it makes.
func (c *Config) open(path string, flags int) (storage.Store, error) {
	s, err := storage.Open(storage.Options{Path: path, BasePath: c.BasePath, ReadOnly: c.ReadOnly, OpenFlags: flags})
	if err != nil {
		return nil, fmt.Errorf("drive %s: %w", c.ID, err)
	}
	return s, nil
}

// Metrics counts what the device did (Firecracker-style block metrics).
type Metrics struct {
	ReadBytes, WriteBytes   atomic.Uint64
	ReadCount, WriteCount   atomic.Uint64
	FlushCount              atomic.Uint64
	IOErrors, InvalidReqs   atomic.Uint64
	RateLimiterThrottled    atomic.Uint64
	EventFails, QueueBroken atomic.Uint64
}

// Device is one virtio-blk drive.
type Device struct {
	cfg      Config
	store    storage.Store
	sectors  atomic.Uint64 // read by the vCPU serving config reads
	features uint64
	id       [IDBytes]byte
	log      *slog.Logger
	glog     *virtio.GuestLog // for the lines a guest can cause
	limiter  *ratelimit.Limiter

	Metrics Metrics

	// mu orders Activate and Reset (vCPU threads) against the host's
	// run-time updates; the data path never takes it. Lock order: the
	// transport's lock, then mu (the transport calls Activate and Reset
	// holding its own), so nothing calls into the transport holding mu.
	mu sync.Mutex
	// configChanged, if set, tells the driver the configuration space
	// changed (the capacity, after a new backing file).
	configChanged func() error

	// Set by Activate, used on the worker goroutine only.
	worker *virtio.Worker
	act    *virtio.Activation
	chain  *virtio.Chain
	bufs   [][]byte // a request's data segments, virtio.MaxChainLen
	broken bool
}

// limiterToken is the worker token of the rate limiter's timer.
const limiterToken = 1 << 16

// New opens the drive's store. It fails, naming the file, if a file cannot
// be opened with the access asked for or is not a regular file or block
// device, or an overlay is not one or not on its base.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	switch cfg.CacheType {
	case "":
		cfg.CacheType = CacheUnsafe
	case CacheUnsafe, CacheWriteback:
	default:
		return nil, fmt.Errorf("drive %s: cache_type %q: want %q or %q", cfg.ID, cfg.CacheType, CacheUnsafe, CacheWriteback)
	}
	store, err := cfg.open(cfg.Path, 0)
	if err != nil {
		return nil, err
	}
	size := uint64(store.Size())
	d := &Device{cfg: cfg, store: store, log: log, glog: virtio.NewGuestLog(log), chain: virtio.NewChain(),
		bufs: make([][]byte, 0, virtio.MaxChainLen)}
	d.sectors.Store(size / SectorSize)
	d.features = featSegMax
	if cfg.ReadOnly {
		d.features |= featRO
	}
	if cfg.CacheType == CacheWriteback {
		d.features |= featFlush
	}
	copy(d.id[:], cfg.ID)
	if cfg.RateLimit != nil {
		if d.limiter, err = ratelimit.New(*cfg.RateLimit); err != nil {
			store.Close()
			return nil, fmt.Errorf("drive %s: %w", cfg.ID, err)
		}
	}
	if size%SectorSize != 0 {
		log.Warn("drive size is not a whole number of sectors; the tail is not visible to the guest", "drive", cfg.ID, "bytes", size)
	}
	return d, nil
}

// Close resets the device and closes its store.
func (d *Device) Close() error {
	d.Reset()
	d.limiter.Close()
	return d.store.Close()
}

// SuppressedLogs counts the guest-caused log lines the device's rate limit
// left out (virtio.SuppressedLogger).
func (d *Device) SuppressedLogs() uint64 { return d.glog.Suppressed() }

// Sectors is the capacity the guest sees.
func (d *Device) Sectors() uint64 { return d.sectors.Load() }

func (d *Device) Type() uint32         { return virtio.IDBlock }
func (d *Device) Features() uint64     { return d.features }
func (d *Device) QueueSizes() []uint16 { return []uint16{queueSize} }

// ReadConfig serves struct virtio_blk_config: capacity and seg_max.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [cfgSize]byte
	binary.LittleEndian.PutUint64(cfg[cfgCapacity:], d.sectors.Load())
	binary.LittleEndian.PutUint32(cfg[cfgSegMax:], segMax)
	clear(data)
	if offset < cfgSize {
		copy(data, cfg[offset:])
	}
}

// WriteConfig ignores writes: nothing in virtio-blk's configuration that
// Ember offers is writable.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// SetConfigNotifier sets the function that tells the driver the
// configuration space changed (the transport's ConfigChanged).
func (d *Device) SetConfigNotifier(f func() error) {
	d.mu.Lock()
	d.configChanged = f
	d.mu.Unlock()
}

// SetBackingFile swaps the drive's file for the one at path, opened with
// the drive's access mode, and tells the driver its new capacity
// (Firecracker's PATCH /drives path_on_host). Requests in flight finish on
// the old file; later ones use the new one.
func (d *Device) SetBackingFile(path string) error {
	// OpenAfterBoot: the seccomp filter of a running VM lets the store's
	// opens through and refuses plain ones.
	store, err := d.cfg.open(path, seccomp.OpenAfterBoot)
	if err != nil {
		return err
	}
	size := uint64(store.Size())
	d.mu.Lock()
	var old storage.Store
	d.worker.Do(func() {
		old = d.store
		d.store, d.cfg.Path = store, path
		d.sectors.Store(size / SectorSize)
	})
	notify := d.configChanged
	d.mu.Unlock()
	old.Close()
	// The transport is called without d.mu: a vCPU resetting or
	// activating the device holds the transport's lock into Reset and
	// Activate, which take d.mu.
	if notify != nil {
		if err := notify(); err != nil {
			return fmt.Errorf("drive %s: config-change interrupt: %w", d.cfg.ID, err)
		}
	}
	return nil
}

// UpdateRateLimit changes the drive's rate limiter with
// [ratelimit.Limiter.Update]'s rules (nil buckets unchanged, size 0
// removes one), creating it if the drive had none.
func (d *Device) UpdateRateLimit(cfg ratelimit.Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("drive %s: rate_limiter: %w", d.cfg.ID, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	d.worker.Do(func() {
		var fd int
		if fd, err = ratelimit.Apply(&d.limiter, cfg); err != nil {
			return
		}
		if fd >= 0 && d.worker != nil {
			err = d.worker.Watch(fd, limiterToken)
		}
		// Serve what waited for the old limits, on the worker: after
		// Resume if the VM is paused.
		if d.act != nil && d.worker.Kick(0) != nil {
			d.Metrics.EventFails.Add(1)
		}
	})
	if err != nil {
		return fmt.Errorf("drive %s: rate_limiter: %w", d.cfg.ID, err)
	}
	return nil
}

// Activate starts the worker.
func (d *Device) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !a.Queues[0].Active() {
		return errors.New("virtio-blk: request queue not set up")
	}
	w, err := virtio.NewWorkerWatching(a, d.log, d.handle, d.limiter.FD(), limiterToken)
	if err != nil {
		return err
	}
	d.act, d.worker, d.broken = a, w, false
	w.Start()
	return nil
}

// Reset stops the worker.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.worker.Stop()
	d.worker, d.act = nil, nil
}

func (d *Device) handle(token uint32) {
	if token == limiterToken {
		if err := d.limiter.Event(); err != nil {
			d.log.Error("virtio-blk rate limiter", "drive", d.cfg.ID, "err", err)
		}
	}
	if d.limiter.Blocked() || d.broken {
		return
	}
	d.process()
}

// process serves every available request, interrupting the guest as the
// queue's notification suppression asks.
func (d *Device) process() {
	q, c := d.act.Queues[0], d.chain
	for {
		for {
			ok, err := q.Pop(c)
			if !ok {
				if err != nil {
					d.Metrics.QueueBroken.Add(1)
					d.glog.Warn("virtio-blk: queue broken; waiting for a device reset", "drive", d.cfg.ID, "err", err)
					d.broken = true
					return
				}
				break
			}
			if err != nil {
				d.Metrics.InvalidReqs.Add(1)
				d.glog.Debug("virtio-blk: bad descriptor chain", "drive", d.cfg.ID, "err", err)
				q.PushUsed(c.Head, 0)
				continue
			}
			if !d.admit(c) {
				q.Undo()
				d.Metrics.RateLimiterThrottled.Add(1)
				break
			}
			n := d.serve(c)
			q.PushUsed(c.Head, n)
		}
		if q.NeedInterrupt() {
			if err := d.act.Interrupt.Used(); err != nil {
				d.Metrics.EventFails.Add(1)
			}
		}
		if d.limiter.Blocked() || !q.EnableNotify() {
			return
		}
	}
}

// admit charges the rate limiter for the request in c.
func (d *Device) admit(c *virtio.Chain) bool {
	if d.limiter == nil {
		return true
	}
	var n uint64
	for _, desc := range c.Descs {
		n += uint64(len(desc.Buf))
	}
	if n >= headerSize+1 {
		n -= headerSize + 1
	}
	return d.limiter.Consume(n)
}

// request is a parsed chain: the data lies in c.Descs between the header
// (first headerSize bytes) and the status byte (the last byte).
type request struct {
	typ    uint32
	sector uint64
	status []byte // one byte
	// data segments: descs[first:last+1], skipping skip bytes of the first
	// and stopping before the status byte in the last.
	first, last int
	skip        int
	dataLen     uint64
	dataWrite   bool // all data descriptors device-writable
	dataRead    bool // all data descriptors device-readable
}

// parse checks the chain's shape (virtio 5.2.6): a device-readable header,
// data, a device-writable status byte at the very end.
func parse(c *virtio.Chain, r *request) error {
	if len(c.Descs) == 0 {
		return errors.New("empty chain")
	}
	h := c.Descs[0]
	if h.Write || len(h.Buf) < headerSize {
		return fmt.Errorf("header descriptor: %d bytes, writable=%v; want %d readable bytes", len(h.Buf), h.Write, headerSize)
	}
	r.typ = binary.LittleEndian.Uint32(h.Buf[0:])
	r.sector = binary.LittleEndian.Uint64(h.Buf[8:])
	st := c.Descs[len(c.Descs)-1]
	if !st.Write || len(st.Buf) == 0 {
		return errors.New("status descriptor is missing or not writable")
	}
	r.status = st.Buf[len(st.Buf)-1:]
	r.first, r.skip = 0, headerSize
	if len(h.Buf) == headerSize {
		r.first, r.skip = 1, 0
	}
	r.last = len(c.Descs) - 1
	r.dataLen, r.dataWrite, r.dataRead = 0, true, true
	for i := r.first; i <= r.last; i++ {
		n := len(c.Descs[i].Buf)
		if i == r.first {
			n -= r.skip
		}
		if i == r.last {
			n-- // the status byte
		}
		if n <= 0 {
			continue
		}
		r.dataLen += uint64(n)
		if c.Descs[i].Write {
			r.dataRead = false
		} else {
			r.dataWrite = false
		}
	}
	return nil
}

// segment returns data segment i of r (nil if it holds no data bytes).
func (r *request) segment(c *virtio.Chain, i int) []byte {
	b := c.Descs[i].Buf
	if i == r.first {
		b = b[r.skip:]
	}
	if i == r.last {
		b = b[:len(b)-1]
	}
	return b
}

// serve executes one request and returns the bytes written into the
// guest's buffers (data plus status).
func (d *Device) serve(c *virtio.Chain) uint32 {
	var r request
	if err := parse(c, &r); err != nil {
		d.Metrics.InvalidReqs.Add(1)
		d.glog.Debug("virtio-blk: malformed request", "drive", d.cfg.ID, "err", err)
		return 0
	}
	status, written := d.execute(c, &r)
	if status == statusIOErr {
		d.Metrics.IOErrors.Add(1)
	}
	r.status[0] = status
	return written + 1
}

func (d *Device) execute(c *virtio.Chain, r *request) (status byte, written uint32) {
	switch r.typ {
	case typeIn, typeOut:
		if r.dataLen%SectorSize != 0 || !d.inDisk(r.sector, r.dataLen) {
			d.Metrics.InvalidReqs.Add(1)
			return statusIOErr, 0
		}
		off := int64(r.sector * SectorSize)
		if r.typ == typeIn {
			if !r.dataWrite {
				return statusIOErr, 0
			}
			if err := d.io(c, r, off, unix.SYS_PREADV); err != nil {
				d.glog.Warn("virtio-blk: read failed", "drive", d.cfg.ID, "sector", r.sector, "err", err)
				return statusIOErr, 0
			}
			d.Metrics.ReadCount.Add(1)
			d.Metrics.ReadBytes.Add(r.dataLen)
			return statusOK, uint32(r.dataLen)
		}
		if d.cfg.ReadOnly || !r.dataRead {
			return statusIOErr, 0
		}
		if err := d.io(c, r, off, unix.SYS_PWRITEV); err != nil {
			d.glog.Warn("virtio-blk: write failed", "drive", d.cfg.ID, "sector", r.sector, "err", err)
			return statusIOErr, 0
		}
		d.Metrics.WriteCount.Add(1)
		d.Metrics.WriteBytes.Add(r.dataLen)
		return statusOK, 0
	case typeFlush:
		d.Metrics.FlushCount.Add(1)
		if d.cfg.CacheType == CacheWriteback && !d.cfg.ReadOnly {
			if err := d.store.Flush(); err != nil {
				d.glog.Warn("virtio-blk: flush failed", "drive", d.cfg.ID, "err", err)
				return statusIOErr, 0
			}
		}
		return statusOK, 0
	case typeGetID:
		if !r.dataWrite || r.dataLen == 0 {
			return statusIOErr, 0
		}
		var n uint32
		src := d.id[:]
		for i := r.first; i <= r.last && len(src) > 0; i++ {
			k := copy(r.segment(c, i), src)
			src = src[k:]
			n += uint32(k)
		}
		return statusOK, n
	}
	return statusUnsupp, 0
}

// inDisk reports whether [sector, sector+n bytes) lies inside the disk,
// without overflow.
func (d *Device) inDisk(sector, n uint64) bool {
	sectors := d.sectors.Load()
	return sector <= sectors && n/SectorSize <= sectors-sector
}

// io moves r's data between the store at off and the guest's buffers, as
// one vector: reading it (trap unix.SYS_PREADV) or writing it
// (unix.SYS_PWRITEV), with as few system calls as the store can. It does
// not allocate.
func (d *Device) io(c *virtio.Chain, r *request, off int64, trap uintptr) error {
	bufs := d.bufs[:0]
	for i := r.first; i <= r.last; i++ {
		if b := r.segment(c, i); len(b) > 0 {
			bufs = append(bufs, b)
		}
	}
	if trap == unix.SYS_PWRITEV {
		return d.store.WriteVec(bufs, off)
	}
	return d.store.ReadVec(bufs, off)
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

// Flush makes the drive's writes durable on the host (the store's Flush),
// as before a snapshot: the disk file is the user's to copy along with it.
// Read-only drives and files that cannot be synced (EINVAL) need nothing.
func (d *Device) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.ReadOnly || d.store == nil {
		return nil
	}
	if err := d.store.Flush(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("drive %s: %w", d.cfg.ID, err)
	}
	return nil
}

// MarkOverlay flushes a copy-on-write drive and records its overlay for a
// snapshot (storage.COW.Mark): the identity a load checks the overlay
// against. ok is false for a raw drive. The VM must be paused.
func (d *Device) MarkOverlay() (id storage.Identity, ok bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.store.(*storage.COW)
	if !ok {
		return storage.Identity{}, false, nil
	}
	if id, err = c.Mark(); err != nil {
		return storage.Identity{}, true, fmt.Errorf("drive %s: %w", d.cfg.ID, err)
	}
	return id, true, nil
}

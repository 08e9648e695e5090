// Package net is Ember's virtio-net device (virtio 5.1) backed by a Linux
// tap: one receive and one transmit queue, checksum and segmentation
// offloads passed through to the tap, mergeable receive buffers, an
// optional MAC and MTU, and optional receive and transmit rate limiters
// (Firecracker's network-interfaces).
//
// Frames move between the tap and guest memory without a copy: the tap is
// opened with IFF_VNET_HDR and a 12-byte vnet header (struct
// virtio_net_hdr_v1, the header of a VERSION_1 device), so the header the
// guest writes in front of a transmitted frame is the one the tap reads,
// and the tap writes the header of a received frame straight into the
// guest's receive buffers. Transmit is one writev over a chain's buffers;
// receive is one readv over the receive buffers the device holds, plus a
// preallocated overflow buffer for the rare frame that does not fit them.
//
// The guest is not trusted: header and frame sizes, descriptor
// directions and num_buffers are checked here, the queue layer checks
// every descriptor. A bad chain is returned unused and counted; it never
// stops the device.
//
// An Interceptor (intercept.go: the MMDS, mmds/netstack) may be attached
// at build: the guest's frames it wants (those for the MMDS address) go to
// it instead of the tap, and its frames enter the receive path ahead of the
// tap's, through the same receive-buffer handling. Without one, each path
// pays a nil check.
//
// Threads: the device's worker goroutine alone does the I/O and owns the
// queue state; metrics are atomics. There is no lock and no allocation per
// frame.
package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio"
)

// Feature bits (virtio 5.1.3).
const (
	FeatCsum      = 1 << 0  // VIRTIO_NET_F_CSUM: the driver may send partial checksums
	FeatGuestCsum = 1 << 1  // VIRTIO_NET_F_GUEST_CSUM: the driver takes partial checksums
	FeatMTU       = 1 << 3  // VIRTIO_NET_F_MTU
	FeatMAC       = 1 << 5  // VIRTIO_NET_F_MAC
	FeatGuestTSO4 = 1 << 7  // VIRTIO_NET_F_GUEST_TSO4
	FeatGuestTSO6 = 1 << 8  // VIRTIO_NET_F_GUEST_TSO6
	FeatGuestECN  = 1 << 9  // VIRTIO_NET_F_GUEST_ECN (not offered)
	FeatGuestUFO  = 1 << 10 // VIRTIO_NET_F_GUEST_UFO
	FeatHostTSO4  = 1 << 11 // VIRTIO_NET_F_HOST_TSO4
	FeatHostTSO6  = 1 << 12 // VIRTIO_NET_F_HOST_TSO6
	FeatHostUFO   = 1 << 14 // VIRTIO_NET_F_HOST_UFO
	FeatMrgRxBuf  = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF
)

// The virtio-net header and frame limits.
const (
	// HdrLen is sizeof(struct virtio_net_hdr_v1): flags u8, gso_type u8,
	// hdr_len, gso_size, csum_start, csum_offset, num_buffers (le16 each).
	// With VERSION_1 it is the header of every frame, mergeable buffers
	// or not (virtio 5.1.6).
	HdrLen = 12

	hdrFlags      = 0  // offset of flags
	hdrGSOType    = 1  // offset of gso_type
	hdrNumBuffers = 10 // offset of num_buffers

	gsoNone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoUDP   = 3    // VIRTIO_NET_HDR_GSO_UDP
	gsoTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	gsoECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN

	// ethHdrLen is the Ethernet header with one VLAN tag: what a frame
	// may carry on top of its MTU ("plus low level ethernet header
	// length", virtio 5.1.6.3.2; Linux's GOOD_PACKET_LEN is 1500 + 18).
	ethHdrLen = 18
	// minFrame is an Ethernet header without a tag, the shortest frame
	// the tap takes.
	minFrame = 14
	// MaxFrame is the longest frame, without the vnet header, the device
	// moves either way: a 64 KiB GSO frame plus its Ethernet header. The
	// tap's GSO limit (GSO_LEGACY_MAX_SIZE) keeps received frames below
	// it; longer transmitted frames are dropped.
	MaxFrame = 64<<10 + ethHdrLen
	// bufSize is a vnet header and the longest frame: the size of the
	// receive overflow buffer, and how much receive buffer space the
	// device gathers, with mergeable buffers, before reading the tap.
	bufSize = HdrLen + MaxFrame

	// MinMTU and MaxMTU bound Config.MTU (Firecracker's range; 68 is the
	// IPv4 minimum).
	MinMTU = 68
	MaxMTU = 65535

	rxQueue   = 0
	txQueue   = 1
	queueSize = virtio.MaxQueueSize

	// Configuration space (struct virtio_net_config).
	cfgMAC     = 0  // mac[6]
	cfgStatus  = 6  // le16
	cfgMaxVQP  = 8  // le16 max_virtqueue_pairs
	cfgMTU     = 10 // le16
	cfgSize    = 12 // through mtu; later fields read as zero
	statusLink = 1  // VIRTIO_NET_S_LINK_UP
)

// Worker tokens beyond the queues' 0 and 1.
const (
	tapToken       = 2
	rxLimiterToken = 1 << 16
	txLimiterToken = 1<<16 + 1
)

// Config is Firecracker's network-interfaces object.
type Config struct {
	IfaceID string `json:"iface_id"`
	// HostDevName is the tap to attach to. It is created if it does not
	// exist (and then disappears with the device); an existing tap must
	// be a single-queue tap the process may attach to.
	HostDevName string `json:"host_dev_name"`
	// GuestMAC, "aa:bb:cc:dd:ee:ff", is offered to the guest with
	// VIRTIO_NET_F_MAC; empty lets the guest pick a random one.
	GuestMAC string `json:"guest_mac,omitempty"`
	// MTU, MinMTU to MaxMTU, is offered with VIRTIO_NET_F_MTU; 0 leaves it
	// out. It does not change the tap's own MTU, which is the host's.
	MTU         int               `json:"mtu,omitempty"`
	RxRateLimit *ratelimit.Config `json:"rx_rate_limiter,omitempty"`
	TxRateLimit *ratelimit.Config `json:"tx_rate_limiter,omitempty"`
}

// Metrics counts the device's work (Firecracker-style net metrics). Bytes
// are Ethernet frame bytes, without the vnet header.
type Metrics struct {
	RxBytes, RxPackets, RxDrops atomic.Uint64
	TxBytes, TxPackets, TxDrops atomic.Uint64
	RxThrottled, TxThrottled    atomic.Uint64
	// BadChains counts malformed descriptor chains on either queue,
	// returned to the guest unused.
	BadChains atomic.Uint64
	// TapReadErrors and TapWriteErrors count failed tap reads and writes
	// other than "try again"; a failed write also counts as a TxDrop.
	TapReadErrors, TapWriteErrors atomic.Uint64
	EventFails, QueueBroken       atomic.Uint64
}

// Device is one virtio-net interface.
type Device struct {
	cfg      Config
	tap      *tap
	mac      [6]byte
	features uint64
	log      *slog.Logger
	glog     *virtio.GuestLog // for the lines a guest can cause

	rxLimiter, txLimiter *ratelimit.Limiter
	// ic is the interceptor (the MMDS) and its buffers, nil without one
	// (intercept.go).
	ic *interception

	Metrics Metrics

	// mu orders Activate and Reset (vCPU threads) against the host's
	// run-time updates; the data path never takes it.
	mu sync.Mutex

	// Set by Activate, used on the worker goroutine only.
	worker *virtio.Worker
	act    *virtio.Activation
	neg    uint64 // negotiated features
	rx     rxState
	tx     txState
}

// New attaches to the tap cfg.HostDevName and makes the device. Errors name
// the interface and the tap.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	d := &Device{cfg: cfg, log: log.With("iface", cfg.IfaceID, "tap", cfg.HostDevName)}
	d.glog = virtio.NewGuestLog(d.log)
	d.features = FeatCsum | FeatGuestCsum | FeatGuestTSO4 | FeatGuestTSO6 | FeatGuestUFO |
		FeatHostTSO4 | FeatHostTSO6 | FeatHostUFO | FeatMrgRxBuf | virtio.FVersion1
	if cfg.GuestMAC != "" {
		mac, err := ParseMAC(cfg.GuestMAC)
		if err != nil {
			return nil, fmt.Errorf("network interface %s: guest_mac: %w", cfg.IfaceID, err)
		}
		d.mac = mac
		d.features |= FeatMAC
	}
	if cfg.MTU != 0 {
		if cfg.MTU < MinMTU || cfg.MTU > MaxMTU {
			return nil, fmt.Errorf("network interface %s: mtu %d: want %d to %d", cfg.IfaceID, cfg.MTU, MinMTU, MaxMTU)
		}
		d.features |= FeatMTU
	}
	var err error
	if cfg.RxRateLimit != nil {
		if d.rxLimiter, err = ratelimit.New(*cfg.RxRateLimit); err != nil {
			return nil, fmt.Errorf("network interface %s: rx_rate_limiter: %w", cfg.IfaceID, err)
		}
	}
	if cfg.TxRateLimit != nil {
		if d.txLimiter, err = ratelimit.New(*cfg.TxRateLimit); err != nil {
			d.rxLimiter.Close()
			return nil, fmt.Errorf("network interface %s: tx_rate_limiter: %w", cfg.IfaceID, err)
		}
	}
	if d.tap, err = openTap(cfg.HostDevName); err != nil {
		d.rxLimiter.Close()
		d.txLimiter.Close()
		return nil, fmt.Errorf("network interface %s: %w", cfg.IfaceID, err)
	}
	if cfg.MTU != 0 {
		if hostMTU, err := d.tap.mtu(); err == nil && hostMTU < cfg.MTU {
			d.log.Warn("virtio-net: the tap's MTU is below the guest's; longer frames from the guest will not get through", "tap_mtu", hostMTU, "mtu", cfg.MTU)
		}
	}
	d.rx.init()
	d.tx.init()
	return d, nil
}

// ParseMAC parses "aa:bb:cc:dd:ee:ff" (either case) into a unicast MAC
// address; multicast (including broadcast) and all-zero addresses are
// refused, as a NIC cannot have them.
func ParseMAC(s string) ([6]byte, error) {
	var mac [6]byte
	if len(s) != 17 {
		return mac, fmt.Errorf("%q: want six hex bytes separated by colons, like 06:00:ac:10:00:02", s)
	}
	for i := range mac {
		if i > 0 && s[3*i-1] != ':' {
			return mac, fmt.Errorf("%q: want six hex bytes separated by colons, like 06:00:ac:10:00:02", s)
		}
		hi, ok1 := unhex(s[3*i])
		lo, ok2 := unhex(s[3*i+1])
		if !ok1 || !ok2 {
			return mac, fmt.Errorf("%q: %q is not a hex byte", s, s[3*i:3*i+2])
		}
		mac[i] = hi<<4 | lo
	}
	if mac[0]&1 != 0 {
		return mac, fmt.Errorf("%q is a multicast address; a NIC needs a unicast one (even first byte)", s)
	}
	if mac == ([6]byte{}) {
		return mac, fmt.Errorf("%q: the all-zero address is not valid", s)
	}
	return mac, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// FormatMAC formats a MAC address as ParseMAC reads it.
func FormatMAC(mac [6]byte) string {
	var b strings.Builder
	for i, x := range mac {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02x", x)
	}
	return b.String()
}

// Close resets the device, closes the tap (a tap this device created
// disappears) and releases the limiters.
func (d *Device) Close() error {
	d.Reset()
	err := d.tap.close()
	d.rxLimiter.Close()
	d.txLimiter.Close()
	return err
}

// SuppressedLogs counts the guest-caused log lines the device's rate limit
// left out (virtio.SuppressedLogger).
func (d *Device) SuppressedLogs() uint64 { return d.glog.Suppressed() }

// IfaceID is the interface's iface_id.
func (d *Device) IfaceID() string { return d.cfg.IfaceID }

// HostDevName is the tap's name.
func (d *Device) HostDevName() string { return d.tap.name }

// GuestMAC is the MAC offered to the guest and whether one is.
func (d *Device) GuestMAC() ([6]byte, bool) { return d.mac, d.features&FeatMAC != 0 }

func (d *Device) Type() uint32         { return virtio.IDNet }
func (d *Device) Features() uint64     { return d.features }
func (d *Device) QueueSizes() []uint16 { return []uint16{queueSize, queueSize} }

// ReadConfig serves struct virtio_net_config: mac, status (link up),
// max_virtqueue_pairs (1) and mtu. The fields of features not offered
// read as their defaults (a zero MAC, a zero MTU).
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [cfgSize]byte
	copy(cfg[cfgMAC:], d.mac[:])
	binary.LittleEndian.PutUint16(cfg[cfgStatus:], statusLink)
	binary.LittleEndian.PutUint16(cfg[cfgMaxVQP:], 1)
	binary.LittleEndian.PutUint16(cfg[cfgMTU:], uint16(d.cfg.MTU))
	clear(data)
	if offset < cfgSize {
		copy(data, cfg[offset:])
	}
}

// WriteConfig ignores writes: a VERSION_1 driver does not write the
// configuration (only legacy drivers wrote the MAC there).
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate sets the tap's offloads to what the driver accepted and starts
// the worker.
func (d *Device) Activate(a *virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(a.Queues) != 2 || !a.Queues[rxQueue].Active() || !a.Queues[txQueue].Active() {
		return errors.New("virtio-net: receive and transmit queues not both set up")
	}
	if err := d.tap.setOffload(tapOffloads(a.Features)); err != nil {
		return err
	}
	w, err := virtio.NewWorker(a, d.log, d.handle)
	if err != nil {
		return err
	}
	if err := w.WatchEdge(d.tap.fd, tapToken); err != nil {
		w.Stop()
		return err
	}
	for _, l := range []struct {
		fd  int
		tok uint32
	}{{d.rxLimiter.FD(), rxLimiterToken}, {d.txLimiter.FD(), txLimiterToken}} {
		if l.fd < 0 {
			continue
		}
		if err := w.Watch(l.fd, l.tok); err != nil {
			w.Stop()
			return err
		}
	}
	d.start(a)
	d.worker = w
	if d.ic != nil {
		d.ic.rxKick.Store(a.Notify[rxQueue])
	}
	w.Start()
	return nil
}

// start resets the worker-side state for activation a.
func (d *Device) start(a *virtio.Activation) {
	d.act, d.neg = a, a.Features&d.features
	d.rx.reset(d.neg&FeatMrgRxBuf != 0)
	d.tx.reset()
}

// tapOffloads maps the receive offloads the driver accepted to the tap's
// TUNSETOFFLOAD flags: the tap may then hand over frames with partial
// checksums and GSO frames, which go to the guest as they are. The TSO
// and UFO offloads need the checksum one, in the spec (5.1.3.1) as in the
// tap.
func tapOffloads(f uint64) uint {
	if f&FeatGuestCsum == 0 {
		return 0
	}
	off := uint(tunFCsum)
	if f&FeatGuestTSO4 != 0 {
		off |= tunFTSO4
	}
	if f&FeatGuestTSO6 != 0 {
		off |= tunFTSO6
	}
	if f&FeatGuestUFO != 0 {
		off |= tunFUFO
	}
	return off
}

// Reset stops the worker and turns the tap's offloads off again. Receive
// buffers the device held are forgotten with the queues.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.worker == nil {
		return
	}
	if d.ic != nil {
		d.ic.rxKick.Store(nil)
	}
	d.worker.Stop()
	d.worker, d.act = nil, nil
	if err := d.tap.setOffload(0); err != nil {
		d.glog.Warn("virtio-net: reset", "err", err) // a guest can reset in a loop
	}
}

func (d *Device) handle(token uint32) {
	switch token {
	case rxQueue:
		d.processRx()
	case txQueue:
		d.processTx()
	case tapToken:
		d.rx.tapReady = true
		d.processRx()
		if d.tx.tapBlocked {
			d.tx.tapBlocked = false
			d.processTx()
		}
	case rxLimiterToken:
		if err := d.rxLimiter.Event(); err != nil {
			d.log.Error("virtio-net rx rate limiter", "err", err)
		}
		d.processRx()
	case txLimiterToken:
		if err := d.txLimiter.Event(); err != nil {
			d.log.Error("virtio-net tx rate limiter", "err", err)
		}
		d.processTx()
	}
}

// UpdateRateLimits changes the receive and transmit rate limiters with
// [ratelimit.Limiter.Update]'s rules (nil buckets unchanged, size 0 removes
// one), creating a limiter the interface had none of. A nil config leaves
// that direction as it is.
func (d *Device) UpdateRateLimits(rx, tx *ratelimit.Config) error {
	for _, c := range []*ratelimit.Config{rx, tx} {
		if c != nil {
			if err := c.Validate(); err != nil {
				return fmt.Errorf("network interface %s: rate limiter: %w", d.cfg.IfaceID, err)
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	d.worker.Do(func() {
		if err = d.updateLimiter(&d.rxLimiter, rx, rxLimiterToken); err != nil {
			return
		}
		if err = d.updateLimiter(&d.txLimiter, tx, txLimiterToken); err != nil {
			return
		}
		// Serve what waited for the old limits, on the worker: after
		// Resume if the VM is paused.
		if d.act != nil {
			for _, q := range []int{rxQueue, txQueue} {
				if d.worker.Kick(q) != nil {
					d.Metrics.EventFails.Add(1)
				}
			}
		}
	})
	if err != nil {
		return fmt.Errorf("network interface %s: rate limiter: %w", d.cfg.IfaceID, err)
	}
	return nil
}

// updateLimiter applies cfg to *l on the worker goroutine.
func (d *Device) updateLimiter(l **ratelimit.Limiter, cfg *ratelimit.Config, token uint32) error {
	if cfg == nil {
		return nil
	}
	fd, err := ratelimit.Apply(l, *cfg)
	if err == nil && fd >= 0 && d.worker != nil {
		err = d.worker.Watch(fd, token)
	}
	return err
}

// interrupt signals the guest if the queue's notification suppression
// asks for it.
func (d *Device) interrupt(q *virtio.Queue) {
	if q.NeedInterrupt() {
		if err := d.act.Interrupt.Used(); err != nil {
			d.Metrics.EventFails.Add(1)
		}
	}
}

// queueBroken stops using a queue the driver broke until a reset.
func (d *Device) queueBroken(name string, err error) {
	d.Metrics.QueueBroken.Add(1)
	d.glog.Warn("virtio-net: queue broken; waiting for a device reset", "queue", name, "err", err)
}

// PrepareSave implements virtio.SavePreparer: the receive chains the
// device holds ahead of frames go back into the queue, so that a snapshot's
// queue state covers them. The worker must be paused; after Resume it pops
// them again.
func (d *Device) PrepareSave() {
	if d.act == nil {
		return
	}
	d.rewindRx()
	if d.worker.Kick(rxQueue) != nil {
		d.Metrics.EventFails.Add(1)
	}
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

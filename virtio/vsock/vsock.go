// Package vsock is Ember's virtio-vsock device (virtio 5.10) with
// Firecracker's hybrid host side: guest AF_VSOCK stream sockets are relayed
// to AF_UNIX stream sockets on the host.
//
//   - Host to guest: a host client connects to the unix socket at uds_path
//     and sends "CONNECT <port>\n". Ember picks a host port (from 1<<30
//     up), sends REQUEST to the guest's port and, on RESPONSE, answers
//     "OK <host_port>\n" and relays; on RST (nothing listens in the guest)
//     or no answer within two seconds it closes the client.
//   - Guest to host: a guest connection to CID 2, port P is relayed to the
//     unix socket "<uds_path>_<P>"; if nothing listens there the guest gets
//     RST at once.
//
// Everything runs on the device's worker goroutine: the listener and every
// connection's socket are non-blocking and watched edge-triggered on the
// worker's epoll, so there is no goroutine per connection. The data path
// does not allocate: host bytes are read straight into the guest's rx
// buffers, guest bytes written straight from its tx buffers, and only what
// a host socket will not take yet is copied, into a ring per connection.
//
// Flow control is virtio's credit scheme (5.10.6.3) both ways: Ember never
// sends the guest more than its advertised buffer allows, and advertises
// ConnBufAlloc per connection itself, so data waiting for a slow host
// reader is bounded by it; a guest that overruns its credit is reset.
//
// Every packet the guest sends is checked (see parseTx); a malformed one is
// dropped, or answered with RST when its addresses are sound, and counted.
package vsock

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/virtio"
)

const (
	// HostCID is the host's address (VMADDR_CID_HOST).
	HostCID = 2

	queueSize = virtio.MaxQueueSize
	rxQ       = 0
	txQ       = 1
	evQ       = 2

	cfgSize = 8 // struct virtio_vsock_config: guest_cid le64

	// eventTransportReset is VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, the id of
	// struct virtio_vsock_event (le32).
	eventTransportReset = 0
	eventSize           = 4

	// Worker tokens beyond the queues'.
	listenerToken = 16
	ctlToken      = 17
	timerToken    = 18
	connToken     = 32 // + slot

	// MaxConns bounds the open connections (Firecracker's too); more are
	// refused: host clients are closed, guest REQUESTs get RST.
	MaxConns = 1023

	// FirstHostPort is where the host ports of host-initiated connections
	// start.
	FirstHostPort = 1 << 30

	// connectTimeout is how long the guest has to answer a REQUEST.
	connectTimeout = 2 * time.Second
	timerPeriod    = 250 * time.Millisecond

	// rstQueueLen bounds the RSTs waiting for rx buffers; beyond it they
	// are dropped (the guest times out instead).
	rstQueueLen = 2 * MaxConns

	// sunPathMax is sizeof(sockaddr_un.sun_path), NUL included.
	sunPathMax = 108

	// rxBudget bounds the rx packets built per worker wake-up, so one busy
	// connection cannot keep the worker from the tx queue; the worker
	// re-notifies itself to carry on.
	rxBudget = 2 * queueSize
)

// Config is Firecracker's vsock configuration (PUT /vsock).
type Config struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
	VsockID  string `json:"vsock_id,omitempty"`
}

// Metrics counts the device's work. Rx is towards the guest, tx from it;
// bytes are payload bytes.
type Metrics struct {
	RxPackets, RxBytes atomic.Uint64
	TxPackets, TxBytes atomic.Uint64
	// ConnsAdded and ConnsRemoved count connections known to the guest
	// (REQUEST sent or received); their difference is the open ones.
	ConnsAdded, ConnsRemoved atomic.Uint64
	ConnsRefused             atomic.Uint64 // no listener at <uds_path>_<port>, or too many
	RstsSent, RstsDropped    atomic.Uint64
	BadPackets               atomic.Uint64 // malformed tx packets and rx/event chains
	HostErrors               atomic.Uint64 // host socket errors and credit overruns
	ConnectTimeouts          atomic.Uint64
	QueueBroken, EventFails  atomic.Uint64
}

// Errors from TransportReset.
var (
	ErrNotActive     = errors.New("vsock: device not active")
	ErrNoEventBuffer = errors.New("vsock: the guest has no event buffer available")
)

var errCredit = errors.New("vsock: guest sent more than its credit")

// Device is a virtio-vsock device.
type Device struct {
	cfg  Config
	cid  uint64
	log  *slog.Logger
	glog *virtio.GuestLog // for the lines a guest can cause
	lfd  int              // the listening socket at uds_path
	ino  uint64
	dev  uint64
	ctl  *virtio.EventFD // TransportReset requests to the worker
	tfd  int             // timerfd for connect timeouts
	done chan error      // TransportReset answers

	Metrics Metrics

	mu     sync.Mutex // Activate, Reset, Close and TransportReset
	closed bool

	// Set by Activate; used on the worker goroutine only (and by Reset
	// once the worker has stopped).
	worker *virtio.Worker
	act    *virtio.Activation
	broken bool

	rxChain, txChain, evChain *virtio.Chain
	in, out                   header
	scratch                   [hdrSize]byte
	outBuf                    [hdrSize]byte
	timerBuf                  [8]byte
	rxPushed, txPushed        bool

	slots      []*conn          // by slot; nil if free
	free       []int            // free slots
	conns      map[uint64]*conn // by connKey(local, peer)
	rxHead     *conn            // connections with something for the rx queue
	rxTail     *conn
	rsts       [rstQueueLen][2]uint32 // RSTs to send: local, peer port
	rstHead    int
	rstLen     int
	nextPort   uint32
	connecting int // connections in stateConnecting
	timerOn    bool
}

// New validates cfg and binds the listening socket at cfg.UDSPath, which
// must not exist yet.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.GuestCID < 3 || cfg.GuestCID == ^uint32(0) {
		return nil, fmt.Errorf("vsock: guest_cid %d: want 3 to %d (0 to 2 are reserved, %d is VMADDR_CID_ANY)", cfg.GuestCID, ^uint32(0)-1, ^uint32(0))
	}
	if cfg.UDSPath == "" {
		return nil, errors.New("vsock: uds_path is empty")
	}
	if len(cfg.UDSPath) >= sunPathMax {
		return nil, fmt.Errorf("vsock: uds_path %q is %d bytes; a unix socket path holds at most %d", cfg.UDSPath, len(cfg.UDSPath), sunPathMax-1)
	}
	if _, err := os.Lstat(cfg.UDSPath); err == nil {
		return nil, fmt.Errorf("vsock: uds_path %s already exists; remove it or choose another path", cfg.UDSPath)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vsock: uds_path: %w", err)
	}
	d := &Device{
		cfg: cfg, cid: uint64(cfg.GuestCID), log: log, glog: virtio.NewGuestLog(log), lfd: -1, tfd: -1,
		done:     make(chan error, 1),
		rxChain:  virtio.NewChain(),
		txChain:  virtio.NewChain(),
		evChain:  virtio.NewChain(),
		slots:    make([]*conn, MaxConns),
		free:     make([]int, 0, MaxConns),
		conns:    make(map[uint64]*conn, MaxConns),
		nextPort: FirstHostPort,
	}
	for i := MaxConns - 1; i >= 0; i-- {
		d.free = append(d.free, i)
	}
	if err := d.listen(); err != nil {
		d.closeFDs()
		return nil, err
	}
	var err error
	if d.ctl, err = virtio.NewEventFD(); err != nil {
		d.closeFDs()
		return nil, err
	}
	if d.tfd, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC); err != nil {
		d.closeFDs()
		return nil, fmt.Errorf("vsock: timerfd_create: %w", err)
	}
	return d, nil
}

func (d *Device) listen() error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("vsock: socket: %w", err)
	}
	d.lfd = fd
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: d.cfg.UDSPath}); err != nil {
		if err == unix.EADDRINUSE {
			return fmt.Errorf("vsock: uds_path %s already exists; remove it or choose another path", d.cfg.UDSPath)
		}
		return fmt.Errorf("vsock: bind %s: %w", d.cfg.UDSPath, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(d.cfg.UDSPath, &st); err == nil {
		d.dev, d.ino = st.Dev, st.Ino
	}
	if err := unix.Listen(fd, 128); err != nil {
		d.removeSocket()
		return fmt.Errorf("vsock: listen on %s: %w", d.cfg.UDSPath, err)
	}
	return nil
}

// removeSocket removes the socket file if it is still the one New created.
func (d *Device) removeSocket() error {
	if d.ino == 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(d.cfg.UDSPath, &st); err != nil || st.Dev != d.dev || st.Ino != d.ino {
		return nil
	}
	d.ino = 0
	if err := os.Remove(d.cfg.UDSPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vsock: %w", err)
	}
	return nil
}

func (d *Device) closeFDs() error {
	var errs []error
	if d.lfd >= 0 {
		errs = append(errs, unix.Close(d.lfd), d.removeSocket())
		d.lfd = -1
	}
	if d.tfd >= 0 {
		errs = append(errs, unix.Close(d.tfd))
		d.tfd = -1
	}
	errs = append(errs, d.ctl.Close())
	return errors.Join(errs...)
}

// Close resets the device, closes the listener and removes its socket
// file.
func (d *Device) Close() error {
	d.Reset()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return d.closeFDs()
}

// SuppressedLogs counts the guest-caused log lines the device's rate limit
// left out (virtio.SuppressedLogger).
func (d *Device) SuppressedLogs() uint64 { return d.glog.Suppressed() }

// Config is the configuration the device was made with.
func (d *Device) Config() Config { return d.cfg }

func (d *Device) Type() uint32         { return virtio.IDVsock }
func (d *Device) Features() uint64     { return virtio.FVersion1 }
func (d *Device) QueueSizes() []uint16 { return []uint16{queueSize, queueSize, queueSize} }

// ReadConfig serves struct virtio_vsock_config: guest_cid.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	var cfg [cfgSize]byte
	cfg[0], cfg[1], cfg[2], cfg[3] = byte(d.cid), byte(d.cid>>8), byte(d.cid>>16), byte(d.cid>>24)
	clear(data)
	if offset < cfgSize {
		copy(data, cfg[offset:])
	}
}

// WriteConfig ignores writes: guest_cid is read-only.
func (d *Device) WriteConfig(offset uint64, data []byte) {}

// Activate starts the worker.
func (d *Device) Activate(a *virtio.Activation) error {
	if len(a.Queues) < 3 || !a.Queues[rxQ].Active() || !a.Queues[txQ].Active() {
		return errors.New("virtio-vsock: rx and tx queues not set up")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("virtio-vsock: device closed")
	}
	w, err := virtio.NewWorker(a, d.log, d.handle)
	if err != nil {
		return err
	}
	for _, x := range []struct {
		fd   int
		tok  uint32
		edge bool
	}{{d.lfd, listenerToken, true}, {d.ctl.FD(), ctlToken, false}, {d.tfd, timerToken, false}} {
		watch := w.Watch
		if x.edge {
			watch = w.WatchEdge
		}
		if err := watch(x.fd, x.tok); err != nil {
			w.Stop()
			return err
		}
	}
	d.act, d.worker, d.broken = a, w, false
	d.ctl.Clear()
	select {
	case <-d.done:
	default:
	}
	w.Start()
	return nil
}

// Reset stops the worker and closes every connection; the host clients see
// their sockets closed. (The guest driver, which reset the device, resets
// its own sockets.) The listener stays: clients that connect meanwhile wait
// in its backlog for the next activation.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.worker.Stop()
	d.worker, d.act = nil, nil
	d.closeAll(false)
}

// TransportReset closes every connection and posts
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, after which the
// guest drops all its connections (Firecracker does this when it takes a
// snapshot). It returns ErrNoEventBuffer if the guest has not provided an
// event buffer, and ErrNotActive if the driver has not set up the device;
// the connections are closed either way.
func (d *Device) TransportReset() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.worker == nil {
		d.closeAll(false)
		return ErrNotActive
	}
	if err := d.ctl.Signal(); err != nil {
		return err
	}
	select {
	case err := <-d.done:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("vsock: the device worker did not answer")
	}
}

func (d *Device) handle(tok uint32) {
	switch {
	case tok == ctlToken:
		if ok, _ := d.ctl.Clear(); ok {
			err := d.transportReset()
			select {
			case d.done <- err:
			default:
			}
		}
	case d.broken:
		return
	case tok == txQ:
		d.processTx()
	case tok == listenerToken:
		d.accept()
	case tok == timerToken:
		d.expire()
	case tok >= connToken && tok < connToken+MaxConns:
		if c := d.slots[tok-connToken]; c != nil {
			d.connEvent(c)
		}
	}
	// rxQ: the guest gave rx buffers; evQ: an event buffer, kept for
	// TransportReset. Either way, and after anything above, fill rx.
	if !d.broken {
		d.processRx()
	}
	d.interrupt()
}

func (d *Device) interrupt() {
	need := false
	if d.rxPushed {
		d.rxPushed = false
		need = d.act.Queues[rxQ].NeedInterrupt()
	}
	if d.txPushed {
		d.txPushed = false
		need = d.act.Queues[txQ].NeedInterrupt() || need
	}
	if need {
		if err := d.act.Interrupt.Used(); err != nil {
			d.Metrics.EventFails.Add(1)
		}
	}
}

func (d *Device) queueBroken(q int, err error) {
	d.Metrics.QueueBroken.Add(1)
	d.glog.Warn("virtio-vsock: queue broken; waiting for a device reset", "queue", q, "err", err)
	d.broken = true
}

// processTx serves every packet the guest has sent.
func (d *Device) processTx() {
	q, c := d.act.Queues[txQ], d.txChain
	for {
		for {
			ok, err := q.Pop(c)
			if !ok {
				if err != nil {
					d.queueBroken(txQ, err)
					return
				}
				break
			}
			if err != nil {
				d.Metrics.BadPackets.Add(1)
			} else {
				d.txPacket(c)
			}
			q.PushUsed(c.Head, 0)
			d.txPushed = true
		}
		if !q.EnableNotify() {
			return
		}
	}
}

func connKey(local, peer uint32) uint64 { return uint64(local)<<32 | uint64(peer) }

// txPacket handles one packet from the guest.
func (d *Device) txPacket(ch *virtio.Chain) {
	h := &d.in
	if err := parseTx(ch, d.cid, h, &d.scratch); err != nil {
		d.Metrics.BadPackets.Add(1)
		if !answerable(err) || h.Op == opRST {
			return
		}
		if c := d.conns[connKey(h.DstPort, h.SrcPort)]; c != nil {
			d.kill(c)
		} else {
			d.queueRst(h.DstPort, h.SrcPort)
		}
		return
	}
	d.Metrics.TxPackets.Add(1)
	d.Metrics.TxBytes.Add(uint64(h.Len))
	c := d.conns[connKey(h.DstPort, h.SrcPort)]
	if c == nil {
		switch h.Op {
		case opRequest:
			d.guestConnect(h)
		case opRST:
		default:
			d.queueRst(h.DstPort, h.SrcPort)
		}
		return
	}
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	if c.creditAsked && c.credit() > 0 {
		c.creditAsked = false
	}
	if h.Op == opRST {
		d.release(c, true)
		return
	}
	switch c.state {
	case stateConnecting:
		if h.Op != opResponse || c.ctrl&ctrlRequest != 0 {
			d.kill(c) // only RESPONSE (or RST) answers our REQUEST
			return
		}
		d.established(c)
	case stateEstablished:
		switch h.Op {
		case opRW:
			if c.guestNoSend {
				d.kill(c)
				return
			}
			if !c.flushed() {
				if err := c.flush(); err != nil {
					d.hostError(c, err)
					return
				}
			}
			k := newCursor(ch, hdrSize, int(h.Len))
			if err := c.toHost(&k); err != nil {
				d.hostError(c, err)
				return
			}
		case opShutdown:
			if h.Flags&shutSend != 0 {
				c.guestNoSend = true
			}
			if h.Flags&shutRcv != 0 && !c.shutRd {
				c.guestNoRecv, c.shutRd = true, true
				// A unix socket passes this on: the client's further
				// writes fail with EPIPE.
				unix.Shutdown(c.fd, unix.SHUT_RD)
			}
			if err := c.flush(); err != nil {
				d.hostError(c, err)
				return
			}
			if c.finished() {
				d.finish(c)
				return
			}
		case opCreditUpdate:
			// The credit is taken from every packet, above.
		case opCreditRequest:
			c.ctrl |= ctrlCreditUpdate
		default: // REQUEST or RESPONSE on a live connection
			d.kill(c)
			return
		}
	}
	d.kick(c)
}

// established completes a host-initiated connection: the guest answered.
func (d *Device) established(c *conn) {
	c.state = stateEstablished
	d.connecting--
	b := append(c.pre[:0], "OK "...)
	b = strconv.AppendUint(b, uint64(c.local), 10)
	b = append(b, '\n')
	c.preOff, c.preLen = 0, len(b)
	c.hostReadable = true
	if err := c.flush(); err != nil {
		d.hostError(c, err)
	}
}

// guestConnect serves a REQUEST from the guest to host port h.DstPort:
// connect to <uds_path>_<port>, RST if that fails.
func (d *Device) guestConnect(h *header) {
	if len(d.free) == 0 {
		d.Metrics.ConnsRefused.Add(1)
		d.queueRst(h.DstPort, h.SrcPort)
		return
	}
	path := d.cfg.UDSPath + "_" + strconv.FormatUint(uint64(h.DstPort), 10)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			unix.Close(fd)
		}
	}
	var c *conn
	if err == nil {
		if c = d.newConn(fd); c == nil {
			err = errors.New("cannot watch the socket")
		}
	}
	if err != nil {
		d.Metrics.ConnsRefused.Add(1)
		d.glog.Debug("virtio-vsock: guest connection refused", "port", h.DstPort, "path", path, "err", err)
		d.queueRst(h.DstPort, h.SrcPort)
		return
	}
	c.state = stateEstablished
	c.local, c.peer = h.DstPort, h.SrcPort
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	c.ctrl |= ctrlResponse
	d.insert(c)
	d.kick(c)
}

func (d *Device) insert(c *conn) {
	c.inMap = true
	d.conns[connKey(c.local, c.peer)] = c
	d.Metrics.ConnsAdded.Add(1)
}

// newConn takes a slot for the socket fd and watches it; nil if there is
// no slot or epoll refuses (the caller closes fd).
func (d *Device) newConn(fd int) *conn {
	if len(d.free) == 0 {
		return nil
	}
	slot := d.free[len(d.free)-1]
	if err := d.worker.WatchEdge(fd, connToken+uint32(slot)); err != nil {
		d.glog.Warn("virtio-vsock: cannot watch a connection's socket", "err", err)
		return nil
	}
	d.free = d.free[:len(d.free)-1]
	c := &conn{fd: fd, slot: slot, hostReadable: true, hostWritable: true}
	d.slots[slot] = c
	return c
}

// release closes c's socket and forgets c. unwatch is false once the
// worker (and its epoll) is gone.
func (d *Device) release(c *conn, unwatch bool) {
	if c.dead {
		return
	}
	c.dead = true
	if unwatch {
		d.worker.Unwatch(c.fd)
	}
	unix.Close(c.fd)
	if c.inMap {
		delete(d.conns, connKey(c.local, c.peer))
		d.Metrics.ConnsRemoved.Add(1)
	}
	if c.state == stateConnecting {
		d.connecting--
	}
	d.rxUnlink(c)
	d.slots[c.slot] = nil
	d.free = append(d.free, c.slot)
}

// kill resets c: its socket is closed and the guest gets RST.
func (d *Device) kill(c *conn) {
	if c.inMap && !(c.state == stateConnecting && c.ctrl&ctrlRequest != 0) {
		d.queueRst(c.local, c.peer)
	}
	d.release(c, true)
}

// finish closes c cleanly: both sides are done; the RST tells the guest
// (which waits for it after its SHUTDOWN) that the host side is gone too.
func (d *Device) finish(c *conn) {
	d.queueRst(c.local, c.peer)
	d.release(c, true)
}

func (d *Device) hostError(c *conn, err error) {
	d.Metrics.HostErrors.Add(1)
	if err == errCredit {
		d.glog.Warn("virtio-vsock: guest overran its credit; resetting the connection", "port", c.local, "guest_port", c.peer)
	} else {
		d.glog.Debug("virtio-vsock: host socket error; resetting the connection", "port", c.local, "guest_port", c.peer, "err", err)
	}
	d.kill(c)
}

// closeAll closes every connection and forgets queued RSTs.
func (d *Device) closeAll(unwatch bool) {
	for _, c := range d.slots {
		if c != nil {
			d.release(c, unwatch)
		}
	}
	d.rstHead, d.rstLen = 0, 0
	d.connecting = 0
	d.setTimer(false)
}

func (d *Device) queueRst(local, peer uint32) {
	if d.rstLen == len(d.rsts) {
		d.Metrics.RstsDropped.Add(1)
		return
	}
	d.rsts[(d.rstHead+d.rstLen)%len(d.rsts)] = [2]uint32{local, peer}
	d.rstLen++
}

// The rx list: connections with something for the rx queue, served in
// turn.

func (d *Device) kick(c *conn) {
	if c.inRx || !c.wantsRx() {
		return
	}
	c.inRx, c.rxNext, c.rxPrev = true, nil, d.rxTail
	if d.rxTail != nil {
		d.rxTail.rxNext = c
	} else {
		d.rxHead = c
	}
	d.rxTail = c
}

func (d *Device) rxUnlink(c *conn) {
	if !c.inRx {
		return
	}
	if c.rxPrev != nil {
		c.rxPrev.rxNext = c.rxNext
	} else {
		d.rxHead = c.rxNext
	}
	if c.rxNext != nil {
		c.rxNext.rxPrev = c.rxPrev
	} else {
		d.rxTail = c.rxPrev
	}
	c.inRx, c.rxNext, c.rxPrev = false, nil, nil
}

// processRx fills the guest's rx buffers: queued RSTs first, then the
// connections in turn, one packet each.
func (d *Device) processRx() {
	if d.rstLen == 0 && d.rxHead == nil {
		return
	}
	q, ch := d.act.Queues[rxQ], d.rxChain
	for budget := rxBudget; ; budget-- {
		if d.rstLen == 0 && d.rxHead == nil {
			return
		}
		if budget == 0 {
			d.act.Notify[rxQ].Signal() // carry on after the other events
			return
		}
		ok, err := q.Pop(ch)
		if !ok {
			if err != nil {
				d.queueBroken(rxQ, err)
				return
			}
			if q.EnableNotify() {
				continue
			}
			return // the guest's next rx buffers wake the worker
		}
		room := 0
		if err == nil {
			room, err = rxRoom(ch)
		}
		if err != nil {
			d.Metrics.BadPackets.Add(1)
			q.PushUsed(ch.Head, 0)
			d.rxPushed = true
			continue
		}
		var n uint32
		if d.rstLen > 0 {
			p := d.rsts[d.rstHead]
			d.rstHead = (d.rstHead + 1) % len(d.rsts)
			d.rstLen--
			d.out = header{SrcCID: HostCID, DstCID: d.cid, SrcPort: p[0], DstPort: p[1], Type: typeStream, Op: opRST}
			n = d.emit(ch)
			d.Metrics.RstsSent.Add(1)
		} else {
			c := d.rxHead
			d.rxUnlink(c)
			n = d.rxPacket(c, ch, room)
			if !c.dead {
				d.kick(c)
			}
		}
		if n == 0 {
			q.Undo()
			continue
		}
		q.PushUsed(ch.Head, n)
		d.rxPushed = true
	}
}

// emit writes d.out into the rx chain and returns the packet's length.
func (d *Device) emit(ch *virtio.Chain) uint32 {
	d.out.encode(d.outBuf[:])
	scatter(ch, 0, d.outBuf[:])
	d.Metrics.RxPackets.Add(1)
	return hdrSize + d.out.Len
}

// rxPacket builds c's next packet in the rx chain ch of room bytes and
// returns its length, or 0 if c had nothing to send after all.
func (d *Device) rxPacket(c *conn, ch *virtio.Chain, room int) uint32 {
	h := &d.out
	*h = header{SrcCID: HostCID, DstCID: d.cid, SrcPort: c.local, DstPort: c.peer, Type: typeStream, BufAlloc: ConnBufAlloc}
	switch credit := c.credit(); {
	case c.ctrl&ctrlRequest != 0:
		c.ctrl &^= ctrlRequest
		h.Op = opRequest
	case c.ctrl&ctrlResponse != 0:
		c.ctrl &^= ctrlResponse
		h.Op = opResponse
	case c.mayRead() && credit > 0 && room > hdrSize:
		n, err := c.fromHost(ch, min(room-hdrSize, MaxPacket, int(min(credit, MaxPacket))))
		switch {
		case n > 0:
			h.Op, h.Len = opRW, uint32(n)
			c.txCnt += uint32(n)
			d.Metrics.RxBytes.Add(uint64(n))
		case err == nil: // EOF: the host client sends no more
			c.hostEOF = true
			h.Op, h.Flags = opShutdown, shutSend
		case err == unix.EAGAIN:
			c.hostReadable = false
			if c.ctrl&ctrlCreditUpdate == 0 {
				return 0
			}
			h.Op = opCreditUpdate
		default:
			d.hostError(c, err)
			return 0
		}
	case c.ctrl&ctrlCreditUpdate != 0:
		h.Op = opCreditUpdate
	case c.mayRead() && credit == 0 && !c.creditAsked:
		c.creditAsked = true
		h.Op = opCreditRequest
	case c.mayRead() && credit > 0:
		// Data waits but the guest's buffer holds only a header.
		h.Op = opCreditUpdate
	default:
		return 0
	}
	// Every packet tells the guest our buffer and fwd_cnt.
	c.ctrl &^= ctrlCreditUpdate
	h.FwdCnt, c.sentFwdCnt = c.fwdCnt, c.fwdCnt
	return d.emit(ch)
}

// accept takes every waiting host client.
func (d *Device) accept() {
	for {
		fd, _, err := unix.Accept4(d.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch err {
		case nil:
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			return
		default:
			d.log.Warn("virtio-vsock: accept failed", "path", d.cfg.UDSPath, "err", err)
			return
		}
		c := d.newConn(fd)
		if c == nil {
			d.Metrics.ConnsRefused.Add(1)
			unix.Close(fd)
			continue
		}
		c.state = stateLine
		d.readLine(c)
	}
}

// readLine reads the client's CONNECT line, a byte at a time, and starts
// the connection to the guest when it is complete. A malformed line, or
// none, closes the client.
func (d *Device) readLine(c *conn) {
	for c.lineLen < len(c.line) {
		n, err := recv(c.fd, c.line[c.lineLen:c.lineLen+1])
		if err == unix.EAGAIN {
			c.hostReadable = false
			return
		}
		if err != nil || n == 0 {
			d.release(c, true)
			return
		}
		c.lineLen++
		if c.line[c.lineLen-1] == '\n' {
			port, ok := parseConnect(c.line[:c.lineLen])
			if !ok {
				d.log.Debug("virtio-vsock: malformed CONNECT line; closing", "line", string(c.line[:c.lineLen]))
				d.release(c, true)
				return
			}
			d.hostConnect(c, port)
			return
		}
	}
	d.log.Debug("virtio-vsock: CONNECT line too long; closing")
	d.release(c, true)
}

// hostConnect sends the guest a REQUEST for the client c to guest port
// port, from a fresh host port.
func (d *Device) hostConnect(c *conn, port uint32) {
	for {
		p := d.nextPort
		d.nextPort++
		if d.nextPort < FirstHostPort {
			d.nextPort = FirstHostPort
		}
		if _, used := d.conns[connKey(p, port)]; !used {
			c.local = p
			break
		}
	}
	c.peer = port
	c.state = stateConnecting
	c.ctrl |= ctrlRequest
	c.deadline = time.Now().Add(connectTimeout)
	d.connecting++
	d.setTimer(true)
	d.insert(c)
	d.kick(c)
}

// connEvent handles readiness on a connection's socket.
func (d *Device) connEvent(c *conn) {
	c.hostReadable, c.hostWritable = true, true
	switch c.state {
	case stateLine:
		d.readLine(c)
	case stateEstablished:
		if err := c.flush(); err != nil {
			d.hostError(c, err)
			return
		}
		if c.finished() {
			d.finish(c)
			return
		}
		d.kick(c)
	}
}

// expire resets host-initiated connections the guest did not answer.
func (d *Device) expire() {
	unix.Read(d.tfd, d.timerBuf[:])
	now := time.Now()
	for _, c := range d.slots {
		if c != nil && c.state == stateConnecting && now.After(c.deadline) {
			d.Metrics.ConnectTimeouts.Add(1)
			d.kill(c)
		}
	}
	if d.connecting == 0 {
		d.setTimer(false)
	}
}

func (d *Device) setTimer(on bool) {
	if on == d.timerOn || d.tfd < 0 {
		return
	}
	var spec unix.ItimerSpec
	if on {
		spec.Interval = unix.NsecToTimespec(int64(timerPeriod))
		spec.Value = spec.Interval
	}
	if err := unix.TimerfdSettime(d.tfd, 0, &spec, nil); err != nil {
		d.log.Warn("virtio-vsock: timerfd_settime", "err", err)
		return
	}
	d.timerOn = on
}

// transportReset runs on the worker for TransportReset.
func (d *Device) transportReset() error {
	d.closeAll(true)
	if d.broken {
		return errors.New("vsock: queues broken")
	}
	q := d.act.Queues[evQ]
	if !q.Active() {
		return ErrNoEventBuffer
	}
	ok, err := q.Pop(d.evChain)
	if !ok {
		if err != nil {
			d.queueBroken(evQ, err)
			return err
		}
		return ErrNoEventBuffer
	}
	if err == nil {
		if room, e := writableLen(d.evChain); e != nil || room < eventSize {
			err = errors.New("vsock: event buffer not writable or too short")
		}
	}
	n := uint32(0)
	if err == nil {
		var ev [eventSize]byte // le32 id
		ev[0] = eventTransportReset
		scatter(d.evChain, 0, ev[:])
		n = eventSize
	} else {
		d.Metrics.BadPackets.Add(1)
	}
	q.PushUsed(d.evChain.Head, n)
	if q.NeedInterrupt() {
		if e := d.act.Interrupt.Used(); e != nil {
			d.Metrics.EventFails.Add(1)
		}
	}
	return err
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

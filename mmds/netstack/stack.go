package netstack

import (
	"encoding/binary"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/embervm/ember/virtio"
)

// Bounds and timings of the stack. The guest is hostile: everything it can
// make the stack hold is bounded here.
const (
	// MaxConnections is how many TCP connections a VM's MMDS holds at
	// once over all its interfaces (Firecracker's DEFAULT_MAX_CONNECTIONS).
	// A SYN beyond it gets a RST.
	MaxConnections = 30
	// maxPendingARP and maxPendingRST bound the replies waiting for the
	// guest's receive queue (Firecracker's DEFAULT_MAX_PENDING_RESETS for
	// the resets); beyond them requests are dropped, and the guest asks
	// again.
	maxPendingARP = 16
	maxPendingRST = 100
	// recvBufSize is each connection's receive buffer, the most it
	// advertises as its window: more than any MMDS request (whose headers
	// net/http bounds to maxHeaderBytes).
	recvBufSize = 8 << 10
	// sendBufSize is each connection's send buffer: the response bytes
	// sent and not yet acknowledged, and not yet sent. A writer waits for
	// room.
	sendBufSize = 16 << 10
	// maxSegment is the largest segment sent: a 1500-byte MTU less the
	// IPv4 and TCP headers. The guest's MSS option lowers it.
	maxSegment = 1460
	// defaultMSS is the peer's MSS when its SYN has no MSS option (RFC
	// 9293 3.7.1).
	defaultMSS = 536
	// MaxFrameLen is the longest frame Reply writes: Ethernet, IPv4 and
	// TCP headers and a maxSegment payload.
	MaxFrameLen = ethHdrLen + ipv4MinHdr + tcpMinHdr + maxSegment
	// replyTTL is the TTL of every packet the MMDS sends: 1, as
	// Firecracker's, so that a guest that routes (a container network in
	// the guest) does not forward the answers.
	replyTTL = 1
	// port is the MMDS's TCP port.
	port = 80

	// Retransmission (RFC 6298 in spirit, on a lossless virtual link):
	// the first timeout, doubled per retry up to maxRTO; after
	// maxRetries the connection is aborted.
	initialRTO = 250 * time.Millisecond
	maxRTO     = 8 * time.Second
	maxRetries = 8
	// finWait2Timeout bounds how long a connection whose FIN the guest
	// acknowledged waits for the guest's own FIN (Linux's tcp_fin_timeout
	// is 60 s).
	finWait2Timeout = 30 * time.Second

	// The HTTP server's bounds: header bytes (net/http adds 4 KiB of
	// slack), time to send the headers and the whole request (a body,
	// which MMDS requests do not have, is discarded: at most net/http's
	// 256 KiB), to write a response, and to keep an idle connection.
	maxHeaderBytes    = 4 << 10
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 30 * time.Second
)

// MAC is the MMDS's Ethernet address, in its ARP replies and as the source
// of its frames (Firecracker's).
var MAC = [macLen]byte{0x06, 0x01, 0x23, 0x45, 0x67, 0x01}

// Metrics are the stack's counters in Firecracker's mmds metrics group;
// one set serves all of a VM's stacks.
type Metrics struct {
	// RxAccepted: frames taken off the guest's transmit path.
	RxAccepted atomic.Uint64
	// RxAcceptedErr: of those, the malformed ones (a bad IPv4 or TCP
	// header, a frame cut short).
	RxAcceptedErr atomic.Uint64
	// RxAcceptedUnusual: IPv4 packets for the MMDS that are not TCP
	// (dropped).
	RxAcceptedUnusual atomic.Uint64
	// RxBadEth: frames whose Ethernet framing was not the MMDS's.
	RxBadEth atomic.Uint64
	// RxCount: TCP segments the stack handled.
	RxCount atomic.Uint64
	// TxFrames and TxBytes: frames (and their bytes) handed to the
	// guest's receive path; TxCount the same frames (Firecracker counts
	// both); TxErrors replies that could not be written.
	TxFrames, TxBytes, TxCount, TxErrors atomic.Uint64
	// ConnectionsCreated and ConnectionsDestroyed count TCP connections.
	ConnectionsCreated, ConnectionsDestroyed atomic.Uint64
}

// Limits is the connection budget shared by a VM's stacks.
type Limits struct {
	max int32
	n   atomic.Int32
}

// NewLimits returns a budget of max connections (MaxConnections if max
// <= 0).
func NewLimits(max int) *Limits {
	if max <= 0 {
		max = MaxConnections
	}
	return &Limits{max: int32(max)}
}

func (l *Limits) acquire() bool {
	for {
		n := l.n.Load()
		if n >= l.max {
			return false
		}
		if l.n.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (l *Limits) release() { l.n.Add(-1) }

// Config configures a Stack.
type Config struct {
	// IP is the MMDS address.
	IP [ipv4AddrLen]byte
	// Handler answers the HTTP requests (mmds.Service).
	Handler http.Handler
	// Limits is the VM's connection budget (NewLimits).
	Limits *Limits
	// Metrics receives the counters; nil keeps them private.
	Metrics *Metrics
	// Log writes the lines the guest can cause, rate-limited (the
	// interface's virtio.GuestLog); nil uses slog.Default's.
	Log *virtio.GuestLog
}

// connKey identifies a connection: the guest's address and port (the
// MMDS's are fixed).
type connKey struct {
	ip   [ipv4AddrLen]byte
	port uint16
}

// arpReq is an ARP reply to send.
type arpReq struct {
	mac [macLen]byte
	ip  [ipv4AddrLen]byte
}

// rstReq is a RST to send (RFC 9293 3.10.7.1).
type rstReq struct {
	mac      [macLen]byte
	key      connKey
	lport    uint16 // the port the segment was for
	seq, ack uint32
	flags    byte
}

// Stack is the MMDS's network stack on one interface: it takes the
// guest's frames for the MMDS address (Intercept), answers ARP, runs TCP on
// port 80 and serves HTTP there with net/http, and hands its frames to the
// guest's receive path (Reply). It implements the virtio-net device's
// interceptor (virtio/net.Interceptor).
//
// Threads: Intercept and Reply run on the device's worker; the HTTP
// server's goroutines (started at the first connection) and a timer run
// the connections' other side. One mutex guards the state; Pending is an
// atomic the worker reads without it.
type Stack struct {
	ip      [ipv4AddrLen]byte
	handler http.Handler
	limits  *Limits
	m       *Metrics
	glog    *virtio.GuestLog

	pending atomic.Bool
	notify  atomic.Pointer[func()]

	mu      sync.Mutex
	conns   map[connKey]*conn
	order   []*conn // the connections in creation order, served round-robin
	next    int
	arps    []arpReq
	rsts    []rstReq
	ipID    uint16
	ln      *listener
	srv     *http.Server
	timer   *time.Timer
	timerAt time.Time
	closed  bool
}

// New returns a stack; nothing runs until the guest's first connection.
func New(cfg Config) *Stack {
	s := &Stack{ip: cfg.IP, handler: cfg.Handler, limits: cfg.Limits, m: cfg.Metrics, glog: cfg.Log,
		conns: map[connKey]*conn{}}
	if s.limits == nil {
		s.limits = NewLimits(0)
	}
	if s.m == nil {
		s.m = &Metrics{}
	}
	if s.glog == nil {
		s.glog = virtio.NewGuestLog(nil)
	}
	s.ln = &listener{s: s}
	s.ln.cond = sync.NewCond(&s.mu)
	return s
}

// Wants reports whether the frame whose first bytes are head (HeadLen of
// them, or the whole frame if shorter) is the MMDS's: an ARP request for
// its address or an IPv4 packet to it.
func (s *Stack) Wants(head []byte) bool { return Classify(head, s.ip) != Other }

// SetNotify sets the function the stack calls, from any goroutine, when it
// has frames for the guest that the worker does not know of (an answer
// written, a retransmission due). It must not block.
func (s *Stack) SetNotify(fn func()) {
	if fn == nil {
		s.notify.Store(nil)
		return
	}
	s.notify.Store(&fn)
}

// Pending reports whether Reply has a frame to give.
func (s *Stack) Pending() bool { return s.pending.Load() }

// Intercept takes a frame the guest sent that Wants accepted (the whole
// Ethernet frame; truncated if the device could not hold all of it). The
// frame is the stack's to read until Intercept returns.
func (s *Stack) Intercept(frame []byte, truncated bool) {
	s.m.RxAccepted.Add(1)
	if truncated {
		s.m.RxAcceptedErr.Add(1)
		s.glog.Warn("mmds: frame for the MMDS too long; dropped", "len", len(frame))
		return
	}
	switch Classify(frame, s.ip) {
	case ARP:
		s.arp(frame)
	case TCP:
		s.tcp(frame)
	case IPv4:
		s.m.RxAcceptedUnusual.Add(1)
	default:
		s.m.RxBadEth.Add(1)
	}
}

// arp queues the reply to an ARP request for the MMDS address.
func (s *Stack) arp(frame []byte) {
	p := frame[ethHdrLen:]
	r := arpReq{mac: [macLen]byte(p[arpSHA : arpSHA+macLen]), ip: [ipv4AddrLen]byte(p[arpSPA : arpSPA+ipv4AddrLen])}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.arps {
		if q == r {
			return
		}
	}
	if len(s.arps) >= maxPendingARP {
		s.glog.Debug("mmds: too many ARP requests pending; one dropped")
		return
	}
	s.arps = append(s.arps, r)
	s.pending.Store(true)
}

// tcp handles an IPv4 packet carrying TCP for the MMDS address.
func (s *Stack) tcp(frame []byte) {
	ip, ok := parseIPv4(frame[ethHdrLen:])
	if !ok {
		s.m.RxAcceptedErr.Add(1)
		return
	}
	seg, ok := parseTCP(ip.payload)
	if !ok {
		s.m.RxAcceptedErr.Add(1)
		return
	}
	s.m.RxCount.Add(1)
	mac := [macLen]byte(frame[ethSrc : ethSrc+macLen])
	key := connKey{ip: [ipv4AddrLen]byte(ip.hdr[ipSrc : ipSrc+ipv4AddrLen]), port: seg.srcPort}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.settle()
	if c := s.conns[key]; c != nil && seg.dstPort == port {
		c.input(mac, seg)
		return
	}
	if seg.dstPort != port || seg.flags&(flagSYN|flagACK|flagRST) != flagSYN || s.closed {
		s.reset(mac, key, seg)
		return
	}
	if !s.limits.acquire() {
		s.glog.Warn("mmds: connection refused: the VM has the most MMDS connections it may", "max", s.limits.max)
		s.reset(mac, key, seg)
		return
	}
	c := newConn(s, key, mac, seg)
	s.conns[key] = c
	s.order = append(s.order, c)
	s.m.ConnectionsCreated.Add(1)
	s.startServer()
}

// reset queues the RST that answers seg, a segment no connection takes
// (RFC 9293 3.10.7.1); a RST is not answered.
func (s *Stack) reset(mac [macLen]byte, key connKey, seg tcpSegment) {
	if seg.flags&flagRST != 0 {
		return
	}
	if len(s.rsts) >= maxPendingRST {
		s.glog.Debug("mmds: too many resets pending; one dropped")
		return
	}
	r := rstReq{mac: mac, key: key, lport: seg.dstPort, flags: flagRST}
	if seg.flags&flagACK != 0 {
		r.seq = seg.ack
	} else {
		r.ack, r.flags = seg.seq+seqLen(seg), flagRST|flagACK
	}
	s.rsts = append(s.rsts, r)
}

// seqLen is the sequence space a segment takes: its payload, SYN and FIN.
func seqLen(seg tcpSegment) uint32 {
	n := uint32(len(seg.payload))
	if seg.flags&flagSYN != 0 {
		n++
	}
	if seg.flags&flagFIN != 0 {
		n++
	}
	return n
}

// Reply writes the next frame for the guest into buf (at least MaxFrameLen
// bytes for full-sized segments) and returns its length, or 0 if there is
// none: ARP replies first, then resets, then the connections' segments,
// round-robin.
func (s *Stack) Reply(buf []byte) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.settle()
	n := s.reply(buf)
	if n > 0 {
		s.m.TxFrames.Add(1)
		s.m.TxCount.Add(1)
		s.m.TxBytes.Add(uint64(n))
	}
	return n
}

func (s *Stack) reply(buf []byte) int {
	if len(buf) < ethHdrLen+ipv4MinHdr+tcpMinHdr+optMSSLen+1 {
		if s.pending.Load() {
			s.m.TxErrors.Add(1)
		}
		return 0
	}
	if len(s.arps) > 0 {
		r := s.arps[0]
		s.arps = s.arps[1:]
		putEthernet(buf, r.mac, MAC, etherARP)
		putARPReply(buf[ethHdrLen:], MAC, s.ip, r.mac, r.ip)
		return ethHdrLen + arpLen
	}
	if len(s.rsts) > 0 {
		r := s.rsts[0]
		s.rsts = s.rsts[1:]
		return s.segment(buf, r.mac, r.key, r.lport, r.seq, r.ack, r.flags, 0, nil, 0)
	}
	for i := range len(s.order) {
		c := s.order[(s.next+i)%len(s.order)]
		if c.wantsOutput() {
			s.next = (s.next + i + 1) % len(s.order)
			return c.output(buf)
		}
	}
	return 0
}

// segment writes a TCP segment from port lport to the guest's key into
// buf: the headers, the MSS option if mss > 0, the payload. It returns the
// frame's length.
func (s *Stack) segment(buf []byte, mac [macLen]byte, key connKey, lport uint16, seq, ack uint32, flags byte, window uint16, payload []byte, mss uint16) int {
	tcpLen := tcpMinHdr
	if mss > 0 {
		tcpLen += optMSSLen
	}
	t := buf[ethHdrLen+ipv4MinHdr:]
	binary.BigEndian.PutUint16(t[tcpSrcPort:], lport)
	binary.BigEndian.PutUint16(t[tcpDstPort:], key.port)
	binary.BigEndian.PutUint32(t[tcpSeq:], seq)
	binary.BigEndian.PutUint32(t[tcpAck:], ack)
	t[tcpDataOff] = byte(tcpLen/4) << 4
	t[tcpFlags] = flags
	binary.BigEndian.PutUint16(t[tcpWindow:], window)
	t[tcpCsum], t[tcpCsum+1] = 0, 0
	t[tcpUrgent], t[tcpUrgent+1] = 0, 0
	if mss > 0 {
		t[tcpMinHdr], t[tcpMinHdr+1] = optMSS, optMSSLen
		binary.BigEndian.PutUint16(t[tcpMinHdr+2:], mss)
	}
	copy(t[tcpLen:], payload)
	seg := t[:tcpLen+len(payload)]
	binary.BigEndian.PutUint16(t[tcpCsum:], tcpChecksum(s.ip, key.ip, seg))
	s.ipID++
	putIPv4(buf[ethHdrLen:], s.ipID, s.ip, key.ip, len(seg))
	putEthernet(buf, mac, MAC, etherIPv4)
	return ethHdrLen + ipv4MinHdr + len(seg)
}

// settle recomputes Pending and rearms the timer after a change. s.mu is
// held.
func (s *Stack) settle() {
	pending := len(s.arps) > 0 || len(s.rsts) > 0
	var next time.Time
	for _, c := range s.order {
		pending = pending || c.wantsOutput()
		if t := c.deadline(); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	s.pending.Store(pending)
	if next.IsZero() || s.closed || (!s.timerAt.IsZero() && !next.Before(s.timerAt)) {
		return // an earlier (or no) wake-up is due: onTimer rearms
	}
	s.timerAt = next
	d := time.Until(next)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.onTimer)
	} else {
		s.timer.Reset(d)
	}
}

// onTimer runs the connections' timeouts: retransmissions, and the end of
// connections the guest left.
func (s *Stack) onTimer() {
	s.mu.Lock()
	s.timerAt = time.Time{}
	now := time.Now()
	for _, c := range append([]*conn(nil), s.order...) {
		c.timeout(now)
	}
	s.settle()
	s.mu.Unlock()
	s.kick()
}

// kick tells the device there are frames for the guest. Called without
// s.mu or with it: the notify function does not block.
func (s *Stack) kick() {
	if !s.pending.Load() {
		return
	}
	if fn := s.notify.Load(); fn != nil {
		(*fn)()
	}
}

// remove forgets c (s.mu held).
func (s *Stack) remove(c *conn) {
	if c.state == closed {
		return
	}
	c.state = closed
	delete(s.conns, c.key)
	for i, o := range s.order {
		if o == c {
			s.order = append(s.order[:i], s.order[i+1:]...)
			if s.next > i {
				s.next--
			}
			break
		}
	}
	if len(s.order) > 0 {
		s.next %= len(s.order)
	} else {
		s.next = 0
	}
	s.limits.release()
	s.m.ConnectionsDestroyed.Add(1)
	c.rcond.Broadcast()
	c.wcond.Broadcast()
}

// startServer starts the HTTP server at the first connection (s.mu held):
// a VM whose guest never asks pays for no goroutine.
func (s *Stack) startServer() {
	if s.srv != nil {
		return
	}
	s.srv = &http.Server{
		Handler:           s.handler,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          log.New(guestLogWriter{s.glog}, "", 0),
	}
	go s.srv.Serve(s.ln)
}

// guestLogWriter writes net/http's server errors (a guest's bad requests)
// to the rate-limited log at debug level.
type guestLogWriter struct{ g *virtio.GuestLog }

func (w guestLogWriter) Write(p []byte) (int, error) {
	if w.g.Enabled(slog.LevelDebug) {
		w.g.Debug("mmds: http server", "msg", strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// Close stops the stack: connections are dropped, the HTTP server stops,
// later frames are dropped.
func (s *Stack) Close() error {
	s.mu.Lock()
	s.closed = true
	s.ln.closed = true
	s.ln.cond.Broadcast()
	for _, c := range append([]*conn(nil), s.order...) {
		c.abort(net.ErrClosed)
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.arps, s.rsts = nil, nil
	s.pending.Store(false)
	srv := s.srv
	s.mu.Unlock()
	if srv != nil {
		return srv.Close()
	}
	return nil
}

// newISS is a connection's initial send sequence number (RFC 9293 3.4.1
// wants it unpredictable; the guest is the only peer).
func newISS() uint32 { return rand.Uint32() }

var errReset = syscall.ECONNRESET

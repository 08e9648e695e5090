package vsock

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// gstream is the guest's end of one connection, playing by the credit
// rules and checking the device does too.
type gstream struct {
	g              *guest
	port, hostPort uint32

	bufAlloc     uint32 // what the guest advertises
	fwd, fwdSent uint32 // bytes the guest consumed; fwd_cnt last told

	peerAlloc, peerFwd, tx uint32 // the device's credit; bytes sent to it

	recv      hash.Hash
	recvN     int
	shut      uint32 // SHUTDOWN flags received
	rst       bool
	creditReq int
}

func newStream(g *guest, port, hostPort uint32, bufAlloc uint32, from header) *gstream {
	return &gstream{g: g, port: port, hostPort: hostPort, bufAlloc: bufAlloc, recv: sha256.New(),
		peerAlloc: from.BufAlloc, peerFwd: from.FwdCnt}
}

func (s *gstream) hdr(op uint16) header {
	h := hdr(op, s.port, s.hostPort)
	h.BufAlloc, h.FwdCnt = s.bufAlloc, s.fwd
	s.fwdSent = s.fwd
	return h
}

func (s *gstream) handle(p pkt) {
	t := s.g.t
	t.Helper()
	if p.SrcPort != s.hostPort || p.DstPort != s.port || p.SrcCID != HostCID || p.DstCID != testCID || p.Type != typeStream {
		t.Fatalf("packet for another connection: %+v", p.header)
	}
	s.peerAlloc, s.peerFwd = p.BufAlloc, p.FwdCnt
	switch p.Op {
	case opRW:
		if s.shut&shutSend != 0 {
			t.Fatal("data after SHUTDOWN(SEND)")
		}
		// What the device sent beyond the fwd_cnt we last told it must
		// fit in the buffer we advertised.
		if s.fwd+p.Len-s.fwdSent > s.bufAlloc {
			t.Fatalf("device overran the guest's credit: %d bytes in flight, buf_alloc %d", s.fwd+p.Len-s.fwdSent, s.bufAlloc)
		}
		s.recv.Write(p.data)
		s.recvN += len(p.data)
		s.fwd += p.Len
	case opCreditRequest:
		s.creditReq++
		s.g.send(s.hdr(opCreditUpdate), nil)
	case opCreditUpdate:
	case opShutdown:
		s.shut |= p.Flags
	case opRST:
		s.rst = true
	default:
		t.Fatalf("unexpected packet %+v", p.header)
	}
}

func (s *gstream) credit() uint32 {
	if s.tx-s.peerFwd >= s.peerAlloc {
		return 0
	}
	return s.peerAlloc - (s.tx - s.peerFwd)
}

var chunks = []int{1, 100, 4096, 16384, MaxPacket, 30000, 777}

// pump sends out to the host and receives until want bytes came back and
// done() holds, handling credit both ways.
func (s *gstream) pump(out []byte, want int, done func() bool) {
	t := s.g.t
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	sent, turn := 0, 0
	for sent < len(out) || s.recvN < want || !done() {
		progress := s.g.poll()
		for len(s.g.inbox) > 0 {
			p := s.g.inbox[0]
			s.g.inbox = s.g.inbox[1:]
			s.handle(p)
			if s.rst {
				t.Fatal("connection reset by the device")
			}
		}
		if s.fwd-s.fwdSent >= s.bufAlloc/2 {
			s.g.send(s.hdr(opCreditUpdate), nil)
		}
		if n := min(int(s.credit()), chunks[turn%len(chunks)], len(out)-sent); n > 0 && len(s.g.txFree) > 0 {
			turn++
			s.g.send(s.hdr(opRW), out[sent:sent+n])
			sent += n
			s.tx += uint32(n)
			progress = true
		}
		if !progress {
			if time.Now().After(deadline) {
				t.Fatalf("stuck: sent %d/%d, received %d/%d, credit %d", sent, len(out), s.recvN, want, s.credit())
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(b ...[]byte) [32]byte {
	h := sha256.New()
	for _, x := range b {
		h.Write(x)
	}
	var s [32]byte
	h.Sum(s[:0])
	return s
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.UnixConn)
}

// hostConnect connects a host client to guest port port and answers the
// device's REQUEST as a listening guest would.
func hostConnect(t *testing.T, g *guest, port uint32, bufAlloc uint32) (*net.UnixConn, *bufio.Reader, *gstream) {
	t.Helper()
	c := dial(t, g.path)
	fmt.Fprintf(c, "CONNECT %d\n", port)
	req := g.next()
	if req.Op != opRequest || req.DstPort != port || req.SrcPort < FirstHostPort || req.SrcCID != HostCID || req.DstCID != testCID || req.BufAlloc != ConnBufAlloc {
		t.Fatalf("want a REQUEST to port %d; got %+v", port, req.header)
	}
	s := newStream(g, port, req.SrcPort, bufAlloc, req.header)
	g.send(s.hdr(opResponse), nil)
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", req.SrcPort) {
		t.Fatalf("client got %q, %v; want OK %d", line, err, req.SrcPort)
	}
	return c, r, s
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	for _, cfg := range []Config{
		{GuestCID: 0, UDSPath: filepath.Join(dir, "a")},
		{GuestCID: 2, UDSPath: filepath.Join(dir, "a")},
		{GuestCID: ^uint32(0), UDSPath: filepath.Join(dir, "a")},
		{GuestCID: 3},
		{GuestCID: 3, UDSPath: "/tmp/" + strings.Repeat("x", 103)},
		{GuestCID: 3, UDSPath: filepath.Join(dir, "missing", "a")},
	} {
		if d, err := New(cfg, nil); err == nil {
			d.Close()
			t.Errorf("%+v accepted", cfg)
		}
	}
	// 107 bytes is the longest path a sockaddr_un holds.
	long := filepath.Join(dir, strings.Repeat("y", 106-len(dir)))
	if len(long) != 107 {
		t.Fatalf("path of %d bytes", len(long))
	}
	d, err := New(Config{GuestCID: 3, UDSPath: long}, nil)
	if err != nil {
		t.Fatalf("107-byte path: %v", err)
	}
	d.Close()

	path := filepath.Join(dir, "v.sock")
	d, err = New(Config{GuestCID: 7, UDSPath: path, VsockID: "vsock0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no socket at %s: %v", path, err)
	}
	if _, err := New(Config{GuestCID: 8, UDSPath: path}, nil); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second device on the same path: %v", err)
	}
	if d.Type() != virtio.IDVsock || d.Features() != virtio.FVersion1 || len(d.QueueSizes()) != 3 {
		t.Fatal("device identity")
	}
	for _, n := range d.QueueSizes() {
		if n != 256 {
			t.Fatalf("queue size %d", n)
		}
	}
	cfg := make([]byte, 8)
	d.ReadConfig(0, cfg)
	if binary.LittleEndian.Uint64(cfg) != 7 {
		t.Fatalf("guest_cid % x", cfg)
	}
	b := []byte{0xff, 0xff}
	d.ReadConfig(8, b)
	d.WriteConfig(0, []byte{1, 2, 3, 4})
	d.ReadConfig(0, cfg[:4])
	if b[0] != 0 || b[1] != 0 || cfg[0] != 7 {
		t.Fatal("config space beyond guest_cid, or written")
	}
	if err := d.TransportReset(); !errors.Is(err, ErrNotActive) {
		t.Fatalf("TransportReset before activation: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket not removed: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConfigThroughMMIO(t *testing.T) {
	g := start(t)
	if cid := binary.LittleEndian.Uint64(g.m.Config(0, 8)); cid != testCID {
		t.Fatalf("guest_cid %d", cid)
	}
}

// TestHostConnect: a host client connects to a guest port and 1 MiB flows
// each way, checksummed, with the host reading slowly at first so that
// the device must hold guest data and the guest must wait for credit;
// then the client half-closes, the guest still sends, and the guest's
// SHUTDOWN ends the connection.
func TestHostConnect(t *testing.T) {
	g := start(t)
	c, r, s := hostConnect(t, g, 1234, 64<<10)

	toGuest := randomBytes(t, 1<<20)
	toHost := randomBytes(t, 1<<20)
	tail := []byte("after the client's half-close")
	type result struct {
		sum [32]byte
		n   int
		err error
	}
	read := make(chan result, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // let the host socket fill up
		b, err := io.ReadAll(r)
		read <- result{sum(b), len(b), err}
	}()
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(toGuest)
		if err == nil {
			err = c.CloseWrite()
		}
		wrote <- err
	}()

	s.pump(toHost, len(toGuest), func() bool { return s.shut&shutSend != 0 })
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if got := s.recv.Sum(nil); !bytes.Equal(got, sumSlice(toGuest)) {
		t.Fatal("data to the guest corrupted")
	}
	// Half-closed by the host: the guest can still send.
	s.g.send(s.hdr(opRW), tail)
	s.g.send(s.hdr(opShutdown), nil) // flags 0: nothing
	h := s.hdr(opShutdown)
	h.Flags = shutRcv | shutSend
	s.g.send(h, nil)
	for !s.rst {
		s.handle(g.next()) // CREDIT_UPDATEs, then RST
	}

	res := <-read
	if res.err != nil || res.n != len(toHost)+len(tail) || res.sum != sum(toHost, tail) {
		t.Fatalf("host received %d bytes (err %v), checksum match %v; want %d", res.n, res.err, res.sum == sum(toHost, tail), len(toHost)+len(tail))
	}
	m := &g.d.Metrics
	if m.ConnsAdded.Load() != 1 || m.ConnsRemoved.Load() != 1 || m.BadPackets.Load() != 0 || m.HostErrors.Load() != 0 {
		t.Fatalf("metrics: added %d removed %d bad %d host errors %d", m.ConnsAdded.Load(), m.ConnsRemoved.Load(), m.BadPackets.Load(), m.HostErrors.Load())
	}
	if m.RxBytes.Load() != uint64(len(toGuest)) || m.TxBytes.Load() != uint64(len(toHost)+len(tail)) {
		t.Fatalf("metrics: rx %d tx %d bytes", m.RxBytes.Load(), m.TxBytes.Load())
	}
	t.Logf("rx %d packets, tx %d packets, credit requests %d", m.RxPackets.Load(), m.TxPackets.Load(), s.creditReq)
}

func sumSlice(b []byte) []byte { s := sum(b); return s[:] }

func TestHostConnectRefused(t *testing.T) {
	g := start(t)

	// Nothing listens in the guest: RST closes the client.
	c := dial(t, g.path)
	fmt.Fprintf(c, "connect 80\n")
	req := g.next()
	if req.Op != opRequest || req.DstPort != 80 {
		t.Fatalf("got %+v", req.header)
	}
	g.send(hdr(opRST, 80, req.SrcPort), nil)
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("client read %q, %v; want EOF", b, err)
	}

	// Malformed or over-long CONNECT lines close the client; the guest
	// hears nothing.
	for _, line := range []string{"HELLO\n", "CONNECT x\n", "CONNECT 1 2\n", strings.Repeat("C", 40)} {
		c := dial(t, g.path)
		io.WriteString(c, line)
		// EOF, or ECONNRESET when bytes were left unread.
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("%q: client read %q, %v; want EOF", line, b, err)
		}
	}
	g.quiet(50 * time.Millisecond)

	// Host ports are unique.
	_, _, s1 := hostConnect(t, g, 9, 64<<10)
	_, _, s2 := hostConnect(t, g, 9, 64<<10)
	if s1.hostPort == s2.hostPort || s2.hostPort < FirstHostPort {
		t.Fatalf("host ports %d, %d", s1.hostPort, s2.hostPort)
	}
}

func TestHostConnectTimeout(t *testing.T) {
	g := start(t)
	c := dial(t, g.path)
	fmt.Fprintf(c, "CONNECT 81\n")
	req := g.next()
	t0 := time.Now()
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("client read %q, %v; want EOF", b, err)
	}
	if d := time.Since(t0); d < connectTimeout-300*time.Millisecond || d > connectTimeout+time.Second {
		t.Fatalf("closed after %v", d)
	}
	g.expect(opRST, req.SrcPort, 81)
	if g.d.Metrics.ConnectTimeouts.Load() != 1 {
		t.Fatal("timeout not counted")
	}
	// A late RESPONSE gets RST.
	g.send(hdr(opResponse, 81, req.SrcPort), nil)
	g.expect(opRST, req.SrcPort, 81)
}

// TestGuestConnect: the guest connects to a host port with a listener at
// <uds_path>_<port>, data flows both ways, the host closes, the guest
// answers with SHUTDOWN and gets RST; a port nobody listens on is refused
// with RST at once.
func TestGuestConnect(t *testing.T) {
	g := start(t)
	ln, err := net.Listen("unix", g.path+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	// The REQUEST advertises the guest's buffer of the stream below: the
	// device may send as soon as it has answered.
	req := hdr(opRequest, 7777, 5000)
	req.BufAlloc = 32 << 10
	g.send(req, nil)
	resp := g.expect(opResponse, 5000, 7777)
	if resp.BufAlloc != ConnBufAlloc {
		t.Fatalf("buf_alloc %d", resp.BufAlloc)
	}
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.SetDeadline(time.Now().Add(20 * time.Second))
	s := newStream(g, 7777, 5000, 32<<10, resp.header)

	toGuest := randomBytes(t, 256<<10)
	toHost := randomBytes(t, 256<<10)
	read := make(chan [32]byte, 1)
	go func() {
		b := make([]byte, len(toHost))
		_, err := io.ReadFull(srv, b)
		if err != nil {
			t.Error(err)
		}
		read <- sum(b)
	}()
	go func() {
		srv.Write(toGuest)
	}()
	s.pump(toHost, len(toGuest), func() bool { return true })
	if got := <-read; got != sum(toHost) {
		t.Fatal("data to the host corrupted")
	}
	if !bytes.Equal(s.recv.Sum(nil), sumSlice(toGuest)) {
		t.Fatal("data to the guest corrupted")
	}

	srv.Close()
	s.pump(nil, 0, func() bool { return s.shut&shutSend != 0 })
	h := s.hdr(opShutdown)
	h.Flags = shutRcv | shutSend
	g.send(h, nil)
	for !s.rst {
		s.handle(g.next())
	}

	// Nobody listens on 5001: RST at once.
	t0 := time.Now()
	g.send(hdr(opRequest, 7778, 5001), nil)
	g.expect(opRST, 5001, 7778)
	if d := time.Since(t0); d > time.Second {
		t.Fatalf("RST after %v", d)
	}
	if n := g.d.Metrics.ConnsRefused.Load(); n != 1 {
		t.Fatalf("%d refused", n)
	}
}

// TestGuestShutdownReceive: the guest's SHUTDOWN(RECEIVE) makes the host
// client's writes fail, and its data stops.
func TestGuestShutdownReceive(t *testing.T) {
	g := start(t)
	c, _, s := hostConnect(t, g, 4000, 64<<10)
	h := s.hdr(opShutdown)
	h.Flags = shutRcv
	g.send(h, nil)
	g.send(s.hdr(opRW), []byte("still sending")) // the guest may still send
	b := make([]byte, 13)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "still sending" {
		t.Fatalf("client read %q, %v", b, err)
	}
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c.Write([]byte("x"))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("client can still write after the guest's SHUTDOWN(RECEIVE)")
	}
	g.quiet(50 * time.Millisecond)
}

// TestCreditOverrun: a guest that ignores the device's credit while the
// host does not read is reset.
func TestCreditOverrun(t *testing.T) {
	g := start(t)
	ln, err := net.Listen("unix", g.path+"_6000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.send(hdr(opRequest, 1, 6000), nil)
	g.expect(opResponse, 6000, 1)
	srv, err := ln.Accept() // never read
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	data := make([]byte, MaxPacket)
	rst := false
	for sent := 0; !rst; sent += len(data) {
		if sent > 64<<20 {
			t.Fatal("no RST")
		}
		g.send(hdr(opRW, 1, 6000), data)
		g.poll()
		for _, p := range g.inbox {
			switch {
			case p.SrcPort != 6000 || p.DstPort != 1:
				t.Fatalf("got %+v", p.header)
			case p.Op == opRST:
				rst = true
			case p.Op != opCreditUpdate:
				t.Fatalf("got %+v", p.header)
			}
		}
		g.inbox = nil
	}
	if g.d.Metrics.HostErrors.Load() != 1 {
		t.Fatal("overrun not counted")
	}
}

// TestMalformed: packets with bad fields are dropped (bad addresses) or
// answered with RST, counted, and the device carries on.
func TestMalformed(t *testing.T) {
	g := start(t)
	ln, err := net.Listen("unix", g.path+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	bad := func() uint64 { return g.d.Metrics.BadPackets.Load() }
	raw := func(h header, payload int, flags uint16) {
		b := make([]byte, hdrSize+payload)
		h.encode(b)
		g.sendRaw(b, 0, flags)
	}

	// Dropped: the addresses are wrong, or there is no header.
	h := hdr(opRequest, 1, 5000)
	h.SrcCID = 4
	g.send(h, nil)
	h = hdr(opRequest, 1, 5000)
	h.DstCID = 1
	g.send(h, nil)
	g.sendRaw(make([]byte, 10), 0, 0)
	h = hdr(opRST, 1, 5000)
	h.Op = 99
	h.SrcCID = 1 << 40
	g.send(h, nil)
	g.quiet(50 * time.Millisecond)
	if bad() != 4 {
		t.Fatalf("%d bad packets counted; want 4", bad())
	}

	// Answered with RST.
	rstCases := []struct {
		name string
		send func()
	}{
		{"unknown op", func() { h := hdr(opRequest, 2, 5000); h.Op = 99; g.send(h, nil) }},
		{"op 0", func() { h := hdr(opRequest, 2, 5000); h.Op = 0; g.send(h, nil) }},
		{"seqpacket", func() { h := hdr(opRequest, 2, 5000); h.Type = 2; g.send(h, nil) }},
		{"huge len", func() { h := hdr(opRW, 2, 5000); h.Len = MaxPacket + 1; raw(h, MaxPacket+1, 0) }},
		{"len 4 GiB", func() { h := hdr(opRW, 2, 5000); h.Len = ^uint32(0); raw(h, 100, 0) }},
		{"len beyond chain", func() { h := hdr(opRW, 2, 5000); h.Len = 100; raw(h, 99, 0) }},
		{"request with payload", func() { h := hdr(opRequest, 2, 5000); h.Len = 5; raw(h, 5, 0) }},
		{"shutdown flags", func() { h := hdr(opShutdown, 2, 5000); h.Flags = 8; g.send(h, nil) }},
		{"writable tx buffer", func() { raw(hdr(opRequest, 2, 5000), 0, virtiotest.FWrite) }},
		{"RW without connection", func() { g.send(hdr(opRW, 2, 5000), []byte("hi")) }},
		{"RESPONSE without connection", func() { g.send(hdr(opResponse, 2, 5000), nil) }},
	}
	for _, tc := range rstCases {
		tc.send()
		p := g.next()
		if p.Op != opRST || p.SrcPort != 5000 || p.DstPort != 2 {
			t.Fatalf("%s: got %+v; want RST", tc.name, p.header)
		}
	}
	// RST to nothing is ignored.
	g.send(hdr(opRST, 2, 5000), nil)
	g.quiet(50 * time.Millisecond)

	// A connection that receives a malformed packet is reset.
	g.send(hdr(opRequest, 3, 5000), nil)
	g.expect(opResponse, 5000, 3)
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h = hdr(opRW, 3, 5000)
	h.Len = 1000
	raw(h, 10, 0)
	g.expect(opRST, 5000, 3)
	srv.SetDeadline(time.Now().Add(wait))
	if b, err := io.ReadAll(srv); err != nil || len(b) != 0 {
		t.Fatalf("host read %q, %v; want EOF", b, err)
	}
	// A second REQUEST on a live connection resets it too.
	g.send(hdr(opRequest, 4, 5000), nil)
	g.expect(opResponse, 5000, 4)
	g.send(hdr(opRequest, 4, 5000), nil)
	g.expect(opRST, 5000, 4)

	// Still serving.
	g.send(hdr(opRequest, 5, 5000), nil)
	g.expect(opResponse, 5000, 5)
	if g.d.Metrics.QueueBroken.Load() != 0 {
		t.Fatal("queue marked broken")
	}
}

// TestReset: a device reset closes every connection, and the device works
// again once the driver sets it up anew.
func TestReset(t *testing.T) {
	g := start(t)
	ln, err := net.Listen("unix", g.path+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, _, _ := hostConnect(t, g, 1234, 64<<10)
	g.send(hdr(opRequest, 7, 5000), nil)
	g.expect(opResponse, 5000, 7)
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	pending := dial(t, g.path)         // no CONNECT line yet
	time.Sleep(100 * time.Millisecond) // for the worker to accept it

	g.m.SetReg(0x070, 0) // Status := 0
	srv.SetDeadline(time.Now().Add(wait))
	for _, conn := range []net.Conn{c, srv, pending} {
		if b, err := io.ReadAll(conn); err != nil || len(b) != 0 {
			t.Fatalf("read %q, %v; want EOF", b, err)
		}
	}
	m := &g.d.Metrics
	if m.ConnsAdded.Load() != 2 || m.ConnsRemoved.Load() != 2 {
		t.Fatalf("added %d removed %d", m.ConnsAdded.Load(), m.ConnsRemoved.Load())
	}

	// A client may connect while the device is down; it is served once
	// the driver is back.
	early := dial(t, g.path)
	fmt.Fprintf(early, "CONNECT 22\n")
	g.setup()
	req := g.next()
	if req.Op != opRequest || req.DstPort != 22 {
		t.Fatalf("after reset: %+v", req.header)
	}
	g.send(hdr(opResponse, 22, req.SrcPort), nil)
	line, err := bufio.NewReader(early).ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", req.SrcPort) {
		t.Fatalf("client got %q, %v", line, err)
	}
}

func TestTransportReset(t *testing.T) {
	g := start(t)
	if err := g.d.TransportReset(); !errors.Is(err, ErrNoEventBuffer) {
		t.Fatalf("without an event buffer: %v", err)
	}
	c, _, _ := hostConnect(t, g, 1234, 64<<10)
	ev := g.m.Queues[evQ]
	head := ev.Add(virtiotest.Buf{WriteLen: eventSize})
	copy(ev.Written(head, 0, eventSize), []byte{0xff, 0xff, 0xff, 0xff})
	g.m.Notify(evQ)
	if err := g.d.TransportReset(); err != nil {
		t.Fatal(err)
	}
	h, n, err := g.m.WaitUsed(evQ, wait)
	if err != nil || h != head || n != eventSize {
		t.Fatalf("event used %d,%d,%v", h, n, err)
	}
	if id := binary.LittleEndian.Uint32(ev.Written(head, 0, eventSize)); id != eventTransportReset {
		t.Fatalf("event id %d", id)
	}
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("client read %q, %v; want EOF", b, err)
	}
	if err := g.d.TransportReset(); !errors.Is(err, ErrNoEventBuffer) {
		t.Fatalf("event buffer used twice: %v", err)
	}
	// The listener survives.
	hostConnect(t, g, 1235, 64<<10)
}

// TestRelayDoesNotAllocate: once a connection is up, relaying data either
// way allocates nothing, on the device's side at least (the measurement is
// process-wide, so the guest and host sides below avoid allocating too).
func TestRelayDoesNotAllocate(t *testing.T) {
	if virtiotest.RaceEnabled {
		t.Skip("the race detector allocates on the relay path; allocation counts are for normal builds")
	}
	g := start(t)
	ln, err := net.Listen("unix", g.path+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g.send(hdr(opRequest, 9, 5000), nil)
	g.expect(opResponse, 5000, 9)
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for len(g.txFree) < nTx {
		g.poll()
		runtime.Gosched()
	}

	const n = 4096
	pktBuf := g.slice(g.txAddr[0], hdrSize+n)
	h := hdr(opRW, 9, 5000)
	h.Len = n
	h.encode(pktBuf)
	buf := make([]byte, n)
	var fwd uint32
	spin := func(q int) (uint16, uint32) {
		deadline := time.Now().Add(wait)
		for {
			if head, l, ok := g.m.Queues[q].Used(); ok {
				return head, l
			}
			if time.Now().After(deadline) {
				panic("no used buffer")
			}
			runtime.Gosched()
		}
	}
	round := func() {
		// Guest to host: one 4 KiB RW packet, telling the device what
		// the guest has consumed.
		binary.LittleEndian.PutUint32(pktBuf[40:], fwd)
		g.chain(txQ, 0, g.txAddr[0], hdrSize+n, 1, 0)
		g.m.Notify(txQ)
		if _, err := io.ReadFull(srv, buf); err != nil {
			panic(err)
		}
		spin(txQ)
		// Host to guest: 4 KiB, in one or more RW packets (and maybe a
		// CREDIT_UPDATE).
		if _, err := srv.Write(buf); err != nil {
			panic(err)
		}
		for got := 0; got < n; {
			head, l := spin(rxQ)
			i := int(head / 2)
			var p header
			p.decode(g.slice(g.rxAddr[i], hdrSize))
			if p.Op == opRW {
				got += int(l) - hdrSize
				fwd += p.Len
			}
			g.postRx(i)
			g.m.Notify(rxQ)
		}
	}
	allocs := testing.AllocsPerRun(300, round)
	if allocs > 0.1 {
		t.Fatalf("%.2f allocations per round trip", allocs)
	}
	if g.d.Metrics.HostErrors.Load() != 0 || g.d.Metrics.BadPackets.Load() != 0 {
		t.Fatal("relay errors")
	}
}

package net

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"strings"
	"testing"

	"github.com/embervm/ember/mmds/netstack"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// The interceptor seam, driven as a guest would through virtio-mmio: the
// guest's ARP request for the MMDS address, a TCP handshake and an HTTP GET
// are answered on the receive queue by a real netstack.Stack; its other
// frames still reach the tap, and the tap's frames still reach the guest.

var (
	guestMAC = [6]byte{6, 0, 0, 0, 0, 2}
	guestIP  = [4]byte{169, 254, 1, 2}
	mmdsIP   = [4]byte{169, 254, 169, 254}
)

// startIntercepted is start with an MMDS stack answering "i-1234" at
// /id, attached before the driver activates the device.
func startIntercepted(t *testing.T) (*Device, *virtiotest.MMIODriver, *netstack.Metrics) {
	t.Helper()
	d := newDevice(t, Config{})
	m := &netstack.Metrics{}
	st := netstack.New(netstack.Config{IP: mmdsIP, Metrics: m,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/id" {
				http.NotFound(w, r)
				return
			}
			w.Write([]byte("i-1234"))
		})})
	t.Cleanup(func() { st.Close() })
	d.SetInterceptor(st)
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	drv, err := virtiotest.SetupMMIO(tr, mem, all&^FeatMrgRxBuf, 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	return d, drv, m
}

// guestFrame is an Ethernet frame from the guest to dst, behind a vnet
// header with nothing to offload.
func guestFrame(dst [6]byte, etherType uint16, payload []byte) []byte {
	f := make([]byte, HdrLen+14+len(payload))
	copy(f[HdrLen:], dst[:])
	copy(f[HdrLen+6:], guestMAC[:])
	binary.BigEndian.PutUint16(f[HdrLen+12:], etherType)
	copy(f[HdrLen+14:], payload)
	return f
}

func arpWhoHas(ip [4]byte) []byte {
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:], 1)
	binary.BigEndian.PutUint16(p[2:], 0x0800)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], 1)
	copy(p[8:], guestMAC[:])
	copy(p[14:], guestIP[:])
	copy(p[24:], ip[:])
	return guestFrame([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0x0806, p)
}

// tcpFrame is a TCP segment from the guest's port 4000 to the MMDS's 80
// (checksums left zero: the device does not check them, as a guest
// offloading them would leave them partial).
func tcpFrame(seq, ack uint32, flags byte, data string, mss bool) []byte {
	hl := 20
	if mss {
		hl = 24
	}
	p := make([]byte, 20+hl+len(data))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, 6
	copy(p[12:], guestIP[:])
	copy(p[16:], mmdsIP[:])
	tcp := p[20:]
	binary.BigEndian.PutUint16(tcp[0:], 4000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = byte(hl/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	if mss {
		tcp[20], tcp[21] = 2, 4
		binary.BigEndian.PutUint16(tcp[22:], 1460)
	}
	copy(tcp[hl:], data)
	return guestFrame(netstack.MAC, 0x0800, p)
}

// nextRx waits for the next frame on the receive queue and returns it
// without its vnet header, after giving the queue a fresh buffer.
func nextRx(t *testing.T, m *virtiotest.MMIODriver) []byte {
	t.Helper()
	head, n, err := m.WaitUsed(0, wait)
	if err != nil {
		t.Fatalf("no frame for the guest: %v", err)
	}
	f := m.Queues[0].Written(head, 0, int(n))
	rxHdr(t, f, 1)
	m.Queues[0].Add(virtiotest.Buf{WriteLen: 2048})
	m.Notify(0)
	return f[HdrLen:]
}

// segment parses an IPv4 TCP frame for the guest.
type segment struct {
	seq, ack uint32
	flags    byte
	data     []byte
}

func parseSegment(t *testing.T, f []byte) segment {
	t.Helper()
	if len(f) < 54 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[14+9] != 6 ||
		!bytes.Equal(f[0:6], guestMAC[:]) || !bytes.Equal(f[6:12], netstack.MAC[:]) ||
		!bytes.Equal(f[14+12:14+16], mmdsIP[:]) || !bytes.Equal(f[14+16:14+20], guestIP[:]) {
		t.Fatalf("not a TCP segment from the MMDS to the guest: % x", f)
	}
	tcp := f[34:]
	if binary.BigEndian.Uint16(tcp[0:]) != 80 || binary.BigEndian.Uint16(tcp[2:]) != 4000 {
		t.Fatalf("ports %d -> %d", binary.BigEndian.Uint16(tcp[0:]), binary.BigEndian.Uint16(tcp[2:]))
	}
	return segment{seq: binary.BigEndian.Uint32(tcp[4:]), ack: binary.BigEndian.Uint32(tcp[8:]), flags: tcp[13],
		data: tcp[int(tcp[12]>>4)*4:]}
}

func TestInterceptMMDS(t *testing.T) {
	d, m, mm := startIntercepted(t)
	sock := packetSocket(t, d)
	rx, tx := m.Queues[0], m.Queues[1]
	for range 8 {
		rx.Add(virtiotest.Buf{WriteLen: 2048})
	}
	m.Notify(0)
	toMMDS := 0 // frames sent to the MMDS
	send := func(f []byte) {
		if binary.BigEndian.Uint16(f[HdrLen+12:]) != testEtherType {
			toMMDS++
		}
		tx.Add(virtiotest.Buf{Data: f})
		m.Notify(1)
	}

	// ARP: who has 169.254.169.254? The MMDS's MAC.
	send(arpWhoHas(mmdsIP))
	f := nextRx(t, m)
	if binary.BigEndian.Uint16(f[12:]) != 0x0806 || binary.BigEndian.Uint16(f[14+6:]) != 2 ||
		!bytes.Equal(f[14+8:14+14], netstack.MAC[:]) || !bytes.Equal(f[14+14:14+18], mmdsIP[:]) ||
		!bytes.Equal(f[14+18:14+24], guestMAC[:]) || !bytes.Equal(f[14+24:14+28], guestIP[:]) {
		t.Fatalf("ARP reply % x", f)
	}

	// The handshake.
	send(tcpFrame(1000, 0, 0x02, "", true))
	synAck := parseSegment(t, nextRx(t, m))
	if synAck.flags != 0x12 || synAck.ack != 1001 {
		t.Fatalf("SYN-ACK: flags %#x ack %d", synAck.flags, synAck.ack)
	}
	// The GET, HTTP/1.0: the answer, then the MMDS's FIN.
	req := "GET /id HTTP/1.0\r\n\r\n"
	send(tcpFrame(1001, synAck.seq+1, 0x18, req, false))
	var resp []byte
	next := synAck.seq + 1
	for fin := false; !fin; {
		s := parseSegment(t, nextRx(t, m))
		if s.ack != 1001+uint32(len(req)) && len(s.data) > 0 {
			t.Fatalf("data segment acks %d, want %d", s.ack, 1001+len(req))
		}
		if s.seq != next {
			t.Fatalf("segment at %d, want %d", s.seq, next)
		}
		resp = append(resp, s.data...)
		next += uint32(len(s.data))
		if s.flags&0x01 != 0 {
			fin = true
			next++
		}
		if len(s.data) > 0 || fin {
			send(tcpFrame(1001+uint32(len(req)), next, 0x10, "", false))
		}
	}
	if !strings.HasPrefix(string(resp), "HTTP/1.0 200 OK\r\n") || !strings.HasSuffix(string(resp), "\r\n\r\ni-1234") {
		t.Fatalf("response %q", resp)
	}
	send(tcpFrame(1001+uint32(len(req)), next, 0x11, "", false)) // our FIN
	if s := parseSegment(t, nextRx(t, m)); s.flags != 0x10 || s.ack != 1002+uint32(len(req)) {
		t.Fatalf("last ACK: flags %#x ack %d", s.flags, s.ack)
	}

	// Other IPv4 to the MMDS is dropped; other frames reach the tap.
	udp := tcpFrame(1, 0, 0x02, "", false)
	udp[HdrLen+14+9] = 17
	send(udp)
	send(append(vnetHdr(), frame(100, 9)...))
	if got := recvSent(t, sock); !bytes.Equal(got, frame(100, 9)) {
		t.Fatalf("the tap got % x..., want the test frame", got[:16])
	}
	// And the tap's frames reach the guest.
	inject(t, sock, frame(80, 5))
	if got := nextRx(t, m); !bytes.Equal(got, frame(80, 5)) {
		t.Fatalf("from the tap: % x...", got[:16])
	}
	waitFor(t, "the MMDS connection to end", func() bool { return mm.ConnectionsDestroyed.Load() == 1 })
	if mm.RxAccepted.Load() != uint64(toMMDS) || mm.RxAcceptedUnusual.Load() != 1 || mm.ConnectionsCreated.Load() != 1 {
		t.Errorf("mmds metrics: accepted %d (want %d), unusual %d (want 1), connections %d (want 1)",
			mm.RxAccepted.Load(), toMMDS, mm.RxAcceptedUnusual.Load(), mm.ConnectionsCreated.Load())
	}
	if p := d.Metrics.TxPackets.Load(); p != 1 {
		t.Errorf("tap tx packets %d, want 1 (only the test frame)", p)
	}
}

package vsock

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// A test guest: a vsock driver over the virtiotest MMIO driver, with its
// own buffers (the virtiotest heap does not recycle) reused packet after
// packet, in three layouts so the device sees headers in one descriptor,
// in a descriptor of their own, and split across two.

const (
	testCID  = 3
	memSize  = 4 << 20
	bufBase  = 0x100000
	nRx      = 64
	rxData   = 4096
	nTx      = 32
	txBufLen = hdrSize + MaxPacket + 64 // room for over-long test packets
	wait     = 5 * time.Second
)

type pkt struct {
	header
	data []byte
}

type guest struct {
	t    *testing.T
	d    *Device
	tr   *virtio.MMIO
	m    *virtiotest.MMIODriver
	mem  *memory.Guest
	path string

	rxAddr [nRx]uint64
	txAddr [nTx]uint64
	txFree []int
	inbox  []pkt
}

// start makes a device with a unix socket in a fresh directory, drives it
// to DRIVER_OK and gives it rx buffers.
func start(t *testing.T) *guest {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	d, err := New(Config{GuestCID: testCID, UDSPath: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := virtiotest.NewMemory(memSize)
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); d.Close() })
	g := &guest{t: t, d: d, tr: tr, mem: mem, path: path}
	g.setup()
	return g
}

// setup (re)initialises the device through its registers, as the guest's
// driver does at probe, and gives it rx buffers.
func (g *guest) setup() {
	g.t.Helper()
	// Reset the device and start from zeroed rings, as a fresh driver.
	g.tr.Write(0x070, make([]byte, 4))
	clear(g.slice(0x10000, 3<<16))
	m, err := virtiotest.SetupMMIO(g.tr, g.mem, ^uint64(0), 0x10000)
	if err != nil {
		g.t.Fatal(err)
	}
	g.m, g.inbox, g.txFree = m, nil, nil
	a := uint64(bufBase)
	for i := range g.rxAddr {
		g.rxAddr[i] = a
		a += (hdrSize + rxData + 63) &^ 63
	}
	for i := range g.txAddr {
		g.txAddr[i] = a
		a += (txBufLen + 63) &^ 63
		g.txFree = append(g.txFree, i)
	}
	if a > memSize {
		g.t.Fatal("test buffers do not fit")
	}
	for i := range nRx {
		g.postRx(i)
	}
	m.Notify(rxQ)
}

func (g *guest) slice(addr uint64, n int) []byte {
	b, err := g.mem.Slice(addr, uint64(n))
	if err != nil {
		g.t.Fatal(err)
	}
	return b
}

// chain writes the descriptors of chain i (descriptors 2i and 2i+1) over
// the n bytes at addr in the given layout and publishes it on queue q.
func (g *guest) chain(q int, i int, addr uint64, n int, layout int, flags uint16) {
	drv := g.m.Queues[q]
	table, _, _ := drv.Rings()
	head := uint16(2 * i)
	split := 0
	switch layout % 3 {
	case 1:
		split = hdrSize
	case 2:
		split = 20 // the header spans two descriptors
	}
	if split == 0 || split >= n {
		drv.WriteDesc(table, head, addr, uint32(n), flags, 0)
	} else {
		drv.WriteDesc(table, head, addr, uint32(split), flags|virtiotest.FNext, head+1)
		drv.WriteDesc(table, head+1, addr+uint64(split), uint32(n-split), flags, 0)
	}
	drv.Publish(head)
}

func (g *guest) postRx(i int) {
	g.chain(rxQ, i, g.rxAddr[i], hdrSize+rxData, i, virtiotest.FWrite)
}

// poll collects what the device has put in the rx queue into the inbox,
// giving the buffers back, and frees finished tx buffers.
func (g *guest) poll() bool {
	got := false
	for {
		head, n, ok := g.m.Queues[rxQ].Used()
		if !ok {
			break
		}
		i := int(head / 2)
		if int(n) < hdrSize || int(n) > hdrSize+rxData {
			g.t.Fatalf("rx used length %d", n)
		}
		b := g.slice(g.rxAddr[i], int(n))
		var p pkt
		p.decode(b)
		if int(p.Len) != int(n)-hdrSize {
			g.t.Fatalf("rx packet len %d in a used buffer of %d", p.Len, n)
		}
		p.data = append([]byte(nil), b[hdrSize:]...)
		g.inbox = append(g.inbox, p)
		g.postRx(i)
		got = true
	}
	if got {
		g.m.Notify(rxQ)
	}
	for {
		head, _, ok := g.m.Queues[txQ].Used()
		if !ok {
			break
		}
		g.txFree = append(g.txFree, int(head/2))
	}
	return got
}

// next waits for the next rx packet.
func (g *guest) next() pkt {
	g.t.Helper()
	deadline := time.Now().Add(wait)
	for len(g.inbox) == 0 {
		if !g.poll() {
			if time.Now().After(deadline) {
				g.t.Fatal("no packet from the device")
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	p := g.inbox[0]
	g.inbox = g.inbox[1:]
	return p
}

// quiet checks that the device sends nothing for a while.
func (g *guest) quiet(d time.Duration) {
	g.t.Helper()
	time.Sleep(d)
	g.poll()
	if len(g.inbox) > 0 {
		g.t.Fatalf("unexpected packet %+v", g.inbox[0].header)
	}
}

// sendRaw puts b (header and payload) in a tx buffer of its own.
func (g *guest) sendRaw(b []byte, layout int, flags uint16) {
	g.t.Helper()
	deadline := time.Now().Add(wait)
	for len(g.txFree) == 0 {
		if !g.poll() {
			if time.Now().After(deadline) {
				g.t.Fatal("the device does not return tx buffers")
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	j := g.txFree[len(g.txFree)-1]
	g.txFree = g.txFree[:len(g.txFree)-1]
	copy(g.slice(g.txAddr[j], len(b)), b)
	g.chain(txQ, j, g.txAddr[j], len(b), layout, flags)
	g.m.Notify(txQ)
}

var layoutTurn int

// send sends a packet from the guest; Len is set from data.
func (g *guest) send(h header, data []byte) {
	g.t.Helper()
	h.Len = uint32(len(data))
	b := make([]byte, hdrSize+len(data))
	h.encode(b)
	copy(b[hdrSize:], data)
	layoutTurn++
	g.sendRaw(b, layoutTurn, 0)
}

// hdr is a header from the guest's port to the host's.
func hdr(op uint16, guestPort, hostPort uint32) header {
	return header{SrcCID: testCID, DstCID: HostCID, SrcPort: guestPort, DstPort: hostPort, Type: typeStream, Op: op, BufAlloc: 256 << 10}
}

// expect waits for a packet with op between the ports.
func (g *guest) expect(op uint16, hostPort, guestPort uint32) pkt {
	g.t.Helper()
	p := g.next()
	if p.Op != op || p.SrcPort != hostPort || p.DstPort != guestPort || p.SrcCID != HostCID || p.DstCID != testCID || p.Type != typeStream {
		g.t.Fatalf("got %+v; want op %d from host port %d to guest port %d", p.header, op, hostPort, guestPort)
	}
	return p
}

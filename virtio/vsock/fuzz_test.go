package vsock

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// FuzzConn layout: rings at fuzzRing + q*64 KiB, fuzzRx receive buffers
// of fuzzRxLen bytes from fuzzBuf, one transmit buffer and one event
// buffer after them.
const (
	fuzzRing  = 0x10000
	fuzzBuf   = 0x100000
	fuzzRx    = 32
	fuzzRxLen = hdrSize + 4096
	fuzzTxBuf = fuzzBuf + fuzzRx*fuzzRxLen
	fuzzEvBuf = fuzzTxBuf + hdrSize + 256
	fuzzMem   = fuzzEvBuf + 0x1000
	fuzzPort  = 5000 // the host port with a listener at <uds_path>_5000
)

// FuzzConn runs the device's packet and connection state machine through
// arbitrary sequences of guest packets (any op, flags, length, credit
// fields, between a few guest ports and host ports with and without a
// listener or a host-initiated connection), receive buffers, host clients
// connecting, writing and closing, spurious readiness events, and
// transport resets, with the worker's handler called on the fuzzing
// goroutine. Whatever happens: no panic; every packet the device gives the
// guest is a well-formed stream packet from the host to the guest; the
// connection table, slots, free list, rx list and counters agree after
// every step; and closing the device leaves no file descriptor open.
func FuzzConn(f *testing.F) {
	// Records of 6 bytes: kind, then five parameters.
	f.Add([]byte{0, opRequest, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, opRW, 0, 10, 3, 0, 1, 4, 0, 0, 0, 0})
	f.Add([]byte{2, 1, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 0, opResponse, 0x40, 0, 3, 0, 3, 9, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0})
	f.Add([]byte{0, opRequest, 1, 0, 0, 0, 0, opShutdown, 1, 3, 0, 0, 4, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0})
	f.Add([]byte{5, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 9, 2, 0, 1, 2})
	dir := f.TempDir()
	var run int
	f.Fuzz(func(t *testing.T, ops []byte) {
		run++
		fdsBefore := openFDs(t)
		path := filepath.Join(dir, fmt.Sprint(run))
		log := slog.New(slog.DiscardHandler)
		d, err := New(Config{GuestCID: testCID, UDSPath: path}, log)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(ln, &unix.SockaddrUnix{Name: fmt.Sprintf("%s_%d", path, fuzzPort)}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(ln, 64); err != nil {
			t.Fatal(err)
		}
		var host []int // host-side sockets: clients and accepted connections
		mem := memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: make([]byte, fuzzMem)}})
		var qs []*virtio.Queue
		var drv []*virtiotest.Driver
		var notify []*virtio.EventFD
		for i := range 3 {
			q := virtio.NewQueue(queueSize)
			dr, err := virtiotest.New(mem, q, fuzzRing+uint64(i)<<16, queueSize, i != evQ, fuzzRing+uint64(i)<<16+0x3000)
			if err != nil {
				t.Fatal(err)
			}
			e, err := virtio.NewEventFD()
			if err != nil {
				t.Fatal(err)
			}
			qs, drv, notify = append(qs, q), append(drv, dr), append(notify, e)
		}
		irq, err := virtio.NewEventFD()
		if err != nil {
			t.Fatal(err)
		}
		a := &virtio.Activation{Mem: mem, Features: virtio.FVersion1 | virtio.FEventIdx, Queues: qs, Notify: notify, Interrupt: virtio.NewInterrupt(irq)}
		if err := d.Activate(a); err != nil {
			t.Fatal(err)
		}
		// The worker was started by Activate; park it for good so the
		// handler runs here only.
		d.worker.Pause()

		rxTable, _, _ := drv[rxQ].Rings()
		rxOut := map[uint16]bool{}
		var rxFree []uint16
		for i := range uint16(fuzzRx) {
			rxFree = append(rxFree, i)
		}
		offerRx := func(k int) {
			for ; k > 0 && len(rxFree) > 0; k-- {
				i := rxFree[len(rxFree)-1]
				rxFree = rxFree[:len(rxFree)-1]
				drv[rxQ].WriteDesc(rxTable, i, fuzzBuf+uint64(i)*fuzzRxLen, fuzzRxLen, virtiotest.FWrite, 0)
				drv[rxQ].Publish(i)
				rxOut[i] = true
			}
		}
		offerRx(fuzzRx / 2)
		// events delivers the readiness of every socket, as the epoll
		// loop would, then drains the guest's queues.
		events := func() {
			d.handle(listenerToken)
			for slot, c := range d.slots {
				if c != nil {
					d.handle(connToken + uint32(slot))
				}
			}
			for {
				fd, _, err := unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
				if err != nil {
					break
				}
				host = append(host, fd)
			}
		}
		check := func() {
			t.Helper()
			for {
				head, n, ok := drv[rxQ].Used()
				if !ok {
					break
				}
				if !rxOut[head] {
					t.Fatalf("rx head %d used but not offered", head)
				}
				delete(rxOut, head)
				rxFree = append(rxFree, head)
				if n == 0 {
					continue
				}
				b, _ := mem.Slice(fuzzBuf+uint64(head)*fuzzRxLen, uint64(n))
				if n < hdrSize {
					t.Fatalf("rx packet of %d bytes", n)
				}
				var h header
				h.decode(b)
				switch {
				case h.SrcCID != HostCID || h.DstCID != testCID || h.Type != typeStream:
					t.Fatalf("rx packet with addresses %+v", h)
				case h.Op < opRequest || h.Op > opCreditRequest:
					t.Fatalf("rx packet with op %d", h.Op)
				case h.Len != n-hdrSize || h.Op != opRW && h.Len != 0:
					t.Fatalf("rx packet op %d len %d in %d bytes", h.Op, h.Len, n)
				}
			}
			for {
				if _, _, ok := drv[txQ].Used(); !ok {
					break
				}
			}
			live := 0
			for slot, c := range d.slots {
				if c == nil {
					continue
				}
				live++
				if c.slot != slot || c.dead {
					t.Fatalf("slot %d holds a connection of slot %d (dead %v)", slot, c.slot, c.dead)
				}
				if c.inMap && d.conns[connKey(c.local, c.peer)] != c {
					t.Fatalf("connection %d:%d not in the table under its ports", c.local, c.peer)
				}
			}
			if live+len(d.free) != MaxConns {
				t.Fatalf("%d live connections and %d free slots", live, len(d.free))
			}
			connecting := 0
			for _, c := range d.conns {
				if c.dead || d.slots[c.slot] != c {
					t.Fatalf("the table holds a dead or unslotted connection %d:%d", c.local, c.peer)
				}
				if c.state == stateConnecting {
					connecting++
				}
			}
			if connecting != d.connecting {
				t.Fatalf("%d connections connecting, counted %d", connecting, d.connecting)
			}
			if added, removed := d.Metrics.ConnsAdded.Load(), d.Metrics.ConnsRemoved.Load(); added-removed != uint64(len(d.conns)) {
				t.Fatalf("%d connections added, %d removed, %d in the table", added, removed, len(d.conns))
			}
			inRx := 0
			for c := d.rxHead; c != nil; c = c.rxNext {
				if c.dead || !c.inRx || inRx > MaxConns {
					t.Fatal("the rx list holds a dead connection or loops")
				}
				inRx++
			}
			if d.rstLen < 0 || d.rstLen > len(d.rsts) {
				t.Fatalf("%d RSTs queued", d.rstLen)
			}
		}

		txTable, _, _ := drv[txQ].Rings()
		evTable, _, _ := drv[evQ].Rings()
		guestPorts := [...]uint32{1, 2, 3}
		bufAllocs := [...]uint32{0, 64, 32 << 10, 256 << 10}
		for len(ops) >= 6 {
			k, p := ops[0], ops[1:6]
			ops = ops[6:]
			switch k % 8 {
			case 0: // a guest packet
				h := header{SrcCID: testCID, DstCID: HostCID, Type: typeStream, Op: uint16(p[0] % 8),
					SrcPort: guestPorts[p[1]%3], Flags: uint32(p[2] % 4), BufAlloc: bufAllocs[p[3]%4], FwdCnt: uint32(p[4]) * 100}
				switch p[1] >> 2 % 4 {
				case 0:
					h.DstPort = fuzzPort
				case 1:
					h.DstPort = fuzzPort + 1 // nobody listens
				default:
					h.DstPort = FirstHostPort + uint32(p[1]>>4%2)
				}
				if p[2]&0x80 != 0 {
					h.SrcCID = 7 // not the guest's
				}
				payload := 0
				if h.Op == opRW || p[2]&0x40 != 0 {
					payload = int(p[3]) % 200
				}
				h.Len = uint32(payload)
				b, _ := mem.Slice(fuzzTxBuf, uint64(hdrSize+payload))
				h.encode(b)
				for i := range payload {
					b[hdrSize+i] = byte(i) + p[4]
				}
				drv[txQ].WriteDesc(txTable, 0, fuzzTxBuf, uint32(hdrSize+payload), 0, 0)
				drv[txQ].Publish(0)
				d.handle(txQ)
				events()
			case 1: // receive buffers
				offerRx(int(p[0]%8) + 1)
				d.handle(rxQ)
			case 2: // a host client asks for a guest port
				fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				host = append(host, fd)
				if unix.Connect(fd, &unix.SockaddrUnix{Name: path}) == nil {
					line := fmt.Sprintf("CONNECT %d\n", guestPorts[p[0]%3])
					if p[1]&1 != 0 {
						line = line[:int(p[2])%len(line)] // cut short, or malformed
					}
					unix.Write(fd, []byte(line))
				}
				events()
			case 3: // a host socket writes
				if len(host) > 0 {
					unix.Write(host[int(p[0])%len(host)], make([]byte, int(p[1])*32))
				}
				events()
			case 4: // a host socket closes (or shuts down writing)
				if len(host) > 0 {
					i := int(p[0]) % len(host)
					if p[1]&1 != 0 {
						unix.Shutdown(host[i], unix.SHUT_WR)
					} else {
						unix.Close(host[i])
						host = append(host[:i], host[i+1:]...)
					}
				}
				events()
			case 5: // a host socket reads what it was sent
				buf := make([]byte, 4096)
				for _, fd := range host {
					unix.Read(fd, buf)
				}
				events()
			case 6: // an event buffer, and a transport reset (a snapshot)
				if p[0]&1 != 0 {
					drv[evQ].WriteDesc(evTable, 0, fuzzEvBuf, uint32(p[1]%8), virtiotest.FWrite, 0)
					drv[evQ].Publish(0)
				}
				d.transportReset()
				for {
					if _, _, ok := drv[evQ].Used(); !ok {
						break
					}
				}
			case 7: // spurious readiness
				d.handle(connToken + uint32(binary.LittleEndian.Uint16(p[:2]))%MaxConns)
				d.handle(timerToken)
				d.handle(listenerToken)
			}
			check()
		}
		d.Close()
		for _, fd := range host {
			unix.Close(fd)
		}
		unix.Close(ln)
		for _, e := range notify {
			e.Close()
		}
		irq.Close()
		if after := openFDs(t); after != fdsBefore {
			t.Fatalf("%d file descriptors open after closing everything, %d before", after, fdsBefore)
		}
	})
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

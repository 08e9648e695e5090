package net

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

const all = ^uint64(0)

func TestNewRefusesBadConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{IfaceID: "eth0"}, "host_dev_name is empty"},
		{Config{IfaceID: "eth0", HostDevName: "a234567890123456"}, "IFNAMSIZ"},
		{Config{IfaceID: "eth0", HostDevName: "a/b"}, "cannot contain"},
		{Config{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "01:00:5e:00:00:01"}, "multicast"},
		{Config{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "ff:ff:ff:ff:ff:ff"}, "multicast"},
		{Config{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "00:00:00:00:00:00"}, "all-zero"},
		{Config{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06-00-00-00-00-01"}, "colons"},
		{Config{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:00:00:0g:01"}, "not a hex byte"},
		{Config{IfaceID: "eth0", HostDevName: "tap0", MTU: 67}, "mtu 67"},
		{Config{IfaceID: "eth0", HostDevName: "tap0", MTU: 65536}, "mtu 65536"},
	} {
		d, err := New(tc.cfg, nil)
		if err == nil {
			d.Close()
			t.Errorf("%+v: accepted", tc.cfg)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "eth0") {
			t.Errorf("%+v: %v; want it to name eth0 and say %q", tc.cfg, err, tc.want)
		}
	}
	if mac, err := ParseMAC("06:AB:cd:00:00:01"); err != nil || FormatMAC(mac) != "06:ab:cd:00:00:01" {
		t.Errorf("ParseMAC: %v %v", mac, err)
	}
}

func TestNewTapErrors(t *testing.T) {
	d := newDevice(t, Config{})
	inNS(t, func() error {
		for _, tc := range []struct{ name, want string }{
			{d.HostDevName(), "busy"},
			{"lo", "not a single-queue tap"},
		} {
			d2, err := New(Config{IfaceID: "eth1", HostDevName: tc.name}, nil)
			if err == nil {
				d2.Close()
				t.Errorf("%s: attached twice", tc.name)
				continue
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"`+tc.name+`"`) {
				t.Errorf("%s: %v; want it to name the tap and say %q", tc.name, err, tc.want)
			}
		}
		return nil
	})
}

func TestFeaturesAndConfig(t *testing.T) {
	d, m := start(t, Config{GuestMAC: "06:00:ac:10:00:02", MTU: 1400}, all)
	for _, f := range []uint64{FeatCsum, FeatGuestCsum, FeatGuestTSO4, FeatGuestTSO6, FeatGuestUFO,
		FeatHostTSO4, FeatHostTSO6, FeatHostUFO, FeatMrgRxBuf, FeatMAC, FeatMTU, virtio.FVersion1, virtio.FEventIdx} {
		if m.Features&f == 0 {
			t.Errorf("feature %#x not negotiated (got %#x)", f, m.Features)
		}
	}
	if m.Features&(FeatGuestECN|1<<16|1<<17|1<<22) != 0 {
		t.Errorf("unexpected features in %#x", m.Features)
	}
	cfg := m.Config(0, 12)
	if !bytes.Equal(cfg[0:6], []byte{6, 0, 0xac, 0x10, 0, 2}) ||
		binary.LittleEndian.Uint16(cfg[6:]) != 1 || binary.LittleEndian.Uint16(cfg[8:]) != 1 ||
		binary.LittleEndian.Uint16(cfg[10:]) != 1400 {
		t.Errorf("config space % x", cfg)
	}
	if b := m.Config(12, 4); !bytes.Equal(b, make([]byte, 4)) {
		t.Errorf("config beyond mtu % x, want zeros", b)
	}
	if mac, ok := d.GuestMAC(); !ok || FormatMAC(mac) != "06:00:ac:10:00:02" {
		t.Errorf("GuestMAC %v %v", mac, ok)
	}

	d2 := newDevice(t, Config{})
	if f := d2.Features(); f&(FeatMAC|FeatMTU) != 0 || f&FeatMrgRxBuf == 0 {
		t.Errorf("no mac, no mtu: features %#x", f)
	}
}

func TestTx(t *testing.T) {
	d, m := start(t, Config{}, all)
	sock := packetSocket(t, d)
	tx := m.Queues[1]
	f1, f2, f3 := frame(60, 1), frame(1514, 2), frame(300, 3)

	// One buffer; the header split over two buffers; an indirect table.
	tx.Add(virtiotest.Buf{Data: append(vnetHdr(), f1...)})
	tx.Add(virtiotest.Buf{Data: vnetHdr()[:5]}, virtiotest.Buf{Data: append(vnetHdr()[5:], f2[:100]...)}, virtiotest.Buf{Data: f2[100:]})
	tx.AddIndirect(virtiotest.Buf{Data: vnetHdr()}, virtiotest.Buf{Data: f3})
	m.Notify(1)
	for _, want := range [][]byte{f1, f2, f3} {
		if got := recvSent(t, sock); !bytes.Equal(got, want) {
			t.Fatalf("sent %d bytes % x..., want %d bytes % x...", len(got), got[:16], len(want), want[:16])
		}
	}
	for range 3 {
		if _, n, err := m.WaitUsed(1, wait); err != nil || n != 0 {
			t.Fatalf("used: %d %v", n, err)
		}
	}
	if d.Metrics.TxPackets.Load() != 3 || d.Metrics.TxBytes.Load() != 60+1514+300 || d.Metrics.TxDrops.Load() != 0 {
		t.Errorf("metrics: packets %d bytes %d drops %d", d.Metrics.TxPackets.Load(), d.Metrics.TxBytes.Load(), d.Metrics.TxDrops.Load())
	}
}

func TestTxHostileChains(t *testing.T) {
	d, m := start(t, Config{}, all)
	sock := packetSocket(t, d)
	tx := m.Queues[1]

	tx.Add(virtiotest.Buf{Data: vnetHdr()[:11]})                          // header cut short
	tx.Add(virtiotest.Buf{Data: vnetHdr()}, virtiotest.Buf{WriteLen: 64}) // writable buffer
	tx.Add(virtiotest.Buf{Data: []byte{}})                                // nothing at all
	tx.Add(virtiotest.Buf{Data: vnetHdr()})                               // a header, no frame
	tx.Add(virtiotest.Buf{Data: append(vnetHdr(), 1, 2, 3)})              // shorter than Ethernet
	// Longer than 64 KiB: two descriptors over the same 40000 bytes.
	desc, _, _ := tx.Rings()
	tx.WriteDesc(desc, 250, 0, 40000, virtiotest.FNext, 251)
	tx.WriteDesc(desc, 251, 0, 40000, 0, 0)
	tx.Publish(250)
	tx.Add(virtiotest.Buf{Data: append(vnetHdr(), frame(100, 7)...)}) // and a good one
	m.Notify(1)
	if got := recvSent(t, sock); !bytes.Equal(got, frame(100, 7)) {
		t.Fatalf("sent % x..., want the good frame", got[:16])
	}
	for i := range 7 {
		if _, n, err := m.WaitUsed(1, wait); err != nil || n != 0 {
			t.Fatalf("chain %d: used %d %v", i, n, err)
		}
	}
	if b, dr, p := d.Metrics.BadChains.Load(), d.Metrics.TxDrops.Load(), d.Metrics.TxPackets.Load(); b != 3 || dr != 3 || p != 1 {
		t.Errorf("bad chains %d (want 3), drops %d (want 3), packets %d (want 1)", b, dr, p)
	}
}

// rxHdr checks the vnet header of a received frame.
func rxHdr(t *testing.T, h []byte, numBuffers uint16) {
	t.Helper()
	if h[hdrFlags] != 0 || h[hdrGSOType] != gsoNone || binary.LittleEndian.Uint16(h[hdrNumBuffers:]) != numBuffers {
		t.Fatalf("header % x: want flags 0, gso none, num_buffers %d", h[:HdrLen], numBuffers)
	}
}

func TestRx(t *testing.T) {
	d, m := start(t, Config{}, all&^FeatMrgRxBuf)
	sock := packetSocket(t, d)
	rx := m.Queues[0]

	// A frame in a one-buffer chain.
	h1 := rx.Add(virtiotest.Buf{WriteLen: 1526})
	m.Notify(0)
	f := frame(100, 1)
	inject(t, sock, f)
	head, n, err := m.WaitUsed(0, wait)
	if err != nil || head != h1 || n != HdrLen+100 {
		t.Fatalf("used head %d len %d %v; want %d, %d", head, n, err, h1, HdrLen+100)
	}
	got := rx.Written(head, 0, int(n))
	rxHdr(t, got, 1)
	if !bytes.Equal(got[HdrLen:], f) {
		t.Fatal("frame differs")
	}

	// The header split over two buffers.
	h2 := rx.Add(virtiotest.Buf{WriteLen: 6}, virtiotest.Buf{WriteLen: 1520})
	m.Notify(0)
	f = frame(1000, 2)
	inject(t, sock, f)
	head, n, err = m.WaitUsed(0, wait)
	if err != nil || head != h2 || n != HdrLen+1000 {
		t.Fatalf("used head %d len %d %v", head, n, err)
	}
	got = gather(m, 0, head, []int{6, 1520}, int(n))
	rxHdr(t, got, 1)
	if !bytes.Equal(got[HdrLen:], f) {
		t.Fatal("frame differs")
	}

	// Without mergeable buffers a chain must hold the whole frame: a
	// longer frame is dropped and the chain kept for the next.
	h3 := rx.Add(virtiotest.Buf{WriteLen: 200})
	m.Notify(0)
	inject(t, sock, frame(500, 3))
	waitFor(t, "the drop", func() bool { return d.Metrics.RxDrops.Load() == 1 })
	inject(t, sock, frame(60, 4))
	head, n, err = m.WaitUsed(0, wait)
	if err != nil || head != h3 || n != HdrLen+60 {
		t.Fatalf("used head %d len %d %v", head, n, err)
	}
	if got := rx.Written(head, 0, int(n)); !bytes.Equal(got[HdrLen:], frame(60, 4)) {
		t.Fatal("frame differs")
	}
	if p, b := d.Metrics.RxPackets.Load(), d.Metrics.RxBytes.Load(); p != 3 || b != 1160 {
		t.Errorf("rx packets %d bytes %d", p, b)
	}
}

func TestRxMergeable(t *testing.T) {
	d, m := start(t, Config{}, all)
	sock := packetSocket(t, d)
	rx := m.Queues[0]
	var heads []uint16
	for range 8 {
		heads = append(heads, rx.Add(virtiotest.Buf{WriteLen: 256}))
	}
	m.Notify(0)

	// 12+1000 bytes take four chains, in order, num_buffers in the first.
	f := frame(1000, 1)
	inject(t, sock, f)
	var got []byte
	for i, want := range []uint32{256, 256, 256, 244} {
		head, n, err := m.WaitUsed(0, wait)
		if err != nil || head != heads[i] || n != want {
			t.Fatalf("chain %d: head %d len %d %v; want %d, %d", i, head, n, err, heads[i], want)
		}
		got = append(got, rx.Written(head, 0, int(n))...)
	}
	rxHdr(t, got, 4)
	if !bytes.Equal(got[HdrLen:], f) {
		t.Fatal("frame differs")
	}
	// A short one takes the next chain.
	inject(t, sock, frame(50, 2))
	head, n, err := m.WaitUsed(0, wait)
	if err != nil || head != heads[4] || n != HdrLen+50 {
		t.Fatalf("head %d len %d %v", head, n, err)
	}
	rxHdr(t, rx.Written(head, 0, int(n)), 1)
	if d.Metrics.RxPackets.Load() != 2 || d.Metrics.RxDrops.Load() != 0 {
		t.Errorf("rx packets %d drops %d", d.Metrics.RxPackets.Load(), d.Metrics.RxDrops.Load())
	}
}

// With no receive buffers the device leaves frames in the tap, and takes
// them up, none lost, when the driver adds buffers.
func TestRxPauseResume(t *testing.T) {
	d, m := start(t, Config{}, all&^FeatMrgRxBuf)
	sock := packetSocket(t, d)
	rx := m.Queues[0]
	for i := range 3 {
		inject(t, sock, frame(60+i, byte(i)))
	}
	time.Sleep(50 * time.Millisecond)
	if _, _, ok := rx.Used(); ok || d.Metrics.RxDrops.Load() != 0 {
		t.Fatalf("frames used or dropped without buffers (drops %d)", d.Metrics.RxDrops.Load())
	}
	for range 3 {
		rx.Add(virtiotest.Buf{WriteLen: 1526})
	}
	m.Notify(0)
	for i := range 3 {
		head, n, err := m.WaitUsed(0, wait)
		if err != nil || n != uint32(HdrLen+60+i) {
			t.Fatalf("frame %d: len %d %v", i, n, err)
		}
		if got := rx.Written(head, 0, int(n)); !bytes.Equal(got[HdrLen:], frame(60+i, byte(i))) {
			t.Fatalf("frame %d differs", i)
		}
	}
}

// A frame longer than the buffers held waits, partly delivered, in the
// overflow buffer until the driver adds more.
func TestRxMergeableWaitsForBuffers(t *testing.T) {
	d, m := start(t, Config{}, all)
	sock := packetSocket(t, d)
	rx := m.Queues[0]
	heads := []uint16{rx.Add(virtiotest.Buf{WriteLen: 256}), rx.Add(virtiotest.Buf{WriteLen: 128}, virtiotest.Buf{WriteLen: 128})}
	m.Notify(0)
	f := frame(1000, 9)
	inject(t, sock, f)
	time.Sleep(50 * time.Millisecond)
	if _, _, ok := rx.Used(); ok || d.Metrics.RxDrops.Load() != 0 {
		t.Fatal("a frame that does not fit yet was used or dropped")
	}
	heads = append(heads, rx.Add(virtiotest.Buf{WriteLen: 256}), rx.Add(virtiotest.Buf{WriteLen: 1024}))
	m.Notify(0)
	var got []byte
	for i, want := range []uint32{256, 256, 256, 244} {
		head, n, err := m.WaitUsed(0, wait)
		if err != nil || head != heads[i] || n != want {
			t.Fatalf("chain %d: head %d len %d %v", i, head, n, err)
		}
		sizes := []int{256}
		if i == 1 {
			sizes = []int{128, 128}
		}
		got = append(got, gather(m, 0, head, sizes, int(n))...)
	}
	rxHdr(t, got, 4)
	if !bytes.Equal(got[HdrLen:], f) {
		t.Fatal("frame differs")
	}
}

func TestRxHostileChains(t *testing.T) {
	d, m := start(t, Config{}, all)
	sock := packetSocket(t, d)
	rx := m.Queues[0]
	bad1 := rx.Add(virtiotest.Buf{Data: make([]byte, 64)})                                 // device-readable
	bad2 := rx.Add(virtiotest.Buf{WriteLen: 8})                                            // shorter than the header
	bad3 := rx.Add(virtiotest.Buf{WriteLen: 600}, virtiotest.Buf{Data: make([]byte, 600)}) // mixed
	good := rx.Add(virtiotest.Buf{WriteLen: 1526})
	m.Notify(0)
	inject(t, sock, frame(80, 1))
	for _, want := range []uint16{bad1, bad2, bad3} {
		if head, n, err := m.WaitUsed(0, wait); err != nil || head != want || n != 0 {
			t.Fatalf("bad chain: head %d len %d %v; want %d, 0", head, n, err, want)
		}
	}
	if head, n, err := m.WaitUsed(0, wait); err != nil || head != good || n != HdrLen+80 {
		t.Fatalf("good chain: head %d len %d %v", head, n, err)
	}
	if b := d.Metrics.BadChains.Load(); b != 3 {
		t.Errorf("bad chains %d, want 3", b)
	}
}

// Frames from the host stack: with GUEST_CSUM the tap hands over a UDP
// datagram with its checksum left to do (NEEDS_CSUM), without it a
// complete one with flags 0.
func TestRxChecksumOffload(t *testing.T) {
	for _, csum := range []bool{true, false} {
		t.Run(map[bool]string{true: "csum", false: "nocsum"}[csum], func(t *testing.T) { testRxChecksum(t, csum) })
	}
}

func testRxChecksum(t *testing.T, csum bool) {
	want := all
	if !csum {
		want &^= FeatGuestCsum
	}
	d, m := start(t, Config{}, want)
	tapName := d.HostDevName()
	ip(t, "addr", "add", "10.199.0.1/24", "dev", tapName)
	ip(t, "neigh", "replace", "10.199.0.2", "lladdr", "06:00:00:00:00:02", "dev", tapName, "nud", "permanent")
	rx := m.Queues[0]
	rx.Add(virtiotest.Buf{WriteLen: 1526})
	m.Notify(0)
	inNS(t, func() error {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(s)
		return unix.Sendto(s, bytes.Repeat([]byte{0x5a}, 100), 0, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{10, 199, 0, 2}})
	})
	head, n, err := m.WaitUsed(0, wait)
	if err != nil || n != HdrLen+14+20+8+100 {
		t.Fatalf("csum %v: len %d %v", csum, n, err)
	}
	h := rx.Written(head, 0, int(n))
	const needsCsum = 1
	csumStart, csumOff := binary.LittleEndian.Uint16(h[6:]), binary.LittleEndian.Uint16(h[8:])
	if csum && (h[hdrFlags] != needsCsum || csumStart != 34 || csumOff != 6) {
		t.Errorf("with GUEST_CSUM: header % x; want NEEDS_CSUM from byte 34, checksum at +6", h[:HdrLen])
	}

	if !csum && (h[hdrFlags] != 0 || !udpChecksumOK(h[HdrLen:])) {
		t.Errorf("without GUEST_CSUM: header % x; want flags 0 and a complete UDP checksum", h[:HdrLen])
	}
	if binary.BigEndian.Uint16(h[HdrLen+12:]) != 0x0800 || h[HdrLen+23] != unix.IPPROTO_UDP {
		t.Errorf("not an IPv4 UDP frame: % x", h[HdrLen:HdrLen+24])
	}
}

func TestRateLimiters(t *testing.T) {
	ops := &ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{Size: 1, RefillTime: 40}}
	d, m := start(t, Config{RxRateLimit: ops, TxRateLimit: ops}, all)
	sock := packetSocket(t, d)
	t0 := time.Now()
	for i := range 3 {
		m.Queues[1].Add(virtiotest.Buf{Data: append(vnetHdr(), frame(60, byte(i))...)})
	}
	m.Notify(1)
	for i := range 3 {
		if got := recvSent(t, sock); !bytes.Equal(got, frame(60, byte(i))) {
			t.Fatalf("tx frame %d differs", i)
		}
	}
	for range 3 {
		m.Queues[0].Add(virtiotest.Buf{WriteLen: 256})
	}
	m.Notify(0)
	for i := range 3 {
		inject(t, sock, frame(60, byte(i)))
	}
	for i := range 3 {
		head, n, err := m.WaitUsed(0, wait)
		if err != nil || !bytes.Equal(m.Queues[0].Written(head, 0, int(n))[HdrLen:], frame(60, byte(i))) {
			t.Fatalf("rx frame %d: %v", i, err)
		}
	}
	if el := time.Since(t0); el < 120*time.Millisecond {
		t.Errorf("6 frames at 1 per 40 ms (2 free) took %v", el)
	}
	if d.Metrics.TxThrottled.Load() == 0 || d.Metrics.RxThrottled.Load() == 0 {
		t.Errorf("throttled: tx %d rx %d", d.Metrics.TxThrottled.Load(), d.Metrics.RxThrottled.Load())
	}
}

// The frame paths allocate nothing: the device is driven on the test's
// goroutine, without its worker.
func TestNoAllocationPerFrame(t *testing.T) {
	d := newDevice(t, Config{})
	sock := packetSocket(t, d)
	mem := virtiotest.NewMemory(0x40000)
	rxq, txq := virtio.NewQueue(queueSize), virtio.NewQueue(queueSize)
	rx, err := virtiotest.New(mem, rxq, 0x10000, queueSize, true, 0x20000)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := virtiotest.New(mem, txq, 0x20000, queueSize, true, 0x30000)
	if err != nil {
		t.Fatal(err)
	}
	var fds [3]*virtio.EventFD
	for i := range fds {
		if fds[i], err = virtio.NewEventFD(); err != nil {
			t.Fatal(err)
		}
		defer fds[i].Close()
	}
	d.start(&virtio.Activation{Mem: mem, Features: all, Queues: []*virtio.Queue{rxq, txq},
		Notify: fds[:2], Interrupt: virtio.NewInterrupt(fds[2])})

	txHead := tx.Add(virtiotest.Buf{Data: vnetHdr()[:4]}, virtiotest.Buf{Data: append(vnetHdr()[4:], frame(200, 1)...)})
	d.processTx()
	if allocs := testing.AllocsPerRun(50, func() {
		tx.Publish(txHead)
		d.processTx()
	}); allocs != 0 || d.Metrics.TxPackets.Load() != 52 {
		t.Errorf("tx: %v allocations per frame (%d sent)", allocs, d.Metrics.TxPackets.Load())
	}

	rxHead := rx.Add(virtiotest.Buf{WriteLen: 2048})
	f := frame(300, 2)
	recv := func() {
		rx.Publish(rxHead)
		unix.Write(sock, f)
		for want := d.Metrics.RxPackets.Load() + 1; d.Metrics.RxPackets.Load() < want; {
			d.rx.tapReady = true
			d.processRx()
		}
	}
	// The first publish is the Add's: drain it before measuring.
	inject(t, sock, f)
	for deadline := time.Now().Add(wait); d.Metrics.RxPackets.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no frame received (drops %d, read errors %d)", d.Metrics.RxDrops.Load(), d.Metrics.TapReadErrors.Load())
		}
		d.rx.tapReady = true
		d.processRx()
	}
	if allocs := testing.AllocsPerRun(50, recv); allocs != 0 {
		t.Errorf("rx: %v allocations per frame", allocs)
	}
}

// udpChecksumOK verifies the UDP checksum of an Ethernet frame holding an
// IPv4 datagram without options.
func udpChecksumOK(f []byte) bool {
	ipHdr, udp := f[14:34], f[34:]
	if binary.BigEndian.Uint16(udp[6:]) == 0 {
		return false // no checksum at all
	}
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ipHdr[12:20]) // source and destination
	sum += unix.IPPROTO_UDP + uint32(len(udp))
	add(udp)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

// TestUpdateRateLimitsWhilePaused: a limiter update on a paused device
// sends and delivers nothing and raises no interrupt; the frames that
// waited for the old limits move after Resume.
func TestUpdateRateLimitsWhilePaused(t *testing.T) {
	one := &ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{Size: 1, RefillTime: ratelimit.MaxRefillTime}}
	d, m := start(t, Config{RxRateLimit: one, TxRateLimit: one}, all)
	sock := packetSocket(t, d)
	for i := range 2 {
		m.Queues[1].Add(virtiotest.Buf{Data: append(vnetHdr(), frame(60, byte(i))...)})
		m.Queues[0].Add(virtiotest.Buf{WriteLen: 256})
	}
	m.Notify(0)
	m.Notify(1)
	if got := recvSent(t, sock); !bytes.Equal(got, frame(60, 0)) {
		t.Fatal("first tx frame differs")
	}
	inject(t, sock, frame(60, 10))
	inject(t, sock, frame(60, 11))
	if _, _, err := m.WaitUsed(0, wait); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both directions throttled", func() bool {
		return d.Metrics.TxThrottled.Load() > 0 && d.Metrics.RxThrottled.Load() > 0
	})
	d.Pause()
	m.Interrupts()
	rxUsed, txUsed := m.UsedIdx(0), m.UsedIdx(1)
	if err := d.UpdateRateLimits(&ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{}}, &ratelimit.Config{Ops: &ratelimit.TokenBucketConfig{}}); err != nil {
		t.Fatal(err)
	}
	if r, x := m.UsedIdx(0), m.UsedIdx(1); r != rxUsed || x != txUsed {
		t.Fatalf("used indices rx %d tx %d after the update, were %d and %d: the paused device moved frames", r, x, rxUsed, txUsed)
	}
	if n := m.Interrupts(); n != 0 {
		t.Fatalf("%d interrupts raised by the paused device", n)
	}
	if d.Metrics.TxPackets.Load() != 1 || d.Metrics.RxPackets.Load() != 1 {
		t.Fatalf("packets tx %d rx %d while paused, want 1 each", d.Metrics.TxPackets.Load(), d.Metrics.RxPackets.Load())
	}
	d.Resume()
	if got := recvSent(t, sock); !bytes.Equal(got, frame(60, 1)) {
		t.Fatal("second tx frame differs")
	}
	head, n, err := m.WaitUsed(0, wait)
	if err != nil || !bytes.Equal(m.Queues[0].Written(head, 0, int(n))[HdrLen:], frame(60, 11)) {
		t.Fatalf("second rx frame after resume: %v", err)
	}
}

// TestTxEmptyNotifyNoInterrupt: a transmit notification that finds no new
// frame raises no interrupt, with or without EVENT_IDX; one that sends a
// frame raises one. The handler runs on the test's goroutine with the
// worker parked.
func TestTxEmptyNotifyNoInterrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		want uint64
	}{{"event_idx", all}, {"no_event_idx", all &^ virtio.FEventIdx}} {
		t.Run(tc.name, func(t *testing.T) {
			d, m := start(t, Config{}, tc.want)
			sock := packetSocket(t, d)
			d.Pause()
			defer d.Resume()
			for round := range 3 {
				d.handle(txQueue)
				if n, st := m.Interrupts(), m.Reg(0x060); n != 0 || st != 0 {
					t.Fatalf("round %d: empty notification raised %d interrupts (status %#x)", round, n, st)
				}
				// Ask for an interrupt at the next used buffer, as a
				// driver enabling callbacks does (EVENT_IDX).
				m.Queues[1].SetUsedEvent(m.UsedIdx(1))
				m.Queues[1].Add(virtiotest.Buf{Data: append(vnetHdr(), frame(60, byte(round))...)})
				d.handle(txQueue)
				if n := m.Interrupts(); n != 1 {
					t.Fatalf("round %d: a sent frame raised %d interrupts, want 1", round, n)
				}
				if _, _, err := m.WaitUsed(1, wait); err != nil {
					t.Fatal(err)
				}
				recvSent(t, sock)
			}
		})
	}
}

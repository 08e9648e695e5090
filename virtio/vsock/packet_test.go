package vsock

import (
	"testing"

	"github.com/embervm/ember/virtio"
)

// chainOf splits b into descriptors at the given cut points.
func chainOf(b []byte, cuts ...int) *virtio.Chain {
	c := virtio.NewChain()
	prev := 0
	for _, cut := range append(cuts, len(b)) {
		c.Descs = append(c.Descs, virtio.Desc{Buf: b[prev:cut]})
		prev = cut
	}
	return c
}

func packet(h header, payload int) []byte {
	b := make([]byte, hdrSize+payload)
	h.encode(b)
	for i := range payload {
		b[hdrSize+i] = byte(i)
	}
	return b
}

func TestHeaderRoundTrip(t *testing.T) {
	h := header{SrcCID: 0x0102030405060708, DstCID: 2, SrcPort: 0x11223344, DstPort: 0x55667788, Len: 0x99aabbcc,
		Type: 0xddee, Op: 0xff00, Flags: 0x01020304, BufAlloc: 0x05060708, FwdCnt: 0x090a0b0c}
	var b [hdrSize]byte
	h.encode(b[:])
	// Spot-check the little-endian layout of struct virtio_vsock_hdr.
	if b[0] != 0x08 || b[7] != 0x01 || b[8] != 2 || b[16] != 0x44 || b[20] != 0x88 || b[24] != 0xcc ||
		b[28] != 0xee || b[30] != 0x00 || b[31] != 0xff || b[32] != 0x04 || b[36] != 0x08 || b[40] != 0x0c || b[43] != 0x09 {
		t.Fatalf("layout: % x", b)
	}
	var g header
	g.decode(b[:])
	if g != h {
		t.Fatalf("round trip: %+v != %+v", g, h)
	}
}

func TestParseTx(t *testing.T) {
	good := hdr(opRW, 1000, 2000)
	good.Len = 100
	mod := func(f func(h *header)) header { h := good; f(&h); return h }
	cases := []struct {
		name    string
		h       header
		payload int
		cuts    []int
		err     error
	}{
		{"one descriptor", good, 100, nil, nil},
		{"header apart", good, 100, []int{hdrSize}, nil},
		{"header split", good, 100, []int{1, 20, 43}, nil},
		{"payload split", good, 100, []int{hdrSize, hdrSize + 1, hdrSize + 50}, nil},
		{"payload longer than len", good, 150, nil, nil},
		{"control", mod(func(h *header) { h.Op, h.Len = opRequest, 0 }), 0, nil, nil},
		{"zero-length RW", mod(func(h *header) { h.Len = 0 }), 0, nil, nil},
		{"shutdown both", mod(func(h *header) { h.Op, h.Len, h.Flags = opShutdown, 0, 3 }), 0, []int{30}, nil},
		{"max payload", mod(func(h *header) { h.Len = MaxPacket }), MaxPacket, []int{hdrSize}, nil},
		{"any credit", mod(func(h *header) { h.BufAlloc, h.FwdCnt = ^uint32(0), ^uint32(0) }), 100, nil, nil},

		{"src_cid", mod(func(h *header) { h.SrcCID = 4 }), 100, nil, errSrcCID},
		{"src_cid high bits", mod(func(h *header) { h.SrcCID = 1<<32 | testCID }), 100, nil, errSrcCID},
		{"dst_cid", mod(func(h *header) { h.DstCID = testCID }), 100, nil, errDstCID},
		{"type", mod(func(h *header) { h.Type = 2 }), 100, nil, errType},
		{"op 0", mod(func(h *header) { h.Op = 0 }), 100, nil, errOp},
		{"op 8", mod(func(h *header) { h.Op = 8 }), 100, nil, errOp},
		{"len over max", mod(func(h *header) { h.Len = MaxPacket + 1 }), MaxPacket + 1, nil, errLenMax},
		{"len huge", mod(func(h *header) { h.Len = ^uint32(0) }), 100, nil, errLenMax},
		{"len beyond chain", good, 99, []int{hdrSize}, errLenChain},
		{"control with payload", mod(func(h *header) { h.Op = opCreditUpdate }), 100, nil, errControlLen},
		{"shutdown flags", mod(func(h *header) { h.Op, h.Len, h.Flags = opShutdown, 0, 4 }), 0, nil, errShutdownFlags},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := chainOf(packet(tc.h, tc.payload), tc.cuts...)
			var h header
			var scratch [hdrSize]byte
			err := parseTx(c, testCID, &h, &scratch)
			if err != tc.err {
				t.Fatalf("err %v; want %v", err, tc.err)
			}
			if err == nil && h != tc.h {
				t.Fatalf("decoded %+v; want %+v", h, tc.h)
			}
			if err == nil && tc.h.Op == opRW {
				got := make([]byte, h.Len)
				k := newCursor(c, hdrSize, int(h.Len))
				n := 0
				for b := k.next(); b != nil; b = k.next() {
					n += copy(got[n:], b)
				}
				if n != int(h.Len) {
					t.Fatalf("payload %d bytes; want %d", n, h.Len)
				}
				for i, v := range got {
					if v != byte(i) {
						t.Fatalf("payload byte %d = %d", i, v)
					}
				}
			}
		})
	}

	var h header
	var scratch [hdrSize]byte
	if err := parseTx(chainOf(make([]byte, hdrSize-1), 10), testCID, &h, &scratch); err != errShortHeader {
		t.Fatalf("short chain: %v", err)
	}
	if err := parseTx(virtio.NewChain(), testCID, &h, &scratch); err != errShortHeader {
		t.Fatalf("empty chain: %v", err)
	}
	c := chainOf(packet(good, 100), hdrSize)
	c.Descs[1].Write = true
	if err := parseTx(c, testCID, &h, &scratch); err != errWritableTx {
		t.Fatalf("writable buffer: %v", err)
	}
	for _, err := range []error{errShortHeader, errSrcCID, errDstCID} {
		if answerable(err) {
			t.Errorf("%v answered with RST", err)
		}
	}
}

func TestRxRoom(t *testing.T) {
	c := chainOf(make([]byte, 100), 20)
	for i := range c.Descs {
		c.Descs[i].Write = true
	}
	if n, err := rxRoom(c); n != 100 || err != nil {
		t.Fatalf("rxRoom = %d, %v", n, err)
	}
	var h header
	h.Op = opRW
	h.Len = 56
	var b [hdrSize]byte
	h.encode(b[:])
	scatter(c, 0, b[:])
	var g header
	var got [hdrSize]byte
	gather(c, 0, got[:])
	g.decode(got[:])
	if g != h {
		t.Fatalf("scatter/gather across descriptors: %+v", g)
	}
	c.Descs[1].Write = false
	if _, err := rxRoom(c); err != errReadableRx {
		t.Fatalf("readable rx buffer: %v", err)
	}
	c = chainOf(make([]byte, hdrSize-1))
	c.Descs[0].Write = true
	if _, err := rxRoom(c); err != errShortRx {
		t.Fatalf("short rx chain: %v", err)
	}
}

func TestParseConnect(t *testing.T) {
	good := map[string]uint32{
		"CONNECT 52\n":         52,
		"connect 0\n":          0,
		"Connect 4294967295\n": 4294967295,
		"CONNECT  7 \r\n":      7,
	}
	for line, want := range good {
		if p, ok := parseConnect([]byte(line)); !ok || p != want {
			t.Errorf("%q: %d, %v; want %d", line, p, ok, want)
		}
	}
	for _, line := range []string{"CONNECT\n", "CONNECT \n", "CONNECT 4294967296\n", "CONNECT -1\n", "CONNECT 1 2\n",
		"CONNEC 1\n", "CONNECT 0x10\n", "CONNECT 12", "LISTEN 1\n", "CONNECT 99999999999\n", ""} {
		if p, ok := parseConnect([]byte(line)); ok {
			t.Errorf("%q accepted as port %d", line, p)
		}
	}
}

// FuzzPacketHeader feeds arbitrary bytes, cut into up to four descriptors,
// to the tx parser: it must never panic, and whatever it accepts must obey
// every rule the device relies on.
func FuzzPacketHeader(f *testing.F) {
	good := hdr(opRW, 1000, 2000)
	good.Len = 10
	f.Add(packet(good, 10), uint8(0), uint8(0), uint8(0))
	f.Add(packet(good, 10), uint8(20), uint8(44), uint8(50))
	f.Add(packet(hdr(opShutdown, 1, 2), 0), uint8(1), uint8(2), uint8(3))
	f.Add(packet(hdr(opRequest, 1, 2), 5), uint8(43), uint8(0), uint8(0))
	f.Add([]byte{1, 2, 3}, uint8(1), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, c1, c2, c3 uint8) {
		var cuts []int
		for _, c := range []uint8{c1, c2, c3} {
			if int(c) > 0 && int(c) < len(b) && (len(cuts) == 0 || int(c) > cuts[len(cuts)-1]) {
				cuts = append(cuts, int(c))
			}
		}
		c := chainOf(b, cuts...)
		var h header
		var scratch [hdrSize]byte
		err := parseTx(c, testCID, &h, &scratch)
		if err != nil {
			return
		}
		var want header
		want.decode(b)
		switch {
		case h != want:
			t.Fatalf("decoded %+v; the bytes say %+v", h, want)
		case h.SrcCID != testCID || h.DstCID != HostCID || h.Type != typeStream:
			t.Fatalf("bad addresses accepted: %+v", h)
		case h.Op < opRequest || h.Op > opCreditRequest:
			t.Fatalf("op %d accepted", h.Op)
		case h.Len > MaxPacket || int(h.Len) > len(b)-hdrSize:
			t.Fatalf("len %d accepted with %d bytes", h.Len, len(b))
		case h.Op != opRW && h.Len != 0:
			t.Fatalf("control packet with len %d accepted", h.Len)
		case h.Op == opShutdown && h.Flags > 3:
			t.Fatalf("shutdown flags %#x accepted", h.Flags)
		}
		k := newCursor(c, hdrSize, int(h.Len))
		n := 0
		for p := k.next(); p != nil; p = k.next() {
			n += len(p)
		}
		if n != int(h.Len) {
			t.Fatalf("payload walk found %d bytes; len is %d", n, h.Len)
		}
	})
}

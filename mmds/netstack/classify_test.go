package netstack

import (
	"encoding/binary"
	"net/http"
	"testing"
)

var testIP = [4]byte{169, 254, 169, 254}

// ethFrame builds a frame from the guest (06:00:00:00:00:02) with payload p.
func ethFrame(etherType uint16, p []byte) []byte {
	f := make([]byte, ethHdrLen+len(p))
	putEthernet(f, MAC, [6]byte{6, 0, 0, 0, 0, 2}, etherType)
	copy(f[ethHdrLen:], p)
	return f
}

func arpRequest(tpa [4]byte) []byte {
	p := make([]byte, arpLen)
	putARPReply(p, [6]byte{6, 0, 0, 0, 0, 2}, [4]byte{169, 254, 1, 2}, [6]byte{}, tpa)
	binary.BigEndian.PutUint16(p[arpOp:], arpOpRequest)
	return ethFrame(etherARP, p)
}

func ipv4Frame(proto byte, dst [4]byte, payload []byte) []byte {
	p := make([]byte, ipv4MinHdr+len(payload))
	putIPv4(p, 1, [4]byte{169, 254, 1, 2}, dst, len(payload))
	p[ipProto] = proto
	copy(p[ipv4MinHdr:], payload)
	return ethFrame(etherIPv4, p)
}

func TestClassify(t *testing.T) {
	other := [4]byte{10, 0, 0, 1}
	vlan := arpRequest(testIP)
	binary.BigEndian.PutUint16(vlan[ethType:], 0x8100)
	reply := arpRequest(testIP)
	binary.BigEndian.PutUint16(reply[ethHdrLen+arpOp:], arpOpReply)
	ipv6 := ipv4Frame(ipProtoTCP, testIP, nil)
	ipv6[ethHdrLen] = 6 << 4
	for _, tc := range []struct {
		name  string
		frame []byte
		want  Kind
	}{
		{"ARP request for the MMDS", arpRequest(testIP), ARP},
		{"ARP request for another address", arpRequest(other), Other},
		{"ARP reply", reply, Other},
		{"VLAN-tagged", vlan, Other},
		{"TCP to the MMDS", ipv4Frame(ipProtoTCP, testIP, make([]byte, 20)), TCP},
		{"UDP to the MMDS", ipv4Frame(17, testIP, make([]byte, 8)), IPv4},
		{"TCP elsewhere", ipv4Frame(ipProtoTCP, other, make([]byte, 20)), Other},
		{"not IPv4 inside", ipv6, Other},
		{"short", arpRequest(testIP)[:20], Other},
		{"nothing", nil, Other},
	} {
		if got := Classify(tc.frame, testIP); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
		if len(tc.frame) >= HeadLen {
			if got := Classify(tc.frame[:HeadLen], testIP); got != tc.want {
				t.Errorf("%s, first HeadLen bytes: %v, want %v", tc.name, got, tc.want)
			}
		}
	}
}

// FuzzClassify: the classifier reads only what it is given and agrees
// with itself on the frame's head.
func FuzzClassify(f *testing.F) {
	f.Add(arpRequest(testIP))
	f.Add(ipv4Frame(ipProtoTCP, testIP, make([]byte, 20)))
	f.Add(ipv4Frame(17, testIP, nil))
	f.Fuzz(func(t *testing.T, frame []byte) {
		k := Classify(frame, testIP)
		if k < Other || k > IPv4 {
			t.Fatalf("kind %d", k)
		}
		if len(frame) > HeadLen && Classify(frame[:HeadLen], testIP) != k {
			t.Fatal("the head and the whole frame disagree")
		}
	})
}

// FuzzStack feeds a stack arbitrary frames (each prefixed by a byte that
// picks a kind of header to put in front, so that the fuzzer reaches the
// TCP states) and drains its replies: nothing panics, every reply is a
// well-formed frame within the buffer, and the connections stay within
// the budget.
func FuzzStack(f *testing.F) {
	syn := tcpHeader(1000, 0, flagSYN, 65535)
	f.Add([]byte{1}, syn, []byte{1}, tcpHeader(1001, 0, flagACK, 1000))
	f.Add([]byte{0}, arpRequest(testIP)[ethHdrLen:], []byte{1}, append(tcpHeader(1001, 5, flagACK|flagPSH, 500), "GET / HTTP/1.0\r\n\r\n"...))
	f.Add([]byte{2}, []byte{1, 2, 3}, []byte{1}, tcpHeader(7, 7, flagRST|flagFIN|flagSYN, 0))
	f.Fuzz(func(t *testing.T, k1, p1, k2, p2 []byte) {
		limits := NewLimits(3)
		s := New(Config{IP: testIP, Handler: http.NotFoundHandler(), Limits: limits})
		defer s.Close()
		buf := make([]byte, MaxFrameLen)
		for _, in := range []struct{ k, p []byte }{{k1, p1}, {k2, p2}, {k2, p2}} {
			var frame []byte
			switch {
			case len(in.k) > 0 && in.k[0]%3 == 0:
				frame = ethFrame(etherARP, in.p)
			case len(in.k) > 0 && in.k[0]%3 == 1:
				frame = ipv4Frame(ipProtoTCP, testIP, in.p)
			default:
				frame = in.p
			}
			if s.Wants(frame[:min(len(frame), HeadLen)]) {
				s.Intercept(frame, false)
			}
			for i := 0; s.Pending() && i < 100; i++ {
				n := s.Reply(buf)
				if n == 0 {
					break
				}
				checkReply(t, buf[:n])
			}
		}
		if n := limits.n.Load(); n < 0 || n > 3 {
			t.Fatalf("%d connections held, budget 3", n)
		}
	})
}

// tcpHeader is a TCP header from port 4000 to 80.
func tcpHeader(seq, ack uint32, flags byte, window uint16) []byte {
	b := make([]byte, tcpMinHdr)
	binary.BigEndian.PutUint16(b[tcpSrcPort:], 4000)
	binary.BigEndian.PutUint16(b[tcpDstPort:], port)
	binary.BigEndian.PutUint32(b[tcpSeq:], seq)
	binary.BigEndian.PutUint32(b[tcpAck:], ack)
	b[tcpDataOff] = tcpMinHdr / 4 << 4
	b[tcpFlags] = flags
	binary.BigEndian.PutUint16(b[tcpWindow:], window)
	return b
}

// checkReply checks a frame the stack sent: an ARP reply, or an IPv4 TCP
// segment with correct checksums.
func checkReply(t *testing.T, f []byte) {
	t.Helper()
	if len(f) < ethHdrLen || [6]byte(f[ethSrc:ethSrc+6]) != MAC {
		t.Fatalf("reply % x: not from the MMDS's MAC", f)
	}
	switch binary.BigEndian.Uint16(f[ethType:]) {
	case etherARP:
		if len(f) != ethHdrLen+arpLen || binary.BigEndian.Uint16(f[ethHdrLen+arpOp:]) != arpOpReply {
			t.Fatalf("bad ARP reply % x", f)
		}
	case etherIPv4:
		ip, ok := parseIPv4(f[ethHdrLen:])
		if !ok || fold(checksum(0, ip.hdr)) != 0 || ip.hdr[ipTTL] != replyTTL {
			t.Fatalf("bad IPv4 header % x", f)
		}
		src := [4]byte(ip.hdr[ipSrc:])
		dst := [4]byte(ip.hdr[ipDst:])
		if src != testIP {
			t.Fatalf("reply from %v", src)
		}
		sum := checksum(0, src[:])
		sum = checksum(sum, dst[:])
		sum += ipProtoTCP + uint32(len(ip.payload))
		if fold(checksum(sum, ip.payload)) != 0 {
			t.Fatalf("bad TCP checksum % x", f)
		}
		if _, ok := parseTCP(ip.payload); !ok {
			t.Fatalf("bad TCP header % x", f)
		}
	default:
		t.Fatalf("reply of EtherType %#x", binary.BigEndian.Uint16(f[ethType:]))
	}
}

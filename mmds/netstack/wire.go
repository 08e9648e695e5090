package netstack

import "encoding/binary"

// Wire formats: Ethernet II (IEEE 802.3), ARP for IPv4 over Ethernet (RFC
// 826), IPv4 (RFC 791) and TCP (RFC 9293). Offsets are from the start of
// each header.
const (
	ethHdrLen   = 14
	etherIPv4   = 0x0800
	etherARP    = 0x0806
	ethDst      = 0
	ethSrc      = 6
	ethType     = 12
	macLen      = 6
	ipv4AddrLen = 4

	arpLen       = 28 // the ARP packet for IPv4 over Ethernet
	arpHTypeEth  = 1
	arpOpRequest = 1
	arpOpReply   = 2
	arpHType     = 0
	arpPType     = 2
	arpHLen      = 4
	arpPLen      = 5
	arpOp        = 6
	arpSHA       = 8
	arpSPA       = 14
	arpTHA       = 18
	arpTPA       = 24

	ipv4MinHdr   = 20
	ipVerIHL     = 0
	ipTotalLen   = 2
	ipID         = 4
	ipFlagsFrag  = 6
	ipTTL        = 8
	ipProto      = 9
	ipChecksum   = 10
	ipSrc        = 12
	ipDst        = 16
	ipProtoTCP   = 6
	ipFlagDF     = 0x4000
	ipFlagMF     = 0x2000
	ipFragOffset = 0x1fff

	tcpMinHdr  = 20
	tcpSrcPort = 0
	tcpDstPort = 2
	tcpSeq     = 4
	tcpAck     = 8
	tcpDataOff = 12
	tcpFlags   = 13
	tcpWindow  = 14
	tcpCsum    = 16
	tcpUrgent  = 18

	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10

	optEnd    = 0
	optNOP    = 1
	optMSS    = 2
	optMSSLen = 4
)

// ipv4Packet is a checked IPv4 packet: its header length and the TCP (or
// other) payload within the total length.
type ipv4Packet struct {
	hdr     []byte // the header, options included
	payload []byte
}

// parseIPv4 checks an IPv4 packet. The header checksum is not checked: the
// packet comes from the guest over a virtual link, and a guest that gets
// it wrong only hurts itself (Firecracker's MMDS does not check it either).
// A total length of 0 (a GSO packet over 64 KiB) means the rest of the
// frame. A fragment is refused: the MMDS does not reassemble.
func parseIPv4(b []byte) (ipv4Packet, bool) {
	if len(b) < ipv4MinHdr || b[ipVerIHL]>>4 != 4 {
		return ipv4Packet{}, false
	}
	hl := int(b[ipVerIHL]&0xf) * 4
	total := int(binary.BigEndian.Uint16(b[ipTotalLen:]))
	if total == 0 {
		total = len(b)
	}
	if hl < ipv4MinHdr || total < hl || total > len(b) {
		return ipv4Packet{}, false
	}
	if ff := binary.BigEndian.Uint16(b[ipFlagsFrag:]); ff&ipFlagMF != 0 || ff&ipFragOffset != 0 {
		return ipv4Packet{}, false
	}
	return ipv4Packet{hdr: b[:hl], payload: b[hl:total]}, true
}

// tcpSegment is a parsed TCP segment.
type tcpSegment struct {
	srcPort, dstPort uint16
	seq, ack         uint32
	flags            byte
	window           uint16
	mss              uint16 // the MSS option, 0 if absent
	payload          []byte
}

// parseTCP parses a TCP segment. The checksum is not checked: a guest
// that offloads it hands over frames whose checksum is partial (the vnet
// header's NEEDS_CSUM), and the link is virtual (Firecracker does not
// check it either).
func parseTCP(b []byte) (tcpSegment, bool) {
	if len(b) < tcpMinHdr {
		return tcpSegment{}, false
	}
	off := int(b[tcpDataOff]>>4) * 4
	if off < tcpMinHdr || off > len(b) {
		return tcpSegment{}, false
	}
	s := tcpSegment{
		srcPort: binary.BigEndian.Uint16(b[tcpSrcPort:]), dstPort: binary.BigEndian.Uint16(b[tcpDstPort:]),
		seq: binary.BigEndian.Uint32(b[tcpSeq:]), ack: binary.BigEndian.Uint32(b[tcpAck:]),
		flags: b[tcpFlags], window: binary.BigEndian.Uint16(b[tcpWindow:]), payload: b[off:],
	}
	// Options (RFC 9293 3.2): only MSS matters here; a malformed list is
	// ignored from the bad option on.
	opts := b[tcpMinHdr:off]
	for len(opts) > 0 {
		switch opts[0] {
		case optEnd:
			opts = nil
			continue
		case optNOP:
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || int(opts[1]) < 2 || int(opts[1]) > len(opts) {
			break
		}
		if opts[0] == optMSS && opts[1] == optMSSLen {
			s.mss = binary.BigEndian.Uint16(opts[2:])
		}
		opts = opts[opts[1]:]
	}
	return s, true
}

// checksum is the Internet checksum (RFC 1071) of b added to sum.
func checksum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// fold folds a checksum sum to 16 bits and complements it.
func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// putEthernet writes an Ethernet header.
func putEthernet(b []byte, dst, src [macLen]byte, etherType uint16) {
	copy(b[ethDst:], dst[:])
	copy(b[ethSrc:], src[:])
	binary.BigEndian.PutUint16(b[ethType:], etherType)
}

// putARPReply writes the ARP reply "ip is at mac" to the requester (tha,
// tpa).
func putARPReply(b []byte, mac [macLen]byte, ip [ipv4AddrLen]byte, tha [macLen]byte, tpa [ipv4AddrLen]byte) {
	binary.BigEndian.PutUint16(b[arpHType:], arpHTypeEth)
	binary.BigEndian.PutUint16(b[arpPType:], etherIPv4)
	b[arpHLen], b[arpPLen] = macLen, ipv4AddrLen
	binary.BigEndian.PutUint16(b[arpOp:], arpOpReply)
	copy(b[arpSHA:], mac[:])
	copy(b[arpSPA:], ip[:])
	copy(b[arpTHA:], tha[:])
	copy(b[arpTPA:], tpa[:])
}

// putIPv4 writes an IPv4 header without options for a payload of n bytes,
// checksum included.
func putIPv4(b []byte, id uint16, src, dst [ipv4AddrLen]byte, n int) {
	b[ipVerIHL] = 4<<4 | ipv4MinHdr/4
	b[1] = 0 // DSCP, ECN
	binary.BigEndian.PutUint16(b[ipTotalLen:], uint16(ipv4MinHdr+n))
	binary.BigEndian.PutUint16(b[ipID:], id)
	binary.BigEndian.PutUint16(b[ipFlagsFrag:], ipFlagDF)
	b[ipTTL] = replyTTL
	b[ipProto] = ipProtoTCP
	b[ipChecksum], b[ipChecksum+1] = 0, 0
	copy(b[ipSrc:], src[:])
	copy(b[ipDst:], dst[:])
	binary.BigEndian.PutUint16(b[ipChecksum:], fold(checksum(0, b[:ipv4MinHdr])))
}

// tcpChecksum is the TCP checksum of segment seg between src and dst
// (the IPv4 pseudo-header, RFC 9293 3.1).
func tcpChecksum(src, dst [ipv4AddrLen]byte, seg []byte) uint16 {
	sum := checksum(0, src[:])
	sum = checksum(sum, dst[:])
	sum += ipProtoTCP + uint32(len(seg))
	return fold(checksum(sum, seg))
}

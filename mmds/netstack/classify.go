package netstack

import "encoding/binary"

// Kind is what Classify makes of a frame the guest sends.
type Kind int

// Frame kinds.
const (
	// Other frames are not the MMDS's: they go to the tap untouched.
	Other Kind = iota
	// ARP is an ARP request for the MMDS address: answered here.
	ARP
	// TCP is an IPv4 packet to the MMDS address carrying TCP: handled
	// here.
	TCP
	// IPv4 is any other IPv4 packet to the MMDS address: dropped
	// (Firecracker's rule: nothing for the MMDS address leaves through
	// the tap).
	IPv4
)

// HeadLen is how many leading bytes of a frame Classify needs to decide:
// an Ethernet header and an ARP packet (longer than the IPv4 header's
// fixed part up to the destination address).
const HeadLen = ethHdrLen + arpLen

// Classify decides whether the Ethernet frame whose first bytes are head
// is for the MMDS at ip. It reads only head and checks every field it
// uses: a frame too short to be an ARP request or an IPv4 packet is Other.
// VLAN-tagged frames are Other (the MMDS, like Firecracker's, speaks
// untagged Ethernet only).
func Classify(head []byte, ip [ipv4AddrLen]byte) Kind {
	if len(head) < ethHdrLen {
		return Other
	}
	p := head[ethHdrLen:]
	switch binary.BigEndian.Uint16(head[ethType:]) {
	case etherARP:
		if len(p) < arpLen ||
			binary.BigEndian.Uint16(p[arpHType:]) != arpHTypeEth || binary.BigEndian.Uint16(p[arpPType:]) != etherIPv4 ||
			p[arpHLen] != macLen || p[arpPLen] != ipv4AddrLen ||
			binary.BigEndian.Uint16(p[arpOp:]) != arpOpRequest || [ipv4AddrLen]byte(p[arpTPA:arpTPA+ipv4AddrLen]) != ip {
			return Other
		}
		return ARP
	case etherIPv4:
		if len(p) < ipv4MinHdr || p[ipVerIHL]>>4 != 4 || [ipv4AddrLen]byte(p[ipDst:ipDst+ipv4AddrLen]) != ip {
			return Other
		}
		if p[ipProto] == ipProtoTCP {
			return TCP
		}
		return IPv4
	}
	return Other
}

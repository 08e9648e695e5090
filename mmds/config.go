package mmds

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// MMDS versions (Firecracker's MmdsVersion).
const (
	// V1 answers GETs without a session token (it counts the requests
	// that V2 would refuse). Firecracker's default.
	V1 = "V1"
	// V2 answers GETs only with a valid session token (IMDSv2).
	V2 = "V2"
)

// DefaultIPv4 is the MMDS address unless configured otherwise (EC2's).
var DefaultIPv4 = netip.AddrFrom4([4]byte{169, 254, 169, 254})

// Config is the MMDS configuration (Firecracker's MmdsConfig: PUT
// /mmds/config, the config file's "mmds-config"), as GET /vm/config and
// snapshots show it: every field filled.
type Config struct {
	// NetworkInterfaces are the iface_ids whose guest frames for
	// IPv4Address the MMDS answers.
	NetworkInterfaces []string `json:"network_interfaces"`
	// Version is V1 or V2.
	Version string `json:"version"`
	// IPv4Address is the MMDS address, link-local.
	IPv4Address string `json:"ipv4_address"`
	// IMDSCompat answers in the IMDS format whatever the Accept header
	// asks (as EC2's IMDS does).
	IMDSCompat bool `json:"imds_compat"`
}

// Firecracker's MmdsConfigError messages.
var (
	ErrNoInterfaces = errors.New("The list of network interface IDs that allow forwarding MMDS requests is empty.")
	ErrNotLinkLocal = errors.New("The MMDS IPv4 address is not link local.")
	ErrNoSuchIface  = errors.New("The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
)

// Normalize fills the defaults (V1, DefaultIPv4) and checks what needs no
// other configuration: a non-empty interface list, a known version, a
// link-local address.
func (c *Config) Normalize() error {
	if len(c.NetworkInterfaces) == 0 {
		return ErrNoInterfaces
	}
	switch c.Version {
	case "":
		c.Version = V1
	case V1, V2:
	default:
		return fmt.Errorf("unknown MMDS version %q: want %q or %q", c.Version, V1, V2)
	}
	if c.IPv4Address == "" {
		c.IPv4Address = DefaultIPv4.String()
	}
	ip, err := ParseIPv4(c.IPv4Address)
	if err != nil {
		return err
	}
	c.IPv4Address = ip.String()
	return nil
}

// ParseIPv4 parses a dotted IPv4 address and requires it to be link-local
// and usable (169.254.1.0 to 169.254.254.255: RFC 3927 section 2.1 reserves
// the first and last 256 addresses of 169.254/16, and Firecracker refuses
// them).
func ParseIPv4(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("ipv4_address %q: not an IPv4 address", s)
	}
	b := ip.As4()
	if b[0] != 169 || b[1] != 254 || b[2] == 0 || b[2] == 255 {
		return netip.Addr{}, ErrNotLinkLocal
	}
	return ip, nil
}

// CheckInterfaces fails with ErrNoSuchIface if an interface of c is not
// one of ids.
func (c *Config) CheckInterfaces(ids []string) error {
	for _, id := range c.NetworkInterfaces {
		if !slices.Contains(ids, id) {
			return fmt.Errorf("%w (%q)", ErrNoSuchIface, id)
		}
	}
	return nil
}

// Clone returns a deep copy of c (nil for nil).
func (c *Config) Clone() *Config {
	if c == nil {
		return nil
	}
	n := *c
	n.NetworkInterfaces = slices.Clone(c.NetworkInterfaces)
	return &n
}

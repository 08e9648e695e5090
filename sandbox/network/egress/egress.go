// Package egress is a sandbox's egress policy as emberd's API carries it:
// the policy, its rules, their validation and the rule syntax of command
// lines. It imports only the standard library, so emberd's client and the
// ember CLI use it without linking package sandbox/network (netlink,
// nftables), which enforces the policy.
package egress

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Mode is a sandbox's egress mode.
type Mode string

// The egress modes.
const (
	// AllowAll lets the guest reach any address outside the protected
	// ranges (see Policy).
	AllowAll Mode = "allow-all"
	// DenyAll drops everything the guest sends, DNS included.
	DenyAll Mode = "deny-all"
	// Allowlist lets the guest reach only the destinations in Policy.Allow
	// (and the DNS servers it was given, on port 53).
	Allowlist Mode = "allowlist"
)

// Policy is a sandbox's egress policy. Whatever the mode, the guest never
// reaches the host's own addresses, the link-local range 169.254.0.0/16,
// the sandbox and bridge ranges (other sandboxes), loopback or multicast:
// those are dropped before the policy is consulted. The one exception is the
// DNS servers handed to the guest, on port 53, in allow-all and allowlist
// modes. Packets are checked one by one, not per connection, so a policy
// change cuts connections it no longer allows at once.
type Policy struct {
	Mode  Mode   `json:"mode"`
	Allow []Rule `json:"allow,omitempty"`
}

// Proto is a transport protocol of an allowlist rule.
type Proto string

// The protocols a rule can name.
const (
	ProtoAny Proto = "" // every protocol; then the rule may not name ports
	ProtoTCP Proto = "tcp"
	ProtoUDP Proto = "udp"
)

// Rule allows one destination range, optionally limited to a protocol and a
// port range.
type Rule struct {
	CIDR  netip.Prefix `json:"cidr"`
	Proto Proto        `json:"proto,omitempty"`
	// Port and PortEnd bound the destination ports (inclusive). Port 0
	// means every port; PortEnd 0 means just Port.
	Port    uint16 `json:"port,omitempty"`
	PortEnd uint16 `json:"port_end,omitempty"`
}

// maxRules bounds an allowlist: each rule is one or two nftables rules
// evaluated per packet.
const maxRules = 256

// Validate reports the first thing wrong with p.
func (p Policy) Validate() error {
	switch p.Mode {
	case AllowAll, DenyAll:
		if len(p.Allow) > 0 {
			return fmt.Errorf("policy: mode %q takes no allow rules (%d given)", p.Mode, len(p.Allow))
		}
	case Allowlist:
		if len(p.Allow) > maxRules {
			return fmt.Errorf("policy: %d allow rules, at most %d", len(p.Allow), maxRules)
		}
		for i, r := range p.Allow {
			if err := r.Validate(); err != nil {
				return fmt.Errorf("policy: allow rule %d: %w", i, err)
			}
		}
	case "":
		return fmt.Errorf("policy: no mode (want %q, %q or %q)", AllowAll, DenyAll, Allowlist)
	default:
		return fmt.Errorf("policy: unknown mode %q (want %q, %q or %q)", p.Mode, AllowAll, DenyAll, Allowlist)
	}
	return nil
}

// Validate reports the first thing wrong with r.
func (r Rule) Validate() error {
	if !r.CIDR.IsValid() {
		return fmt.Errorf("no destination CIDR")
	}
	if !r.CIDR.Addr().Is4() {
		return fmt.Errorf("destination %v: only IPv4 is routed to sandboxes", r.CIDR)
	}
	if r.CIDR.Masked() != r.CIDR {
		return fmt.Errorf("destination %v has host bits set (did you mean %v?)", r.CIDR, r.CIDR.Masked())
	}
	switch r.Proto {
	case ProtoAny:
		if r.Port != 0 || r.PortEnd != 0 {
			return fmt.Errorf("ports %s without a protocol (tcp or udp)", r.ports())
		}
	case ProtoTCP, ProtoUDP:
	default:
		return fmt.Errorf("unknown protocol %q (want tcp or udp)", string(r.Proto))
	}
	if r.PortEnd != 0 && (r.Port == 0 || r.PortEnd < r.Port) {
		return fmt.Errorf("port range %s is empty or open at the start", r.ports())
	}
	return nil
}

func (r Rule) ports() string {
	if r.PortEnd != 0 {
		return fmt.Sprintf("%d-%d", r.Port, r.PortEnd)
	}
	return strconv.Itoa(int(r.Port))
}

// String is the rule in ParseRule's syntax.
func (r Rule) String() string {
	s := r.CIDR.String()
	if r.Proto == ProtoAny {
		return s
	}
	if r.Port != 0 {
		s += ":" + r.ports()
	}
	return s + "/" + string(r.Proto)
}

// ParseRule parses "CIDR", "CIDR/tcp", "CIDR:PORT/udp" or
// "CIDR:FIRST-LAST/tcp" (an address without a prefix length is a /32), for
// command lines and configuration files.
func ParseRule(s string) (Rule, error) {
	var r Rule
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		switch p := Proto(rest[i+1:]); p {
		case ProtoTCP, ProtoUDP:
			r.Proto = p
			rest = rest[:i]
		}
	}
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		if r.Proto == ProtoAny {
			return Rule{}, fmt.Errorf("rule %q: a port needs a protocol (e.g. %s/tcp)", s, s)
		}
		ports := rest[i+1:]
		rest = rest[:i]
		first, last, ok := strings.Cut(ports, "-")
		p, err := strconv.ParseUint(first, 10, 16)
		if err != nil || p == 0 {
			return Rule{}, fmt.Errorf("rule %q: bad port %q", s, first)
		}
		r.Port = uint16(p)
		if ok {
			q, err := strconv.ParseUint(last, 10, 16)
			if err != nil || q == 0 {
				return Rule{}, fmt.Errorf("rule %q: bad port %q", s, last)
			}
			r.PortEnd = uint16(q)
		}
	}
	if strings.Contains(rest, "/") {
		p, err := netip.ParsePrefix(rest)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", s, err)
		}
		r.CIDR = p
	} else {
		a, err := netip.ParseAddr(rest)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: %w", s, err)
		}
		r.CIDR = netip.PrefixFrom(a, a.BitLen())
	}
	if err := r.Validate(); err != nil {
		return Rule{}, fmt.Errorf("rule %q: %w", s, err)
	}
	return r, nil
}

package network

import (
	"bufio"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"github.com/embervm/ember/sandbox/network/ipam"
)

// Config configures a Manager. The zero value of every field picks its
// default.
type Config struct {
	// Prefix starts the name of everything the manager makes: the bridge
	// (PREFIXbr0), namespaces (PREFIX-KEY under /run/netns) and host veths
	// (PREFIXhKEY, KEY being 8 hex digits). One to six lower-case letters or
	// digits, starting with a letter (a link name has at most 15 bytes,
	// IFNAMSIZ-1 in linux/if.h). Default "emb".
	Prefix string
	// Table is the nftables table (family inet) the manager owns.
	// Default "ember".
	Table string
	// BridgeCIDR is the host bridge's subnet: its first address is the
	// bridge's (the namespaces' gateway), the next ones go to the
	// namespaces' veths, one per sandbox. Default 10.213.0.0/16.
	BridgeCIDR netip.Prefix
	// GuestCIDR is the range guests get addresses from, one /30 per
	// sandbox: .1 of the block is the gateway (the tap's address in the
	// namespace), .2 the guest. Default 10.214.0.0/16 (16384 sandboxes).
	GuestCIDR netip.Prefix
	// DNS is the resolvers handed to guests. Default: the IPv4 nameservers
	// of the host's /etc/resolv.conf that are not loopback addresses.
	DNS []netip.Addr
	// TapName is the tap's name inside each namespace unless Setup asks
	// for another. Default "tap0".
	TapName string
	// TapOwner and TapGroup let that uid or gid open the tap without
	// CAP_NET_ADMIN (an ember dropped to a jail's uid). Zero is root's:
	// netlink sets both on every tap (TUNSETOWNER/TUNSETGROUP), and the
	// kernel takes no "nobody" there.
	TapOwner, TapGroup uint32
	// PoolSize is how many prepared namespaces (with tap and veth) the
	// manager keeps ready. Default 0: every Setup makes a fresh one.
	PoolSize int
	// Store persists address leases; default an in-memory store.
	Store ipam.Store
	// Logger gets one line per namespace made or removed and per sweep.
	Logger *slog.Logger
}

// The defaults (see Config).
const (
	defaultPrefix = "emb"
	defaultTable  = "ember"
	defaultTap    = "tap0"
	// guestBits is the guest block size: a /30 holds the gateway and the
	// guest (RFC 3021's /31 would save two addresses, but not every guest
	// network setup accepts it).
	guestBits = 30
	// nsVeth is the veth's name inside each namespace.
	nsVeth = "veth0"
	// keyLen is the hex length of a namespace's key.
	keyLen = 8
	// netnsDir is where named namespaces live, as iproute2's `ip netns`
	// keeps them (NETNS_RUN_DIR in iproute2's lib/namelist.c).
	netnsDir = "/run/netns"
)

var (
	defaultBridgeCIDR = netip.MustParsePrefix("10.213.0.0/16")
	defaultGuestCIDR  = netip.MustParsePrefix("10.214.0.0/16")
	// The name checks below are hand-written, not regexps: this package is
	// linked into the ember binary (for the API types), and compiling
	// these patterns cost every VM start 0.25 ms and 110 KB of heap.

	// prefixName: one to six lower-case letters or digits, a letter first.
	prefixName = nameRule{first: lower, rest: lowerDigit, max: 6}
	// tableName: a letter, then letters, digits, '_' or '-' (32 at most).
	tableName = nameRule{first: letter, rest: func(c byte) bool { return letter(c) || digit(c) || c == '_' || c == '-' }, max: 32}
	// ifName: a link name of at most 15 bytes (IFNAMSIZ-1) without '/',
	// whitespace or ':' (dev_valid_name in net/core/dev.c).
	ifName = nameRule{first: idByte, rest: idByte, max: 15}
	// idName: sandbox IDs name nftables chains and counters and a veth's
	// alias, so they are kept short and plain.
	idName = nameRule{first: func(c byte) bool { return letter(c) || digit(c) }, rest: idByte, max: 64}
)

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = defaultPrefix
	}
	if !prefixName.ok(c.Prefix) {
		return c, fmt.Errorf("network config: prefix %q: want 1-6 lower-case letters or digits starting with a letter", c.Prefix)
	}
	if c.Table == "" {
		c.Table = defaultTable
	}
	if !tableName.ok(c.Table) {
		return c, fmt.Errorf("network config: table name %q: want letters, digits, '_' or '-', at most 32", c.Table)
	}
	if c.TapName == "" {
		c.TapName = defaultTap
	}
	if !ifName.ok(c.TapName) || c.TapName == nsVeth || c.TapName == "lo" {
		return c, fmt.Errorf("network config: tap name %q: want 1-15 letters, digits, '_', '.' or '-', not %q or lo", c.TapName, nsVeth)
	}
	if !c.BridgeCIDR.IsValid() {
		c.BridgeCIDR = defaultBridgeCIDR
	}
	if !c.GuestCIDR.IsValid() {
		c.GuestCIDR = defaultGuestCIDR
	}
	for name, p := range map[string]netip.Prefix{"bridge": c.BridgeCIDR, "guest": c.GuestCIDR} {
		if !p.Addr().Is4() || p.Masked() != p {
			return c, fmt.Errorf("network config: %s CIDR %v: want an IPv4 network address", name, p)
		}
	}
	if c.GuestCIDR.Bits() > guestBits {
		return c, fmt.Errorf("network config: guest CIDR %v is smaller than one /%d", c.GuestCIDR, guestBits)
	}
	if c.BridgeCIDR.Overlaps(c.GuestCIDR) {
		return c, fmt.Errorf("network config: bridge CIDR %v overlaps guest CIDR %v", c.BridgeCIDR, c.GuestCIDR)
	}
	blocks := 1 << (guestBits - c.GuestCIDR.Bits())
	if hosts := (1 << (32 - c.BridgeCIDR.Bits())) - 3; hosts < blocks {
		return c, fmt.Errorf("network config: bridge CIDR %v has room for %d namespaces, guest CIDR %v for %d: widen the bridge CIDR", c.BridgeCIDR, hosts, c.GuestCIDR, blocks)
	}
	if c.DNS == nil {
		c.DNS = resolvConfServers("/etc/resolv.conf")
	}
	for _, a := range c.DNS {
		if !a.Is4() {
			return c, fmt.Errorf("network config: DNS server %v: only IPv4 is routed to guests", a)
		}
	}
	if c.PoolSize < 0 {
		return c, fmt.Errorf("network config: pool size %d is negative", c.PoolSize)
	}
	if c.Store == nil {
		c.Store = &ipam.MemStore{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// resolvConfServers returns the IPv4 nameservers of a resolv.conf that a
// guest can reach (not loopback, as systemd-resolved's 127.0.0.53 is).
func resolvConfServers(path string) []netip.Addr {
	f, err := os.Open(path)
	if err != nil {
		return []netip.Addr{}
	}
	defer f.Close()
	out := []netip.Addr{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || !a.Is4() || a.IsLoopback() {
			continue
		}
		out = append(out, a)
	}
	return out
}

// validID reports whether id can name a sandbox here.
func validID(id string) error {
	if !idName.ok(id) {
		return fmt.Errorf("sandbox id %q: want 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit", id)
	}
	return nil
}

// nameRule is a name of 1 to max bytes whose first byte passes first and
// the others rest.
type nameRule struct {
	first, rest func(byte) bool
	max         int
}

func (r nameRule) ok(s string) bool {
	if len(s) == 0 || len(s) > r.max || !r.first(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !r.rest(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) bool      { return c >= 'a' && c <= 'z' }
func digit(c byte) bool      { return c >= '0' && c <= '9' }
func letter(c byte) bool     { return lower(c) || (c >= 'A' && c <= 'Z') }
func lowerDigit(c byte) bool { return lower(c) || digit(c) }
func idByte(c byte) bool     { return letter(c) || digit(c) || c == '_' || c == '.' || c == '-' }

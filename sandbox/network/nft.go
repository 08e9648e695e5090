package network

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The ruleset the manager keeps in its table (family inet), in nft's syntax
// (BR is the bridge, G the guest CIDR):
//
//	map egress  { type ipv4_addr : verdict }  # guest IP -> jump out-ID
//	map ingress { type ipv4_addr : verdict }  # guest IP -> jump in-ID
//	chain forward { type filter hook forward priority filter; policy accept;
//	  iifname BR meta nfproto ipv6 drop
//	  oifname BR meta nfproto ipv6 drop
//	  iifname BR meta nfproto ipv4 ip saddr vmap @egress
//	  iifname BR drop                 # a source that is no guest's address
//	  oifname BR meta nfproto ipv4 ip daddr vmap @ingress
//	  oifname BR drop }
//	chain input { type filter hook input priority filter; policy accept;
//	  iifname BR ct state established,related accept
//	  iifname BR meta nfproto ipv4 ip saddr vmap @egress
//	  iifname BR drop }
//	chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//	  meta nfproto ipv4 ip saddr G oifname != BR masquerade }
//	chain out-ID {   # what one guest sends
//	  ip daddr DNS udp|tcp dport 53 counter name out-ID accept   # not in deny-all
//	  fib daddr type local drop        # the host's own addresses
//	  ip daddr { 169.254.0.0/16, G, bridge CIDR, 127/8, 0/8, 224/4, 240/4 } drop
//	  <the policy: accept with counter out-ID, an allowlist then drop, or drop> }
//	chain in-ID {    # what reaches one guest
//	  ct state established,related counter name in-ID accept
//	  drop }
//
// Other tables' base chains on the same hooks still see the packets: a host
// firewall whose forward policy is drop has to let the bridge through.

// Names in the table.
const (
	mapEgress   = "egress"
	mapIngress  = "ingress"
	chainFwd    = "forward"
	chainInput  = "input"
	chainPost   = "postrouting"
	outPrefix   = "out-"
	inPrefix    = "in-"
	nfprotoIPv4 = unix.NFPROTO_IPV4
	nfprotoIPv6 = unix.NFPROTO_IPV6
	// objCounter is NFT_OBJECT_COUNTER (linux/netfilter/nf_tables.h).
	objCounter = 1
)

// protected are destinations no policy opens (besides the sandbox and bridge
// ranges, added per manager): link-local (cloud metadata services live at
// 169.254.169.254; Ember's MMDS is answered inside the VMM and never gets
// here), "this network", loopback, multicast and reserved (RFC 6890).
var protected = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

type nft struct {
	table   *nftables.Table
	egress  *nftables.Set
	ingress *nftables.Set
	bridge  string
	guests  netip.Prefix
	bridgeC netip.Prefix
	dns     []netip.Addr
}

func newNft(cfg Config, bridge string) *nft {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: cfg.Table}
	mk := func(name string) *nftables.Set {
		return &nftables.Set{Table: t, Name: name, IsMap: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}
	}
	return &nft{table: t, egress: mk(mapEgress), ingress: mk(mapIngress), bridge: bridge,
		guests: cfg.GuestCIDR, bridgeC: cfg.BridgeCIDR, dns: cfg.DNS}
}

func conn() (*nftables.Conn, error) {
	// Each operation dials its own netlink socket, and each socket gets a
	// read deadline: a kernel reply that never comes (google/nftables
	// issue 329: a batch that makes the kernel load a module can leave an
	// ACK missing, and Flush waits forever) fails the operation instead of
	// hanging emberd.
	c, err := nftables.New(nftables.WithSockOptions(func(nc *netlink.Conn) error {
		return nc.SetReadDeadline(time.Now().Add(nftReplyTimeout))
	}))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// nftReplyTimeout bounds one nftables operation's wait for the kernel's
// replies (they take microseconds; a slow emulated host, milliseconds).
const nftReplyTimeout = 30 * time.Second

// install makes the table, maps and base chains, or brings existing ones to
// this configuration without touching the sandboxes' chains.
func (n *nft) install() error {
	c, err := conn()
	if err != nil {
		return err
	}
	c.AddTable(n.table)
	for _, s := range []*nftables.Set{n.egress, n.ingress} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("nftables map %s: %w", s.Name, err)
		}
	}
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Table: n.table, Name: chainFwd, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	in := c.AddChain(&nftables.Chain{Table: n.table, Name: chainInput, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Table: n.table, Name: chainPost, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.FlushChain(fwd)
	c.FlushChain(in)
	c.FlushChain(post)

	iif := ifname(expr.MetaKeyIIFNAME, n.bridge)
	oif := ifname(expr.MetaKeyOIFNAME, n.bridge)
	add := func(ch *nftables.Chain, parts ...[]expr.Any) {
		var e []expr.Any
		for _, p := range parts {
			e = append(e, p...)
		}
		c.AddRule(&nftables.Rule{Table: n.table, Chain: ch, Exprs: e})
	}
	add(fwd, iif, nfproto(nfprotoIPv6), verdict(expr.VerdictDrop))
	add(fwd, oif, nfproto(nfprotoIPv6), verdict(expr.VerdictDrop))
	add(fwd, iif, nfproto(nfprotoIPv4), ipAddr(12), vmap(n.egress))
	add(fwd, iif, verdict(expr.VerdictDrop))
	add(fwd, oif, nfproto(nfprotoIPv4), ipAddr(16), vmap(n.ingress))
	add(fwd, oif, verdict(expr.VerdictDrop))

	add(in, iif, ctEstablished(), verdict(expr.VerdictAccept))
	add(in, iif, nfproto(nfprotoIPv4), ipAddr(12), vmap(n.egress))
	add(in, iif, verdict(expr.VerdictDrop))

	add(post, nfproto(nfprotoIPv4), ipIn(12, n.guests), ifnameNot(expr.MetaKeyOIFNAME, n.bridge), []expr.Any{&expr.Masq{}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: install table inet %s: %w", n.table.Name, err)
	}
	return nil
}

// addSandbox makes the sandbox's chains, counters and map entries with its
// policy, in one transaction.
func (n *nft) addSandbox(id string, guest netip.Addr, p Policy) error {
	c, err := conn()
	if err != nil {
		return err
	}
	out := c.AddChain(&nftables.Chain{Table: n.table, Name: outPrefix + id})
	in := c.AddChain(&nftables.Chain{Table: n.table, Name: inPrefix + id})
	// Empty already unless a crash left them behind for this ID.
	c.FlushChain(out)
	c.FlushChain(in)
	c.AddObj(&nftables.CounterObj{Table: n.table, Name: outPrefix + id})
	c.AddObj(&nftables.CounterObj{Table: n.table, Name: inPrefix + id})
	n.policyRules(c, out, id, p)
	c.AddRule(&nftables.Rule{Table: n.table, Chain: in, Exprs: cat(ctEstablished(), counterRef(inPrefix+id), verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: n.table, Chain: in, Exprs: verdict(expr.VerdictDrop)})
	key := guest.AsSlice()
	if err := c.SetAddElements(n.egress, []nftables.SetElement{{Key: key, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: out.Name}}}); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := c.SetAddElements(n.ingress, []nftables.SetElement{{Key: key, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: in.Name}}}); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: add chains of sandbox %s: %w", id, err)
	}
	return nil
}

// setPolicy replaces the sandbox's egress rules in one transaction.
func (n *nft) setPolicy(id string, p Policy) error {
	c, err := conn()
	if err != nil {
		return err
	}
	out := &nftables.Chain{Table: n.table, Name: outPrefix + id}
	c.FlushChain(out)
	n.policyRules(c, out, id, p)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: set policy of sandbox %s: %w", id, err)
	}
	return nil
}

func (n *nft) policyRules(c *nftables.Conn, out *nftables.Chain, id string, p Policy) {
	add := func(parts ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: n.table, Chain: out, Exprs: cat(parts...)})
	}
	count := counterRef(outPrefix + id)
	if p.Mode != DenyAll {
		for _, d := range n.dns {
			for _, proto := range []Proto{ProtoUDP, ProtoTCP} {
				add(ruleExprs(Rule{CIDR: netip.PrefixFrom(d, 32), Proto: proto, Port: 53}), count, verdict(expr.VerdictAccept))
			}
		}
	}
	// The host's own addresses: only packets to them reach the input hook,
	// and fib says which those are whatever they are at the moment.
	add([]expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}, verdict(expr.VerdictDrop))
	for _, pr := range append([]netip.Prefix{n.guests, n.bridgeC}, protected...) {
		add(ipIn(16, pr), verdict(expr.VerdictDrop))
	}
	switch p.Mode {
	case AllowAll:
		add(count, verdict(expr.VerdictAccept))
	case Allowlist:
		for _, r := range p.Allow {
			add(ruleExprs(r), count, verdict(expr.VerdictAccept))
		}
		add(verdict(expr.VerdictDrop))
	default:
		add(verdict(expr.VerdictDrop))
	}
}

// dropSandbox deletes the map entries, chains and counters addSandbox made,
// in one transaction, without looking first (Teardown's fast path).
func (n *nft) dropSandbox(id string, guest netip.Addr) error {
	c, err := conn()
	if err != nil {
		return err
	}
	key := guest.AsSlice()
	for _, s := range []*nftables.Set{n.egress, n.ingress} {
		if err := c.SetDeleteElements(s, []nftables.SetElement{{Key: key}}); err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
	}
	for _, name := range []string{outPrefix + id, inPrefix + id} {
		ch := &nftables.Chain{Table: n.table, Name: name}
		c.FlushChain(ch)
		c.DelChain(ch)
		c.DeleteObject(&nftables.CounterObj{Table: n.table, Name: name})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: remove sandbox %s: %w", id, err)
	}
	return nil
}

// removeSandbox deletes the sandbox's map entries, chains and counters in one
// transaction. What is already gone is skipped.
func (n *nft) removeSandbox(id string, guest netip.Addr) error {
	c, err := conn()
	if err != nil {
		return err
	}
	chains, err := n.chains(c)
	if err != nil {
		return err
	}
	if guest.IsValid() {
		key := guest.AsSlice()
		for _, s := range []*nftables.Set{n.egress, n.ingress} {
			els, err := c.GetSetElements(s)
			if err != nil {
				return fmt.Errorf("nftables: list map %s: %w", s.Name, err)
			}
			for _, e := range els {
				if string(e.Key) == string(key) {
					if err := c.SetDeleteElements(s, []nftables.SetElement{{Key: key}}); err != nil {
						return fmt.Errorf("nftables: %w", err)
					}
				}
			}
		}
	}
	for _, name := range []string{outPrefix + id, inPrefix + id} {
		if chains[name] {
			ch := &nftables.Chain{Table: n.table, Name: name}
			c.FlushChain(ch)
			c.DelChain(ch)
		}
	}
	objs, err := n.counters(c)
	if err != nil {
		return err
	}
	for _, name := range []string{outPrefix + id, inPrefix + id} {
		if _, ok := objs[name]; ok {
			c.DeleteObject(&nftables.CounterObj{Table: n.table, Name: name})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: remove sandbox %s: %w", id, err)
	}
	return nil
}

// Counters are a sandbox's metered traffic: what the guest sent that the
// policy let out, and what came back to it.
type Counters struct {
	BytesOut, PacketsOut uint64
	BytesIn, PacketsIn   uint64
}

func (n *nft) read(id string) (Counters, error) {
	c, err := conn()
	if err != nil {
		return Counters{}, err
	}
	objs, err := n.counters(c)
	if err != nil {
		return Counters{}, err
	}
	out, ok1 := objs[outPrefix+id]
	in, ok2 := objs[inPrefix+id]
	if !ok1 || !ok2 {
		return Counters{}, fmt.Errorf("nftables: no counters for sandbox %s", id)
	}
	return Counters{BytesOut: out.Bytes, PacketsOut: out.Packets, BytesIn: in.Bytes, PacketsIn: in.Packets}, nil
}

// chains lists the chain names of the table.
func (n *nft) chains(c *nftables.Conn) (map[string]bool, error) {
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: list chains: %w", err)
	}
	out := make(map[string]bool)
	for _, ch := range all {
		if ch.Table.Name == n.table.Name {
			out[ch.Name] = true
		}
	}
	return out, nil
}

func (n *nft) counters(c *nftables.Conn) (map[string]*nftables.CounterObj, error) {
	objs, err := c.GetObjects(n.table)
	if err != nil {
		return nil, fmt.Errorf("nftables: list counters: %w", err)
	}
	out := make(map[string]*nftables.CounterObj)
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			out[co.Name] = co
		}
	}
	return out, nil
}

// sandboxIDs returns the IDs that have a chain or counter in the table.
func (n *nft) sandboxIDs() (map[string]bool, error) {
	c, err := conn()
	if err != nil {
		return nil, err
	}
	ids := make(map[string]bool)
	chains, err := n.chains(c)
	if err != nil {
		return nil, err
	}
	objs, err := n.counters(c)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(chains)+len(objs))
	for name := range chains {
		names = append(names, name)
	}
	for name := range objs {
		names = append(names, name)
	}
	for _, name := range names {
		for _, p := range []string{outPrefix, inPrefix} {
			if id, ok := strings.CutPrefix(name, p); ok {
				ids[id] = true
			}
		}
	}
	return ids, nil
}

// mapKeys returns the guest addresses with an entry in either map.
func (n *nft) mapKeys() (map[netip.Addr]bool, error) {
	c, err := conn()
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]bool)
	for _, s := range []*nftables.Set{n.egress, n.ingress} {
		els, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("nftables: list map %s: %w", s.Name, err)
		}
		for _, e := range els {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				out[a] = true
			}
		}
	}
	return out, nil
}

// removeTable deletes the whole table.
func (n *nft) removeTable() error {
	c, err := conn()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == n.table.Name {
			c.DelTable(n.table)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("nftables: delete table %s: %w", n.table.Name, err)
			}
		}
	}
	return nil
}

// Expression helpers.

func cat(parts ...[]expr.Any) []expr.Any {
	var e []expr.Any
	for _, p := range parts {
		e = append(e, p...)
	}
	return e
}

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func ifname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)}}
}

func ifnameNot(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes(name)}}
}

func nfproto(p byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}}}
}

// ipAddr loads the IPv4 source (offset 12) or destination (16) address.
func ipAddr(off uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}}
}

// ipIn matches the IPv4 address at off inside p.
func ipIn(off uint32, p netip.Prefix) []expr.Any {
	if p.Bits() == 0 {
		return nil
	}
	e := ipAddr(off)
	if p.Bits() < 32 {
		mask := make([]byte, 4)
		binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

func vmap(s *nftables.Set) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: s.Name, SetID: s.ID}}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func counterRef(name string) []expr.Any {
	return []expr.Any{&expr.Objref{Type: objCounter, Name: name}}
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ruleExprs matches an allowlist rule: the destination range, then the
// protocol and the destination port range if it names them. Every rule
// builds at least the nfproto check, so an empty match is impossible.
func ruleExprs(r Rule) []expr.Any {
	e := cat(nfproto(nfprotoIPv4), ipIn(16, r.CIDR))
	if r.Proto == ProtoAny {
		return e
	}
	proto := byte(unix.IPPROTO_TCP)
	if r.Proto == ProtoUDP {
		proto = unix.IPPROTO_UDP
	}
	e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}})
	if r.Port == 0 {
		return e
	}
	last := r.PortEnd
	if last == 0 {
		last = r.Port
	}
	e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	if last == r.Port {
		return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.Port)})
	}
	return append(e,
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.Port)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(last)})
}

// removeKey deletes one address's entries from both maps.
func (n *nft) removeKey(a netip.Addr) error {
	c, err := conn()
	if err != nil {
		return err
	}
	for _, s := range []*nftables.Set{n.egress, n.ingress} {
		els, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("nftables: list map %s: %w", s.Name, err)
		}
		for _, e := range els {
			if string(e.Key) == string(a.AsSlice()) {
				if err := c.SetDeleteElements(s, []nftables.SetElement{{Key: e.Key}}); err != nil {
					return fmt.Errorf("nftables: %w", err)
				}
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: remove map entries of %v: %w", a, err)
	}
	return nil
}

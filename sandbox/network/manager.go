package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/embervm/ember/sandbox/network/ipam"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrUnknown is returned for a sandbox the manager has no network for.
var ErrUnknown = errors.New("network: unknown sandbox")

// Manager gives sandboxes their networks. It is safe for concurrent use.
type Manager struct {
	cfg         Config
	log         *slog.Logger
	alloc       *ipam.Allocator
	nft         *nft
	bridge      string
	bridgeIndex int

	mu      sync.Mutex
	active  map[string]*sandbox
	pool    []*slot
	filling bool
	fillWG  sync.WaitGroup
	closed  bool
	// noRefill stops Setup from topping the pool up (tests that watch
	// one namespace go round).
	noRefill bool

	// nftMu serialises the nftables transactions that read, then write.
	nftMu sync.Mutex
	// opMu: Setup, Teardown and pool filling hold it shared, Sweep
	// exclusively, so that Sweep never sees a namespace in flight
	// (taken from the pool or being made) as nobody's.
	opMu sync.RWMutex
}

type sandbox struct {
	id   string
	slot *slot
	addr addressing
}

// Attachment is what Setup made for a sandbox: where to start the VMM and
// what to tell the guest.
type Attachment struct {
	ID string
	// Netns is the namespace's name; NetnsPath its file, for setns(2) or
	// `ip netns exec NAME ember ...`.
	Netns, NetnsPath string
	// Tap is the tap inside the namespace for the VM's virtio-net device.
	Tap string
	// HostVeth is the namespace's port on the host bridge.
	HostVeth string
	Guest    GuestConfig
	// Pooled tells whether the namespace came from the pool.
	Pooled bool
	// Took is how long Setup took.
	Took time.Duration
}

// GuestConfig is the guest's network, for the agent's (re-)address step.
type GuestConfig struct {
	Address netip.Prefix // the guest's address and prefix length (a /30)
	Gateway netip.Addr
	DNS     []netip.Addr
}

// New checks the configuration and recovers the address leases in
// cfg.Store. It changes nothing on the host; Init does.
func New(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	alloc, err := ipam.New(cfg.GuestCIDR, guestBits, cfg.Store)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	bridge := cfg.Prefix + "br0"
	return &Manager{cfg: cfg, log: cfg.Logger, alloc: alloc, nft: newNft(cfg, bridge), bridge: bridge,
		active: make(map[string]*sandbox)}, nil
}

// Bridge is the host bridge's name.
func (m *Manager) Bridge() string { return m.bridge }

// Table is the nftables table's name (family inet).
func (m *Manager) Table() string { return m.cfg.Table }

func (m *Manager) bridgeAddr() netip.Addr { return m.cfg.BridgeCIDR.Addr().Next() }

// Init prepares the host: /run/netns, the bridge with its address, IPv4
// forwarding, and the nftables table with its base chains. It can run again
// (after a restart) without disturbing running sandboxes, and refuses ranges
// that the host already routes elsewhere.
func (m *Manager) Init(ctx context.Context) error {
	if err := prepareNetnsDir(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := m.checkRoutes(); err != nil {
		return err
	}
	br, err := netlink.LinkByName(m.bridge)
	if err != nil {
		la := netlink.NewLinkAttrs()
		la.Name = m.bridge
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return fmt.Errorf("network: bridge %s: %w", m.bridge, err)
		}
		if br, err = netlink.LinkByName(m.bridge); err != nil {
			return fmt.Errorf("network: bridge %s: %w", m.bridge, err)
		}
		m.log.Info("network: bridge made", "bridge", m.bridge, "cidr", m.cfg.BridgeCIDR)
	} else if br.Type() != "bridge" {
		return fmt.Errorf("network: %s exists and is a %s, not a bridge", m.bridge, br.Type())
	}
	m.bridgeIndex = br.Attrs().Index
	// A bridge whose address was never set takes the lowest of its ports'
	// (br_stp_recalculate_bridge_id in net/bridge/br_stp_if.c), so
	// removing a sandbox's veth could change it under every other
	// namespace's neighbour entry for the gateway. Setting it, even to
	// the value it has, pins it (addr_assign_type NET_ADDR_SET).
	if err := netlink.LinkSetHardwareAddr(br, br.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("network: pin bridge %s address: %w", m.bridge, err)
	}
	want := netip.PrefixFrom(m.bridgeAddr(), m.cfg.BridgeCIDR.Bits())
	if err := netlink.AddrReplace(br, &netlink.Addr{IPNet: ipNet(want)}); err != nil {
		return fmt.Errorf("network: bridge %s address %v: %w", m.bridge, want, err)
	}
	// An address of an earlier configuration goes.
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("network: bridge %s addresses: %w", m.bridge, err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip, ones) != want {
			if err := netlink.AddrDel(br, &a); err != nil {
				return fmt.Errorf("network: bridge %s: remove old address %v: %w", m.bridge, a.IPNet, err)
			}
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("network: bridge %s up: %w", m.bridge, err)
	}
	// The bridge carries IPv4 only (guests get no IPv6 route); without
	// IPv6 it sends no router solicitations into the namespaces.
	if err := writeSysctl("net/ipv6/conf/"+m.bridge+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network: %w", err)
	}
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	if err := m.nft.install(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	return nil
}

// checkRoutes refuses bridge and guest ranges that overlap a route of the
// host that is not on the manager's bridge.
func (m *Manager) checkRoutes() error {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("network: list routes: %w", err)
	}
	br, _ := netlink.LinkByName(m.bridge)
	for _, r := range routes {
		if r.Dst == nil || (br != nil && r.LinkIndex == br.Attrs().Index) {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		p := netip.PrefixFrom(a, ones)
		if ones == 0 {
			continue // a default route overlaps everything
		}
		for name, c := range map[string]netip.Prefix{"bridge": m.cfg.BridgeCIDR, "guest": m.cfg.GuestCIDR} {
			if p.Overlaps(c) {
				return fmt.Errorf("network: %s CIDR %v overlaps the host's route to %v", name, c, p)
			}
		}
	}
	return nil
}

// SetupSpec asks for one sandbox's network.
type SetupSpec struct {
	ID     string
	Tap    string // the tap's name in the namespace; default Config.TapName
	Policy Policy
}

// Setup gives sandbox spec.ID a namespace (from the pool when one is ready),
// an address block, and its egress policy. On error nothing is left behind.
func (m *Manager) Setup(ctx context.Context, spec SetupSpec) (*Attachment, error) {
	return m.setup(ctx, spec, true, nil)
}

// setup is Setup with the namespace's source: the pool if usePool, else
// given if not nil, else a fresh one.
func (m *Manager) setup(ctx context.Context, spec SetupSpec, usePool bool, given *slot) (*Attachment, error) {
	start := time.Now()
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	if err := validID(spec.ID); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if spec.Tap == "" {
		spec.Tap = m.cfg.TapName
	}
	if !ifName.ok(spec.Tap) || spec.Tap == nsVeth || spec.Tap == "lo" {
		return nil, fmt.Errorf("network: tap name %q: want 1-15 letters, digits, '_', '.' or '-', not %s or lo", spec.Tap, nsVeth)
	}
	if err := spec.Policy.Validate(); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if m.bridgeIndex == 0 {
		return nil, errors.New("network: Setup before Init")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	if _, ok := m.active[spec.ID]; ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("network: sandbox %s already has a network", spec.ID)
	}
	// Reserve the ID while the slow part runs.
	m.active[spec.ID] = nil
	s := given
	if n := len(m.pool); usePool && n > 0 {
		s, m.pool = m.pool[n-1], m.pool[:n-1]
	}
	m.mu.Unlock()
	pooled := s != nil
	fail := func(err error) (*Attachment, error) {
		m.mu.Lock()
		delete(m.active, spec.ID)
		m.mu.Unlock()
		return nil, err
	}

	block, err := m.alloc.Allocate(spec.ID)
	if err != nil {
		if s != nil {
			m.putBack(s)
		}
		return fail(fmt.Errorf("network: %w", err))
	}
	if s == nil {
		if s, err = m.newSlot(); err != nil {
			m.alloc.Release(spec.ID)
			return fail(fmt.Errorf("network: %w", err))
		}
	}
	a := m.addressing(block)
	err = m.configure(s, spec.ID, spec.Tap, a)
	if err == nil {
		m.nftMu.Lock()
		err = m.nft.addSandbox(spec.ID, a.guest, spec.Policy)
		m.nftMu.Unlock()
	}
	if err != nil {
		m.nftMu.Lock()
		m.nft.removeSandbox(spec.ID, a.guest)
		m.nftMu.Unlock()
		netlink.RouteDel(m.hostRoute(a))
		m.destroy(s)
		m.alloc.Release(spec.ID)
		return fail(fmt.Errorf("network: sandbox %s: %w", spec.ID, err))
	}
	sb := &sandbox{id: spec.ID, slot: s, addr: a}
	m.mu.Lock()
	m.active[spec.ID] = sb
	m.mu.Unlock()
	m.refill()
	att := m.attachment(sb)
	att.Pooled = pooled
	att.Took = time.Since(start)
	return att, nil
}

func (m *Manager) attachment(sb *sandbox) *Attachment {
	return &Attachment{
		ID: sb.id, Netns: sb.slot.netns, NetnsPath: filepath.Join(netnsDir, sb.slot.netns),
		Tap: sb.slot.tap, HostVeth: sb.slot.hostVeth,
		Guest: GuestConfig{Address: netip.PrefixFrom(sb.addr.guest, guestBits), Gateway: sb.addr.gateway,
			DNS: append([]netip.Addr(nil), m.cfg.DNS...)},
	}
}

// Lookup returns a sandbox's attachment (after Setup, or adopted by Sweep).
func (m *Manager) Lookup(id string) (*Attachment, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb := m.active[id]
	if sb == nil {
		return nil, false
	}
	return m.attachment(sb), true
}

func (m *Manager) get(id string) (*sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb := m.active[id]
	if sb == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknown, id)
	}
	return sb, nil
}

// SetPolicy replaces a running sandbox's egress policy, atomically: every
// packet is judged by the old policy or the new one.
func (m *Manager) SetPolicy(ctx context.Context, id string, p Policy) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if _, err := m.get(id); err != nil {
		return err
	}
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	if err := m.nft.setPolicy(id, p); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	return nil
}

// Counters returns a sandbox's metered bytes and packets.
func (m *Manager) Counters(ctx context.Context, id string) (Counters, error) {
	if _, err := m.get(id); err != nil {
		return Counters{}, err
	}
	m.nftMu.Lock()
	defer m.nftMu.Unlock()
	c, err := m.nft.read(id)
	if err != nil {
		return Counters{}, fmt.Errorf("network: %w", err)
	}
	return c, nil
}

// Teardown removes a sandbox's network: its rules, counters, route and
// address lease, and its namespace, which goes back to the pool reset (if
// the pool has room and the tap is closed) or is removed. Call it after the
// VMM in the namespace has exited.
func (m *Manager) Teardown(ctx context.Context, id string) error {
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	m.mu.Lock()
	sb := m.active[id]
	if sb == nil {
		m.mu.Unlock()
		return fmt.Errorf("%w %q", ErrUnknown, id)
	}
	// From here the sandbox is gone for every other call; whatever the
	// steps below fail to remove, the next Sweep does.
	delete(m.active, id)
	m.mu.Unlock()
	var errs []error
	m.nftMu.Lock()
	if err := m.nft.dropSandbox(id, sb.addr.guest); err != nil {
		// Something else changed the table: look, then remove what is there.
		if err := m.nft.removeSandbox(id, sb.addr.guest); err != nil {
			errs = append(errs, err)
		}
	}
	m.nftMu.Unlock()
	if err := netlink.RouteDel(m.hostRoute(sb.addr)); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("host route to %v: %w", sb.addr.block, err))
	}
	m.forgetConntrack(sb.addr.guest)
	m.mu.Lock()
	room := !m.closed && len(m.pool) < m.cfg.PoolSize
	m.mu.Unlock()
	if room && m.reset(sb.slot) {
		m.putBack(sb.slot)
	} else if err := m.destroy(sb.slot); err != nil {
		errs = append(errs, err)
	}
	if err := m.alloc.Release(id); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network: teardown of %s: %w", id, err)
	}
	return nil
}

// forgetConntrack drops the connection tracking entries of a guest address,
// so that the next sandbox with this address inherits none of them.
func (m *Manager) forgetConntrack(guest netip.Addr) {
	var filters []netlink.CustomConntrackFilter
	for _, t := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackOrigDstIP} {
		f := &netlink.ConntrackFilter{}
		if err := f.AddIP(t, net.IP(guest.AsSlice())); err == nil {
			filters = append(filters, f)
		}
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, filters...); err != nil {
		m.log.Debug("network: conntrack flush", "guest", guest, "err", err)
	}
}

func isNotFound(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH)
}

// putBack returns a reset slot to the pool, or removes it when the pool is
// full or closed.
func (m *Manager) putBack(s *slot) {
	m.mu.Lock()
	if !m.closed && len(m.pool) < m.cfg.PoolSize {
		m.pool = append(m.pool, s)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	if err := m.destroy(s); err != nil {
		m.log.Warn("network: remove namespace", "netns", s.netns, "err", err)
	}
}

// FillPool makes namespaces until the pool holds PoolSize, and returns when
// it does (or on the first error).
func (m *Manager) FillPool(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m.mu.Lock()
		full := m.closed || len(m.pool) >= m.cfg.PoolSize
		m.mu.Unlock()
		if full {
			return nil
		}
		if err := m.fillOne(); err != nil {
			return err
		}
	}
}

func (m *Manager) fillOne() error {
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	s, err := m.newSlot()
	if err != nil {
		return fmt.Errorf("network: fill pool: %w", err)
	}
	m.putBack(s)
	return nil
}

// refill tops the pool up in the background after Setup took from it.
func (m *Manager) refill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.filling || m.closed || m.noRefill || len(m.pool) >= m.cfg.PoolSize {
		return
	}
	m.filling = true
	m.fillWG.Add(1)
	go func() {
		defer m.fillWG.Done()
		if err := m.FillPool(context.Background()); err != nil {
			m.log.Warn("network: pool refill", "err", err)
		}
		m.mu.Lock()
		m.filling = false
		m.mu.Unlock()
	}()
}

// Stats is what the manager holds, for admission control and metrics.
type Stats struct {
	Sandboxes     int // sandboxes with a network (one tap each)
	Pooled        int // namespaces ready in the pool
	PoolSize      int // the pool's target
	Addresses     int // guest address blocks in the range
	AddressesFree int
}

// Stats returns the manager's counts.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	st := Stats{Pooled: len(m.pool), PoolSize: m.cfg.PoolSize}
	for _, sb := range m.active {
		if sb != nil {
			st.Sandboxes++
		}
	}
	m.mu.Unlock()
	st.Addresses = m.alloc.Size()
	st.AddressesFree = st.Addresses - len(m.alloc.Leases())
	return st
}

// PoolLen is the number of namespaces ready in the pool.
func (m *Manager) PoolLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pool)
}

// Close stops refilling and removes the pooled namespaces. Sandboxes keep
// their networks (a restarted daemon adopts them with Sweep).
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.fillWG.Wait()
	m.mu.Lock()
	pool := m.pool
	m.pool = nil
	m.mu.Unlock()
	var errs []error
	for _, s := range pool {
		errs = append(errs, m.destroy(s))
	}
	return errors.Join(errs...)
}

// SweepReport tells what Sweep adopted and removed.
type SweepReport struct {
	Adopted    []string // sandboxes in the known set whose network was found
	Missing    []string // sandboxes in the known set with no network left
	Namespaces []string // namespaces removed
	Links      []string // host veths removed
	Chains     []string // sandbox IDs whose nftables chains, counters or map entries were removed
	Leases     []string // address leases released
}

// Sweep removes every namespace, host veth, nftables chain, counter, map
// entry, host route and address lease of this manager that belongs neither
// to a sandbox in known nor to the pool, and adopts the networks of the
// known sandboxes it does not hold yet (found by the ID their host veth is
// tagged with), so that they keep running untouched. emberd calls it at
// start-up, after Init, with the sandboxes its database says are running.
// It waits for Setups and Teardowns in flight, and they for it.
func (m *Manager) Sweep(ctx context.Context, known []string) (SweepReport, error) {
	var rep SweepReport
	keep := make(map[string]bool, len(known))
	for _, id := range known {
		keep[id] = true
	}
	if m.bridgeIndex == 0 {
		return rep, errors.New("network: Sweep before Init")
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	ours := make(map[string]bool) // slot keys held by sandboxes or the pool
	for id, sb := range m.active {
		keep[id] = true
		if sb != nil {
			ours[sb.slot.key] = true
		}
	}
	for _, s := range m.pool {
		ours[s.key] = true
	}
	m.mu.Unlock()

	// Adopt the known sandboxes' slots, found by their veth's alias.
	links, err := netlink.LinkList()
	if err != nil {
		return rep, fmt.Errorf("network: list links: %w", err)
	}
	vethOf := make(map[string]string) // key -> alias
	for _, l := range links {
		if k, ok := m.keyFromVeth(l.Attrs().Name); ok {
			vethOf[k] = l.Attrs().Alias
		}
	}
	m.nftMu.Lock()
	withRules, err := m.nft.sandboxIDs()
	m.nftMu.Unlock()
	if err != nil {
		return rep, fmt.Errorf("network: %w", err)
	}
	for _, id := range known {
		if sb, _ := m.get(id); sb != nil {
			continue
		}
		var key string
		for k, alias := range vethOf {
			if alias == id && !ours[k] {
				key = k
			}
		}
		block, leased := m.alloc.Lookup(id)
		_, nsErr := os.Stat(filepath.Join(netnsDir, m.cfg.Prefix+"-"+key))
		// A sandbox whose Setup a crash cut short has no rules yet:
		// it is missing, and its half-made namespace goes below.
		if key == "" || !leased || nsErr != nil || !withRules[id] {
			rep.Missing = append(rep.Missing, id)
			continue
		}
		s := m.slotNames(key)
		if tap, ok := m.findTap(s); ok {
			s.tap = tap
		}
		m.mu.Lock()
		m.active[id] = &sandbox{id: id, slot: s, addr: m.addressing(block)}
		m.mu.Unlock()
		ours[key] = true
		rep.Adopted = append(rep.Adopted, id)
	}
	// Missing sandboxes keep their lease only if they are still known;
	// their leftovers below go.
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if k, ok := m.keyFromVeth(name); ok && !ours[k] {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", name, err))
				continue
			}
			rep.Links = append(rep.Links, name)
		}
	}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read %s: %w", netnsDir, err))
	}
	for _, e := range entries {
		if k, ok := m.keyFromNetns(e.Name()); ok && !ours[k] {
			if err := m.destroy(m.slotNames(k)); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Namespaces = append(rep.Namespaces, e.Name())
		}
	}
	// Leases, nftables state and host routes of sandboxes not kept.
	liveGuests := make(map[netip.Addr]bool)
	liveBlocks := make(map[netip.Prefix]bool)
	for _, l := range m.alloc.Leases() {
		switch {
		case !keep[l.Owner]:
			if err := m.alloc.Release(l.Owner); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Leases = append(rep.Leases, l.Owner)
		case missing(rep.Missing, l.Owner):
			// Known but gone: the lease stays (a new Setup gets the
			// same block back); its rules and route go below.
		default:
			a := m.addressing(l.Prefix)
			liveGuests[a.guest] = true
			liveBlocks[a.block] = true
		}
	}
	m.nftMu.Lock()
	ids, err := m.nft.sandboxIDs()
	if err != nil {
		errs = append(errs, err)
	}
	keys, err := m.nft.mapKeys()
	if err != nil {
		errs = append(errs, err)
	}
	// Map entries first: a chain a map entry jumps to cannot be deleted.
	for k := range keys {
		if !liveGuests[k] {
			if err := m.nft.removeKey(k); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for id := range ids {
		if keep[id] && !missing(rep.Missing, id) {
			continue
		}
		if err := m.nft.removeSandbox(id, netip.Addr{}); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Chains = append(rep.Chains, id)
	}
	m.nftMu.Unlock()
	routes, err := netlink.RouteList(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Index: m.bridgeIndex}}, netlink.FAMILY_V4)
	if err != nil {
		errs = append(errs, fmt.Errorf("list routes: %w", err))
	}
	for _, r := range routes {
		if r.Dst == nil || r.Gw == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		p := netip.PrefixFrom(a, ones)
		if m.cfg.GuestCIDR.Contains(a) && !liveBlocks[p] {
			if err := netlink.RouteDel(&r); err != nil {
				errs = append(errs, fmt.Errorf("delete route to %v: %w", p, err))
			}
		}
	}
	for _, s := range [][]string{rep.Adopted, rep.Missing, rep.Namespaces, rep.Links, rep.Chains, rep.Leases} {
		sort.Strings(s)
	}
	m.log.Info("network: sweep", "adopted", len(rep.Adopted), "missing", rep.Missing,
		"namespaces_removed", len(rep.Namespaces), "links_removed", len(rep.Links),
		"chains_removed", len(rep.Chains), "leases_released", len(rep.Leases))
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("network: sweep: %w", err)
	}
	return rep, nil
}

func missing(list []string, id string) bool {
	for _, x := range list {
		if x == id {
			return true
		}
	}
	return false
}

// findTap returns the name of the tap in an adopted slot's namespace.
func (m *Manager) findTap(s *slot) (string, bool) {
	var name string
	inNamedNetns(s.netns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "tuntap" {
				name = l.Attrs().Name
			}
		}
		return nil
	})
	return name, name != ""
}

// RemoveAll removes everything the manager made: every sandbox's network,
// the pool, the bridge and the nftables table. For tests and uninstalling;
// the VMMs in the namespaces must have exited.
func (m *Manager) RemoveAll(ctx context.Context) error {
	var errs []error
	if err := m.Close(); err != nil {
		errs = append(errs, err)
	}
	m.mu.Lock()
	ids := make([]string, 0, len(m.active))
	for id, sb := range m.active {
		if sb != nil {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	for _, id := range ids {
		if err := m.Teardown(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	if m.bridgeIndex != 0 {
		if _, err := m.Sweep(ctx, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if br, err := netlink.LinkByName(m.bridge); err == nil {
		if err := netlink.LinkDel(br); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", m.bridge, err))
		}
	}
	m.nftMu.Lock()
	if err := m.nft.removeTable(); err != nil {
		errs = append(errs, err)
	}
	m.nftMu.Unlock()
	return errors.Join(errs...)
}

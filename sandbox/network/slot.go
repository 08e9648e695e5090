package network

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// slot is one prepared namespace: /run/netns/PREFIX-KEY holding the tap and
// veth0, whose peer PREFIXhKEY is a port of the host bridge.
type slot struct {
	key      string
	netns    string
	hostVeth string
	tap      string
}

func (m *Manager) slotNames(key string) *slot {
	return &slot{key: key, netns: m.cfg.Prefix + "-" + key, hostVeth: m.cfg.Prefix + "h" + key, tap: m.cfg.TapName}
}

// keyFromNetns returns the key of a namespace name of this manager.
func (m *Manager) keyFromNetns(name string) (string, bool) {
	k, ok := strings.CutPrefix(name, m.cfg.Prefix+"-")
	return k, ok && isKey(k)
}

// keyFromVeth returns the key of a host veth name of this manager.
func (m *Manager) keyFromVeth(name string) (string, bool) {
	k, ok := strings.CutPrefix(name, m.cfg.Prefix+"h")
	return k, ok && isKey(k)
}

func isKey(k string) bool {
	if len(k) != keyLen {
		return false
	}
	for _, c := range k {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func newKey() string {
	b := make([]byte, keyLen/2)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newSlot makes a namespace with its tap and veth pair, ready for Setup's
// addresses. On error nothing is left behind.
func (m *Manager) newSlot() (*slot, error) {
	var s *slot
	for {
		s = m.slotNames(newKey())
		if _, err := os.Stat(filepath.Join(netnsDir, s.netns)); errors.Is(err, os.ErrNotExist) {
			if _, err := netlink.LinkByName(s.hostVeth); err != nil {
				break
			}
		}
	}
	err := createNamedNetns(s.netns, func() error {
		// IPv6 stays off inside: the guest gets an IPv4 route only.
		for _, kv := range [][2]string{
			{"net/ipv6/conf/all/disable_ipv6", "1"},
			{"net/ipv6/conf/default/disable_ipv6", "1"},
			{"net/ipv4/ip_forward", "1"},
			// Strict reverse-path filtering: the guest cannot send from
			// an address that is not routed to its tap.
			{"net/ipv4/conf/all/rp_filter", "1"},
			{"net/ipv4/conf/default/rp_filter", "1"},
		} {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: s.tap}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Owner: m.cfg.TapOwner, Group: m.cfg.TapGroup}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("tap %s: %w", s.tap, err)
		}
		for _, f := range tap.Fds {
			f.Close()
		}
		if err := netlink.LinkSetUp(tap); err != nil {
			return fmt.Errorf("tap %s up: %w", s.tap, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := m.addVeth(s); err != nil {
		deleteNamedNetns(s.netns)
		return nil, err
	}
	m.log.Debug("network: namespace made", "netns", s.netns, "veth", s.hostVeth)
	return s, nil
}

func (m *Manager) addVeth(s *slot) error {
	ns, err := netns.GetFromPath(filepath.Join(netnsDir, s.netns))
	if err != nil {
		return fmt.Errorf("netns %s: %w", s.netns, err)
	}
	defer ns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.hostVeth, MasterIndex: m.bridgeIndex},
		PeerName: nsVeth, PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s: %w", s.hostVeth, err)
	}
	fail := func(err error) error {
		netlink.LinkDel(veth)
		return err
	}
	host, err := netlink.LinkByName(s.hostVeth)
	if err != nil {
		return fail(fmt.Errorf("veth %s: %w", s.hostVeth, err))
	}
	// Isolated bridge ports forward only to the bridge itself, never to
	// each other: one namespace cannot reach another below IP.
	if err := netlink.LinkSetIsolated(host, true); err != nil {
		return fail(fmt.Errorf("veth %s isolated: %w", s.hostVeth, err))
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fail(fmt.Errorf("veth %s up: %w", s.hostVeth, err))
	}
	err = inNetns(ns, func() error {
		l, err := netlink.LinkByName(nsVeth)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return fail(fmt.Errorf("%s in %s up: %w", nsVeth, s.netns, err))
	}
	return nil
}

// addressing is one sandbox's addresses, all derived from its lease.
type addressing struct {
	block   netip.Prefix // the guest's /30
	gateway netip.Addr   // .1: the tap's address
	guest   netip.Addr   // .2
	veth    netip.Addr   // veth0's address on the bridge subnet
}

func (m *Manager) addressing(block netip.Prefix) addressing {
	i, _ := m.alloc.Index(block)
	g := block.Addr().Next()
	return addressing{block: block, gateway: g, guest: g.Next(), veth: addrAdd(m.cfg.BridgeCIDR.Addr(), uint32(i)+2)}
}

func addrAdd(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// configure gives a slot a sandbox's addresses and routes, names its tap and
// tags its host veth with the sandbox ID.
func (m *Manager) configure(s *slot, id, tap string, a addressing) error {
	err := inNamedNetns(s.netns, func() error {
		t, err := netlink.LinkByName(s.tap)
		if err != nil {
			return fmt.Errorf("tap %s: %w", s.tap, err)
		}
		if tap != s.tap {
			if err := netlink.LinkSetDown(t); err != nil {
				return err
			}
			if err := netlink.LinkSetName(t, tap); err != nil {
				return fmt.Errorf("rename tap %s to %s: %w", s.tap, tap, err)
			}
			s.tap = tap
			if err := netlink.LinkSetUp(t); err != nil {
				return err
			}
		}
		if err := netlink.AddrAdd(t, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a.gateway, guestBits))}); err != nil {
			return fmt.Errorf("tap address %v: %w", a.gateway, err)
		}
		v, err := netlink.LinkByName(nsVeth)
		if err != nil {
			return fmt.Errorf("%s: %w", nsVeth, err)
		}
		if err := netlink.AddrAdd(v, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a.veth, 32))}); err != nil {
			return fmt.Errorf("%s address %v: %w", nsVeth, a.veth, err)
		}
		gw := m.bridgeAddr()
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: v.Attrs().Index, Dst: ipNet(netip.PrefixFrom(gw, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to %v: %w", gw, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: v.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %v: %w", gw, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("netns %s: %w", s.netns, err)
	}
	host, err := netlink.LinkByName(s.hostVeth)
	if err != nil {
		return fmt.Errorf("veth %s: %w", s.hostVeth, err)
	}
	if err := netlink.LinkSetAlias(host, id); err != nil {
		return fmt.Errorf("veth %s alias: %w", s.hostVeth, err)
	}
	if err := netlink.RouteReplace(m.hostRoute(a)); err != nil {
		return fmt.Errorf("host route to %v: %w", a.block, err)
	}
	return nil
}

func (m *Manager) hostRoute(a addressing) *netlink.Route {
	return &netlink.Route{LinkIndex: m.bridgeIndex, Dst: ipNet(a.block), Gw: a.veth.AsSlice()}
}

// reset takes a sandbox's state off a slot so that it can serve another:
// addresses, routes and neighbours in the namespace, the tap's name, the
// veth's tag. It reports false when the slot should not be reused: its tap
// is still open (a VMM may still run in the namespace) or the reset failed.
func (m *Manager) reset(s *slot) bool {
	reusable := true
	err := inNamedNetns(s.netns, func() error {
		t, err := netlink.LinkByName(s.tap)
		if err != nil {
			return err
		}
		// A tap has carrier while a process holds it open.
		if t.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			reusable = false
			return nil
		}
		v, err := netlink.LinkByName(nsVeth)
		if err != nil {
			return err
		}
		for _, l := range []netlink.Link{t, v} {
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if err := netlink.AddrDel(l, &a); err != nil {
					return err
				}
			}
			// Down and up again: the kernel drops the link's routes
			// and neighbours.
			if err := netlink.LinkSetDown(l); err != nil {
				return err
			}
		}
		if s.tap != m.cfg.TapName {
			if err := netlink.LinkSetName(t, m.cfg.TapName); err != nil {
				return err
			}
			s.tap = m.cfg.TapName
		}
		for _, l := range []netlink.Link{t, v} {
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		m.log.Warn("network: reset of a namespace failed; removing it", "netns", s.netns, "err", err)
		return false
	}
	if !reusable {
		m.log.Warn("network: tap still open at teardown; namespace removed, not reused", "netns", s.netns, "tap", s.tap)
		return false
	}
	if host, err := netlink.LinkByName(s.hostVeth); err == nil {
		if err := netlink.LinkSetAlias(host, ""); err != nil {
			return false
		}
	} else {
		return false
	}
	return true
}

// destroy removes a slot: its veth pair, its tap and its namespace.
func (m *Manager) destroy(s *slot) error {
	var errs []error
	if l, err := netlink.LinkByName(s.hostVeth); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", s.hostVeth, err))
		}
	}
	// The tap (and veth0, if the host end was already gone) go with the
	// namespace once nothing holds it: the kernel's cleanup_net, after
	// the unmount below. Deleting them one by one here would cost an RCU
	// grace period each.
	if err := deleteNamedNetns(s.netns); err != nil {
		errs = append(errs, err)
	}
	m.log.Debug("network: namespace removed", "netns", s.netns)
	return errors.Join(errs...)
}

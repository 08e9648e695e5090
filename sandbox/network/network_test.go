package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestDatapath runs two sandboxes against an internet namespace: policies,
// a change while connected, isolation, counters, then teardown.
func TestDatapath(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	cfg := testConfig(t)
	in := newInternet(t, cfg.Prefix[1:])
	cfg.DNS = []netip.Addr{in.addr} // the guests' resolver is the server's address, port 53
	m := newTestManager(t, cfg)
	srvA := fmt.Sprintf("%s:%d", in.addr, in.httpA)
	srvB := fmt.Sprintf("%s:%d", in.addr, in.httpB)

	a, err := m.Setup(ctx, SetupSpec{ID: "sb-a", Policy: Policy{Mode: AllowAll}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Setup(ctx, SetupSpec{ID: "sb-b", Tap: "vmtap", Policy: Policy{Mode: DenyAll}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Guest.Address.Addr() == b.Guest.Address.Addr() || !cfg.GuestCIDR.Contains(a.Guest.Address.Addr()) {
		t.Fatalf("guest addresses %v and %v: not distinct in %v", a.Guest.Address, b.Guest.Address, cfg.GuestCIDR)
	}
	if b.Tap != "vmtap" || !netnsExists(a.Netns) || a.Guest.DNS[0] != cfg.DNS[0] {
		t.Fatalf("attachment %+v", b)
	}
	// iproute2 sees the namespace as its own: `ip netns exec` (how emberd
	// can start ember in it) finds the tap there.
	if ip, err := exec.LookPath("ip"); err == nil {
		out, err := exec.Command(ip, "netns", "exec", b.Netns, "ip", "-o", "link", "show", b.Tap).CombinedOutput()
		if err != nil || !strings.Contains(string(out), b.Tap) {
			t.Errorf("ip netns exec %s ip link show %s: %v: %s", b.Netns, b.Tap, err, out)
		}
	}
	ga, _ := newGuest(t, a)
	gb, _ := newGuest(t, b)

	// allow-all reaches the server; the server sees the host's address
	// (NAT), not the guest's.
	body, err := ga.get(srvA)
	if err != nil {
		t.Fatalf("allow-all: %v", err)
	}
	if !strings.Contains(body, in.hostIP.String()) {
		t.Errorf("server saw %q, want the host's NAT address %v", body, in.hostIP)
	}
	// deny-all cannot, not even DNS.
	gb.cannotReach(t, srvA, "the internet server under deny-all")
	gb.cannotReach(t, fmt.Sprintf("%s:53", in.addr), "DNS under deny-all")

	// Allowlist: only the allowed port.
	must(t, m.SetPolicy(ctx, "sb-b", Policy{Mode: Allowlist, Allow: []Rule{
		{CIDR: netip.PrefixFrom(in.addr, 32), Proto: ProtoTCP, Port: uint16(in.httpB)}}}))
	if _, err := gb.get(srvB); err != nil {
		t.Errorf("allowlist: allowed port: %v", err)
	}
	gb.cannotReach(t, srvA, "a port the allowlist does not name")
	if c, err := gb.dial(fmt.Sprintf("%s:53", in.addr), 2e9); err != nil {
		t.Errorf("allowlist: the DNS server it was given: %v", err)
	} else {
		c.Close()
	}

	// A policy change while connected takes effect on the open
	// connection, and undoing it lets the connection go on.
	c, err := ga.dial(fmt.Sprintf("%s:%d", in.addr, in.echo), 2e9)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	must(t, echoOnce(c, "before", 2e9))
	must(t, m.SetPolicy(ctx, "sb-a", Policy{Mode: DenyAll}))
	if err := echoOnce(c, "during", unreachableTimeout); err == nil {
		t.Error("an open connection still works after deny-all")
	}
	must(t, m.SetPolicy(ctx, "sb-a", Policy{Mode: AllowAll}))

	// Isolation: not the other sandbox (its guest or its namespace), not
	// the host's addresses, not link-local, even under allow-all.
	lnB := listenIn(t, gb.ns, "0.0.0.0:7000")
	go echoServe(lnB)
	ga.cannotReach(t, fmt.Sprintf("%s:7000", b.Guest.Address.Addr()), "the other sandbox's guest")
	ga.cannotReach(t, fmt.Sprintf("%s:7000", b.Guest.Gateway), "the other sandbox's namespace")
	hostLn, err := net.Listen("tcp4", "0.0.0.0:0")
	must(t, err)
	defer hostLn.Close()
	go echoServe(hostLn)
	port := hostLn.Addr().(*net.TCPAddr).Port
	for _, h := range hostAddrs(t) {
		ga.cannotReach(t, fmt.Sprintf("%s:%d", h, port), "the host")
	}
	ga.cannotReach(t, fmt.Sprintf("%s:%d", in.linkLoc, in.httpA), "the link-local metadata address")
	// The controls: the host does reach the listener on those addresses
	// and the metadata address, so the refusals above are the rules'.
	if c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", m.bridgeAddr(), port), 2e9); err != nil {
		t.Errorf("control: the host cannot reach its own listener: %v", err)
	} else {
		c.Close()
	}
	if c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", in.linkLoc, in.httpA), 2e9); err != nil {
		t.Errorf("control: the host cannot reach the metadata address: %v", err)
	} else {
		c.Close()
	}
	// And the guest still reaches the internet.
	if _, err := ga.get(srvA); err != nil {
		t.Errorf("allow-all after the isolation checks: %v", err)
	}

	if st := m.Stats(); st.Sandboxes != 2 || st.AddressesFree != st.Addresses-2 {
		t.Errorf("stats %+v, want 2 sandboxes and 2 addresses leased", st)
	}

	// Counters.
	ca, err := m.Counters(ctx, "sb-a")
	must(t, err)
	if ca.BytesOut == 0 || ca.BytesIn == 0 || ca.PacketsOut == 0 {
		t.Errorf("counters of sb-a: %+v, want traffic both ways", ca)
	}
	if _, err := m.Counters(ctx, "nope"); err == nil {
		t.Error("counters of an unknown sandbox")
	}

	// Teardown leaves nothing.
	c.Close()
	for _, id := range []string{"sb-a", "sb-b"} {
		must(t, m.Teardown(ctx, id))
	}
	if l := leftovers(t, m); len(l) > 0 {
		t.Errorf("after teardown: %v", l)
	}
	if len(m.alloc.Leases()) != 0 {
		t.Errorf("leases after teardown: %v", m.alloc.Leases())
	}
}

// hostAddrs are the host's own IPv4 addresses outside the sandbox ranges'
// bridge (which counts too): those a guest could try.
func hostAddrs(t *testing.T) []netip.Addr {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	must(t, err)
	var out []netip.Addr
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		if !ip.IsLoopback() {
			out = append(out, ip)
		}
	}
	return out
}

package network

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/sandbox/network/ipam"
	"github.com/vishvananda/netlink"
)

// TestPoolReuse follows one pooled namespace through two sandboxes: the
// second gets it reset (no old address, policy or counters) and works.
func TestPoolReuse(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.PoolSize = 1
	m := newTestManager(t, cfg)
	m.noRefill = true
	in := newInternet(t, cfg.Prefix[1:])
	srv := fmt.Sprintf("%s:%d", in.addr, in.httpA)
	must(t, m.FillPool(ctx))
	if m.PoolLen() != 1 {
		t.Fatalf("pool holds %d, want 1", m.PoolLen())
	}

	a, err := m.Setup(ctx, SetupSpec{ID: "p1", Policy: Policy{Mode: AllowAll}})
	must(t, err)
	if !a.Pooled || m.PoolLen() != 0 {
		t.Fatalf("first setup: pooled=%v, pool %d", a.Pooled, m.PoolLen())
	}
	g, stop := newGuest(t, a)
	if _, err := g.get(srv); err != nil {
		t.Fatalf("p1: %v", err)
	}
	stop() // the VMM exits: the tap is closed
	must(t, m.Teardown(ctx, "p1"))
	if m.PoolLen() != 1 {
		t.Fatalf("the namespace did not go back to the pool (pool %d)", m.PoolLen())
	}

	b, err := m.Setup(ctx, SetupSpec{ID: "p2", Tap: "vm0", Policy: Policy{Mode: DenyAll}})
	must(t, err)
	if !b.Pooled || b.Netns != a.Netns {
		t.Fatalf("second setup got %s (pooled %v), want %s again", b.Netns, b.Pooled, a.Netns)
	}
	if b.Guest.Address == a.Guest.Address {
		t.Errorf("p2 got p1's address %v at once", b.Guest.Address)
	}
	c, err := m.Counters(ctx, "p2")
	must(t, err)
	if c != (Counters{}) {
		t.Errorf("p2 starts with counters %+v", c)
	}
	// Inside, only p2's addresses and the new tap name are left.
	must(t, inNamedNetns(b.Netns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			for _, ad := range addrs {
				ip, _ := netip.AddrFromSlice(ad.IP.To4())
				if ip == a.Guest.Gateway {
					t.Errorf("p1's gateway %v is still on %s", ip, l.Attrs().Name)
				}
			}
		}
		if got := strings.Join(names, ","); !strings.Contains(got, "vm0") || strings.Contains(got, "tap0") {
			t.Errorf("links in the reused namespace: %s", got)
		}
		return nil
	}))
	g2, _ := newGuest(t, b)
	g2.cannotReach(t, srv, "the server under deny-all")
	must(t, m.SetPolicy(ctx, "p2", Policy{Mode: AllowAll}))
	if _, err := g2.get(srv); err != nil {
		t.Errorf("p2 after allow-all: %v", err)
	}
	// Torn down while its tap is still open (a VMM still running): the
	// namespace is removed, not handed to the next sandbox.
	must(t, m.Teardown(ctx, "p2"))
	if m.PoolLen() != 0 || netnsExists(b.Netns) {
		t.Errorf("a namespace with an open tap went back to the pool (pool %d, exists %v)", m.PoolLen(), netnsExists(b.Netns))
	}
}

// TestSweepAfterCrash leaves a manager's sandboxes and pool behind as a
// killed emberd would; a new manager on the same lease store adopts the one
// still known, which keeps working, and removes everything else.
func TestSweepAfterCrash(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.PoolSize = 1
	cfg.Store = ipam.NewFileStore(filepath.Join(t.TempDir(), "leases.json"))
	// Whatever happens, a manager of these names removes it all at the end.
	t.Cleanup(func() {
		m, err := New(cfg)
		if err == nil && m.Init(ctx) == nil {
			m.RemoveAll(ctx)
		}
	})
	in := newInternet(t, cfg.Prefix[1:])
	srv := fmt.Sprintf("%s:%d", in.addr, in.httpA)

	m1, err := New(cfg)
	must(t, err)
	must(t, m1.Init(ctx))
	must(t, m1.FillPool(ctx))
	atts := map[string]*Attachment{}
	for _, id := range []string{"k1", "k2", "k3"} {
		att, err := m1.Setup(ctx, SetupSpec{ID: id, Policy: Policy{Mode: AllowAll}})
		must(t, err)
		atts[id] = att
	}
	m1.fillWG.Wait()
	// k4's Setup was cut short by the crash: namespace made and tagged,
	// lease taken, no rules yet.
	half, err := m1.newSlot()
	must(t, err)
	k4, err := m1.alloc.Allocate("k4")
	must(t, err)
	must(t, m1.configure(half, "k4", "tap0", m1.addressing(k4)))
	g, _ := newGuest(t, atts["k1"])
	if _, err := g.get(srv); err != nil {
		t.Fatalf("k1 before the crash: %v", err)
	}
	// m1 is dropped without a word: the crash.

	cfg.Store = ipam.NewFileStore(filepath.Join(filepath.Dir(cfg.Store.(*ipam.FileStore).Path()), "leases.json"))
	m2, err := New(cfg)
	must(t, err)
	if p, ok := m2.alloc.Lookup("k2"); !ok || p.Addr().Next().Next() != atts["k2"].Guest.Address.Addr() {
		t.Fatalf("k2's lease was not recovered: %v %v", p, ok)
	}
	must(t, m2.Init(ctx))
	rep, err := m2.Sweep(ctx, []string{"k1", "k4", "ghost"})
	must(t, err)
	if strings.Join(rep.Adopted, ",") != "k1" || strings.Join(rep.Missing, ",") != "ghost,k4" {
		t.Errorf("adopted %v missing %v, want [k1] [ghost k4]", rep.Adopted, rep.Missing)
	}
	if netnsExists(half.netns) {
		t.Error("the half-made namespace of k4 survived the sweep")
	}
	if len(rep.Namespaces) != 4 || strings.Join(rep.Leases, ",") != "k2,k3" || len(rep.Chains) != 2 {
		t.Errorf("sweep removed namespaces %v, leases %v, chains %v; want 4 (k2, k3, k4's, the pool's), k2,k3, k2,k3", rep.Namespaces, rep.Leases, rep.Chains)
	}
	for _, id := range []string{"k2", "k3"} {
		if netnsExists(atts[id].Netns) {
			t.Errorf("%s's namespace survived the sweep", id)
		}
		if _, err := netlink.LinkByName(atts[id].HostVeth); err == nil {
			t.Errorf("%s's veth survived the sweep", id)
		}
	}
	// k1 kept its network through it all, and m2 drives it.
	if _, err := g.get(srv); err != nil {
		t.Errorf("k1 after the sweep: %v", err)
	}
	if got, ok := m2.Lookup("k1"); !ok || got.Guest.Address != atts["k1"].Guest.Address || got.Netns != atts["k1"].Netns {
		t.Errorf("adopted k1: %+v, want %+v", got, atts["k1"])
	}
	if c, err := m2.Counters(ctx, "k1"); err != nil || c.BytesOut == 0 {
		t.Errorf("k1's counters after the sweep: %+v %v", c, err)
	}
	must(t, m2.SetPolicy(ctx, "k1", Policy{Mode: DenyAll}))
	g.cannotReach(t, srv, "the server after the adopted sandbox's policy changed")

	// A second sweep with nothing known removes the rest.
	// k1 stays (the manager holds it); k4, no longer known, loses its lease.
	rep, err = m2.Sweep(ctx, nil)
	must(t, err)
	if strings.Join(rep.Leases, ",") != "k4" {
		t.Errorf("sweep released %v, want k4", rep.Leases)
	}
	m2.mu.Lock()
	delete(m2.active, "k1") // Sweep keeps what the manager holds; drop it as a restart would
	m2.mu.Unlock()
	rep, err = m2.Sweep(ctx, nil)
	must(t, err)
	if strings.Join(rep.Leases, ",") != "k1" {
		t.Errorf("last sweep released %v, want k1", rep.Leases)
	}
	if l := leftovers(t, m2); len(l) > 0 {
		t.Errorf("after sweeping everything: %v", l)
	}
	must(t, m2.RemoveAll(ctx))
	if _, err := netlink.LinkByName(m2.Bridge()); err == nil {
		t.Error("bridge left after RemoveAll")
	}
	if ids, err := m2.nft.chains(mustConn(t)); err == nil && len(ids) > 0 {
		t.Errorf("table %s still has chains %v", m2.Table(), ids)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, atts["k1"].Netns)); err == nil {
		t.Error("k1's namespace left after RemoveAll")
	}
}

// TestBadInput: one clear error, nothing made.
func TestBadInput(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	for _, cfg := range []Config{
		{Prefix: "Emb"}, {Prefix: "toolong1"}, {Table: "a b"}, {TapName: "veth0"},
		{BridgeCIDR: netip.MustParsePrefix("10.0.0.0/24"), GuestCIDR: netip.MustParsePrefix("10.0.0.0/16")},
		{BridgeCIDR: netip.MustParsePrefix("10.1.0.0/28"), GuestCIDR: netip.MustParsePrefix("10.2.0.0/16")},
		{DNS: []netip.Addr{netip.MustParseAddr("::1")}}, {PoolSize: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	cfg := testConfig(t)
	m := newTestManager(t, cfg)
	for _, spec := range []SetupSpec{
		{ID: "", Policy: Policy{Mode: AllowAll}},
		{ID: "has space", Policy: Policy{Mode: AllowAll}},
		{ID: "x", Policy: Policy{Mode: "open"}},
		{ID: "x", Tap: "a/b", Policy: Policy{Mode: AllowAll}},
		{ID: "x", Tap: "veth0", Policy: Policy{Mode: AllowAll}},
		{ID: strings.Repeat("x", 65), Policy: Policy{Mode: AllowAll}},
	} {
		if _, err := m.Setup(ctx, spec); err == nil {
			t.Errorf("Setup(%+v) accepted", spec)
		}
	}
	_, err := m.Setup(ctx, SetupSpec{ID: "dup", Policy: Policy{Mode: AllowAll}})
	must(t, err)
	if _, err := m.Setup(ctx, SetupSpec{ID: "dup", Policy: Policy{Mode: AllowAll}}); err == nil {
		t.Error("a second Setup of one ID was accepted")
	}
	if err := m.SetPolicy(ctx, "dup", Policy{Mode: Allowlist, Allow: []Rule{{CIDR: netip.MustParsePrefix("1.2.3.4/8")}}}); err == nil {
		t.Error("a bad policy was accepted")
	}
	if err := m.Teardown(ctx, "nope"); err == nil {
		t.Error("teardown of an unknown sandbox")
	}
	must(t, m.Teardown(ctx, "dup"))
	if l := leftovers(t, m); len(l) > 0 {
		t.Errorf("left after bad input: %v", l)
	}
}

func BenchmarkSetup(b *testing.B) {
	needRoot(b)
	ctx := context.Background()
	cfg := testConfig(b)
	cfg.PoolSize = 1
	m := newTestManager(b, cfg)
	m.noRefill = true
	for _, pooled := range []bool{false, true} {
		name := map[bool]string{false: "fresh", true: "pooled"}[pooled]
		b.Run(name, func(b *testing.B) {
			var total, down float64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if pooled {
					must(b, m.FillPool(ctx))
				}
				b.StartTimer()
				att, err := m.setup(ctx, SetupSpec{ID: fmt.Sprintf("b%d", i), Policy: Policy{Mode: AllowAll}}, pooled, nil)
				b.StopTimer()
				must(b, err)
				total += float64(att.Took.Microseconds()) / 1000
				t0 := time.Now()
				must(b, m.Teardown(ctx, att.ID))
				down += float64(time.Since(t0).Microseconds()) / 1000
				b.StartTimer()
			}
			b.ReportMetric(total/float64(b.N), "netns_tap_setup_ms")
			b.ReportMetric(down/float64(b.N), "teardown_ms")
		})
	}
}

func TestMeasureSetup(t *testing.T) {
	needRoot(t)
	m := newTestManager(t, testConfig(t))
	c, err := MeasureSetup(context.Background(), m, 3)
	must(t, err)
	if c.FreshMS <= 0 || c.PooledMS <= 0 {
		t.Fatalf("costs %+v", c)
	}
	t.Logf("netns_tap_setup_ms fresh %.2f pooled %.2f (n=%d)", c.FreshMS, c.PooledMS, c.N)
	if l := leftovers(t, m); len(l) > 0 {
		t.Errorf("left after measuring: %v", l)
	}
}

// TestConcurrentSetup sets up and tears down sandboxes from several
// goroutines while the pool refills: distinct addresses and namespaces, and
// nothing left but the pool.
func TestConcurrentSetup(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.PoolSize = 2
	m := newTestManager(t, cfg)
	must(t, m.FillPool(ctx))
	const n = 8
	atts := make([]*Attachment, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			var err error
			atts[i], err = m.Setup(ctx, SetupSpec{ID: fmt.Sprintf("c%d", i), Policy: Policy{Mode: AllowAll}})
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		must(t, <-errs)
	}
	addrs, nss := map[netip.Addr]bool{}, map[string]bool{}
	for _, a := range atts {
		if addrs[a.Guest.Address.Addr()] || nss[a.Netns] {
			t.Fatalf("%s shares an address or namespace: %+v", a.ID, a)
		}
		addrs[a.Guest.Address.Addr()], nss[a.Netns] = true, true
	}
	for i := 0; i < n; i++ {
		go func(i int) { errs <- m.Teardown(ctx, atts[i].ID) }(i)
	}
	for i := 0; i < n; i++ {
		must(t, <-errs)
	}
	m.fillWG.Wait()
	var extra []string
	for _, l := range leftovers(t, m) {
		if !strings.HasPrefix(l, "netns ") && !strings.HasPrefix(l, "link ") {
			extra = append(extra, l)
		}
	}
	if len(extra) > 0 {
		t.Errorf("left after concurrent teardown: %v", extra)
	}
	entries, _ := os.ReadDir(netnsDir)
	count := 0
	for _, e := range entries {
		if _, ok := m.keyFromNetns(e.Name()); ok {
			count++
		}
	}
	if count != m.PoolLen() || count != cfg.PoolSize {
		t.Errorf("%d namespaces on the host, %d in the pool, want %d", count, m.PoolLen(), cfg.PoolSize)
	}
}

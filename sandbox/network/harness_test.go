package network

// The test datapath. No VM runs here, so a process stands in for the guest:
// each sandbox gets a "guest" namespace with a tap of its own (eth0, with the
// address Setup returned and the gateway as default route), and a pump
// copies frames between that tap and the sandbox's tap, which the test opens
// the way ember does. The guest's kernel stack thus sends and receives real
// Ethernet frames through the very tap, namespace, veth, bridge, routes and
// nftables rules a VM would use. An "internet" namespace behind the host's
// NAT runs the test servers.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/embervm/ember/sandbox/network/ipam"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces, links, nftables)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

func randByte() int {
	b := make([]byte, 1)
	rand.Read(b)
	return int(b[0])
}

// testConfig picks names and ranges no other test run uses.
func testConfig(t testing.TB) Config {
	tag := randHex(4)
	b, c := 64+randByte()%64, (randByte()%127)*2
	return Config{
		Prefix:     "t" + tag,
		Table:      "embtest_" + tag,
		BridgeCIDR: netip.MustParsePrefix(fmt.Sprintf("100.%d.%d.0/24", b, c)),
		GuestCIDR:  netip.MustParsePrefix(fmt.Sprintf("100.%d.%d.0/24", b, c+1)),
		DNS:        []netip.Addr{netip.MustParseAddr("198.51.100.53")},
		Store:      &ipam.MemStore{},
	}
}

// newTestManager makes and initialises a manager whose every trace is
// removed when the test ends, however it ends.
func newTestManager(t testing.TB, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.RemoveAll(context.Background()); err != nil {
			t.Errorf("RemoveAll: %v", err)
		}
	})
	if err := m.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

// testNetns makes a named namespace (not one of the manager's names) that is
// removed when the test ends.
func testNetns(t testing.TB, name string, fn func() error) netns.NsHandle {
	t.Helper()
	if err := createNamedNetns(name, fn); err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		deleteNamedNetns(name)
	})
	return h
}

// internet is a namespace behind the host with test servers.
type internet struct {
	ns      netns.NsHandle
	addr    netip.Addr // the servers' address
	hostIP  netip.Addr // the host's end of the link
	httpA   int        // ports of two HTTP servers and a TCP echo server
	httpB   int
	echo    int
	linkLoc netip.Addr // a link-local address the host routes to this namespace
}

func newInternet(t testing.TB, tag string) *internet {
	t.Helper()
	r := randByte() % 64 * 4
	in := &internet{
		addr:  netip.MustParseAddr(fmt.Sprintf("198.18.%d.%d", randByte()%200, r+2)),
		httpA: 8080,
		httpB: 9090,
		echo:  7070,
		// Not the metadata address itself: the host's own route to it,
		// if it has one, stays untouched.
		linkLoc: netip.AddrFrom4([4]byte{169, 254, byte(1 + randByte()%150), byte(1 + randByte()%250)}),
	}
	b := in.addr.As4()
	in.hostIP = netip.AddrFrom4([4]byte{b[0], b[1], b[2], b[3] - 1})
	in.ns = testNetns(t, "t"+tag+"-inet", func() error {
		lo, _ := netlink.LinkByName("lo")
		return netlink.LinkSetUp(lo)
	})
	hostEnd := "t" + tag + "i0"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostEnd}, PeerName: "eth0", PeerNamespace: netlink.NsFd(in.ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(veth) })
	host, _ := netlink.LinkByName(hostEnd)
	must(t, netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(in.hostIP, 30))}))
	must(t, netlink.LinkSetUp(host))
	// The host routes a link-local address here, as a cloud host
	// reaches its metadata service: sandboxes must not.
	must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(netip.PrefixFrom(in.linkLoc, 32)), Gw: in.addr.AsSlice()}))
	must(t, inNetns(in.ns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(in.addr, 30))}); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(in.linkLoc, 32))}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: in.hostIP.AsSlice()})
	}))
	// A DNS stand-in: a TCP listener on port 53.
	go echoServe(listenIn(t, in.ns, "0.0.0.0:53"))
	for _, port := range []int{in.httpA, in.httpB} {
		ln := listenIn(t, in.ns, fmt.Sprintf("0.0.0.0:%d", port))
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %d to %s", port, r.RemoteAddr)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	ln := listenIn(t, in.ns, fmt.Sprintf("0.0.0.0:%d", in.echo))
	go echoServe(ln)
	return in
}

func echoServe(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// listenIn listens on a TCP address inside a namespace; the listener is
// closed when the test ends.
func listenIn(t testing.TB, ns netns.NsHandle, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	must(t, inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	return ln
}

// guest stands in for a VM behind a sandbox's tap.
type guest struct {
	ns  netns.NsHandle
	att *Attachment
}

// tunFlagsReq is struct ifreq with the name and flags of TUNSETIFF.
type tunFlagsReq struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// vnetHdrLen is the size of struct virtio_net_hdr, the tap's default vnet
// header (linux/virtio_net.h; ember makes it 12 bytes with TUNSETVNETHDRSZ).
const vnetHdrLen = 10

// openTap opens tap name in the calling thread's namespace, with the vnet
// header (as ember opens a sandbox's tap) or without (the guest's side).
func openTap(name string, vnetHdr bool) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var req tunFlagsReq
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if vnetHdr {
		req.flags |= unix.IFF_VNET_HDR
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); e != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, e)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// newGuest attaches a guest namespace to the sandbox's tap and gives it the
// address Setup returned. The pump stops when the test ends or stop is
// called.
func newGuest(t testing.TB, att *Attachment) (g *guest, stop func()) {
	t.Helper()
	g = &guest{att: att}
	var gtap *os.File
	g.ns = testNetns(t, att.Netns+"-g"+randHex(4), func() error {
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		f, err := openTap("eth0", false)
		if err != nil {
			return err
		}
		gtap = f
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(att.Guest.Address)}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: att.Guest.Gateway.AsSlice()})
	})
	var stap *os.File
	must(t, inNamedNetns(att.Netns, func() (err error) {
		stap, err = openTap(att.Tap, true)
		return err
	}))
	// The pump is the VM's virtio-net device: frames from the sandbox's
	// tap lose their vnet header (no offloads were negotiated, so it is
	// all zeros) and frames to it get one.
	var wg sync.WaitGroup
	pump := func(dst, src *os.File, strip, add int) {
		defer wg.Done()
		buf := make([]byte, 65536+vnetHdrLen)
		for {
			n, err := src.Read(buf[add:])
			if err != nil {
				return
			}
			if n < strip {
				continue
			}
			dst.Write(buf[strip : add+n])
		}
	}
	wg.Add(2)
	go pump(stap, gtap, 0, vnetHdrLen)
	go pump(gtap, stap, vnetHdrLen, 0)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			gtap.Close()
			stap.Close()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return g, stop
}

func (g *guest) dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetns(g.ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

// get fetches http://addr/ from inside the guest.
func (g *guest) get(addr string) (string, error) {
	cl := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return g.dial(a, 2*time.Second)
		},
	}}
	resp, err := cl.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// unreachableTimeout bounds a connection attempt that must fail: dropped
// packets never answer, so only a timeout ends it.
const unreachableTimeout = 600 * time.Millisecond

// cannotReach fails the test if the guest can open a TCP connection to addr.
func (g *guest) cannotReach(t testing.TB, addr, what string) {
	t.Helper()
	c, err := g.dial(addr, unreachableTimeout)
	if err == nil {
		c.Close()
		t.Errorf("guest %s reached %s (%s)", g.att.ID, what, addr)
	}
}

// echoOnce writes a line on c and waits for it back.
func echoOnce(c net.Conn, line string, wait time.Duration) error {
	c.SetDeadline(time.Now().Add(wait))
	if _, err := fmt.Fprintln(c, line); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != line {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// leftovers lists what of the manager is still on the host: namespaces,
// links named with its prefix (other than the bridge), its sandbox chains
// and counters, and routes into the guest range.
func leftovers(t testing.TB, m *Manager) []string {
	t.Helper()
	var out []string
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if _, ok := m.keyFromNetns(e.Name()); ok {
			out = append(out, "netns "+e.Name())
		}
	}
	links, err := netlink.LinkList()
	must(t, err)
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, m.cfg.Prefix) && n != m.bridge && !strings.HasSuffix(n, "i0") {
			out = append(out, "link "+n)
		}
	}
	ids, err := m.nft.sandboxIDs()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Logf("nft: %v", err)
	}
	for id := range ids {
		out = append(out, "nft chain/counter of "+id)
	}
	keys, _ := m.nft.mapKeys()
	for k := range keys {
		out = append(out, "nft map entry "+k.String())
	}
	routes, _ := netlink.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil {
			if a, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok && m.cfg.GuestCIDR.Contains(a) {
				out = append(out, "route "+r.Dst.String())
			}
		}
	}
	return out
}

func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

func mustConn(t testing.TB) *nftables.Conn {
	c, err := conn()
	must(t, err)
	return c
}

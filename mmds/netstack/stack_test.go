package netstack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/mmds"
	"github.com/embervm/ember/mmds/netstack"
)

// These tests put a Stack behind a tap in a network namespace of their
// own: the Linux kernel's TCP/IP stack on the tap's side plays the guest,
// so the stack is tested against a real TCP peer. A pump moves frames
// between the tap and the stack as the virtio-net device does.

var mmdsIP = [4]byte{169, 254, 169, 254}

const wait = 10 * time.Second

// guestNet is a namespace whose tap leads to a stack.
type guestNet struct {
	ns    string
	tap   *os.File // non-blocking, in Go's poller: Close ends a Read
	stack *netstack.Stack
	m     *netstack.Metrics
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// inNS runs f on a thread in namespace ns.
func inNS(t *testing.T, ns string, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newGuestNet makes the namespace, the tap (169.254.1.2/16 on the kernel's
// side) and a stack serving h behind it, with a pump.
func newGuestNet(t *testing.T, h http.Handler, limits *netstack.Limits) *guestNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (taps, network namespaces)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip(err)
	}
	g := &guestNet{ns: "embms-" + randHex(4), m: &netstack.Metrics{}}
	run(t, "ip", "netns", "add", g.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", g.ns).Run() })
	inNS(t, g.ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq("mmds0")
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return err
		}
		// Through Go's poller, so that the cleanup's Close ends the
		// pump's Read: a Read blocked in the kernel outlives close(2),
		// and once the number is reused it reads the next test's tap.
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return err
		}
		g.tap = os.NewFile(uintptr(fd), "tap")
		return os.WriteFile("/proc/sys/net/ipv6/conf/mmds0/disable_ipv6", []byte("1"), 0)
	})
	run(t, "ip", "-n", g.ns, "addr", "add", "169.254.1.2/16", "dev", "mmds0")
	run(t, "ip", "-n", g.ns, "link", "set", "mmds0", "up")
	run(t, "ip", "-n", g.ns, "link", "set", "lo", "up")
	g.stack = netstack.New(netstack.Config{IP: mmdsIP, Handler: h, Limits: limits, Metrics: g.m})
	kick := make(chan struct{}, 1)
	g.stack.SetNotify(func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	})
	var wmu sync.Mutex
	drain := func() {
		wmu.Lock()
		defer wmu.Unlock()
		buf := make([]byte, netstack.MaxFrameLen)
		for g.stack.Pending() {
			n := g.stack.Reply(buf)
			if n == 0 {
				return
			}
			g.tap.Write(buf[:n])
		}
	}
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := g.tap.Read(buf)
			if err != nil {
				close(done)
				return
			}
			if g.stack.Wants(buf[:min(n, netstack.HeadLen)]) {
				g.stack.Intercept(buf[:n], false)
				drain()
			}
		}
	}()
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-kick:
				drain()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		g.stack.Close()
		close(stop)
		g.tap.Close()
		<-done
	})
	return g
}

// dial connects to the MMDS from inside the namespace.
func (g *guestNet) dial(t *testing.T) (net.Conn, error) {
	var c net.Conn
	var err error
	inNS(t, g.ns, func() error {
		c, err = net.DialTimeout("tcp", "169.254.169.254:80", wait)
		return nil
	})
	return c, err
}

// client is an HTTP client whose connections start in the namespace.
func (g *guestNet) client(t *testing.T) *http.Client {
	return &http.Client{Timeout: wait, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return g.dial(t) },
	}}
}

func get(t *testing.T, c *http.Client, path string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://169.254.169.254"+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

func service(t *testing.T, data string) *mmds.Service {
	t.Helper()
	store := mmds.NewStore(0)
	v, err := mmds.ParseJSON([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(v); err != nil {
		t.Fatal(err)
	}
	s, err := mmds.NewService(store, mmds.Config{NetworkInterfaces: []string{"eth0"}, Version: mmds.V1}, "vm")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStackServesLinux: the kernel, as the guest, resolves the MMDS address,
// and reads values, a JSON subtree and a 40 KiB value over kept-alive and
// fresh connections.
func TestStackServesLinux(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 40<<10/16)
	g := newGuestNet(t, service(t, `{"latest":{"meta-data":{"instance-id":"i-1234","tags":{"a":"b"}}},"big":"`+big+`"}`), nil)
	c := g.client(t)
	if code, body := get(t, c, "/latest/meta-data/instance-id"); code != 200 || body != "i-1234" {
		t.Fatalf("value: %d %q", code, body)
	}
	if code, body := get(t, c, "/latest/meta-data", "Accept", "application/json"); code != 200 || body != `{"instance-id":"i-1234","tags":{"a":"b"}}` {
		t.Fatalf("subtree: %d %q", code, body)
	}
	if code, body := get(t, c, "/latest/meta-data/"); code != 200 || body != "instance-id\ntags/" {
		t.Fatalf("listing: %d %q", code, body)
	}
	for range 3 {
		if code, body := get(t, c, "/big"); code != 200 || body != big {
			t.Fatalf("40 KiB value: %d, %d bytes", code, len(body))
		}
	}
	// Many short connections, one after the other.
	for i := range 100 {
		fresh := g.client(t)
		fresh.Transport.(*http.Transport).DisableKeepAlives = true
		if code, body := get(t, fresh, "/latest/meta-data/instance-id"); code != 200 || body != "i-1234" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	c.CloseIdleConnections()
	// Every connection ends: the client's FINs, the server's.
	deadline := time.Now().Add(wait)
	for g.m.ConnectionsDestroyed.Load() != g.m.ConnectionsCreated.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("connections created %d, destroyed %d", g.m.ConnectionsCreated.Load(), g.m.ConnectionsDestroyed.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := g.m.ConnectionsCreated.Load(); n < 101 {
		t.Errorf("connections created: %d, want at least 101", n)
	}
	if g.m.RxAcceptedErr.Load() != 0 || g.m.TxErrors.Load() != 0 {
		t.Errorf("errors: rx %d tx %d", g.m.RxAcceptedErr.Load(), g.m.TxErrors.Load())
	}
}

// TestStackConnectionLimit: connections beyond the VM's budget are refused
// with a RST; a freed slot is usable again.
func TestStackConnectionLimit(t *testing.T) {
	const max = 4
	g := newGuestNet(t, service(t, `{"a":"b"}`), netstack.NewLimits(max))
	var open []net.Conn
	for i := range max {
		c, err := g.dial(t)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		open = append(open, c)
	}
	if c, err := g.dial(t); err == nil {
		c.Close()
		t.Fatal("a connection beyond the limit was accepted")
	} else if !strings.Contains(err.Error(), "refused") {
		t.Fatalf("beyond the limit: %v, want connection refused", err)
	}
	// A held connection still works.
	fmt.Fprintf(open[0], "GET /a HTTP/1.0\r\n\r\n")
	open[0].SetReadDeadline(time.Now().Add(wait))
	b, err := io.ReadAll(open[0])
	if err != nil || !bytes.HasSuffix(b, []byte("\r\n\r\nb")) {
		t.Fatalf("answer on a held connection: %q %v", b, err)
	}
	for _, c := range open[1:] {
		c.Close()
	}
	deadline := time.Now().Add(wait)
	for {
		c, err := g.dial(t)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection after the others closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStackOtherPortsAndProtocols: another port gets a RST, UDP to the MMDS
// address is dropped (counted as unusual).
func TestStackOtherPortsAndProtocols(t *testing.T) {
	g := newGuestNet(t, service(t, `{}`), nil)
	inNS(t, g.ns, func() error {
		_, err := net.DialTimeout("tcp", "169.254.169.254:81", wait)
		if err == nil || !strings.Contains(err.Error(), "refused") {
			return fmt.Errorf("port 81: %v, want connection refused", err)
		}
		u, err := net.Dial("udp", "169.254.169.254:53")
		if err != nil {
			return err
		}
		defer u.Close()
		_, err = u.Write([]byte("hello"))
		return err
	})
	deadline := time.Now().Add(wait)
	for g.m.RxAcceptedUnusual.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the UDP datagram was not counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStackConcurrentClients: clients in parallel, on kept-alive and fresh
// connections, get whole answers, and every connection ends.
func TestStackConcurrentClients(t *testing.T) {
	big := strings.Repeat("x", 30000)
	g := newGuestNet(t, service(t, `{"id":"i-1","big":"`+big+`"}`), nil)
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kept := g.client(t)
			defer kept.CloseIdleConnections()
			for i := range 60 {
				c := kept
				if w%2 == 0 {
					c = g.client(t)
					c.Transport.(*http.Transport).DisableKeepAlives = true
				}
				path, want := "/id", "i-1"
				if i%10 == 0 {
					path, want = "/big", big
				}
				if code, body := get(t, c, path); code != 200 || body != want {
					t.Errorf("client %d request %d: %d, %d bytes", w, i, code, len(body))
					return
				}
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(wait)
	for g.m.ConnectionsDestroyed.Load() != g.m.ConnectionsCreated.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("connections created %d, destroyed %d", g.m.ConnectionsCreated.Load(), g.m.ConnectionsDestroyed.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

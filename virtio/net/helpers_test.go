package net

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/virtiotest"
)

// The tests run their taps in a network namespace of their own, away from
// the host's interfaces and daemons: the taps see no traffic but the
// tests'. Each tap is created by the device (New) and disappears when it
// closes.

const (
	wait = 5 * time.Second
	// testEtherType marks the tests' frames (IEEE 802 local experimental).
	testEtherType = 0x88b5
	ethPAll       = 0x0003 // ETH_P_ALL
)

var (
	nsName  string // the tests' network namespace, "" if unavailable
	nsError string // why not
)

func TestMain(m *testing.M) {
	nsName = "embt-" + randHex(4)
	switch {
	case os.Geteuid() != 0:
		nsError = "needs root (taps, network namespaces)"
	default:
		if _, err := os.Stat(tunPath); err != nil {
			nsError = err.Error()
		} else if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
			nsError = fmt.Sprintf("ip netns add: %v: %s", err, out)
		}
	}
	if nsError != "" {
		nsName = ""
	}
	code := m.Run()
	if nsName != "" {
		exec.Command("ip", "netns", "del", nsName).Run()
	}
	os.Exit(code)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func needNS(t *testing.T) {
	t.Helper()
	if nsName == "" {
		t.Skip(nsError)
	}
}

// inNS runs f on an OS thread inside the tests' namespace: sockets and
// taps it creates belong there.
func inNS(t *testing.T, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+nsName, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// ip runs ip(8) in the tests' namespace.
func ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", nsName}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newDevice makes a device on a new tap in the namespace, with IPv6 off
// (no router solicitations or DAD on it) and the link up.
func newDevice(t *testing.T, cfg Config) *Device {
	t.Helper()
	needNS(t)
	cfg.HostDevName = "embt" + randHex(4)
	if cfg.IfaceID == "" {
		cfg.IfaceID = "eth0"
	}
	var d *Device
	inNS(t, func() (err error) {
		if d, err = New(cfg, nil); err != nil {
			return err
		}
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+cfg.HostDevName+"/disable_ipv6", []byte("1"), 0); err != nil && !os.IsNotExist(err) {
			return err
		}
		return nil
	})
	t.Cleanup(func() { d.Close() })
	ip(t, "link", "set", "dev", cfg.HostDevName, "up")
	return d
}

// start makes a device and drives it through virtio-mmio, negotiating the
// offered features in want.
func start(t *testing.T, cfg Config, want uint64) (*Device, *virtiotest.MMIODriver) {
	t.Helper()
	d := newDevice(t, cfg)
	mem := virtiotest.NewMMIOMemory()
	tr, err := virtio.NewMMIO(d, mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	m, err := virtiotest.SetupMMIO(tr, mem, want, 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	return d, m
}

// packetSocket opens an AF_PACKET socket on the device's tap: what it
// reads is what the guest sent, what it writes goes to the guest.
func packetSocket(t *testing.T, d *Device) int {
	t.Helper()
	var fd int
	inNS(t, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(ethPAll)))
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(d.HostDevName())
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(ethPAll), Ifindex: int(ifr.Uint32())})
	})
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval(int64(wait))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// frame builds an Ethernet frame of n bytes (n >= 16) of the tests'
// EtherType, its payload a pattern starting at seq.
func frame(n int, seq byte) []byte {
	f := make([]byte, n)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 0x01})
	binary.BigEndian.PutUint16(f[12:], testEtherType)
	for i := 14; i < n; i++ {
		f[i] = seq + byte(i)
	}
	return f
}

// vnetHdr is a transmit header with nothing to offload.
func vnetHdr() []byte { return make([]byte, HdrLen) }

// recvSent reads the next frame of the tests' EtherType that the guest
// sent out of the tap.
func recvSent(t *testing.T, fd int) []byte {
	t.Helper()
	buf := make([]byte, 70000)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue // a signal (the Go runtime's preemption) interrupted the wait
		}
		if err != nil {
			t.Fatalf("no frame from the guest: %v", err)
		}
		ll, _ := from.(*unix.SockaddrLinklayer)
		if ll != nil && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n >= 14 && binary.BigEndian.Uint16(buf[12:]) == testEtherType {
			return buf[:n]
		}
	}
}

// inject sends frame f from the host side of the tap toward the guest.
func inject(t *testing.T, fd int, f []byte) {
	t.Helper()
	if _, err := unix.Write(fd, f); err != nil {
		t.Fatalf("inject: %v", err)
	}
}

// waitFor polls cond until it holds or the wait runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// gather concatenates the first n bytes of the writable buffers (of the
// given sizes) of the chain at head.
func gather(m *virtiotest.MMIODriver, q int, head uint16, sizes []int, n int) []byte {
	var out []byte
	for i, sz := range sizes {
		k := min(sz, n-len(out))
		if k <= 0 {
			break
		}
		out = append(out, m.Queues[q].Written(head, i, k)...)
	}
	return out
}

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// transferBytes is what the network and vsock tests move each way.
const transferBytes = 100 << 20

// transferTimeout allows for 200 MiB through the software-emulated lab.
const transferTimeout = 6 * time.Minute

type syncBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	marks []arrival // when the output arrived, for clock checks
}

// arrival: the buffer's bytes before end had all arrived by at. Writes
// within a millisecond of the last mark extend it.
type arrival struct {
	end int
	at  time.Time
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	now := time.Now()
	if k := len(s.marks); k > 0 && now.Sub(s.marks[k-1].at) < time.Millisecond {
		s.marks[k-1].end = s.b.Len()
	} else {
		s.marks = append(s.marks, arrival{s.b.Len(), now})
	}
	return n, err
}

// ArrivedAt is when the byte at offset off of String() arrived (zero if it
// has not).
func (s *syncBuffer) ArrivedAt(off int) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, _ := slices.BinarySearchFunc(s.marks, off, func(m arrival, off int) int {
		if m.end <= off {
			return -1
		}
		return 1
	})
	if i == len(s.marks) {
		return time.Time{}
	}
	return s.marks[i].at
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// netns makes a network namespace holding a tap with addr (CIDR) and
// returns its name; both go away after the test.
func netns(t *testing.T, tap, addr string) string {
	t.Helper()
	ns := fmt.Sprintf("embt%d", os.Getpid())
	sh(t, "ip netns add "+ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	in := "ip netns exec " + ns + " "
	sh(t, in+"ip link set lo up && "+in+"ip tuntap add dev "+tap+" mode tap && "+
		in+"ip addr add "+addr+" dev "+tap+" && "+in+"ip link set "+tap+" up")
	return ns
}

// startHelper runs the test binary as a host-side helper in ns.
func startHelper(t *testing.T, ns string, args ...string) *syncBuffer {
	t.Helper()
	out, _ := startStoppableHelper(t, ns, args...)
	return out
}

// startStoppableHelper is startHelper that also returns a function that
// ends the helper (for a test that retries its run: a fresh helper, no
// reports left from the broken run).
func startStoppableHelper(t *testing.T, ns string, args ...string) (*syncBuffer, func()) {
	t.Helper()
	out := &syncBuffer{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0]}, args[1:]...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+args[0])
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { cmd.Process.Kill(); cmd.Wait() }) }
	t.Cleanup(stop)
	return out, stop
}

// TestNetTap: the guest and a host network namespace holding the tap ping
// each other, and 100 MiB cross TCP each way intact.
func TestNetTap(t *testing.T) {
	const (
		hostIP  = "10.77.0.1"
		guestIP = "10.77.0.2"
	)
	ns := netns(t, "tap0", hostIP+"/24")
	sink := startHelper(t, ns, "tcp-sink", hostIP+":5001")
	source := startHelper(t, ns, "tcp-source", hostIP+":5002", fmt.Sprint(transferBytes))

	// The host pings the guest while it runs.
	pinged := make(chan bool, 1)
	stop := make(chan struct{})
	var stopOnce sync.Once
	stopPing := func() { stopOnce.Do(func() { close(stop) }) }
	defer stopPing()
	go func() {
		for {
			select {
			case <-stop:
				pinged <- false
				return
			default:
			}
			if exec.Command("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", guestIP).Run() == nil {
				pinged <- true
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()

	guestCmd := strings.Join([]string{
		"ip link set lo up", "ip addr add " + guestIP + "/24 dev eth0", "ip link set eth0 up",
		"ping -c 3 " + hostIP, mountProbe("/dev/vda"),
		fmt.Sprintf("/probe/probe tcp-send %s:5001 %d", hostIP, transferBytes),
		"/probe/probe tcp-recv " + hostIP + ":5002", "sleep 2",
	}, "; ")
	r := emberWith(t, transferTimeout, []string{"ip", "netns", "exec", ns},
		"--kernel", guestFile(t, "minimal-bzImage"), "--initrd", guestFile(t, "initramfs.cpio.gz"), "--mem-mib", "256",
		"--net", "tap=tap0,mac=06:00:0a:4d:00:02", "--drive", "path="+probeDrive(t)+",ro",
		"--cmdline", cmdline(`ember_mode=cmd ember_cmd="`+guestCmd+`"`))
	if r.code != 0 || !strings.Contains(r.stdout, initMarker) {
		t.Fatalf("guest failed (exit %d)\n%s\n%s", r.code, tailString(r.stdout), r.stderr)
	}
	checkPing(t, r.stdout, 3)
	stopPing()
	if !<-pinged {
		t.Errorf("host could not ping the guest")
	}
	checkTransfer(t, "guest->host", report(t, r.stdout, "probe", "sent"), report(t, sink.String(), "helper", "received"))
	checkTransfer(t, "host->guest", report(t, source.String(), "helper", "sent"), report(t, r.stdout, "probe", "received"))
}

// checkPing checks busybox ping's summary in the guest's output: at least
// one of sent echo requests answered. A lost first request has been seen
// once in many lab runs (2 of 3 answered); it is logged, not failed: the
// 100 MiB transfers are the test of the data path.
func checkPing(t *testing.T, out string, sent int) {
	t.Helper()
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("guest ping printed no summary\n%s", tailString(out))
		return
	}
	got, _ := strconv.Atoi(m[2])
	switch {
	case got == 0:
		t.Errorf("guest could not ping the host\n%s", tailString(out))
	case got < sent:
		t.Logf("guest ping: %s of %s echo requests answered", m[2], m[1])
	}
}

// checkTransfer compares a sender's and a receiver's report.
func checkTransfer(t *testing.T, what string, sent, received map[string]string) {
	t.Helper()
	if sent["sent"] != fmt.Sprint(transferBytes) || received["received"] != sent["sent"] {
		t.Fatalf("%s: sent %s bytes, received %s, want %d", what, sent["sent"], received["received"], transferBytes)
	}
	if sent["sha256"] != received["sha256"] {
		t.Fatalf("%s: data differs: sent sha256 %s, received %s", what, sent["sha256"], received["sha256"])
	}
	t.Logf("%s: %d bytes intact (sha256 %.16s...)", what, transferBytes, sent["sha256"])
}

package e2e

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestVsock moves 100 MiB each way between a guest program (guest/probe)
// and host unix sockets through Ember's hybrid vsock, and checks that a
// guest connecting to a port nobody listens on fails at once.
func TestVsock(t *testing.T) {
	dir := scratchDir(t)
	uds := filepath.Join(dir, "vsock.sock")

	// Guest -> host: Ember connects to <uds>_6000.
	l, err := net.Listen("unix", uds+"_6000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fromGuest := make(chan map[string]string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h := sha256.New()
			n, err := io.Copy(h, c)
			c.Close()
			fromGuest <- map[string]string{"received": fmt.Sprint(n), "sha256": fmt.Sprintf("%x", h.Sum(nil)), "err": fmt.Sprint(err)}
		}
	}()

	// Host -> guest: connect to the uds, CONNECT 5000, send, half-close.
	toGuest := make(chan map[string]string, 16)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			rep, ok := hostSend(uds, 5000)
			if ok {
				toGuest <- rep
			}
		}
	}()

	guestCmd := strings.Join([]string{
		mountProbe("/dev/vda"),
		"/probe/probe vsock-recv 5000",
		fmt.Sprintf("/probe/probe vsock-send 6000 %d", transferBytes),
		"/probe/probe vsock-refused 7000",
	}, "; ")
	r := emberWith(t, transferTimeout, nil,
		"--kernel", guestFile(t, "minimal-bzImage"), "--initrd", guestFile(t, "initramfs.cpio.gz"), "--mem-mib", "256",
		"--vsock", "cid=3,uds="+uds, "--drive", "path="+probeDrive(t)+",ro",
		"--cmdline", cmdline(`ember_mode=cmd ember_cmd="`+guestCmd+`"`))
	if r.code != 0 || !strings.Contains(r.stdout, initMarker) {
		t.Fatalf("guest failed (exit %d)\n%s\n%s", r.code, tailString(r.stdout), r.stderr)
	}
	// A retried run (lab fault) may have left reports of broken transfers
	// behind: the last report is the run that finished.
	sent := lastReport(toGuest, 0)
	if sent == nil {
		t.Fatalf("the host never got OK for CONNECT 5000\n%s\n%s", tailString(r.stdout), r.stderr)
	}
	checkTransfer(t, "host->guest", sent, report(t, r.stdout, "probe", "received"))
	got := lastReport(fromGuest, 5*time.Second)
	if got == nil {
		t.Fatal("nothing arrived on the host's unix socket")
	}
	checkTransfer(t, "guest->host", report(t, r.stdout, "probe", "sent"), got)
	ref := report(t, r.stdout, "probe", "refused")
	ms, _ := strconv.Atoi(ref["ms"])
	if ref["refused"] != "true" || ms > 1000 {
		t.Fatalf("connecting to an unused host port: refused=%s after %s ms, want a refusal within 1 s", ref["refused"], ref["ms"])
	}
}

// lastReport returns the newest report in ch, waiting up to wait for one
// if there is none yet; nil if none comes.
func lastReport(ch chan map[string]string, wait time.Duration) map[string]string {
	var last map[string]string
	select {
	case last = <-ch:
	default:
		select {
		case last = <-ch:
		case <-time.After(wait):
			return nil
		}
	}
	for {
		select {
		case r := <-ch:
			last = r
		default:
			return last
		}
	}
}

// hostSend connects to Ember's vsock socket, asks for guest port, and sends
// transferBytes; ok is false if the guest was not listening yet.
func hostSend(uds string, port int) (map[string]string, bool) {
	c, err := net.Dial("unix", uds)
	if err != nil {
		return nil, false
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return nil, false
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		return nil, false
	}
	c.SetReadDeadline(time.Time{})
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{'v', 's', 'o', 'c', 'k'})
	if _, err := io.CopyN(io.MultiWriter(c, h), src, transferBytes); err != nil {
		return map[string]string{"sent": "0", "err": err.Error()}, true
	}
	c.(*net.UnixConn).CloseWrite()
	// Wait for the guest to close its side.
	io.Copy(io.Discard, c)
	return map[string]string{"sent": fmt.Sprint(transferBytes), "sha256": fmt.Sprintf("%x", h.Sum(nil))}, true
}

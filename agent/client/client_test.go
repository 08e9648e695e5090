package client

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/embervm/ember/agent/proto"
)

// fakeVMM answers a hybrid vsock CONNECT as Ember's device does, with
// reply, then sends after.
func fakeVMM(t *testing.T, reply, after string) (string, chan string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	lines := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		lines <- line
		io.WriteString(c, reply+after)
	}()
	return sock, lines
}

func TestDialHybridVsock(t *testing.T) {
	sock, lines := fakeVMM(t, "OK 1073741824\n", "guest bytes")
	conn, err := DialHybridVsock(context.Background(), sock, proto.Port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if l := <-lines; l != "CONNECT 1024\n" {
		t.Errorf("sent %q", l)
	}
	// Nothing past the OK line was consumed by the handshake.
	b, _ := io.ReadAll(conn)
	if string(b) != "guest bytes" {
		t.Errorf("stream starts with %q", b)
	}
}

func TestDialHybridVsockRefused(t *testing.T) {
	sock, _ := fakeVMM(t, "", "") // closes: nothing listens in the guest
	if _, err := DialHybridVsock(context.Background(), sock, proto.Port); err == nil || !strings.Contains(err.Error(), "nothing listens") {
		t.Errorf("refused: %v", err)
	}
	sock, _ = fakeVMM(t, "NO\n", "")
	if _, err := DialHybridVsock(context.Background(), sock, proto.Port); err == nil || !strings.Contains(err.Error(), `"NO"`) {
		t.Errorf("bad answer: %v", err)
	}
	if _, err := DialHybridVsock(context.Background(), filepath.Join(t.TempDir(), "none"), proto.Port); err == nil {
		t.Error("dialled a missing socket")
	}
}

// TestWaitRetriesASilentConnection: a connection the guest accepted and
// then dropped without a word (a restore's vsock transport reset) does not
// hold Wait to its end: the attempt times out and a new one is made; and
// Wait returns once the VM has ended.
func TestWaitRetriesASilentConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "v.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conns := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, "OK 1073741824\n") // and then nothing
			conns <- c
		}
	}()
	ended := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := Wait(context.Background(), sock, Options{Name: "test"}, ended)
		done <- err
	}()
	for i := range 2 {
		select {
		case c := <-conns:
			defer c.Close()
		case <-time.After(waitAttempt + 10*time.Second): // a hang, not a speed figure
			t.Fatalf("connection %d did not come", i+1)
		}
	}
	close(ended)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "VM ended") {
			t.Errorf("Wait after the VM ended: %v", err)
		}
	case <-time.After(waitAttemptMax + 10*time.Second):
		t.Fatal("Wait did not return after the VM ended")
	}
}

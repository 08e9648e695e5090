package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/embervm/ember/agent/proto"
)

// TestPortConnect: a TCP server on the guest's loopback is reached
// through the agent: an HTTP request gets its answer, 4 MiB go through
// an echo server both ways whole with half-close, and a port nobody
// listens on is a clear error.
func TestPortConnect(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	ctx := context.Background()

	// HTTP.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from "+r.URL.Path)
	}))
	port := l.Addr().(*net.TCPAddr).Port
	pc, err := c.DialPort(ctx, port)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://guest/x", nil)
	if err := req.Write(pc); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(pc), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "hello from /x" {
		t.Errorf("body %q", body)
	}
	pc.Close()

	// Echo with half-close: the guest side reads to EOF, then answers.
	el, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer el.Close()
	go func() {
		conn, err := el.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		var b bytes.Buffer
		io.Copy(&b, conn)
		conn.Write(b.Bytes())
	}()
	data := make([]byte, 4<<20)
	rand.Read(data)
	ec, err := c.DialPort(ctx, el.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		ec.Write(data)
		ec.CloseWrite()
	}()
	got, err := io.ReadAll(ec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("echo: %d bytes back, want the %d sent", len(got), len(data))
	}
	ec.Close()

	// Nobody listens.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	_, err = c.DialPort(ctx, deadPort)
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeUnavailable || !strings.Contains(err.Error(), "nothing answers on port") {
		t.Errorf("dial of a closed port: %v", err)
	}
	if _, err := c.DialPort(ctx, 70000); err == nil || !strings.Contains(err.Error(), "port 70000") {
		t.Errorf("port 70000: %v", err)
	}
	// The session still serves.
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

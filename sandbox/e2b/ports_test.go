package e2b

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// TestUserPorts: a request for <port>-<id>.<domain> reaches the server
// on that port of the sandbox (here, the stand-in agent's host) with the
// host name the client used, needs no token, keeps streaming; an Upgrade
// (WebSocket's handshake) switches protocols and carries bytes both
// ways; a port nobody listens on and an unknown sandbox are 502s that
// say so.
func TestUserPorts(t *testing.T) {
	g := startGateway(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "echo" {
			// What a WebSocket server does: 101, then its own protocol on
			// the connection (here: echo lines).
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
			brw.Flush()
			for {
				line, err := brw.ReadString('\n')
				if err != nil {
					return
				}
				brw.WriteString("echo: " + line)
				brw.Flush()
			}
		}
		io.WriteString(w, "host="+r.Host+" path="+r.URL.Path+" token="+r.Header.Get("X-Access-Token"))
	}))
	port := l.Addr().(*net.TCPAddr).Port
	u, _ := url.Parse(g.url)
	host := strconv.Itoa(port) + "-" + testID + ".localhost:" + u.Port()

	// get sends GET path to the gateway for host name h.
	get := func(h, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", g.url+path, nil)
		req.Host = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	// Plain HTTP, by the host name alone (no E2B headers, no token).
	if code, body := get(host, "/hello?x=1"); code != 200 || body != "host="+host+" path=/hello token=" {
		t.Errorf("GET through the port: %d %q", code, body)
	}
	// Many requests reuse kept connections and all answer.
	for i := range 20 {
		if _, body := get(host, "/n/"+strconv.Itoa(i)); !strings.Contains(body, "path=/n/"+strconv.Itoa(i)) {
			t.Fatalf("request %d: %q", i, body)
		}
	}

	// Upgrade.
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	for _, msg := range []string{"one\n", "two\n"} {
		io.WriteString(conn, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != "echo: "+msg {
			t.Fatalf("after the upgrade: %q, %v", got, err)
		}
	}

	// A closed port, an unknown sandbox.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	for _, h := range []string{strconv.Itoa(deadPort) + "-" + testID + ".localhost", "8000-sb-nope.localhost"} {
		if code, body := get(h, "/"); code != http.StatusBadGateway || !strings.Contains(body, "port ") {
			t.Errorf("%s: %d %s", h, code, body)
		}
	}
}

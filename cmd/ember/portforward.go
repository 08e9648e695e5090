package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/embervm/ember/sandbox/client"
)

// sandboxPortForward is `ember sandbox port-forward ID [[ADDR:]LOCAL:]PORT`:
// it listens on ADDR:LOCAL (default 127.0.0.1 and PORT) and carries each
// connection to PORT on the sandbox's loopback through emberd, until
// interrupted.
func sandboxPortForward(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("ember sandbox port-forward", flag.ContinueOnError)
	mk := emberdFlags(fs)
	const usage = "ember sandbox port-forward ID [[ADDR:]LOCAL_PORT:]PORT"
	if code, ok := parseSub(fs, args, usage); !ok {
		return code
	}
	if fs.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		return exitUsage
	}
	id := fs.Arg(0)
	listen, port, err := parseForward(fs.Arg(1))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember sandbox port-forward: %v; usage: %s\n", err, usage)
		return exitUsage
	}
	c := mk()
	defer c.Close()
	// Fail at once on a sandbox that is not there or not running.
	if _, err := c.Sandbox(ctx, id); err != nil {
		return fail("ember sandbox port-forward", err)
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fail("ember sandbox port-forward", err)
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	fmt.Printf("forwarding %s to port %d of sandbox %s\n", l.Addr(), port, id)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return exitOK
			}
			return fail("ember sandbox port-forward", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			forward(ctx, c, id, port, conn)
		}()
	}
}

// parseForward reads [[ADDR:]LOCAL:]PORT into a listen address and the
// sandbox's port.
func parseForward(s string) (listen string, port int, err error) {
	parts := strings.Split(s, ":")
	if len(parts) > 3 {
		return "", 0, fmt.Errorf("%q: want [[ADDR:]LOCAL_PORT:]PORT", s)
	}
	port, err = strconv.Atoi(parts[len(parts)-1])
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%q: the sandbox's port must be 1 to 65535", s)
	}
	addr, local := "127.0.0.1", strconv.Itoa(port)
	if len(parts) >= 2 {
		local = parts[len(parts)-2]
		if n, err := strconv.Atoi(local); err != nil || n < 0 || n > 65535 {
			return "", 0, fmt.Errorf("%q: the local port must be 0 to 65535", s)
		}
	}
	if len(parts) == 3 {
		addr = parts[0]
	}
	return net.JoinHostPort(addr, local), port, nil
}

// forward carries one local connection to the sandbox's port.
func forward(ctx context.Context, c *client.Client, id string, port int, conn net.Conn) {
	defer conn.Close()
	remote, err := c.DialPort(ctx, id, port)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember sandbox port-forward: %s: %v\n", conn.RemoteAddr(), err)
		return
	}
	defer remote.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close(); remote.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(remote, conn)
		// The upgraded connection cannot half-close: the local side's end
		// ends both once the sandbox's side is done or the local side
		// went away for good.
	}()
	io.Copy(conn, remote)
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	<-done
}

package main

import (
	"net"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLoopbackUp: in a new network namespace (whose lo is down, as in a
// fresh guest: a server may bind 127.0.0.1 there, but nothing reaches
// it) loopbackUp makes 127.0.0.1 reachable.
func TestLoopbackUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace of its own")
	}
	errc := make(chan error, 1)
	go func() {
		// This thread enters the namespace and dies with it (not unlocked).
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := dialSelf(); err == nil {
			t.Error("lo is up in a new namespace before loopbackUp: the test proves nothing")
		}
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		if err := loopbackUp(); err != nil { // already up: nothing to do
			errc <- err
			return
		}
		errc <- dialSelf()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// dialSelf connects to a listener on 127.0.0.1.
func dialSelf() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return err
	}
	return c.Close()
}

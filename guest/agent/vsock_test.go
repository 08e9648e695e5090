package agent

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// The vsock listener binds where AF_VSOCK exists (a host with the vsock
// module; no connection can reach it without a VM or the loopback
// transport), and Close interrupts a waiting Accept.
func TestVsockListenerCloseInterruptsAccept(t *testing.T) {
	l, err := ListenVsock(40000 + uint32(unix.Getpid()%20000))
	if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.ENODEV) {
		t.Skip("no AF_VSOCK here")
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	l.Close()
	if err := <-done; err == nil {
		t.Error("Accept returned a connection after Close")
	}
}

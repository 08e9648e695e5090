// Command probe is a static test program that runs inside test guests (it
// is put on a drive by the end-to-end tests). It moves data over vsock and
// TCP and prints what it moved with a SHA-256, so the host side can check it
// arrived intact:
//
//	probe vsock-send PORT BYTES     connect to the host (CID 2), send BYTES
//	probe vsock-recv PORT           listen on PORT, read one connection to EOF
//	probe vsock-refused PORT        connect to a port nobody listens on
//	probe tcp-send ADDR BYTES       connect to ADDR, send BYTES
//	probe tcp-recv ADDR             connect to ADDR, read to EOF
//
// Output lines start with "probe:" and end with key=value pairs.
package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// hostCID is VMADDR_CID_HOST.
const hostCID = 2

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Printf("probe: error=%q\n", err.Error())
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: probe MODE ARG [BYTES]")
	}
	n := int64(0)
	if len(args) > 2 {
		var err error
		if n, err = strconv.ParseInt(args[2], 10, 64); err != nil {
			return err
		}
	}
	switch args[0] {
	case "vsock-send":
		f, err := vsockConnect(args[1])
		if err != nil {
			return err
		}
		return send(f, n)
	case "vsock-recv":
		f, err := vsockAccept(args[1])
		if err != nil {
			return err
		}
		return recv(f)
	case "vsock-refused":
		t0 := time.Now()
		_, err := vsockConnect(args[1])
		fmt.Printf("probe: refused=%v ms=%d err=%q\n", err != nil, time.Since(t0).Milliseconds(), fmt.Sprint(err))
		return nil
	case "tcp-send":
		c, err := dialTCP(args[1])
		if err != nil {
			return err
		}
		return send(c, n)
	case "tcp-recv":
		c, err := dialTCP(args[1])
		if err != nil {
			return err
		}
		return recv(c)
	}
	return fmt.Errorf("unknown mode %q", args[0])
}

// dialTCP retries for a while: the host side may still be starting.
func dialTCP(addr string) (net.Conn, error) {
	var err error
	for i := 0; i < 100; i++ {
		var c net.Conn
		if c, err = net.Dial("tcp", addr); err == nil {
			return c, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

func vsockConnect(port string) (*os.File, error) {
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return nil, err
	}
	// A blocking vsock connect that a signal interrupts (the Go runtime's
	// preemption signal is enough) is cancelled by the kernel, and the
	// socket cannot connect again: start over on a fresh one.
	for attempt := 1; ; attempt++ {
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("vsock socket: %w", err)
		}
		err = unix.Connect(fd, &unix.SockaddrVM{CID: hostCID, Port: uint32(p)})
		if err == nil {
			return os.NewFile(uintptr(fd), "vsock"), nil
		}
		unix.Close(fd)
		if !errors.Is(err, unix.EINTR) || attempt == maxInterrupted {
			return nil, fmt.Errorf("vsock connect %d: %w", p, err)
		}
	}
}

// maxInterrupted bounds the retries of a call that signals keep
// interrupting.
const maxInterrupted = 20

func vsockAccept(port string) (*os.File, error) {
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(p)}); err != nil {
		return nil, fmt.Errorf("vsock bind %d: %w", p, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return nil, fmt.Errorf("vsock listen: %w", err)
	}
	fmt.Printf("probe: listening=%d\n", p)
	nfd, _, err := unix.Accept(fd)
	for attempt := 1; errors.Is(err, unix.EINTR) && attempt < maxInterrupted; attempt++ {
		nfd, _, err = unix.Accept(fd)
	}
	if err != nil {
		return nil, fmt.Errorf("vsock accept: %w", err)
	}
	unix.Close(fd)
	return os.NewFile(uintptr(nfd), "vsock"), nil
}

// send writes n pseudo-random bytes and prints their hash.
func send(w io.WriteCloser, n int64) error {
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{'e', 'm', 'b', 'e', 'r'})
	t0 := time.Now()
	if _, err := io.CopyN(io.MultiWriter(w, h), src, n); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	fmt.Printf("probe: sent=%d sha256=%x ms=%d\n", n, h.Sum(nil), time.Since(t0).Milliseconds())
	return nil
}

// recv reads to EOF and prints the count and hash.
func recv(r io.ReadCloser) error {
	h := sha256.New()
	t0 := time.Now()
	n, err := io.Copy(h, r)
	if err != nil {
		return fmt.Errorf("recv: %w", err)
	}
	r.Close()
	fmt.Printf("probe: received=%d sha256=%x ms=%d\n", n, h.Sum(nil), time.Since(t0).Milliseconds())
	return nil
}

package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
)

// helperEnv makes the test binary act as a host-side helper instead of
// running tests: the network tests start it inside a network namespace
// (ip netns exec NS TESTBINARY) where the test process itself cannot be.
const helperEnv = "EMBER_E2E_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := helper(mode, os.Args[1:]); err != nil {
			fmt.Printf("helper: error=%q\n", err.Error())
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helper modes (the counterparts of guest/probe):
//
//	tcp-sink ADDR          for each connection: read to EOF, print count and hash
//	tcp-source ADDR BYTES  for each connection: send BYTES, print count and hash
//	http-echo ADDR         HTTP: answer "echo ADDR to CLIENT_ADDR"
func helper(mode string, args []string) error {
	if len(args) < 1 {
		return fmt.Errorf("%s: no address", mode)
	}
	l, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	fmt.Printf("helper: listening=%s\n", args[0])
	if mode == "http-echo" {
		return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "echo %s to %s\n", args[0], r.RemoteAddr)
		}))
	}
	// Serve connection after connection (a retried guest connects again);
	// the test reads the last report and kills the helper.
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		if err := serve(mode, c, args); err != nil {
			fmt.Printf("helper: error=%q\n", err.Error())
		}
		c.Close()
	}
}

func serve(mode string, c net.Conn, args []string) error {
	h := sha256.New()
	switch mode {
	case "tcp-sink":
		n, err := io.Copy(h, c)
		if err != nil {
			return err
		}
		fmt.Printf("helper: received=%d sha256=%x\n", n, h.Sum(nil))
	case "tcp-source":
		n, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil {
			return err
		}
		if _, err := io.CopyN(io.MultiWriter(c, h), rand.NewChaCha8([32]byte{'h', 'o', 's', 't'}), n); err != nil {
			return err
		}
		fmt.Printf("helper: sent=%d sha256=%x\n", n, h.Sum(nil))
	default:
		return fmt.Errorf("unknown helper mode %q", mode)
	}
	return nil
}

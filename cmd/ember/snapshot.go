package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/snapshot"
)

// runSnapshot is `ember snapshot describe FILE` and `ember snapshot
// apply-diff BASE DIFF`.
func runSnapshot(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "ember snapshot: want describe FILE or apply-diff BASE DIFF")
		return exitUsage
	}
	switch args[0] {
	case "describe":
		if len(args) != 2 {
			fmt.Fprintln(os.Stderr, "ember snapshot describe: want one argument, the snapshot state file")
			return exitUsage
		}
		st, err := snapshot.Read(args[1])
		if err == nil {
			err = st.Header.Validate()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember snapshot describe:", err)
			return exitFailure
		}
		if err := snapshot.Describe(os.Stdout, st); err != nil {
			fmt.Fprintln(os.Stderr, "ember snapshot describe:", err)
			return exitFailure
		}
		return exitOK
	case "apply-diff":
		if len(args) != 3 {
			fmt.Fprintln(os.Stderr, "ember snapshot apply-diff: want two arguments, BASE and DIFF memory files")
			return exitUsage
		}
		if err := snapshot.ApplyDiff(args[1], args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "ember snapshot apply-diff:", err)
			return exitFailure
		}
		return exitOK
	case "serve-uffd":
		return serveUffd(args[1:])
	}
	fmt.Fprintf(os.Stderr, "ember snapshot: unknown command %q: want describe, apply-diff or serve-uffd\n", args[0])
	return exitUsage
}

// serveUffd is `ember snapshot serve-uffd SOCKET MEMFILE`: the page-fault
// handler of the Uffd backend, built in. It listens on SOCKET and serves
// every VMM that connects (PUT /snapshot/load with mem_backend
// {"backend_type": "Uffd", "backend_path": SOCKET}) from MEMFILE, each
// until its process exits. It runs until killed.
func serveUffd(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "ember snapshot serve-uffd: want two arguments, SOCKET and MEMFILE")
		return exitUsage
	}
	sock, mem := args[0], args[1]
	if _, err := os.Stat(mem); err != nil {
		fmt.Fprintln(os.Stderr, "ember snapshot serve-uffd:", err)
		return exitFailure
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember snapshot serve-uffd:", err)
		return exitFailure
	}
	defer os.Remove(sock)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	go func() { <-sigs; ln.Close() }()
	fmt.Fprintf(os.Stderr, "ember snapshot serve-uffd: serving %s on %s\n", mem, sock)
	for {
		h, err := snapshot.AcceptUffd(ln, mem)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return exitOK
			}
			fmt.Fprintln(os.Stderr, "ember snapshot serve-uffd:", err)
			continue
		}
		go func() {
			defer h.Close()
			if err := h.Serve(nil); err != nil {
				fmt.Fprintln(os.Stderr, "ember snapshot serve-uffd:", err)
			}
		}()
	}
}

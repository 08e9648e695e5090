// Command emberd is Ember's host daemon for sandboxes: templates
// (pre-warmed snapshots) and sandboxes restored from them, behind a REST
// API on a unix socket (package sandbox/api; the manager is package
// sandbox). Flags and wiring only.
//
//	emberd [--state-dir DIR] [--socket PATH] [--tcp ADDR --token TOKEN] [--e2b-addr ADDR [--e2b-domain DOMAIN]]
//	       [--ember PATH] [--image-home DIR] [--level LEVEL]
//
// --e2b-addr also serves E2B's sandbox API and envd protocol (package
// sandbox/e2b) on ADDR, plain HTTP, off by default; `ember e2b env`
// prints the variables that point E2B's SDK at it.
//
// SIGTERM or SIGINT stops emberd and leaves the sandboxes running: the
// next emberd on the same state folder adopts them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/api"
	"github.com/embervm/ember/sandbox/e2b"
)

// Defaults.
const (
	defaultStateDir = "/var/lib/ember/emberd"
	defaultSocket   = "/run/emberd.sock"
	// shutdownWait bounds how long requests in flight may take at exit.
	shutdownWait = 5 * time.Second
	exitUsage    = 2
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("emberd", flag.ContinueOnError)
	stateDir := fs.String("state-dir", defaultStateDir, "folder of the state database, templates and sandboxes")
	socket := fs.String("socket", defaultSocket, "unix socket of the API")
	tcp := fs.String("tcp", "", "also serve the API on this TCP address (needs --token)")
	token := fs.String("token", "", "bearer token required on the TCP address")
	ember := fs.String("ember", "", "the ember binary (default: ember beside emberd, else on PATH)")
	imageHome := fs.String("image-home", "", "Ember's home with the image store, for templates from images (default $EMBER_HOME or /var/lib/ember)")
	e2bAddr := fs.String("e2b-addr", "", "also serve E2B's sandbox API and envd protocol on this TCP address (e.g. 127.0.0.1:3000; keys: ember apikey create)")
	e2bDomain := fs.String("e2b-domain", "", "the E2B_DOMAIN `ember e2b env` prints and sandboxes report (default: the --e2b-addr host)")
	level := fs.String("level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "emberd: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if *tcp != "" && *token == "" {
		fmt.Fprintln(os.Stderr, "emberd: --tcp needs --token: the TCP address is open to the network")
		return exitUsage
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "emberd: --level %q: want debug, info, warn or error\n", *level)
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	emberPath, err := findEmber(*ember)
	if err != nil {
		fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
		return exitUsage
	}
	m, err := sandbox.Open(sandbox.Config{StateDir: *stateDir, Ember: emberPath, ImageHome: *imageHome, Log: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
		return 1
	}
	defer m.Close()

	os.Remove(*socket) // a socket left by a killed emberd; the database lock keeps two apart
	ul, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
		return 1
	}
	defer os.Remove(*socket)
	var e2bInfo *api.E2BInfo
	var e2bListener net.Listener
	if *e2bAddr != "" {
		el, err := net.Listen("tcp", *e2bAddr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "emberd: --e2b-addr: %v\n", err)
			return 1
		}
		e2bListener = el
		e2bInfo = e2bEnv(el.Addr().String(), *e2bDomain)
	}
	servers := []*http.Server{{Handler: api.New(m, api.Options{Log: log, E2B: e2bInfo})}}
	listeners := []net.Listener{ul}
	if e2bListener != nil {
		h, err := e2b.New(m, e2b.Options{Domain: e2bInfo.Domain, Log: log})
		if err != nil {
			fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
			return 1
		}
		servers = append(servers, &http.Server{Handler: h})
		listeners = append(listeners, e2bListener)
	}
	if *tcp != "" {
		tl, err := net.Listen("tcp", *tcp)
		if err != nil {
			fmt.Fprintf(os.Stderr, "emberd: --tcp: %v\n", err)
			return 1
		}
		servers = append(servers, &http.Server{Handler: api.New(m, api.Options{Log: log, Token: *token})})
		listeners = append(listeners, tl)
	}
	errc := make(chan error, len(servers))
	for i, s := range servers {
		go func() { errc <- s.Serve(listeners[i]) }()
	}
	log.Info("emberd listening", "socket", *socket, "tcp", *tcp, "e2b", *e2bAddr, "state", *stateDir, "ember", emberPath)

	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-sigc:
		log.Info("stopping; the sandboxes go on running", "signal", sig)
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			log.Error("serving", "err", err)
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
	defer cancel()
	for _, s := range servers {
		s.Shutdown(ctx)
	}
	return 0
}

// findEmber returns the ember binary: flag, else beside this executable,
// else on PATH.
func findEmber(flagValue string) (string, error) {
	if flagValue != "" {
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("--ember: %w", err)
		}
		return filepath.Abs(flagValue)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "ember")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("ember")
	if err != nil {
		return "", errors.New("no ember binary beside emberd or on PATH: give --ember")
	}
	return filepath.Abs(p)
}

// e2bEnv is what `ember e2b env` prints for the E2B listener at addr (the
// bound address, so port 0 gives the real port).
func e2bEnv(addr, domain string) *api.E2BInfo {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // listening on all addresses: this host's loopback reaches it
	}
	if domain == "" {
		domain = host
	}
	url := "http://" + net.JoinHostPort(host, port)
	return &api.E2BInfo{APIURL: url, SandboxURL: url, Domain: domain}
}

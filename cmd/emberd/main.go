// Command emberd is Ember's host daemon for sandboxes: templates
// (pre-warmed snapshots) and sandboxes restored from them, behind a REST
// API on a unix socket (package sandbox/api; the manager is package
// sandbox). Flags and wiring only.
//
//	emberd [--state-dir DIR] [--socket PATH] [--tcp ADDR --token TOKEN]
//	       [--e2b-addr ADDR [--e2b-domain DOMAIN] [--e2b-tls-cert FILE --e2b-tls-key FILE]]
//	       [--ember PATH] [--image-home DIR] [--level LEVEL] [--log-format json|text]
//	       [--network [--network-prefix P] [--network-guest-cidr CIDR] [--network-bridge-cidr CIDR]
//	        [--network-pool N] [--network-dns IP,...]]
//	       [--budget-memory-mib N] [--memory-reserve-mib N] [--memory-overcommit R]
//	       [--budget-vcpus N] [--vcpu-overcommit R] [--budget-files N] [--budget-processes N] [--budget-taps N]
//	       [--retry-after D]
//
// --network gives each sandbox of a template built with network its own
// network (package sandbox/network): a namespace with its tap, a veth to
// a host bridge, NAT, an address leased in emberd's database, an egress
// policy; off by default (a sandbox then has no network device at all).
//
// The budgets bound what the sandboxes may hold of the host (package
// sandbox, admission.go); a create over one answers 429 with Retry-After.
// A zero budget takes its default from the host. GET /host shows them,
// GET /metrics is Prometheus' exposition.
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
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/embervm/ember/sandbox"
	"github.com/embervm/ember/sandbox/api"
	"github.com/embervm/ember/sandbox/e2b"
	"github.com/embervm/ember/sandbox/metrics"
	"github.com/embervm/ember/sandbox/network"
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
	e2bCert := fs.String("e2b-tls-cert", "", "serve --e2b-addr over TLS (and HTTP/2) with this PEM certificate (needs --e2b-tls-key)")
	e2bKey := fs.String("e2b-tls-key", "", "the PEM private key of --e2b-tls-cert")
	e2bDomain := fs.String("e2b-domain", "", "the E2B_DOMAIN `ember e2b env` prints and sandboxes report: user ports are <port>-<id>.<domain> (default: localhost:<port> for a loopback --e2b-addr)")
	level := fs.String("level", "info", "log level: debug, info, warn, error")
	withNet := fs.Bool("network", false, "give sandboxes of templates built with network a network of their own (namespace, tap, NAT, egress policy)")
	netPrefix := fs.String("network-prefix", "", "first letters of every bridge, namespace and veth made (default emb)")
	netGuest := fs.String("network-guest-cidr", "", "range of the guests' /30 blocks (default 10.214.0.0/16)")
	netBridge := fs.String("network-bridge-cidr", "", "subnet of the host bridge (default 10.213.0.0/16)")
	netPool := fs.Int("network-pool", defaultNetPool, "namespaces with tap and veth kept ready")
	netDNS := fs.String("network-dns", "", "resolvers given to guests, comma-separated (default: the host's non-loopback ones)")
	logFormat := fs.String("log-format", "json", "log format: json (one object a line) or text")
	var adm sandbox.AdmissionConfig
	fs.Int64Var(&adm.MemoryMiB, "budget-memory-mib", 0, "host memory given to sandboxes, MiB, before --memory-overcommit (default: MemTotal minus --memory-reserve-mib)")
	fs.Int64Var(&adm.MemoryReserveMiB, "memory-reserve-mib", sandbox.DefaultMemoryReserveMiB, "host memory kept from sandboxes, MiB")
	fs.Float64Var(&adm.MemoryOvercommit, "memory-overcommit", sandbox.DefaultMemoryOvercommit, "memory budget over the memory given to sandboxes")
	fs.Int64Var(&adm.VCPUs, "budget-vcpus", 0, "vCPU budget (default: host CPUs times --vcpu-overcommit)")
	fs.Float64Var(&adm.VCPUOvercommit, "vcpu-overcommit", sandbox.DefaultVCPUOvercommit, "vCPUs per host CPU")
	fs.Int64Var(&adm.Files, "budget-files", 0, "budget of emberd's file descriptors (default: RLIMIT_NOFILE less a reserve)")
	fs.Int64Var(&adm.Processes, "budget-processes", 0, "budget of tasks (default: the smaller of RLIMIT_NPROC and kernel.threads-max, less a reserve)")
	fs.Int64Var(&adm.Taps, "budget-taps", 0, fmt.Sprintf("number of taps (default %d)", sandbox.DefaultTaps))
	fs.DurationVar(&adm.RetryAfter, "retry-after", sandbox.DefaultRetryAfter, "Retry-After of a refused create when no sandbox's timeout comes sooner")
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
	if adm.MemoryOvercommit <= 0 || adm.VCPUOvercommit <= 0 {
		fmt.Fprintln(os.Stderr, "emberd: --memory-overcommit and --vcpu-overcommit: want a ratio above 0")
		return exitUsage
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	var log *slog.Logger
	switch *logFormat {
	case "json":
		log = slog.New(slog.NewJSONHandler(os.Stderr, hopts))
	case "text":
		log = slog.New(slog.NewTextHandler(os.Stderr, hopts))
	default:
		fmt.Fprintf(os.Stderr, "emberd: --log-format %q: want json or text\n", *logFormat)
		return exitUsage
	}
	emberPath, err := findEmber(*ember)
	if err != nil {
		fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
		return exitUsage
	}
	mt := metrics.New()
	cfg := sandbox.Config{StateDir: *stateDir, Ember: emberPath, ImageHome: *imageHome, Log: log, Admission: adm, Observer: mt}
	if *withNet {
		nc, err := networkConfig(*netPrefix, *netGuest, *netBridge, *netDNS, *netPool)
		if err != nil {
			fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
			return exitUsage
		}
		cfg.Network = nc
	}
	m, err := sandbox.Open(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
		return 1
	}
	defer m.Close()
	mt.Watch(m)

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
		e2bInfo = e2bEnv(el.Addr().String(), *e2bDomain, *e2bCert != "")
		if *e2bCert != "" || *e2bKey != "" {
			tl, err := e2bTLS(el, *e2bCert, *e2bKey)
			if err != nil {
				el.Close()
				fmt.Fprintf(os.Stderr, "emberd: %v\n", err)
				return 1
			}
			e2bListener = tl
		}
	} else if *e2bCert != "" || *e2bKey != "" {
		fmt.Fprintln(os.Stderr, "emberd: --e2b-tls-cert and --e2b-tls-key need --e2b-addr")
		return 1
	}
	servers := []*http.Server{{Handler: api.New(m, api.Options{Log: log, Metrics: mt.Handler(), E2B: e2bInfo})}}
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
		servers = append(servers, &http.Server{Handler: api.New(m, api.Options{Log: log, Token: *token, Metrics: mt.Handler(), E2B: e2bInfo})})
		listeners = append(listeners, tl)
	}
	errc := make(chan error, len(servers))
	for i, s := range servers {
		go func() { errc <- s.Serve(listeners[i]) }()
	}
	log.Info("emberd listening", "socket", *socket, "tcp", *tcp, "e2b", *e2bAddr, "state", *stateDir, "ember", emberPath)
	b := m.Host()
	log.Info("budgets", "memory_mib", b.Budgets.MemoryMiB, "memory_overcommit", b.MemoryOvercommit, "vcpus", b.Budgets.VCPUs,
		"processes", b.Budgets.Processes, "files", b.Budgets.Files, "taps", b.Budgets.Taps, "held_by", b.Sandboxes)

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

// defaultNetPool is how many prepared namespaces emberd keeps: a pooled
// namespace saves about 2 ms of a create (README, netns_tap_setup_ms).
const defaultNetPool = 4

// networkConfig is the --network-* flags' configuration.
func networkConfig(prefix, guest, bridge, dns string, pool int) (*network.Config, error) {
	c := &network.Config{Prefix: prefix, PoolSize: pool}
	if pool < 0 {
		return nil, fmt.Errorf("--network-pool %d: want 0 or more", pool)
	}
	var err error
	if guest != "" {
		if c.GuestCIDR, err = netip.ParsePrefix(guest); err != nil {
			return nil, fmt.Errorf("--network-guest-cidr: %w", err)
		}
	}
	if bridge != "" {
		if c.BridgeCIDR, err = netip.ParsePrefix(bridge); err != nil {
			return nil, fmt.Errorf("--network-bridge-cidr: %w", err)
		}
	}
	for _, a := range strings.Split(dns, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return nil, fmt.Errorf("--network-dns: %w", err)
		}
		c.DNS = append(c.DNS, ip)
	}
	return c, nil
}

// defaultE2BDomain is the domain sandboxes report when emberd is given
// none: user ports are <port>-<id>.<domain> (the SDK's getHost), and on
// this host names under "localhost" are the loopback (RFC 6761, section
// 6.3: curl and browsers resolve them so themselves, other programs with
// libnss-myhostname), so "localhost:<listener port>" reaches the listener
// without any DNS. A listener on another address needs wildcard DNS
// (--e2b-domain).
func defaultE2BDomain(host, port string) string {
	d := host
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		d = "localhost"
	}
	if port != "80" {
		d = net.JoinHostPort(d, port)
	}
	return d
}

// e2bTLS wraps the E2B listener in TLS with cert and key, offering HTTP/2
// by ALPN (RFC 7301), then HTTP/1.1: E2B's SDK speaks HTTP/2 only over TLS.
func e2bTLS(l net.Listener, cert, key string) (net.Listener, error) {
	if cert == "" || key == "" {
		return nil, errors.New("--e2b-tls-cert and --e2b-tls-key go together")
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("--e2b-tls-cert %s, --e2b-tls-key %s: %w", cert, key, err)
	}
	return tls.NewListener(l, &tls.Config{
		Certificates: []tls.Certificate{pair},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}), nil
}

// e2bEnv is what `ember e2b env` prints for the E2B listener at addr (the
// bound address, so port 0 gives the real port), https with TLS.
func e2bEnv(addr, domain string, secure bool) *api.E2BInfo {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // listening on all addresses: this host's loopback reaches it
	}
	if domain == "" {
		domain = defaultE2BDomain(host, port)
	}
	scheme := "http://"
	if secure {
		scheme = "https://"
	}
	url := scheme + net.JoinHostPort(host, port)
	return &api.E2BInfo{APIURL: url, SandboxURL: url, Domain: domain}
}

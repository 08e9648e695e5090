package agent

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

func TestRestoreTransaction(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	ctx := context.Background()
	host := time.Now()
	req := proto.Restore{
		Time: host, Generation: 7, Entropy: []byte(strings.Repeat("e", proto.MinEntropy)),
		Network:  &proto.Network{Address: "10.0.0.2/30", Gateway: "10.0.0.1", DNS: []string{"10.0.0.1", "1.1.1.1"}},
		Metadata: map[string]string{"sandbox": "sbx1", "owner": "me"},
		Hostname: "pod-1",
	}
	reply, err := c.Restore(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range reply.Steps {
		names = append(names, s.Name)
		if s.Error != "" || s.Skipped {
			t.Errorf("step %+v", s)
		}
	}
	if strings.Join(names, ",") != "entropy,clock,network,dns,metadata,hostname,generation" || reply.Generation != 7 {
		t.Errorf("reply %+v", reply)
	}
	if len(ta.clock.set) != 1 || ta.clock.set[0].Before(host) || ta.clock.set[0].Sub(host) > time.Minute {
		t.Errorf("clock set to %v for a host time %v", ta.clock.set, host)
	}
	if len(ta.entropy.got) != 1 || string(ta.entropy.got[0]) != string(req.Entropy) {
		t.Errorf("entropy %q", ta.entropy.got)
	}
	if n := ta.network.got; len(n) != 1 || n[0].Interface != "eth0" || n[0].Address.String() != "10.0.0.2/30" || n[0].Gateway.String() != "10.0.0.1" {
		t.Errorf("network %+v", n)
	}
	if h := ta.host.got; len(h) != 1 || h[0] != "pod-1" {
		t.Errorf("host names set: %q", h)
	}
	if b, _ := os.ReadFile(filepath.Join(ta.cfg.RunDir, GenerationFile)); string(b) != "7\n" {
		t.Errorf("generation file %q", b)
	}
	var md map[string]string
	b, _ := os.ReadFile(filepath.Join(ta.cfg.RunDir, MetadataFile))
	if err := json.Unmarshal(b, &md); err != nil || md["sandbox"] != "sbx1" || len(md) != 2 {
		t.Errorf("metadata %q %v", b, err)
	}
	if b, _ := os.ReadFile(ta.cfg.ResolvConf); string(b) != "nameserver 10.0.0.1\nnameserver 1.1.1.1\n" {
		t.Errorf("resolv.conf %q", b)
	}
	// The generation shows in hello and health.
	if g := ta.dial(t).Hello().Generation; g != 7 {
		t.Errorf("hello generation %d", g)
	}
	// A stale generation is refused; the same one repeats the restore;
	// without network, its steps are skipped; empty metadata replaces the
	// old.
	req.Generation = 6
	if _, err := c.Restore(ctx, req); proto.CodeOf(err) != proto.CodePrecondition {
		t.Errorf("stale generation: %v", err)
	}
	req.Generation, req.Network, req.Metadata, req.Hostname = 7, nil, nil, ""
	reply, err = c.Restore(ctx, req)
	if err != nil || !reply.Steps[2].Skipped || !reply.Steps[3].Skipped || !reply.Steps[5].Skipped {
		t.Errorf("repeat: %+v %v", reply, err)
	}
	if b, _ := os.ReadFile(filepath.Join(ta.cfg.RunDir, MetadataFile)); strings.TrimSpace(string(b)) != "{}" {
		t.Errorf("metadata after an empty restore: %q", b)
	}
	// A new agent in the same boot (RunDir kept) continues from the file.
	if g := New(ta.cfg).generation.Load(); g != 7 {
		t.Errorf("a restarted agent reads generation %d", g)
	}
	// Bad requests name the field.
	bad := req
	bad.Entropy = []byte("short")
	if _, err := c.Restore(ctx, bad); proto.CodeOf(err) != proto.CodeInvalid || !strings.Contains(err.Error(), "entropy") {
		t.Errorf("short entropy: %v", err)
	}
	bad = req
	bad.Hostname = strings.Repeat("h", proto.MaxHostname+1)
	if _, err := c.Restore(ctx, bad); proto.CodeOf(err) != proto.CodeInvalid || !strings.Contains(err.Error(), "hostname") {
		t.Errorf("long hostname: %v", err)
	}
}

// A failing step is reported, the others still run, and the call fails.
func TestRestoreStepFailure(t *testing.T) {
	ta := startAgent(t, func(c *Config) { c.Network = failingNetwork{} })
	c := ta.dial(t)
	req, err := client.NewRestore(3, strings.NewReader(strings.Repeat("r", 64)))
	if err != nil {
		t.Fatal(err)
	}
	req.Network = &proto.Network{Address: "10.0.0.2/24"}
	reply, err := c.Restore(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "network") || len(reply.Steps) != 7 || reply.Steps[2].Error == "" || reply.Steps[6].Error != "" {
		t.Errorf("reply %+v, %v", reply, err)
	}
}

type failingNetwork struct{}

func (failingNetwork) Configure(proto.Parsed) error { return os.ErrPermission }

// The real clock setter, checked without touching the host's clock: the
// system call is replaced by a recorder.
func TestSystemClockDryRun(t *testing.T) {
	var id int32
	var got unix.Timespec
	c := SystemClock{Settime: func(clockid int32, ts *unix.Timespec) error { id, got = clockid, *ts; return nil }}
	at := time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)
	if err := c.SetRealtime(at); err != nil {
		t.Fatal(err)
	}
	if id != unix.CLOCK_REALTIME || got.Sec != at.Unix() || got.Nsec != 600 {
		t.Errorf("clock_settime(%d, %+v)", id, got)
	}
}

// The real entropy step on the host's /dev/urandom: adding entropy and
// reseeding are harmless.
func TestSystemEntropy(t *testing.T) {
	needRoot(t)
	b := make([]byte, proto.MinEntropy)
	for i := range b {
		b[i] = byte(i * 7)
	}
	if err := (SystemEntropy{}).AddAndReseed(b); err != nil {
		t.Fatal(err)
	}
}

// The real network step, in a network namespace of its own: a veth with
// an old address, default route and learned neighbour gets the new
// addressing, and the old state is gone.
func TestSystemNetworkInNamespace(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip to set up and check the namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// This goroutine's thread enters a new network namespace and is
		// never unlocked: the runtime ends the thread with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		ip := func(args ...string) string {
			out, err := exec.Command("ip", args...).CombinedOutput()
			if err != nil {
				t.Errorf("ip %v: %v: %s", args, err, out)
			}
			return string(out)
		}
		ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
		ip("link", "set", "eth0", "up")
		ip("addr", "add", "192.168.7.5/24", "dev", "eth0")
		ip("route", "add", "default", "via", "192.168.7.1")
		ip("neigh", "add", "192.168.7.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "stale")
		// IPv6 neighbours survive the address change (the link-local
		// address stays), so the agent's own flush is what removes them.
		ip("-6", "neigh", "add", "fe80::9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "stale")
		ip("-6", "neigh", "add", "fe80::a", "lladdr", "02:00:00:00:00:0a", "dev", "eth0", "nud", "permanent")
		if t.Failed() {
			return
		}
		n := proto.Network{Address: "10.20.0.2/24", Gateway: "10.20.0.1", MTU: 1400}
		parsed, err := n.Parse()
		if err != nil {
			t.Error(err)
			return
		}
		if err := (SystemNetwork{}).Configure(parsed); err != nil {
			t.Errorf("configure: %v", err)
			return
		}
		addrs := ip("-4", "-o", "addr", "show", "dev", "eth0")
		if !strings.Contains(addrs, "inet 10.20.0.2/24 brd 10.20.0.255") || strings.Contains(addrs, "192.168.7.5") {
			t.Errorf("addresses after: %s", addrs)
		}
		routes := ip("-4", "route", "show")
		if !strings.Contains(routes, "default via 10.20.0.1 dev eth0") || strings.Contains(routes, "192.168.7") {
			t.Errorf("routes after: %s", routes)
		}
		neigh := ip("neigh", "show", "dev", "eth0")
		if strings.Contains(neigh, "192.168.7.9 ") || strings.Contains(neigh, "fe80::9 ") || !strings.Contains(neigh, "fe80::a ") {
			t.Errorf("neighbours after (the learned ones flushed, the permanent kept): %s", neigh)
		}
		if link := ip("-o", "link", "show", "eth0"); !strings.Contains(link, "mtu 1400") {
			t.Errorf("link after: %s", link)
		}
		// Twice is the same as once.
		if err := (SystemNetwork{}).Configure(parsed); err != nil {
			t.Errorf("second configure: %v", err)
		}
		missing := parsed
		missing.Interface = "eth9"
		if err := (SystemNetwork{}).Configure(missing); !proto.IsNotFound(err) {
			t.Errorf("a missing interface: %v", err)
		}
	}()
	<-done
}

// A client speaking a newer protocol version is answered in the agent's;
// one that needs a newer version is refused with a clear error; an
// operation the agent does not know is answered "unimplemented".
func TestVersionNegotiation(t *testing.T) {
	ta := startAgent(t, nil)
	newer := ta.dialWith(t, client.Options{Version: proto.Version + 1, MinVersion: proto.MinVersion})
	if v := newer.Hello().Version; v != proto.Version {
		t.Errorf("negotiated %d, want %d", v, proto.Version)
	}
	if _, err := newer.Health(context.Background()); err != nil {
		t.Errorf("a newer client: %v", err)
	}
	conn, err := net.Dial("unix", ta.sock)
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.New(context.Background(), conn, client.Options{Version: proto.Version + 2, MinVersion: proto.Version + 1})
	if err == nil || !strings.Contains(err.Error(), "protocol versions") || !proto.IsUnsupported(err) {
		t.Errorf("a client needing a newer version: %v", err)
	}

	// An unknown operation, over the raw multiplexer.
	conn, err = net.Dial("unix", ta.sock)
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := json.Marshal(proto.Hello{Magic: proto.Magic, Version: proto.Version, MinVersion: 1})
	s, _, err := mux.Client(context.Background(), conn, hello)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Open(context.Background(), "exec.teleport", map[string]any{"to": "mars"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv(context.Background())
	if !proto.IsUnsupported(err) || !strings.Contains(err.Error(), "exec.teleport") {
		t.Errorf("unknown op: %v", err)
	}
	// Unknown request fields are ignored (a newer client's additions).
	st, err = s.Open(context.Background(), proto.OpHealth, map[string]any{"verbose": true})
	if err != nil {
		t.Fatal(err)
	}
	if it, err := st.Recv(context.Background()); err != nil || it.Kind != mux.KindMsg {
		t.Errorf("health with an unknown field: %+v %v", it, err)
	}
}

package proto

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Health is the agent's answer to [OpHealth]; any answer means ready.
type Health struct {
	Agent      string `json:"agent"`
	Generation uint64 `json:"generation"`
	// Time is the guest's wall clock when it answered.
	Time time.Time `json:"time"`
	// Processes counts the processes the agent knows.
	Processes int `json:"processes"`
}

// Restore is the transaction the host runs with the agent after every
// snapshot restore, before it reports the sandbox ready: it makes each
// clone of one snapshot a distinct machine. The steps run in this order,
// each timed: entropy, clock, network, dns, metadata, generation (last,
// so a guest program that watches the generation file sees a finished
// restore).
type Restore struct {
	// Time is the host's wall clock when it sent the request; the agent
	// sets CLOCK_REALTIME to it plus the time the request spent in the
	// agent before the step.
	Time time.Time `json:"time"`
	// Entropy is fresh random bytes from the host, added to the guest's
	// input pool with RNDADDENTROPY (credited), after which the CRNG is
	// reseeded (RNDRESEEDCRNG): clones of one snapshot then draw different
	// random numbers even where VMGenID does not reach.
	Entropy []byte `json:"entropy"`
	// Generation is the guest's new restore generation; it must not be
	// lower than the current one (equal repeats a restore). The host makes
	// it unique per restore: clones differ by it.
	Generation uint64 `json:"generation"`
	// Network, if set, re-addresses an interface.
	Network *Network `json:"network,omitempty"`
	// Metadata is per-sandbox data for programs in the guest, written to
	// /run/ember/metadata.json.
	Metadata map[string]string `json:"metadata,omitempty"`
	// Hostname, if set, becomes the guest's host name (sethostname(2)):
	// a clone of a snapshot taken under another name (a pod VM restored
	// from the shim's warm template). Sent only to an agent that
	// announced [FeatureHostname].
	Hostname string `json:"hostname,omitempty"`
}

// Entropy bounds: at least 32 bytes (256 bits, a full CRNG seed), at most
// 4 KiB (more adds nothing: the input pool is 256 bits of state).
const (
	MinEntropy = 32
	MaxEntropy = 4096
	// MaxMetadata bounds the metadata's entries.
	MaxMetadata = 1024
	// MaxHostname is HOST_NAME_MAX (64, include/uapi/linux/utsname.h's
	// __NEW_UTS_LEN).
	MaxHostname = 64
	// MaxIfaceLen is IFNAMSIZ-1 (include/uapi/linux/if.h).
	MaxIfaceLen = 15
	// MaxDNS is MAXNS of glibc and musl: resolvers read three nameservers.
	MaxDNS = 3
	// MinMTU is IPv4's minimum (RFC 791: 68), MaxMTU the largest a Linux
	// virtio-net device takes (64 KiB).
	MinMTU = 68
	MaxMTU = 65535
)

// Network is an interface's new addressing. Every address on the
// interface and every route through it are replaced, its neighbour (ARP
// and NDP) entries flushed, /etc/resolv.conf rewritten when DNS is set.
type Network struct {
	// Interface is the device (default "eth0").
	Interface string `json:"interface,omitempty"`
	// Address is the interface's address with its prefix length
	// ("10.0.0.2/30").
	Address string `json:"address"`
	// Gateway, if set, is the default route's next hop (same family).
	Gateway string `json:"gateway,omitempty"`
	// DNS are nameservers for /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
	// MTU, if set, is the interface's MTU.
	MTU int `json:"mtu,omitempty"`
}

// DefaultInterface is the interface Network names when it names none:
// Ember's first virtio-net device.
const DefaultInterface = "eth0"

// Parsed is a checked Network.
type Parsed struct {
	Interface string
	Address   netip.Prefix
	Gateway   netip.Addr // invalid if none
	DNS       []netip.Addr
	MTU       int
}

// Parse checks n and returns its values.
func (n *Network) Parse() (Parsed, error) {
	p := Parsed{Interface: n.Interface, MTU: n.MTU}
	if p.Interface == "" {
		p.Interface = DefaultInterface
	}
	if len(p.Interface) > MaxIfaceLen || strings.ContainsAny(p.Interface, "/\x00 ") || p.Interface == "." || p.Interface == ".." {
		return p, Errorf(CodeInvalid, "network.interface: %q is not an interface name", p.Interface)
	}
	var err error
	if p.Address, err = netip.ParsePrefix(n.Address); err != nil {
		return p, Errorf(CodeInvalid, "network.address: %q: want an address with its prefix length (10.0.0.2/30)", n.Address)
	}
	if n.Gateway != "" {
		if p.Gateway, err = netip.ParseAddr(n.Gateway); err != nil || p.Gateway.Is4() != p.Address.Addr().Is4() {
			return p, Errorf(CodeInvalid, "network.gateway: %q: want an address of the same family as %s", n.Gateway, n.Address)
		}
	}
	if len(n.DNS) > MaxDNS {
		return p, Errorf(CodeInvalid, "network.dns: %d servers; resolvers read at most %d", len(n.DNS), MaxDNS)
	}
	for i, s := range n.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, Errorf(CodeInvalid, "network.dns[%d]: %q is not an IP address", i, s)
		}
		p.DNS = append(p.DNS, a)
	}
	if n.MTU != 0 && (n.MTU < MinMTU || n.MTU > MaxMTU) {
		return p, Errorf(CodeInvalid, "network.mtu: %d: want %d..%d", n.MTU, MinMTU, MaxMTU)
	}
	return p, nil
}

// Validate checks the request.
func (r *Restore) Validate() error {
	if r.Time.IsZero() {
		return Errorf(CodeInvalid, "time: missing")
	}
	if len(r.Entropy) < MinEntropy || len(r.Entropy) > MaxEntropy {
		return Errorf(CodeInvalid, "entropy: %d bytes: want %d..%d", len(r.Entropy), MinEntropy, MaxEntropy)
	}
	if r.Generation == 0 {
		return Errorf(CodeInvalid, "generation: 0: the first restore is generation 1")
	}
	if r.Network != nil {
		if _, err := r.Network.Parse(); err != nil {
			return err
		}
	}
	if len(r.Metadata) > MaxMetadata {
		return Errorf(CodeInvalid, "metadata: %d entries (limit %d)", len(r.Metadata), MaxMetadata)
	}
	if len(r.Hostname) > MaxHostname || strings.ContainsRune(r.Hostname, 0) {
		return Errorf(CodeInvalid, "hostname: %q: want at most %d bytes, no NUL", r.Hostname, MaxHostname)
	}
	return nil
}

// Restore steps, by name, in order.
const (
	StepEntropy    = "entropy"
	StepClock      = "clock"
	StepNetwork    = "network"
	StepDNS        = "dns"
	StepMetadata   = "metadata"
	StepHostname   = "hostname"
	StepGeneration = "generation"
)

// RestoreReply reports each step.
type RestoreReply struct {
	Generation uint64 `json:"generation"`
	Steps      []Step `json:"steps"`
}

// Step is one restore step's outcome.
type Step struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
	// Error is empty when the step succeeded.
	Error string `json:"error,omitempty"`
	// Skipped says the request did not ask for it.
	Skipped bool `json:"skipped,omitempty"`
}

// Err returns the first failed step as an error, or nil.
func (r *RestoreReply) Err() error {
	for _, s := range r.Steps {
		if s.Error != "" {
			return fmt.Errorf("restore step %s: %s", s.Name, s.Error)
		}
	}
	return nil
}

// OpMetrics (unary): {} → [Metrics], the guest's use of its CPUs, memory
// and root filesystem now.
const OpMetrics = "sys.metrics"

// FeatureMetrics says the agent serves [OpMetrics].
const FeatureMetrics = "metrics"

// Metrics is one sample of the guest's resources.
type Metrics struct {
	Time time.Time `json:"time"`
	// CPUs is the online CPU count; CPUUsedPct their busy share (0-100)
	// since the previous sample, or over a short window when there was
	// none recently (from /proc/stat).
	CPUs       int     `json:"cpus"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	// CPUUserNanos and CPUSystemNanos are the CPU time the guest has spent
	// since it booted, in nanoseconds (/proc/stat: user and nice; system,
	// irq and softirq). Agents before them leave them 0.
	CPUUserNanos   uint64 `json:"cpu_user_ns,omitempty"`
	CPUSystemNanos uint64 `json:"cpu_system_ns,omitempty"`
	// MemUsed is MemTotal less MemAvailable (/proc/meminfo), in bytes.
	MemUsed  uint64 `json:"mem_used"`
	MemTotal uint64 `json:"mem_total"`
	// DiskUsed and DiskTotal are the root filesystem's, in bytes
	// (statfs: blocks less free blocks, and blocks).
	DiskUsed  uint64 `json:"disk_used"`
	DiskTotal uint64 `json:"disk_total"`
}

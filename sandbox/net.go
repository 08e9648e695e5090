package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/api"
	"github.com/embervm/ember/sandbox/network"
	"github.com/embervm/ember/sandbox/network/ipam"
)

// Networking: a template with Network set boots with one virtio-net
// device (eth0) on a tap of its own; every sandbox restored from it gets
// its own network namespace, tap, address block and egress policy from
// package sandbox/network, its ember is started inside that namespace
// (the snapshot's tap is overridden with the sandbox's), and the restore
// transaction re-addresses the guest. Address leases are kept in emberd's
// database (bucket "leases"), so a restarted emberd keeps them; its
// start-up sweep adopts the networks of the sandboxes it adopts and
// removes every other namespace, veth, rule and lease of Ember's.

// templateMAC is the MAC of a template's eth0, which every clone shares:
// each sees only its own tap in its own namespace, so they never meet.
// A locally administered unicast address (IEEE 802: bit 1 of the first
// octet set, bit 0 clear).
const templateMAC = "06:00:ac:10:00:02"

// guestIface is the guest's interface (Ember's first virtio-net device).
const guestIface = "eth0"

// networkInitTimeout bounds the network's set-up and sweep when emberd
// starts.
const networkInitTimeout = time.Minute

// leaseStore keeps the network's address leases in the database.
type leaseStore struct{ db *store }

func (s leaseStore) Load() ([]ipam.Lease, error) { return list[ipam.Lease](s.db, bucketLeases) }
func (s leaseStore) Put(l ipam.Lease) error      { return s.db.put(bucketLeases, l.Owner, l) }
func (s leaseStore) Delete(owner string) error   { return s.db.delete(bucketLeases, owner) }

// openNetwork sets the host's side up (bridge, forwarding, nftables) and
// sweeps what an earlier emberd left, keeping the networks of the
// sandboxes this manager adopted.
func (m *Manager) openNetwork(cfg network.Config) error {
	cfg.Store = leaseStore{m.db}
	if cfg.Logger == nil {
		cfg.Logger = m.log
	}
	n, err := network.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(m.ctx, networkInitTimeout)
	defer cancel()
	if err := n.Init(ctx); err != nil {
		n.Close()
		return fmt.Errorf("network: %w", err)
	}
	var known []string
	m.mu.Lock()
	for id, l := range m.live {
		if l.sb.Network != nil {
			known = append(known, id)
		}
	}
	m.mu.Unlock()
	rep, err := n.Sweep(ctx, known)
	if err != nil {
		n.Close()
		return fmt.Errorf("network: sweep: %w", err)
	}
	m.log.Info("network ready", "bridge", n.Bridge(), "adopted", len(rep.Adopted), "missing", rep.Missing,
		"namespaces_removed", len(rep.Namespaces), "leases_released", len(rep.Leases))
	m.net = n
	if cfg.PoolSize > 0 {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			if err := n.FillPool(m.ctx); err != nil && m.ctx.Err() == nil {
				m.log.Warn("filling the network pool", "err", err)
			}
		}()
	}
	return nil
}

// needNetwork refuses a network request when emberd has none.
func (m *Manager) needNetwork() error {
	if m.net == nil {
		return invalid("network", "emberd runs without networking (start it with --network)")
	}
	return nil
}

// setupNetwork gives id a network with policy p (nil: allow-all).
func (m *Manager) setupNetwork(ctx context.Context, id string, p *network.Policy) (*network.Attachment, error) {
	policy := network.Policy{Mode: network.AllowAll}
	if p != nil {
		policy = *p
	}
	att, err := m.net.Setup(ctx, network.SetupSpec{ID: id, Policy: policy})
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	return att, nil
}

// recordNetwork is the record of att with policy p.
func recordNetwork(att *network.Attachment, p *network.Policy) *SandboxNetwork {
	n := &SandboxNetwork{Address: att.Guest.Address.String(), Gateway: att.Guest.Gateway.String(),
		Netns: att.Netns, Tap: att.Tap, Policy: network.Policy{Mode: network.AllowAll}}
	if p != nil {
		n.Policy = *p
	}
	for _, a := range att.Guest.DNS {
		n.DNS = append(n.DNS, a.String())
	}
	return n
}

// guestNetwork is the agent's re-address step for a recorded network.
func guestNetwork(n *SandboxNetwork) *proto.Network {
	return &proto.Network{Interface: guestIface, Address: n.Address, Gateway: n.Gateway, DNS: n.DNS}
}

// templateNIC is the template's eth0 on att's tap.
func templateNIC(att *network.Attachment) api.NetworkInterface {
	return api.NetworkInterface{IfaceID: guestIface, HostDevName: att.Tap, GuestMAC: templateMAC}
}

// teardownNetwork frees an ended sandbox's network (its ember has exited).
func (m *Manager) teardownNetwork(id string) {
	if m.net == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), networkInitTimeout)
	defer cancel()
	if err := m.net.Teardown(ctx, id); err != nil && !errors.Is(err, network.ErrUnknown) {
		m.log.Error("removing a sandbox's network", "sandbox", id, "err", err)
	}
}

// SetPolicy changes a running sandbox's egress policy.
func (m *Manager) SetPolicy(ctx context.Context, id string, p network.Policy) (Sandbox, error) {
	if err := p.Validate(); err != nil {
		return Sandbox{}, invalid("policy", "%v", err)
	}
	l, err := m.liveSandbox(id)
	if err != nil {
		return Sandbox{}, err
	}
	l.ops.Lock()
	defer l.ops.Unlock()
	m.mu.Lock()
	hasNet := l.sb.Network != nil
	m.mu.Unlock()
	if !hasNet || m.net == nil {
		return Sandbox{}, conflict("sandbox %s has no network", id)
	}
	if err := m.net.SetPolicy(ctx, id, p); err != nil {
		return Sandbox{}, fmt.Errorf("sandbox %s: %w", id, err)
	}
	m.mu.Lock()
	l.sb.Network.Policy = p
	sb := l.sb
	m.mu.Unlock()
	return sb, m.db.put(bucketSandboxes, id, sb)
}

// Network returns a sandbox's network and the bytes it moved.
func (m *Manager) Network(ctx context.Context, id string) (NetworkState, error) {
	sb, err := m.Sandbox(id)
	if err != nil {
		return NetworkState{}, err
	}
	if sb.Network == nil {
		return NetworkState{}, notFound("sandbox %s has no network", id)
	}
	st := NetworkState{SandboxNetwork: *sb.Network}
	if m.net != nil && sb.State != StateExited {
		c, err := m.net.Counters(ctx, id)
		if err != nil {
			return NetworkState{}, fmt.Errorf("sandbox %s: %w", id, err)
		}
		st.BytesOut, st.BytesIn = c.BytesOut, c.BytesIn
	}
	return st, nil
}

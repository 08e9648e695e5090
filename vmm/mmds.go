package vmm

import (
	"fmt"

	"github.com/embervm/ember/mmds"
	"github.com/embervm/ember/mmds/netstack"
	"github.com/embervm/ember/virtio"
)

// vmMMDS is a VM's metadata service: the guest-facing handler and a
// network stack on each interface it answers on. Nil in a VM without MMDS,
// which then has none of it.
type vmMMDS struct {
	svc     *mmds.Service
	stacks  []*netstack.Stack
	logs    []*virtio.GuestLog
	metrics netstack.Metrics
}

// setupMMDS attaches the MMDS to the interfaces its configuration names
// (after the net devices exist, before the guest runs). The data store is
// the process's (cfg.MMDSStore): it outlives a VM and is not in snapshots.
func (v *VM) setupMMDS() error {
	if v.cfg.MMDS == nil {
		return nil
	}
	c := v.cfg.MMDS.Clone()
	if err := c.Normalize(); err != nil {
		return invalid("mmds-config: %v", err)
	}
	ip, err := mmds.ParseIPv4(c.IPv4Address)
	if err != nil {
		return invalid("mmds-config: %v", err)
	}
	store := v.cfg.MMDSStore
	if store == nil {
		store = mmds.NewStore(mmds.DefaultSizeLimit)
	}
	svc, err := mmds.NewService(store, *c, v.cfg.InstanceID)
	if err != nil {
		return err
	}
	m := &vmMMDS{svc: svc}
	limits := netstack.NewLimits(netstack.MaxConnections)
	for _, id := range c.NetworkInterfaces {
		dev := v.nets[id]
		if dev == nil {
			return fmt.Errorf("%w: mmds-config: %w (%q)", ErrInvalidConfig, mmds.ErrNoSuchIface, id)
		}
		glog := virtio.NewGuestLog(v.log.With("device", "mmds", "iface", id))
		st := netstack.New(netstack.Config{IP: ip.As4(), Handler: svc, Limits: limits, Metrics: &m.metrics, Log: glog})
		dev.SetInterceptor(st)
		m.stacks = append(m.stacks, st)
		m.logs = append(m.logs, glog)
	}
	v.mmds = m
	return nil
}

// closeMMDS stops the stacks (their HTTP servers and timers).
func (v *VM) closeMMDS() {
	if v.mmds == nil {
		return
	}
	for _, st := range v.mmds.stacks {
		st.Close()
	}
}

// readMMDSMetrics adds the mmds group (Firecracker's names) and the MMDS's
// suppressed log lines.
func (m *vmMMDS) readMetrics(add func(group, name string, value uint64)) (suppressed uint64) {
	n := &m.metrics
	for _, kv := range []metricValue{
		{"rx_accepted", n.RxAccepted.Load()}, {"rx_accepted_err", n.RxAcceptedErr.Load()},
		{"rx_accepted_unusual", n.RxAcceptedUnusual.Load()}, {"rx_bad_eth", n.RxBadEth.Load()},
		{"rx_invalid_token", m.svc.Metrics.RxInvalidToken.Load()}, {"rx_no_token", m.svc.Metrics.RxNoToken.Load()},
		{"rx_count", n.RxCount.Load()}, {"tx_bytes", n.TxBytes.Load()}, {"tx_count", n.TxCount.Load()},
		{"tx_errors", n.TxErrors.Load()}, {"tx_frames", n.TxFrames.Load()},
		{"connections_created", n.ConnectionsCreated.Load()}, {"connections_destroyed", n.ConnectionsDestroyed.Load()},
	} {
		add("mmds", kv.name, kv.v)
	}
	for _, l := range m.logs {
		suppressed += l.Suppressed()
	}
	return suppressed
}

package api

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio/balloon"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
	"github.com/embervm/ember/vmm"
)

// Translation of the device models other than drives (see translate.go).

const (
	// minGuestCID is the lowest CID a guest may have: 0-2 are the
	// hypervisor's, the loopback's and the host's.
	minGuestCID = 3
	// maxTapName is the longest interface name Linux accepts.
	maxTapName = unix.IFNAMSIZ - 1
)

// netChange validates PUT /network-interfaces/{id}: a new interface, or a
// replacement for the one with the same id. host_dev_name and guest_mac
// must not be another interface's.
func netChange(n NetworkInterface) (change, error) {
	if err := checkID(n.IfaceID); err != nil {
		return nil, fmt.Errorf("iface_id %q: %w", n.IfaceID, err)
	}
	fail := func(format string, args ...any) (change, error) {
		return nil, fmt.Errorf("network interface %q: %s", n.IfaceID, fmt.Sprintf(format, args...))
	}
	if n.HostDevName == "" || len(n.HostDevName) > maxTapName || strings.ContainsAny(n.HostDevName, "/ \x00") {
		return fail("host_dev_name %q: want a tap interface name of 1 to %d characters", n.HostDevName, maxTapName)
	}
	var mac [6]byte
	if n.GuestMAC != "" {
		var err error
		if mac, err = vnet.ParseMAC(n.GuestMAC); err != nil {
			return fail("guest_mac: %v", err)
		}
	}
	cfg := vnet.Config{IfaceID: n.IfaceID, HostDevName: n.HostDevName, GuestMAC: n.GuestMAC}
	if n.MTU != nil {
		if *n.MTU < vnet.MinMTU || *n.MTU > vnet.MaxMTU {
			return fail("mtu %d: want %d to %d", *n.MTU, vnet.MinMTU, vnet.MaxMTU)
		}
		cfg.MTU = *n.MTU
	}
	var err error
	if cfg.RxRateLimit, err = rateLimit("rx_rate_limiter", n.RxRateLimiter); err != nil {
		return fail("%v", err)
	}
	if cfg.TxRateLimit, err = rateLimit("tx_rate_limiter", n.TxRateLimiter); err != nil {
		return fail("%v", err)
	}
	return func(c *vmm.Config) error {
		for _, o := range c.Nets {
			if o.IfaceID == cfg.IfaceID {
				continue
			}
			if o.HostDevName == cfg.HostDevName {
				return fmt.Errorf("network interface %q: host_dev_name %q is already used by network interface %q",
					cfg.IfaceID, cfg.HostDevName, o.IfaceID)
			}
			if other, err := vnet.ParseMAC(o.GuestMAC); cfg.GuestMAC != "" && err == nil && other == mac {
				return fmt.Errorf("network interface %q: guest_mac %s is already used by network interface %q",
					cfg.IfaceID, cfg.GuestMAC, o.IfaceID)
			}
		}
		if i := slices.IndexFunc(c.Nets, func(o vnet.Config) bool { return o.IfaceID == cfg.IfaceID }); i >= 0 {
			c.Nets[i] = cfg
			return nil
		}
		if err := checkDeviceRoom(c); err != nil {
			return fmt.Errorf("network interface %q: %w", cfg.IfaceID, err)
		}
		c.Nets = append(c.Nets, cfg)
		return nil
	}, nil
}

// vsockChange validates PUT /vsock (which replaces any previous vsock).
func vsockChange(v Vsock) (change, error) {
	if v.GuestCID < minGuestCID {
		return nil, fmt.Errorf("vsock: guest_cid %d: want %d or more (0 to 2 are reserved)", v.GuestCID, minGuestCID)
	}
	if v.UDSPath == "" {
		return nil, fmt.Errorf("vsock: uds_path is empty")
	}
	cfg := vsock.Config{GuestCID: v.GuestCID, UDSPath: v.UDSPath}
	if v.VsockID != nil {
		cfg.VsockID = *v.VsockID
	}
	return func(c *vmm.Config) error {
		if c.Vsock == nil {
			if err := checkDeviceRoom(c); err != nil {
				return fmt.Errorf("vsock: %w", err)
			}
		}
		c.Vsock = &cfg
		return nil
	}, nil
}

// entropyChange validates PUT /entropy.
func entropyChange(e EntropyDevice) (change, error) {
	limit, err := rateLimit(fieldRateLimiter, e.RateLimiter)
	if err != nil {
		return nil, fmt.Errorf("entropy: %w", err)
	}
	return func(c *vmm.Config) error {
		if c.RNG == nil {
			if err := checkDeviceRoom(c); err != nil {
				return fmt.Errorf("entropy: %w", err)
			}
		}
		c.RNG = &rng.Config{RateLimit: limit}
		return nil
	}, nil
}

// balloonChange validates PUT /balloon: the target must fit in the guest
// memory configured so far (mem_size_mib is checked against it again when it
// changes, and at InstanceStart).
func balloonChange(b Balloon) (change, error) {
	switch {
	case b.FreePageHinting:
		return nil, notSupported("balloon free_page_hinting is not implemented by Ember")
	case b.FreePageReporting:
		return nil, notSupported("balloon free_page_reporting is not implemented by Ember")
	}
	if err := checkStatsInterval(b.StatsPollingIntervalS); err != nil {
		return nil, err
	}
	cfg := balloon.Config{AmountMiB: b.AmountMiB, DeflateOnOOM: b.DeflateOnOOM, StatsPollingIntervalS: b.StatsPollingIntervalS}
	return func(c *vmm.Config) error {
		withDefaults(c)
		if err := checkBalloonFits(b.AmountMiB, c.MemMiB); err != nil {
			return err
		}
		if c.Balloon == nil {
			if err := checkDeviceRoom(c); err != nil {
				return fmt.Errorf("balloon: %w", err)
			}
		}
		c.Balloon = &cfg
		return nil
	}, nil
}

// checkBalloonFits checks a balloon target against the guest memory.
func checkBalloonFits(amountMiB uint32, memMiB int) error {
	if int64(amountMiB) > int64(memMiB) {
		return fmt.Errorf("balloon: amount_mib %d is larger than the guest memory (mem_size_mib %d)", amountMiB, memMiB)
	}
	return nil
}

// checkStatsInterval checks stats_polling_interval_s (Firecracker's u16).
func checkStatsInterval(s int) error {
	if s < 0 || s > balloon.MaxStatsInterval {
		return fmt.Errorf("balloon: stats_polling_interval_s %d: want 0 to %d", s, balloon.MaxStatsInterval)
	}
	return nil
}

// balloonOf is GET /balloon's answer.
func balloonOf(b *balloon.Config) Balloon {
	return Balloon{AmountMiB: b.AmountMiB, DeflateOnOOM: b.DeflateOnOOM, StatsPollingIntervalS: b.StatsPollingIntervalS}
}

// serialChange validates PUT /serial. Its rate_limiter (one bucket, of
// bytes) caps what reaches serial_out_path; without one the VMM's default
// cap applies, and a bucket of size 0 removes the cap.
func serialChange(s SerialConfig) (change, error) {
	var limit *ratelimit.Config
	if s.RateLimiter != nil {
		limit = &ratelimit.Config{Bandwidth: s.RateLimiter.toVMM()}
		if err := limit.Validate(); err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
	}
	return func(c *vmm.Config) error {
		c.SerialOutPath = ""
		setIf(&c.SerialOutPath, s.SerialOutPath)
		c.SerialOutRateLimit = limit
		return nil
	}, nil
}

// cpuConfigChange validates PUT /cpu-config.
func cpuConfigChange(t CpuConfig) (change, error) {
	cfg, err := t.toVMM()
	if err != nil {
		return nil, fmt.Errorf("cpu-config: %w", err)
	}
	return func(c *vmm.Config) error {
		c.CPU = cfg
		return nil
	}, nil
}

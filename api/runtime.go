package api

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/embervm/ember/virtio/balloon"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/vmm"
)

// The run-time endpoints: after InstanceStart, they reach the running VM
// through the Backend's run-time methods (GET /balloon also answers before).

func (s *Server) patchDrive(c *call) (any, error) {
	id, err := pathID(c)
	if err != nil {
		return nil, err
	}
	p, err := decodeModel[PartialDrive](c.body)
	if err != nil {
		return nil, err
	}
	if p.DriveID != id {
		return nil, errors.New(msgIDMismatch)
	}
	if err := s.started(); err != nil {
		return nil, err
	}
	if p.PathOnHost == nil && p.RateLimiter == nil {
		return nil, fmt.Errorf("drive %q: nothing to update: give path_on_host, rate_limiter or both", id)
	}
	limit, err := rateLimit(fieldRateLimiter, p.RateLimiter)
	if err != nil {
		return nil, fmt.Errorf("drive %q: %w", id, err)
	}
	if p.PathOnHost != nil {
		drives := s.b.Config().Drives
		i := slices.IndexFunc(drives, func(d vmm.DriveConfig) bool { return d.ID == id })
		if i < 0 {
			return nil, fmt.Errorf("drive %q: %w", id, vmm.ErrNoDevice)
		}
		flag := os.O_RDWR
		if drives[i].ReadOnly {
			flag = os.O_RDONLY
		}
		if err := checkOpen("path_on_host", *p.PathOnHost, flag); err != nil {
			return nil, fmt.Errorf("drive %q: %w", id, err)
		}
	}
	return nil, s.b.UpdateDrive(id, vmm.DriveUpdate{Path: p.PathOnHost, RateLimit: limit})
}

func (s *Server) patchNet(c *call) (any, error) {
	id, err := pathID(c)
	if err != nil {
		return nil, err
	}
	p, err := decodeModel[PartialNetworkInterface](c.body)
	if err != nil {
		return nil, err
	}
	if p.IfaceID != id {
		return nil, errors.New(msgIDMismatch)
	}
	if err := s.started(); err != nil {
		return nil, err
	}
	var u vmm.NetUpdate
	if u.RxRateLimit, err = rateLimit("rx_rate_limiter", p.RxRateLimiter); err != nil {
		return nil, fmt.Errorf("network interface %q: %w", id, err)
	}
	if u.TxRateLimit, err = rateLimit("tx_rate_limiter", p.TxRateLimiter); err != nil {
		return nil, fmt.Errorf("network interface %q: %w", id, err)
	}
	if !slices.ContainsFunc(s.b.Config().Nets, func(n vnet.Config) bool { return n.IfaceID == id }) {
		return nil, fmt.Errorf("network interface %q: %w", id, vmm.ErrNoDevice)
	}
	return nil, s.b.UpdateNet(id, u)
}

func (s *Server) getBalloon(*call) (any, error) {
	b := s.b.Config().Balloon
	if b == nil {
		return nil, errors.New(msgNoBalloon)
	}
	return balloonOf(b), nil
}

func (s *Server) patchBalloon(c *call) (any, error) {
	u, err := decodeModel[BalloonUpdate](c.body)
	if err != nil {
		return nil, err
	}
	if err := s.started(); err != nil {
		return nil, err
	}
	cfg := s.b.Config()
	if cfg.Balloon == nil {
		return nil, errors.New(msgNoBalloon)
	}
	withDefaults(&cfg)
	if err := checkBalloonFits(u.AmountMiB, cfg.MemMiB); err != nil {
		return nil, err
	}
	return nil, s.b.SetBalloonTarget(u.AmountMiB)
}

func (s *Server) getBalloonStats(*call) (any, error) {
	if err := s.started(); err != nil {
		return nil, err
	}
	b := s.b.Config().Balloon
	switch {
	case b == nil:
		return nil, errors.New(msgNoBalloon)
	case b.StatsPollingIntervalS == 0:
		return nil, errors.New(msgNoStats)
	}
	st, err := s.b.BalloonStats()
	if errors.Is(err, balloon.ErrStatsDisabled) {
		return nil, errors.New(msgNoStats)
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (s *Server) patchBalloonStats(c *call) (any, error) {
	u, err := decodeModel[BalloonStatsUpdate](c.body)
	if err != nil {
		return nil, err
	}
	if err := s.started(); err != nil {
		return nil, err
	}
	if err := checkStatsInterval(u.StatsPollingIntervalS); err != nil {
		return nil, err
	}
	b := s.b.Config().Balloon
	switch {
	case b == nil:
		return nil, errors.New(msgNoBalloon)
	case (b.StatsPollingIntervalS == 0) != (u.StatsPollingIntervalS == 0):
		return nil, errors.New(msgStatsOnOff)
	}
	return nil, s.b.SetBalloonStatsInterval(u.StatsPollingIntervalS)
}

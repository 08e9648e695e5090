package network

import (
	"context"
	"fmt"
	"time"
)

// SetupCost is the mean time of Setup (namespace, tap, veth, addresses,
// routes, nftables chains and policy) with a namespace made on the spot and
// with one taken ready from a pool: the benchmark's netns_tap_setup_ms.
type SetupCost struct {
	N              int
	FreshMS        float64
	PooledMS       float64
	FreshTotal     time.Duration
	PooledTotal    time.Duration
	PrepareTotalMS float64 // making the pooled namespaces, outside the timed part
}

// MeasureSetup sets up and tears down n throw-away sandboxes (IDs
// "bench-...") each way on m, which must have been through Init. The pool of
// m is neither used nor drained: the pooled case prepares its own
// namespaces first.
func MeasureSetup(ctx context.Context, m *Manager, n int) (SetupCost, error) {
	if n <= 0 {
		return SetupCost{}, fmt.Errorf("network: measure: n = %d, want at least 1", n)
	}
	c := SetupCost{N: n}
	spec := func(kind string, i int) SetupSpec {
		return SetupSpec{ID: fmt.Sprintf("bench-%s-%s-%d", newKey(), kind, i), Policy: Policy{Mode: AllowAll}}
	}
	for i := 0; i < n; i++ {
		att, err := m.setup(ctx, spec("fresh", i), false, nil)
		if err != nil {
			return c, err
		}
		c.FreshTotal += att.Took
		if err := m.Teardown(ctx, att.ID); err != nil {
			return c, err
		}
	}
	for i := 0; i < n; i++ {
		t0 := time.Now()
		s, err := m.newSlot()
		if err != nil {
			return c, fmt.Errorf("network: measure: %w", err)
		}
		c.PrepareTotalMS += float64(time.Since(t0).Microseconds()) / 1000
		att, err := m.setup(ctx, spec("pooled", i), false, s)
		if err != nil {
			return c, err
		}
		c.PooledTotal += att.Took
		if err := m.Teardown(ctx, att.ID); err != nil {
			return c, err
		}
	}
	c.FreshMS = float64(c.FreshTotal.Microseconds()) / 1000 / float64(n)
	c.PooledMS = float64(c.PooledTotal.Microseconds()) / 1000 / float64(n)
	return c, nil
}

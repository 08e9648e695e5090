package ratelimit

import (
	"math"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeClock is a manual monotonic clock.
type fakeClock struct{ t time.Duration }

func (c *fakeClock) now() time.Duration { return c.t }

// newFake returns a limiter on a fake clock starting at an arbitrary
// nonzero time; it is closed when the test ends.
func newFake(t *testing.T, cfg Config) (*Limiter, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Hour}
	l, err := newWithClock(cfg, clk.now)
	if err != nil {
		t.Fatalf("newWithClock(%v): %v", cfg, err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l, clk
}

// fire simulates the timer expiring: the clock moves by the armed duration
// and the limiter is unblocked as Event would.
func fire(t *testing.T, l *Limiter, clk *fakeClock) {
	t.Helper()
	if !l.Blocked() {
		t.Fatal("fire: limiter not blocked")
	}
	clk.t += l.wait
	l.blocked = false
}

func bw(size, refillMs, burst uint64) *TokenBucketConfig {
	return &TokenBucketConfig{Size: size, RefillTime: refillMs, OneTimeBurst: burst}
}

func TestNilAndUnlimited(t *testing.T) {
	var nl *Limiter
	if !nl.Consume(math.MaxUint64) || nl.Blocked() || nl.FD() != -1 || nl.Throttled() != 0 {
		t.Fatal("nil limiter limits")
	}
	if err := nl.Event(); err != nil {
		t.Fatalf("nil Event: %v", err)
	}
	if err := nl.Close(); err != nil {
		t.Fatalf("nil Close: %v", err)
	}
	if err := nl.Update(Config{}); err == nil {
		t.Fatal("nil Update succeeded")
	}
	for _, cfg := range []Config{
		{},
		{Bandwidth: bw(0, 100, 5)},
		{Bandwidth: bw(100, 0, 0), Ops: bw(0, 0, 0)},
	} {
		l, err := New(cfg)
		if err != nil {
			t.Fatalf("New(%v): %v", cfg, err)
		}
		if l.FD() != -1 {
			t.Errorf("New(%v): FD %d, want -1", cfg, l.FD())
		}
		for range 1000 {
			if !l.Consume(math.MaxUint64) {
				t.Fatalf("New(%v): Consume refused", cfg)
			}
		}
		if l.Blocked() || l.Event() != nil || l.Close() != nil {
			t.Fatalf("New(%v): unlimited limiter misbehaves", cfg)
		}
	}
}

func TestConsumeBlocksAndTimer(t *testing.T) {
	// 1000 bytes per 100 ms: one byte per 100 µs.
	l, clk := newFake(t, Config{Bandwidth: bw(1000, 100, 0)})
	if l.FD() < 0 {
		t.Fatal("no timerfd for a limited limiter")
	}
	if !l.Consume(600) || !l.Consume(400) {
		t.Fatal("full bucket refused its size")
	}
	if l.Consume(1) {
		t.Fatal("empty bucket paid")
	}
	if !l.Blocked() || l.Throttled() != 1 {
		t.Fatalf("Blocked %v Throttled %d, want true 1", l.Blocked(), l.Throttled())
	}
	if want := 100 * time.Microsecond; l.wait != want || l.RetryAfter() != want {
		t.Fatalf("timer armed for %v (RetryAfter %v), want %v", l.wait, l.RetryAfter(), want)
	}
	var spec unix.ItimerSpec
	if err := unix.TimerfdGettime(l.FD(), &spec); err != nil {
		t.Fatal(err)
	}
	if left := time.Duration(spec.Value.Nano()); left <= 0 || left > 100*time.Microsecond {
		t.Fatalf("timerfd has %v left, want in (0, 100µs]", left)
	}
	// Blocked: refused whatever the clock says, until the event.
	clk.t += time.Hour
	if l.Consume(0) || l.Consume(1) {
		t.Fatal("blocked limiter paid")
	}
	if l.Throttled() != 1 {
		t.Fatalf("Throttled %d after refusals while blocked, want 1", l.Throttled())
	}
	l.blocked = false
	if !l.Consume(1000) {
		t.Fatal("refilled bucket refused")
	}
}

func TestRetryAtTimerSucceedsNoDrift(t *testing.T) {
	// 7 bytes per second; every request fails once, the timer fires, the
	// retry succeeds. The k-th byte after draining must come exactly at
	// ceil(k*1e9/7) ns, so nothing drifts over many refills.
	l, clk := newFake(t, Config{Bandwidth: bw(7, 1000, 0)})
	if !l.Consume(7) {
		t.Fatal("full bucket refused")
	}
	start := clk.t
	const n = 10_000
	for k := uint64(1); k <= n; k++ {
		if l.Consume(1) {
			t.Fatalf("byte %d paid before its time", k)
		}
		fire(t, l, clk)
		if !l.Consume(1) {
			t.Fatalf("byte %d refused after the timer (armed %v)", k, l.wait)
		}
		if got, want := uint64(clk.t-start), ceilDiv(k, 1e9, 7); got != want {
			t.Fatalf("byte %d at %d ns, want %d", k, got, want)
		}
	}
}

func TestRetryVaryingSizes(t *testing.T) {
	// Bytes of varying sizes through 4096 bytes per 10 ms: after draining,
	// total bytes T must have taken exactly ceil(T*10ms/4096). Requests stay
	// below the size, so the bucket never fills up and discards accrual.
	const size, refill = 4096, 10
	l, clk := newFake(t, Config{Bandwidth: bw(size, refill, 0), Ops: bw(1000, 1, 0)})
	l.Consume(size)
	start := clk.t
	var total uint64
	for i := range uint64(5000) {
		n := 1 + (i*7919)%(size-1)
		for !l.Consume(n) {
			fire(t, l, clk)
		}
		total += n
	}
	if got, want := uint64(clk.t-start), ceilDiv(total, refill*nsPerMs, size); got != want {
		t.Fatalf("%d bytes took %d ns, want %d", total, got, want)
	}
}

func TestOpsAndBandwidthAllOrNothing(t *testing.T) {
	// 1000 bytes/s and 2 ops/s.
	l, clk := newFake(t, Config{Bandwidth: bw(1000, 1000, 0), Ops: bw(2, 1000, 0)})
	if !l.Consume(100) || !l.Consume(100) {
		t.Fatal("refused within both budgets")
	}
	if l.Consume(100) {
		t.Fatal("third op paid with 2 ops/s")
	}
	if l.bw.budget != 800 {
		t.Fatalf("bandwidth budget %d after a refused op, want 800 (untouched)", l.bw.budget)
	}
	if want := 500 * time.Millisecond; l.wait != want {
		t.Fatalf("armed %v, want %v (one op)", l.wait, want)
	}
	fire(t, l, clk)
	// Bandwidth is full again (800+500, capped), ops has 1: both emptied.
	if !l.Consume(1000) {
		t.Fatal("refused after the timer")
	}
	// Now bandwidth is the limit, and the ops bucket must keep its token.
	clk.t += 500 * time.Millisecond // ops: 1 token; bandwidth: 500 bytes
	if l.Consume(800) {
		t.Fatal("800 bytes paid with 500 in the bucket")
	}
	if l.ops.budget != 1 {
		t.Fatalf("ops budget %d after a refused op, want 1 (untouched)", l.ops.budget)
	}
	if want := 300 * time.Millisecond; l.wait != want {
		t.Fatalf("armed %v, want %v (300 bytes)", l.wait, want)
	}
	fire(t, l, clk)
	// 300 ms later: bandwidth has 800, ops 1.6; the op leaves 0 and 0.6.
	if !l.Consume(800) {
		t.Fatal("refused after the timer")
	}
	// Both short: the wait is the longer of the two.
	if l.Consume(1000) {
		t.Fatal("paid from empty buckets")
	}
	if want := time.Second; l.wait != want {
		t.Fatalf("armed %v, want %v (max of bandwidth 1 s, ops 0.2 s)", l.wait, want)
	}
}

func TestOneTimeBurstThroughLimiter(t *testing.T) {
	l, clk := newFake(t, Config{Bandwidth: bw(100, 1000, 50)})
	if !l.Consume(150) {
		t.Fatal("refused burst+size")
	}
	if l.Consume(1) {
		t.Fatal("paid with burst and budget spent")
	}
	if want := 10 * time.Millisecond; l.wait != want {
		t.Fatalf("armed %v, want %v", l.wait, want)
	}
	l.blocked = false
	clk.t += time.Hour
	// Only the budget came back.
	if !l.Consume(100) || l.Consume(1) {
		t.Fatal("one_time_burst was refilled")
	}
}

func TestBigRequests(t *testing.T) {
	// 100 bytes per 100 ms.
	l, clk := newFake(t, Config{Bandwidth: bw(100, 100, 0)})
	if !l.Consume(250) {
		t.Fatal("oversized request refused with a full bucket")
	}
	if l.Consume(250) {
		t.Fatal("second oversized request paid at once")
	}
	if want := 250 * time.Millisecond; l.wait != want {
		t.Fatalf("armed %v, want %v (150 debt + full budget)", l.wait, want)
	}
	fire(t, l, clk)
	if !l.Consume(250) {
		t.Fatal("oversized request refused after the timer")
	}
	// Even an absurd request passes once and then saturates the wait.
	l2, _ := newFake(t, Config{Bandwidth: bw(100, 100, 0)})
	if !l2.Consume(math.MaxUint64) {
		t.Fatal("MaxUint64 refused with a full bucket")
	}
	if l2.Consume(1) || !l2.Blocked() {
		t.Fatal("not blocked after MaxUint64 bytes")
	}
	if l2.wait != math.MaxInt64 {
		t.Fatalf("armed %v, want saturated", l2.wait)
	}
}

func TestUpdate(t *testing.T) {
	l, clk := newFake(t, Config{Bandwidth: bw(1000, 1000, 0), Ops: bw(10, 1000, 5)})
	l.Consume(600)
	// Nil buckets: unchanged, state included.
	if err := l.Update(Config{}); err != nil {
		t.Fatal(err)
	}
	if l.bw.budget != 400 || l.ops.burst != 4 {
		t.Fatalf("nil update changed state: bw %d ops burst %d", l.bw.budget, l.ops.burst)
	}
	// Invalid: error naming the field, nothing changes.
	err := l.Update(Config{Bandwidth: bw(1, MaxRefillTime+1, 0)})
	if err == nil || !strings.Contains(err.Error(), "rate_limiter.bandwidth.refill_time") {
		t.Fatalf("invalid update: err %v", err)
	}
	if l.bw.size != 1000 || l.bw.budget != 400 {
		t.Fatal("invalid update changed the bucket")
	}
	// Replace bandwidth: a new full bucket; ops unchanged.
	if err := l.Update(Config{Bandwidth: bw(50, 10, 7)}); err != nil {
		t.Fatal(err)
	}
	if l.bw.size != 50 || l.bw.budget != 50 || l.bw.burst != 7 || l.bw.last != clk.t || l.ops.burst != 4 {
		t.Fatalf("replace: bw %+v ops %+v", l.bw, l.ops)
	}
	// Size 0 removes ops; refill 0 removes bandwidth.
	fd := l.FD()
	if err := l.Update(Config{Ops: bw(0, 1000, 0)}); err != nil {
		t.Fatal(err)
	}
	if l.ops.on() || !l.bw.on() {
		t.Fatal("size 0 did not remove ops only")
	}
	if err := l.Update(Config{Bandwidth: bw(10, 0, 0)}); err != nil {
		t.Fatal(err)
	}
	if l.limited() || !l.Consume(math.MaxUint64) {
		t.Fatal("limiter still limits with no buckets")
	}
	if l.FD() != fd {
		t.Fatalf("FD changed from %d to %d", fd, l.FD())
	}
}

func TestUpdateAddsTimer(t *testing.T) {
	l, _ := newFake(t, Config{})
	if l.FD() != -1 {
		t.Fatal("unlimited limiter has a timerfd")
	}
	if err := l.Update(Config{Ops: bw(1, 1000, 0)}); err != nil {
		t.Fatal(err)
	}
	if l.FD() < 0 {
		t.Fatal("no timerfd after adding a bucket")
	}
	if !l.Consume(0) || l.Consume(0) || !l.Blocked() {
		t.Fatal("1 op/s bucket did not block the second op")
	}
}

// pollReadable waits up to timeout for fd to become readable.
func pollReadable(t *testing.T, fd int, timeout time.Duration) bool {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(timeout.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		return n == 1 && fds[0].Revents&unix.POLLIN != 0
	}
}

func TestUpdateWhileBlockedWakes(t *testing.T) {
	l, _ := newFake(t, Config{Bandwidth: bw(1, MaxRefillTime, 0)})
	l.Consume(1)
	if l.Consume(1) || !l.Blocked() {
		t.Fatal("not blocked")
	}
	if pollReadable(t, l.FD(), 0) {
		t.Fatal("timer fired early")
	}
	// A faster bucket: the device must be woken to retry.
	if err := l.Update(Config{Bandwidth: bw(1000, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	if !pollReadable(t, l.FD(), 10*time.Second) {
		t.Fatal("update did not wake the blocked limiter")
	}
	if err := l.Event(); err != nil || l.Blocked() {
		t.Fatalf("Event: %v, blocked %v", err, l.Blocked())
	}
	if !l.Consume(1) {
		t.Fatal("refused under the new bucket")
	}
	// Removing every bucket while blocked unblocks at once and still wakes.
	l.Consume(1000)
	if !l.Blocked() {
		t.Fatal("not blocked")
	}
	if err := l.Update(Config{Bandwidth: bw(0, 0, 0)}); err != nil {
		t.Fatal(err)
	}
	if l.Blocked() || !l.Consume(1) {
		t.Fatal("still blocked with no buckets")
	}
	if !pollReadable(t, l.FD(), 10*time.Second) {
		t.Fatal("removing the buckets did not wake the device")
	}
	if err := l.Event(); err != nil {
		t.Fatal(err)
	}
}

func TestRealTimer(t *testing.T) {
	// 1000 bytes per 20 ms, on the real clock and timerfd.
	l, err := New(Config{Bandwidth: bw(1000, 20, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	if !l.Consume(1000) {
		t.Fatal("full bucket refused")
	}
	if l.Consume(1000) {
		t.Fatal("empty bucket paid")
	}
	if err := l.Event(); err != nil || !l.Blocked() {
		t.Fatalf("early Event: err %v, blocked %v; want nil, still blocked", err, l.Blocked())
	}
	if !pollReadable(t, l.FD(), 10*time.Second) {
		t.Fatal("timer did not fire")
	}
	if elapsed := time.Since(start); elapsed < 10*time.Millisecond {
		t.Errorf("timer fired after %v, expected about 20 ms", elapsed)
	}
	if err := l.Event(); err != nil || l.Blocked() {
		t.Fatalf("Event: err %v, blocked %v", err, l.Blocked())
	}
	if !l.Consume(1000) {
		t.Fatal("retry after the timer refused")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l.FD() != -1 || !l.Consume(math.MaxUint64) || l.Close() != nil {
		t.Fatal("closed limiter misbehaves")
	}
	if err := l.Update(Config{Ops: bw(1, 1, 0)}); err == nil || l.FD() != -1 {
		t.Fatalf("Update after Close: err %v, FD %d; want an error and no fd", err, l.FD())
	}
}

func TestConsumeDoesNotAllocate(t *testing.T) {
	// A stopped fake clock makes the paths deterministic; the timerfd is real.
	l, _ := newFake(t, Config{Bandwidth: bw(1<<20, 1000, 0), Ops: bw(1<<30, 1000, 0)})
	real, err := New(Config{Bandwidth: bw(math.MaxUint64, 1, 0), Ops: bw(math.MaxUint64, 1, 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	var nl *Limiter
	unlimited, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"pass", func() {
			if !l.Consume(1) {
				t.Fatal("refused")
			}
		}},
		{"pass, real clock", func() {
			if !real.Consume(1500) {
				t.Fatal("refused")
			}
		}},
		{"refuse and arm", func() {
			l.blocked = false
			if l.Consume(2 << 20) {
				t.Fatal("paid")
			}
		}},
		{"blocked", func() { l.Consume(1) }},
		{"nil", func() { nl.Consume(1) }},
		{"unlimited", func() { unlimited.Consume(1) }},
	} {
		if a := testing.AllocsPerRun(1000, c.f); a != 0 {
			t.Errorf("%s: %v allocations per Consume, want 0", c.name, a)
		}
	}
	if l.Throttled() < 1000 {
		t.Errorf("Throttled = %d, want >= 1000", l.Throttled())
	}
}

func BenchmarkConsume(b *testing.B) {
	l, err := New(Config{Bandwidth: bw(math.MaxUint64, 1, 0), Ops: bw(math.MaxUint64, 1, 0)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.ReportAllocs()
	for b.Loop() {
		if !l.Consume(1500) {
			b.Fatal("refused")
		}
	}
}

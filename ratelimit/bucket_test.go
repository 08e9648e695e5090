package ratelimit

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// ceilDiv returns ceil(a*b/c) for values small enough not to overflow.
func ceilDiv(a, b, c uint64) uint64 { return (a*b + c - 1) / c }

func mustBucket(t *testing.T, size, burst, refillMs uint64) bucket {
	t.Helper()
	b := newBucket(&TokenBucketConfig{Size: size, OneTimeBurst: burst, RefillTime: refillMs}, 0)
	if !b.on() {
		t.Fatalf("bucket %d/%d+%d is off", size, refillMs, burst)
	}
	return b
}

func TestBucketRefillExact(t *testing.T) {
	// 3 tokens per second: one token every 333,333,333.33 ns.
	b := mustBucket(t, 3, 0, 1000)
	b.take(3)
	if got := b.wait(1); got != 333_333_334 {
		t.Fatalf("wait(1) = %d ns, want 333333334", got)
	}
	b.refill(333_333_333)
	if b.can(1) {
		t.Fatalf("token available after 333333333 ns (budget %d, frac %d)", b.budget, b.frac)
	}
	b.refill(333_333_334)
	if !b.can(1) {
		t.Fatalf("no token after 333333334 ns (budget %d, frac %d)", b.budget, b.frac)
	}
	// Two more tokens at exactly 2/3 s and 1 s, the fraction carried over.
	if got := b.wait(3); got != 1_000_000_000-333_333_334 {
		t.Fatalf("wait(3) = %d, want %d", got, 1_000_000_000-333_333_334)
	}
	b.refill(999_999_999)
	if b.budget != 2 {
		t.Fatalf("budget at 999999999 ns = %d, want 2", b.budget)
	}
	b.refill(1_000_000_000)
	if b.budget != 3 || b.frac != 0 {
		t.Fatalf("budget at 1 s = %d (frac %d), want full 3 and frac 0", b.budget, b.frac)
	}
	// A full bucket does not accrue: an hour later it is still 3.
	b.refill(time.Hour)
	if b.budget != 3 {
		t.Fatalf("budget = %d after an hour, want 3", b.budget)
	}
}

func TestBucketNoDriftManySmallRefills(t *testing.T) {
	// 7 tokens per second, refilled every 12,345 ns and drained greedily:
	// after the initial budget, the tokens obtained must be exactly
	// floor(elapsed*7/1e9), however many refills were involved.
	const (
		size   = 7
		step   = 12_345
		steps  = 1_000_000
		refill = 1_000_000_000
	)
	b := mustBucket(t, size, 0, refill/uint64(time.Millisecond))
	b.take(size)
	var got uint64
	now := time.Duration(0)
	for range steps {
		now += step
		b.refill(now)
		for b.can(1) {
			b.take(1)
			got++
		}
	}
	if want := uint64(steps*step) * size / refill; got != want {
		t.Fatalf("got %d tokens over %v, want exactly %d", got, now, want)
	}
}

func TestBucketBurstFirstNotRefilled(t *testing.T) {
	b := mustBucket(t, 100, 50, 1000)
	b.take(30) // from the burst
	if b.burst != 20 || b.budget != 100 {
		t.Fatalf("after 30: burst %d budget %d, want 20 100", b.burst, b.budget)
	}
	b.take(60) // 20 from the burst, 40 from the budget
	if b.burst != 0 || b.budget != 60 {
		t.Fatalf("after 60: burst %d budget %d, want 0 60", b.burst, b.budget)
	}
	b.refill(time.Hour)
	if b.burst != 0 || b.budget != 100 {
		t.Fatalf("an hour later: burst %d budget %d, want 0 100", b.burst, b.budget)
	}
	// The burst counts towards what a request may take at once.
	c := mustBucket(t, 100, 50, 1000)
	// 151 is oversized once the burst is spent (101 > 100), but the budget
	// is full, so it is allowed too.
	if !c.can(150) || !c.can(151) {
		t.Fatalf("can(150)=%v can(151)=%v, want both true", c.can(150), c.can(151))
	}
	c.take(151)
	if c.burst != 0 || c.budget != 0 || c.debt != 1 {
		t.Fatalf("after 151: burst %d budget %d debt %d, want 0 0 1", c.burst, c.budget, c.debt)
	}
}

func TestBucketOversizedDebt(t *testing.T) {
	// 100 tokens per 100 ms: 1 token per ms.
	b := mustBucket(t, 100, 0, 100)
	b.take(10)
	if b.can(250) {
		t.Fatal("oversized request allowed with a budget that is not full")
	}
	if got, want := b.wait(250), uint64(10*time.Millisecond); got != want {
		t.Fatalf("wait(250) with budget 90 = %d, want %d (until full)", got, want)
	}
	b.refill(10 * time.Millisecond)
	if !b.can(250) {
		t.Fatal("oversized request refused with a full budget")
	}
	b.take(250)
	if b.budget != 0 || b.debt != 150 {
		t.Fatalf("budget %d debt %d, want 0 150", b.budget, b.debt)
	}
	// The next 250 waits for the debt and a full budget: 250 ms, the same
	// long-run rate as if the bucket were big enough.
	if got, want := b.wait(250), uint64(250*time.Millisecond); got != want {
		t.Fatalf("wait(250) in debt = %d, want %d", got, want)
	}
	if got, want := b.wait(1), uint64(151*time.Millisecond); got != want {
		t.Fatalf("wait(1) in debt = %d, want %d", got, want)
	}
	b.refill(160 * time.Millisecond) // 150 ms after the take: the debt is paid
	if b.debt != 0 || b.budget != 0 {
		t.Fatalf("at 160 ms: debt %d budget %d, want 0 0", b.debt, b.budget)
	}
	b.refill(161 * time.Millisecond)
	if b.debt != 0 || b.budget != 1 {
		t.Fatalf("at 161 ms: debt %d budget %d, want 0 1", b.debt, b.budget)
	}
}

func TestBucketExtremeValues(t *testing.T) {
	b := mustBucket(t, math.MaxUint64, math.MaxUint64, MaxRefillTime)
	b.take(math.MaxUint64) // all of the burst
	b.take(math.MaxUint64) // all of the budget
	if b.can(1) {
		t.Fatal("empty bucket can pay")
	}
	if w := b.wait(1); w == 0 || w > uint64(time.Nanosecond) {
		// MaxUint64 tokens per ~292 years: far more than one per ns.
		t.Fatalf("wait(1) = %d, want 1 ns", w)
	}
	b.refill(time.Duration(math.MaxInt64))
	if b.budget != math.MaxUint64 {
		t.Fatalf("budget %d after a whole refill time, want full", b.budget)
	}
	// One token per ~292 years, and a request that goes into maximal debt.
	s := mustBucket(t, 1, 0, MaxRefillTime)
	s.take(math.MaxUint64)
	if s.debt != math.MaxUint64-1 {
		t.Fatalf("debt %d, want MaxUint64-1", s.debt)
	}
	if w := s.wait(1); w != math.MaxUint64 {
		t.Fatalf("wait(1) = %d, want saturated MaxUint64", w)
	}
	s.force(math.MaxUint64)
	if s.debt != math.MaxUint64 {
		t.Fatalf("forced debt %d, want saturated MaxUint64", s.debt)
	}
	s.refill(time.Duration(math.MaxInt64)) // must not panic or overflow
	if s.debt != math.MaxUint64-1 {
		t.Fatalf("debt after one refill time %d, want MaxUint64-1", s.debt)
	}
}

// checkWaitExact verifies that b.wait(n) is exact: after it elapses the
// request can be paid, one nanosecond earlier it cannot.
func checkWaitExact(t testing.TB, b bucket, n uint64) {
	t.Helper()
	w := b.wait(n)
	if (w == 0) != b.can(n) {
		t.Fatalf("wait(%d) = %d but can = %v", n, w, b.can(n))
	}
	if w == 0 || w > math.MaxInt64/4 || uint64(b.last) > math.MaxInt64/4 {
		return
	}
	late, early := b, b
	late.refill(b.last + time.Duration(w))
	if !late.can(n) {
		t.Fatalf("bucket %+v: cannot pay %d after wait %d", b, n, w)
	}
	early.refill(b.last + time.Duration(w-1))
	if early.can(n) {
		t.Fatalf("bucket %+v: pays %d at wait-1 = %d", b, n, w-1)
	}
}

func TestBucketWaitExactRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		size := 1 + r.Uint64N(1<<r.UintN(40))
		refill := 1 + r.Uint64N(1<<r.UintN(20))
		b := mustBucket(t, size, r.Uint64N(size+1), refill)
		now := time.Duration(0)
		for range 50 {
			now += time.Duration(r.Uint64N(2 * refill * nsPerMs / 3))
			b.refill(now)
			n := r.Uint64N(2*size + 1)
			checkWaitExact(t, b, n)
			if b.can(n) {
				b.take(n)
			}
			checkInvariants(t, &b)
		}
	}
}

func checkInvariants(t testing.TB, b *bucket) {
	t.Helper()
	switch {
	case b.budget > b.size:
		t.Fatalf("budget %d > size %d", b.budget, b.size)
	case b.debt > 0 && b.budget != 0:
		t.Fatalf("debt %d with budget %d", b.debt, b.budget)
	case b.budget == b.size && b.frac != 0:
		t.Fatalf("full bucket with frac %d", b.frac)
	case b.frac >= b.refillNs:
		t.Fatalf("frac %d >= refillNs %d", b.frac, b.refillNs)
	}
}

// FuzzBucket drives a bucket with arbitrary configurations, requests and
// clock steps, checking the invariants and that wait is exact.
func FuzzBucket(f *testing.F) {
	f.Add(uint64(1000), uint64(0), uint64(100), []byte{1, 2, 3, 200, 7})
	f.Add(uint64(3), uint64(5), uint64(1000), []byte{9, 0, 255, 1})
	f.Add(uint64(math.MaxUint64), uint64(math.MaxUint64), MaxRefillTime, []byte{255, 255})
	f.Fuzz(func(t *testing.T, size, burst, refillMs uint64, ops []byte) {
		cfg := TokenBucketConfig{Size: size, OneTimeBurst: burst, RefillTime: refillMs % (MaxRefillTime + 1)}
		b := newBucket(&cfg, 0)
		if !b.on() {
			return
		}
		now := time.Duration(0)
		for len(ops) >= 2 {
			step, req := ops[0], ops[1]
			ops = ops[2:]
			// Steps and requests scale with the bucket, from tiny to huge.
			dt := satMul(uint64(step), b.refillNs>>(step%64))
			if dt > math.MaxInt64/8 || now > math.MaxInt64/8 {
				dt = 0
			}
			now += time.Duration(dt)
			b.refill(now)
			n := satMul(uint64(req), max(b.size>>(req%64), 1))
			checkWaitExact(t, b, n)
			if b.can(n) {
				b.take(n)
			} else if req%3 == 0 {
				b.force(n)
			}
			checkInvariants(t, &b)
		}
	})
}

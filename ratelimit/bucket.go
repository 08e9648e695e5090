package ratelimit

import (
	"math"
	"math/bits"
	"time"
)

// bucket is one token bucket. The zero value is an absent bucket.
//
// Invariants: budget <= size; debt > 0 only when budget == 0; frac == 0 when
// budget == size; frac < refillNs.
type bucket struct {
	size     uint64        // capacity in tokens; 0 means absent
	refillNs uint64        // nanoseconds to accrue size tokens
	burst    uint64        // one-time burst left, spent first, never refilled
	budget   uint64        // refillable tokens available
	debt     uint64        // tokens owed by an oversized request
	frac     uint64        // partial token accrued, in units of 1/refillNs token
	last     time.Duration // clock reading accrual was computed up to
}

// newBucket returns a full bucket for c at time now, or an absent bucket if
// c does not limit.
func newBucket(c *TokenBucketConfig, now time.Duration) bucket {
	if !c.enabled() {
		return bucket{}
	}
	return bucket{
		size:     c.Size,
		refillNs: c.RefillTime * nsPerMs, // no overflow: RefillTime <= MaxRefillTime
		burst:    c.OneTimeBurst,
		budget:   c.Size,
		last:     now,
	}
}

// on reports whether the bucket exists (limits).
func (b *bucket) on() bool { return b.size != 0 }

// refill credits the tokens accrued since the last refill. Accrual is exact:
// tokens = (elapsed*size + frac) / refillNs, and the remainder is kept in
// frac for the next refill.
func (b *bucket) refill(now time.Duration) {
	if now <= b.last {
		return
	}
	elapsed := uint64(now - b.last)
	b.last = now
	if b.debt == 0 && b.budget == b.size {
		return // full: nothing accrues (frac is already 0)
	}
	// Whole refill periods accrue exactly size tokens each; this keeps the
	// 128-bit product below in range for Div64. The tokens are counted in
	// 128 bits (thi*2^64 + tokens): a sum saturated at 2^64-1 would credit
	// too few against a large debt.
	thi, tokens := bits.Mul64(elapsed/b.refillNs, b.size)
	elapsed %= b.refillNs
	// elapsed < refillNs and frac < refillNs, so the sum is below
	// refillNs * 2^64 and the quotient fits in 64 bits.
	hi, lo := bits.Mul64(elapsed, b.size)
	lo, carry := bits.Add64(lo, b.frac, 0)
	hi += carry
	q, r := bits.Div64(hi, lo, b.refillNs)
	b.frac = r
	tokens, carry = bits.Add64(tokens, q, 0)
	b.credit(thi+carry, tokens)
}

// credit adds hi*2^64 + lo tokens, paying debt first and capping the
// budget at size.
func (b *bucket) credit(hi, lo uint64) {
	if hi == 0 && lo <= b.debt {
		b.debt -= lo
		return
	}
	lo, borrow := bits.Sub64(lo, b.debt, 0)
	hi -= borrow
	b.debt = 0
	if hi > 0 || lo >= b.size-b.budget {
		b.budget = b.size
		b.frac = 0
		return
	}
	b.budget += lo
}

// need returns how many tokens must be in the budget for a request of n
// tokens: 0 when the burst alone covers it, otherwise the part the burst
// does not cover, capped at size (a larger request needs a full budget).
func (b *bucket) need(n uint64) uint64 {
	if n <= b.burst {
		return 0
	}
	return min(n-b.burst, b.size)
}

// can reports whether take(n) is allowed now (after refill).
func (b *bucket) can(n uint64) bool {
	need := b.need(n)
	return need == 0 || (b.debt == 0 && need <= b.budget)
}

// take spends n tokens: the burst first, then the budget. A request larger
// than size (allowed only with a full budget) empties the budget and leaves
// the excess as debt. The caller has checked can(n).
func (b *bucket) take(n uint64) {
	if n <= b.burst {
		b.burst -= n
		return
	}
	n -= b.burst
	b.burst = 0
	if n > b.size {
		b.budget = 0
		b.debt = n - b.size
		return
	}
	b.budget -= n
}

// force takes n tokens even if can(n) is false: the burst, then the
// budget, and the rest becomes debt.
func (b *bucket) force(n uint64) {
	if b.can(n) {
		b.take(n)
		return
	}
	// can(n) is false: n > burst, and the remainder exceeds the budget (or
	// the budget is 0 because of debt).
	n -= b.burst
	b.burst = 0
	b.debt = satAdd(b.debt, n-b.budget)
	b.budget = 0
}

// wait returns the nanoseconds (rounded up, saturated at MaxUint64) until
// can(n) becomes true, 0 if it is true now. It assumes a refill at the
// current time, so last is now.
func (b *bucket) wait(n uint64) uint64 {
	if b.can(n) {
		return 0
	}
	need := b.need(n)
	// Tokens to accrue: pay the debt, then fill the budget up to need. When
	// debt > 0 the budget is 0; otherwise need > budget. The sum can pass
	// 2^64 (a debt near size and a request of size): deficit is the 65-bit
	// value dhi*2^64 + deficit, not saturated, which would make the wait
	// too short.
	deficit, dhi := bits.Add64(need-b.budget, b.debt, 0)
	// Smallest e with e*size + frac >= deficit*refillNs:
	// e = ceil((deficit*refillNs - frac) / size). deficit >= 1 and
	// frac < refillNs, so the subtraction does not underflow, and
	// hi < 2*refillNs < 2^64 leaves room for the carries.
	hi, lo := bits.Mul64(deficit, b.refillNs)
	hi += dhi * b.refillNs
	lo, borrow := bits.Sub64(lo, b.frac, 0)
	hi -= borrow
	lo, carry := bits.Add64(lo, b.size-1, 0)
	hi += carry
	if hi >= b.size {
		return math.MaxUint64
	}
	e, _ := bits.Div64(hi, lo, b.size)
	return e
}

// satAdd returns a+b, saturated at MaxUint64.
func satAdd(a, b uint64) uint64 {
	s, carry := bits.Add64(a, b, 0)
	if carry != 0 {
		return math.MaxUint64
	}
	return s
}

// satMul returns a*b, saturated at MaxUint64.
func satMul(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 {
		return math.MaxUint64
	}
	return lo
}

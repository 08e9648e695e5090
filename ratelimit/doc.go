// Package ratelimit implements Firecracker-compatible token-bucket rate
// limiters for virtio devices (block, net RX/TX, rng, pmem, serial output).
//
// # Model
//
// A [Limiter] holds up to two token buckets, configured by [Config] (the JSON
// `rate_limiter` object of Firecracker's API):
//
//   - bandwidth: one token per byte;
//   - ops: one token per operation (request, packet, ...).
//
// A bucket ([TokenBucketConfig]) has a capacity `size`, a `refill_time` in
// milliseconds and an optional `one_time_burst`. It starts full. Tokens
// accrue continuously at size/refill_time per unit of time, so an empty
// bucket is full again after refill_time; accrual stops at size. The
// one-time burst is extra credit on top of the capacity: it is spent before
// the refilling budget and never comes back. A bucket whose size or
// refill_time is 0 does not exist, that is, it never limits.
//
// [Limiter.Consume] accounts one operation of n bytes: it takes n tokens from
// the bandwidth bucket and 1 from the ops bucket, from both or from neither.
// When either bucket cannot pay, Consume returns false, the limiter becomes
// blocked and a one-shot timerfd ([Limiter.FD]) is armed for the moment both
// buckets will hold enough tokens for that same operation. The device stops
// processing its queue, polls the fd (epoll), calls [Limiter.Event] when it
// becomes readable and retries the operation. While blocked, Consume always
// returns false, so requests keep their order.
//
// # Arithmetic
//
// Accrual is computed lazily from an injected monotonic clock in exact
// integer arithmetic: the fractional token left over by each refill is kept
// (as a numerator over refill_time in nanoseconds), so many small consumes
// never drift from the exact rate, and the 128-bit intermediate products of
// math/bits cannot overflow for any accepted configuration. Timer durations
// are rounded up to the nanosecond, so a retry when the timer fires succeeds.
//
// # Requests larger than a bucket
//
// Firecracker lets an operation bigger than a bucket's size through and then
// throttles for the excess. Here, once the one-time burst is spent, a request
// for more tokens than size is allowed when the budget is full: the budget is
// drained to zero and the excess is recorded as debt, which refilled tokens
// pay back before the budget grows again. Such a request therefore waits at
// most one refill_time and never blocks forever, and the long-run rate is
// still exactly size per refill_time.
//
// # Use from devices
//
// A nil *Limiter, or one created without buckets, never limits: Consume
// returns true and FD returns -1, so devices can call it unconditionally. A Limiter is not
// safe for concurrent use; it belongs to the goroutine running its device,
// which must also be the one that calls [Limiter.Update] (the API layer hands
// PATCH requests to it). [Limiter.Consume] does not allocate.
//
// [ParseFlag] reads a compact command-line form of a Config, for example
// "bw=10M/100+1M,ops=1000/1000"; see its documentation for the grammar.
package ratelimit

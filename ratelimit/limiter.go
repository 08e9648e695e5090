package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// opTokens is what one operation costs in the ops bucket.
	opTokens = 1
	// timerfdReadSize is the size of a timerfd read: a uint64 count of
	// expirations.
	timerfdReadSize = 8
	// wakeNow is the shortest timer that fires (a zero it_value disarms a
	// timerfd); Update uses it to make a blocked device retry at once.
	wakeNow = time.Nanosecond
	// noFD is what FD returns when there is no timerfd.
	noFD = -1
)

// clockBase anchors the default monotonic clock.
var clockBase = time.Now()

// monotonic is the default clock: time since clockBase on Go's monotonic
// clock, which is CLOCK_MONOTONIC like the timerfd.
func monotonic() time.Duration { return time.Since(clockBase) }

// Errors returned by Update on a Limiter that cannot be updated.
var (
	errNilLimiter    = errors.New("ratelimit: Update on a nil *Limiter")
	errClosedLimiter = errors.New("ratelimit: Update on a closed Limiter")
)

// Limiter is a rate limiter with up to two token buckets (bandwidth and ops)
// and a timerfd that tells its device when to retry. See the package
// documentation for the model. A nil *Limiter never limits.
//
// A Limiter is not safe for concurrent use: it is owned by the goroutine
// running its device.
type Limiter struct {
	bw  bucket // bandwidth: tokens are bytes
	ops bucket // operations: one token each

	blocked   bool
	closed    bool
	fd        int           // timerfd, or noFD
	wait      time.Duration // duration the timer was last armed for
	throttled uint64        // times Consume blocked the limiter

	now  func() time.Duration // monotonic clock, injectable for tests
	spec unix.ItimerSpec      // kept here so arming does not allocate
	buf  [timerfdReadSize]byte
}

// New returns a Limiter for cfg. It creates the timerfd only if cfg
// configures a bucket that limits; otherwise the Limiter never limits and
// FD returns -1. The caller must Close it.
func New(cfg Config) (*Limiter, error) {
	return newWithClock(cfg, monotonic)
}

// newWithClock is New with an injected monotonic clock.
func newWithClock(cfg Config, now func() time.Duration) (*Limiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	l := &Limiter{fd: noFD, now: now}
	t := now()
	l.bw = newBucket(cfg.Bandwidth, t)
	l.ops = newBucket(cfg.Ops, t)
	if err := l.ensureTimer(); err != nil {
		return nil, err
	}
	return l, nil
}

// limited reports whether some bucket exists.
func (l *Limiter) limited() bool { return l.bw.on() || l.ops.on() }

// ensureTimer creates the timerfd if a bucket exists and there is none yet.
func (l *Limiter) ensureTimer() error {
	if l.fd != noFD || !l.limited() {
		return nil
	}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("ratelimit: timerfd_create: %w", err)
	}
	l.fd = fd
	return nil
}

// Consume accounts one operation of the given number of bytes: one token
// from the ops bucket and bytes tokens from the bandwidth bucket, from both
// or from neither. It returns true if the operation may proceed. Otherwise
// the limiter is blocked: the timer is armed for when both buckets will
// hold enough tokens for the same operation, and Consume keeps returning
// false until [Limiter.Event] has consumed the expiration; the device should
// then retry the operation.
//
// Consume does not allocate. If the timer cannot be armed (only possible
// after the fd was closed behind the Limiter's back), Consume fails open and
// lets the operation through rather than stall the device forever.
func (l *Limiter) Consume(bytes uint64) bool {
	if l == nil || !l.limited() {
		return true
	}
	if l.blocked {
		return false
	}
	now := l.now()
	var wait uint64
	if l.bw.on() {
		l.bw.refill(now)
		wait = l.bw.wait(bytes)
	}
	if l.ops.on() {
		l.ops.refill(now)
		wait = max(wait, l.ops.wait(opTokens))
	}
	if wait != 0 {
		d := time.Duration(min(wait, math.MaxInt64))
		if l.arm(d) == nil {
			l.blocked = true
			l.wait = d
			l.throttled++
			return false
		}
		// Fail open: the request becomes debt and later ones wait for it.
		l.force(bytes)
		return true
	}
	if l.bw.on() {
		l.bw.take(bytes)
	}
	if l.ops.on() {
		l.ops.take(opTokens)
	}
	return true
}

// force takes the tokens of an operation that was let through without
// enough of them; what the buckets lack becomes debt.
func (l *Limiter) force(bytes uint64) {
	if l.bw.on() {
		l.bw.force(bytes)
	}
	if l.ops.on() {
		l.ops.force(opTokens)
	}
}

// arm starts the one-shot timer to fire after d (at least wakeNow).
func (l *Limiter) arm(d time.Duration) error {
	if l.fd == noFD {
		return errors.New("ratelimit: no timerfd")
	}
	l.spec = unix.ItimerSpec{Value: unix.NsecToTimespec(int64(max(d, wakeNow)))}
	if err := unix.TimerfdSettime(l.fd, 0, &l.spec, nil); err != nil {
		return fmt.Errorf("ratelimit: timerfd_settime: %w", err)
	}
	return nil
}

// Blocked reports whether the limiter is waiting for its timer: Consume
// returns false until Event has been called after the timer fired.
func (l *Limiter) Blocked() bool {
	return l != nil && l.blocked
}

// RetryAfter returns how long a blocked limiter waits for its timer: the
// duration the timer was armed for when Consume last refused an operation
// (0 if it never did). A goroutine that owns the limiter and has no poll
// loop can sleep that long, then call Event and retry, instead of polling
// FD.
func (l *Limiter) RetryAfter() time.Duration {
	if l == nil {
		return 0
	}
	return l.wait
}

// FD returns the timerfd to poll for readability ("try again"), or -1 if
// the limiter has never had a bucket (it then never blocks). The fd is
// created by New, or by the first Update that adds a bucket, and stays the
// same until Close, even if a later Update removes every bucket.
func (l *Limiter) FD() int {
	if l == nil {
		return noFD
	}
	return l.fd
}

// Event must be called when FD is readable. It consumes the timer's
// expiration and unblocks the limiter; the device should then retry the
// operation that was refused. A spurious call (the timer has not expired)
// is harmless and leaves the state unchanged.
func (l *Limiter) Event() error {
	if l == nil || l.fd == noFD {
		return nil
	}
	for {
		_, err := unix.Read(l.fd, l.buf[:])
		switch {
		case err == nil:
			l.blocked = false
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil
		default:
			// Unblock anyway: a retry re-arms the timer if still needed,
			// while staying blocked could stall the device forever.
			l.blocked = false
			return fmt.Errorf("ratelimit: read timerfd: %w", err)
		}
	}
}

// Update changes the buckets after creation (Firecracker's PATCH): a nil
// bucket in cfg is left unchanged, a bucket with size 0 (or refill_time 0)
// is removed, and any other replaces the current one with a new, full
// bucket (including its one_time_burst). Nothing changes if cfg is invalid.
//
// If the limiter was blocked, its timer is re-armed to fire at once so that
// the device retries under the new buckets. If the update adds the first
// bucket of a limiter that had none, FD changes from -1 to a new timerfd,
// which the device must start polling.
func (l *Limiter) Update(cfg Config) error {
	if l == nil {
		return errNilLimiter
	}
	if l.closed {
		return errClosedLimiter
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("ratelimit: update: %w", err)
	}
	now := l.now()
	bw, ops := l.bw, l.ops
	if cfg.Bandwidth != nil {
		bw = newBucket(cfg.Bandwidth, now)
	}
	if cfg.Ops != nil {
		ops = newBucket(cfg.Ops, now)
	}
	oldBW, oldOps := l.bw, l.ops
	l.bw, l.ops = bw, ops
	if err := l.ensureTimer(); err != nil {
		l.bw, l.ops = oldBW, oldOps
		return fmt.Errorf("ratelimit: update: %w", err)
	}
	if l.blocked {
		if !l.limited() {
			l.blocked = false
		}
		if err := l.arm(wakeNow); err != nil {
			l.blocked = false
			return fmt.Errorf("ratelimit: update: %w", err)
		}
		l.wait = wakeNow
	}
	return nil
}

// Apply is a run-time change of a device's limiter: *l is updated with
// cfg under Update's rules, or created from cfg if the device had none. It
// returns the timerfd the device must start polling, or -1 when the
// limiter's fd did not change. Like the Limiter, it runs on the goroutine
// that owns the device.
func Apply(l **Limiter, cfg Config) (newFD int, err error) {
	oldFD := (*l).FD()
	if *l == nil {
		nl, err := New(cfg)
		if err != nil {
			return noFD, err
		}
		*l = nl
	} else if err := (*l).Update(cfg); err != nil {
		return noFD, err
	}
	if fd := (*l).FD(); fd != oldFD {
		return fd, nil
	}
	return noFD, nil
}

// Throttled returns how many times Consume has refused an operation and
// blocked the limiter (Firecracker's *_throttled metrics count these).
func (l *Limiter) Throttled() uint64 {
	if l == nil {
		return 0
	}
	return l.throttled
}

// Close releases the timerfd. Afterwards the limiter never limits, FD
// returns -1 and Update fails. Close is idempotent.
func (l *Limiter) Close() error {
	if l == nil {
		return nil
	}
	l.closed = true
	l.bw, l.ops = bucket{}, bucket{}
	l.blocked = false
	if l.fd == noFD {
		return nil
	}
	fd := l.fd
	l.fd = noFD
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("ratelimit: close timerfd: %w", err)
	}
	return nil
}

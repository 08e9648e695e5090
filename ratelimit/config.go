package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// nsPerMs converts refill_time (milliseconds) to the nanoseconds the buckets
// count in.
const nsPerMs = uint64(time.Millisecond)

// MaxRefillTime is the largest accepted refill_time, in milliseconds: the
// longest refill whose length in nanoseconds still fits a time.Duration
// (about 292 years). Larger values are rejected by [Config.Validate]. Sizes
// and bursts may be any uint64.
const MaxRefillTime = math.MaxInt64 / nsPerMs

// Field names used in error messages, as in Firecracker's JSON.
const (
	fieldRoot         = "rate_limiter"
	fieldBandwidth    = "bandwidth"
	fieldOps          = "ops"
	fieldSize         = "size"
	fieldOneTimeBurst = "one_time_burst"
	fieldRefillTime   = "refill_time"
)

// TokenBucketConfig is Firecracker's TokenBucket JSON object. A bucket with
// Size 0 or RefillTime 0 is disabled (never limits).
type TokenBucketConfig struct {
	// Size is the capacity of the bucket, in tokens (bytes or operations).
	Size uint64 `json:"size"`
	// OneTimeBurst is extra credit available at start, spent before the
	// refilling budget and never refilled.
	OneTimeBurst uint64 `json:"one_time_burst,omitempty"`
	// RefillTime is the time, in milliseconds, to refill Size tokens into an
	// empty bucket.
	RefillTime uint64 `json:"refill_time"` // milliseconds
}

// Config is Firecracker's rate_limiter JSON object. A nil bucket is absent:
// unlimited at creation, unchanged by [Limiter.Update].
type Config struct {
	// Bandwidth limits bytes: each operation takes as many tokens as bytes.
	Bandwidth *TokenBucketConfig `json:"bandwidth,omitempty"`
	// Ops limits operations: each operation takes one token.
	Ops *TokenBucketConfig `json:"ops,omitempty"`
}

// enabled reports whether c describes a bucket that limits.
func (c *TokenBucketConfig) enabled() bool {
	return c != nil && c.Size != 0 && c.RefillTime != 0
}

// validate checks one bucket; name is the JSON path used in errors.
func (c *TokenBucketConfig) validate(name string) error {
	if c == nil {
		return nil
	}
	if c.RefillTime > MaxRefillTime {
		return fmt.Errorf("%s.%s: %d ms is too large (at most %d ms)",
			name, fieldRefillTime, c.RefillTime, MaxRefillTime)
	}
	return nil
}

// Validate reports whether c can be used by [New] and [Limiter.Update].
// Errors name the offending field, for example
// "rate_limiter.bandwidth.refill_time: ...". Buckets with size or
// refill_time 0 are valid: they mean "no limit" (or "remove" in an update),
// as in Firecracker.
func (c Config) Validate() error {
	return errors.Join(
		c.Bandwidth.validate(fieldRoot+"."+fieldBandwidth),
		c.Ops.validate(fieldRoot+"."+fieldOps),
	)
}

// Flag syntax.
const (
	flagNone        = "none" // explicit "no limit"
	flagSep         = ","    // between buckets
	flagAssign      = "="    // between kind and value
	flagRefillSep   = "/"    // between size and refill time
	flagBurstSep    = "+"    // before the one-time burst
	flagBandwidth   = "bw"
	flagBandwidthLn = "bandwidth"
	flagOps         = "ops"
)

// Binary multipliers accepted after sizes and bursts in the flag form.
var flagSuffixes = [...]struct {
	suffix string
	mult   uint64
}{
	{"K", 1 << 10},
	{"M", 1 << 20},
	{"G", 1 << 30},
	{"T", 1 << 40},
}

// ParseFlag parses the compact command-line form of a Config:
//
//	flag   = "" | "none" | bucket { "," bucket }
//	bucket = kind "=" amount "/" refill [ "+" amount ]
//	kind   = "bw" | "bandwidth" | "ops"
//	amount = decimal [ "K" | "M" | "G" | "T" ]   (binary multiples: K = 1024)
//	refill = decimal                              (milliseconds)
//
// For each bucket, the first amount is its size, refill its refill_time and
// the optional second amount its one_time_burst. Each kind may appear once;
// spaces around items are ignored; suffixes are case-insensitive. The empty
// string and "none" mean no limit. Size and refill_time must be nonzero (omit
// the bucket instead). Examples:
//
//	bw=10485760/100            10 MiB per 100 ms (100 MiB/s)
//	bw=10M/100+50M,ops=1000/1000
//	ops=200/1000+1000          200 operations/s, plus 1000 at start
func ParseFlag(s string) (Config, error) {
	var cfg Config
	trimmed := strings.TrimSpace(s)
	if trimmed == "" || strings.EqualFold(trimmed, flagNone) {
		return cfg, nil
	}
	for item := range strings.SplitSeq(trimmed, flagSep) {
		item = strings.TrimSpace(item)
		if err := parseFlagBucket(&cfg, item); err != nil {
			return Config{}, fmt.Errorf("rate limiter %q: %w", s, err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("rate limiter %q: %w", s, err)
	}
	return cfg, nil
}

// parseFlagBucket parses one "kind=size/refill[+burst]" item into cfg.
func parseFlagBucket(cfg *Config, item string) error {
	if item == "" {
		return errors.New("empty bucket (stray comma?)")
	}
	kind, value, ok := strings.Cut(item, flagAssign)
	if !ok {
		return fmt.Errorf("bucket %q: want kind=size/refill_ms[+burst]", item)
	}
	kind = strings.ToLower(strings.TrimSpace(kind))
	var slot **TokenBucketConfig
	switch kind {
	case flagBandwidth, flagBandwidthLn:
		kind, slot = flagBandwidth, &cfg.Bandwidth
	case flagOps:
		slot = &cfg.Ops
	default:
		return fmt.Errorf("bucket %q: unknown kind %q (want %q or %q)", item, kind, flagBandwidth, flagOps)
	}
	if *slot != nil {
		return fmt.Errorf("bucket %q: %s given twice", item, kind)
	}
	sizeStr, rest, ok := strings.Cut(value, flagRefillSep)
	if !ok {
		return fmt.Errorf("%s: %q: want size/refill_ms[+burst]", kind, value)
	}
	refillStr, burstStr, hasBurst := strings.Cut(rest, flagBurstSep)
	var b TokenBucketConfig
	var err error
	if b.Size, err = parseAmount(sizeStr, true); err != nil {
		return fmt.Errorf("%s: %s: %w", kind, fieldSize, err)
	}
	if b.Size == 0 {
		return fmt.Errorf("%s: %s must be nonzero (omit the bucket for no limit)", kind, fieldSize)
	}
	if b.RefillTime, err = parseAmount(refillStr, false); err != nil {
		return fmt.Errorf("%s: %s: %w", kind, fieldRefillTime, err)
	}
	if b.RefillTime == 0 {
		return fmt.Errorf("%s: %s must be nonzero (omit the bucket for no limit)", kind, fieldRefillTime)
	}
	if hasBurst {
		if b.OneTimeBurst, err = parseAmount(burstStr, true); err != nil {
			return fmt.Errorf("%s: %s: %w", kind, fieldOneTimeBurst, err)
		}
	}
	*slot = &b
	return nil
}

// errNotNumber is wrapped by parseAmount's syntax errors.
var errNotNumber = errors.New("not a decimal number")

// parseAmount parses a decimal uint64, with a binary multiplier suffix if
// suffixOK.
func parseAmount(s string, suffixOK bool) (uint64, error) {
	s = strings.TrimSpace(s)
	mult := uint64(1)
	if suffixOK {
		for _, sf := range flagSuffixes {
			if len(s) > len(sf.suffix) && strings.EqualFold(s[len(s)-len(sf.suffix):], sf.suffix) {
				s, mult = s[:len(s)-len(sf.suffix)], sf.mult
				break
			}
		}
	}
	if s == "" {
		return 0, fmt.Errorf("missing number: %w", errNotNumber)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q: %w", s, errNotNumber)
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: too large: %w", s, strconv.ErrRange)
	}
	if n > math.MaxUint64/mult {
		return 0, fmt.Errorf("%q times %d overflows: %w", s, mult, strconv.ErrRange)
	}
	return n * mult, nil
}

// String formats c in the form ParseFlag reads ("none" when c has no
// bucket). Disabled buckets are printed as they are (size or refill 0), which
// ParseFlag rejects.
func (c Config) String() string {
	var sb strings.Builder
	add := func(kind string, b *TokenBucketConfig) {
		if b == nil {
			return
		}
		if sb.Len() > 0 {
			sb.WriteString(flagSep)
		}
		sb.WriteString(kind)
		sb.WriteString(flagAssign)
		sb.WriteString(strconv.FormatUint(b.Size, 10))
		sb.WriteString(flagRefillSep)
		sb.WriteString(strconv.FormatUint(b.RefillTime, 10))
		if b.OneTimeBurst != 0 {
			sb.WriteString(flagBurstSep)
			sb.WriteString(strconv.FormatUint(b.OneTimeBurst, 10))
		}
	}
	add(flagBandwidth, c.Bandwidth)
	add(flagOps, c.Ops)
	if sb.Len() == 0 {
		return flagNone
	}
	return sb.String()
}

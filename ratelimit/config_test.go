package ratelimit

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestConfigJSON(t *testing.T) {
	// Firecracker's rate_limiter object.
	const in = `{"bandwidth":{"size":10485760,"one_time_burst":104857600,"refill_time":100},` +
		`"ops":{"size":1000,"refill_time":1000}}`
	var c Config
	if err := json.Unmarshal([]byte(in), &c); err != nil {
		t.Fatal(err)
	}
	want := Config{Bandwidth: bw(10485760, 100, 104857600), Ops: bw(1000, 1000, 0)}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %v, want %v", c, want)
	}
	out, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Fatalf("marshal: got %s, want %s", out, in)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		errs []string // substrings; none means valid
	}{
		{Config{}, nil},
		{Config{Bandwidth: bw(0, 0, 0), Ops: bw(0, 100, 10)}, nil}, // disabled buckets
		{Config{Bandwidth: bw(1<<64-1, MaxRefillTime, 1<<64-1)}, nil},
		{Config{Bandwidth: bw(1, MaxRefillTime+1, 0)}, []string{
			"rate_limiter.bandwidth.refill_time: " + strconv.FormatUint(MaxRefillTime+1, 10) + " ms is too large"}},
		{Config{Ops: bw(1, 1<<64-1, 0)}, []string{"rate_limiter.ops.refill_time: "}},
		{Config{Bandwidth: bw(1, 1<<64-1, 0), Ops: bw(1, 1<<64-1, 0)}, []string{
			"rate_limiter.bandwidth.refill_time", "rate_limiter.ops.refill_time"}},
	} {
		err := c.cfg.Validate()
		if len(c.errs) == 0 {
			if err != nil {
				t.Errorf("Validate(%v) = %v, want nil", c.cfg, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("Validate(%v) = nil, want %q", c.cfg, c.errs)
			continue
		}
		for _, sub := range c.errs {
			if !strings.Contains(err.Error(), sub) {
				t.Errorf("Validate(%v) = %q, want it to contain %q", c.cfg, err, sub)
			}
		}
	}
	if _, err := New(Config{Ops: bw(1, MaxRefillTime+1, 0)}); err == nil ||
		!strings.Contains(err.Error(), "rate_limiter.ops.refill_time") {
		t.Fatalf("New with an invalid config: %v", err)
	}
}

func TestParseFlag(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Config
	}{
		{"", Config{}},
		{" none ", Config{}},
		{"NONE", Config{}},
		{"bw=10485760/100", Config{Bandwidth: bw(10485760, 100, 0)}},
		{"bw=10M/100+1M,ops=1000/1000", Config{Bandwidth: bw(10<<20, 100, 1<<20), Ops: bw(1000, 1000, 0)}},
		{"ops=200/1000+1000", Config{Ops: bw(200, 1000, 1000)}},
		{" ops = 5k / 10 , bandwidth=1g/1000+2T ", Config{Ops: bw(5<<10, 10, 0), Bandwidth: bw(1<<30, 1000, 2<<40)}},
		{"bw=18446744073709551615/" + strconv.FormatUint(MaxRefillTime, 10), Config{Bandwidth: bw(1<<64-1, MaxRefillTime, 0)}},
		{"bw=1/1+0", Config{Bandwidth: bw(1, 1, 0)}},
	} {
		got, err := ParseFlag(c.in)
		if err != nil {
			t.Errorf("ParseFlag(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseFlag(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParseFlagErrors(t *testing.T) {
	for _, c := range []struct {
		in, want string
		is       error
	}{
		{"bw", `bucket "bw": want kind=size/refill_ms[+burst]`, nil},
		{"bw=100", `bw: "100": want size/refill_ms[+burst]`, nil},
		{"iops=1/1", `unknown kind "iops"`, nil},
		{"bw=1/1,bandwidth=2/2", "bw given twice", nil},
		{"bw=1/1,", "empty bucket", nil},
		{",ops=1/1", "empty bucket", nil},
		{"bw=x/100", `bw: size: "x": not a decimal number`, errNotNumber},
		{"bw=-1/100", `bw: size: "-1": not a decimal number`, errNotNumber},
		{"bw=/100", "bw: size: missing number", errNotNumber},
		{"bw=K/100", `bw: size: "K": not a decimal number`, errNotNumber},
		{"bw=0/100", "bw: size must be nonzero", nil},
		{"ops=1/0", "ops: refill_time must be nonzero", nil},
		{"ops=1/1M", `ops: refill_time: "1M": not a decimal number`, errNotNumber},
		{"ops=1/1.5", `ops: refill_time: "1.5": not a decimal number`, errNotNumber},
		{"bw=1/1+", "bw: one_time_burst: missing number", errNotNumber},
		{"bw=1/1+2+3", `bw: one_time_burst: "2+3": not a decimal number`, errNotNumber},
		{"bw=18446744073709551616/1", `bw: size: "18446744073709551616": too large`, strconv.ErrRange},
		{"bw=17179869184G/1", `bw: size: "17179869184" times 1073741824 overflows`, strconv.ErrRange},
		{"bw=1/" + strconv.FormatUint(MaxRefillTime+1, 10), "rate_limiter.bandwidth.refill_time: ", nil},
	} {
		_, err := ParseFlag(c.in)
		if err == nil {
			t.Errorf("ParseFlag(%q) succeeded, want error %q", c.in, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), fmt.Sprintf("rate limiter %q: ", c.in)) {
			t.Errorf("ParseFlag(%q) = %q, want it to contain %q", c.in, err, c.want)
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("ParseFlag(%q) = %q, want it to wrap %v", c.in, err, c.is)
		}
	}
}

func TestConfigString(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "none"},
		{Config{Ops: bw(1000, 1000, 0)}, "ops=1000/1000"},
		{Config{Bandwidth: bw(10<<20, 100, 5), Ops: bw(1, 2, 0)}, "bw=10485760/100+5,ops=1/2"},
	} {
		if got := c.cfg.String(); got != c.want {
			t.Errorf("%#v.String() = %q, want %q", c.cfg, got, c.want)
		}
	}
}

func FuzzParseFlag(f *testing.F) {
	for _, s := range []string{
		"", "none", "bw=10485760/100", "bw=10M/100+1M,ops=1000/1000", "ops=200/1000+1000",
		" ops = 5k / 10 , bandwidth=1g/1000+2T ", "bw=x/1", "bw=1/1,bw=1/1", "bw=0/0", ",",
		"bw=18446744073709551615/9223372036854", "bw=17179869184G/1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := ParseFlag(s)
		if err != nil {
			if !reflect.DeepEqual(cfg, Config{}) {
				t.Fatalf("ParseFlag(%q) returned %v with error %v", s, cfg, err)
			}
			if !strings.HasPrefix(err.Error(), "rate limiter ") {
				t.Fatalf("ParseFlag(%q) error %q lacks context", s, err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("ParseFlag(%q) = %v, which does not validate: %v", s, cfg, err)
		}
		for _, b := range []*TokenBucketConfig{cfg.Bandwidth, cfg.Ops} {
			if b != nil && !b.enabled() {
				t.Fatalf("ParseFlag(%q) gave a disabled bucket %+v", s, *b)
			}
		}
		again, err := ParseFlag(cfg.String())
		if err != nil {
			t.Fatalf("ParseFlag(%q).String() = %q does not parse: %v", s, cfg.String(), err)
		}
		if !reflect.DeepEqual(again, cfg) {
			t.Fatalf("round trip of %q: %v then %v", s, cfg, again)
		}
		// The parsed buckets must be usable with extreme requests.
		clk := &fakeClock{}
		l, err := newWithClock(cfg, clk.now)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		for _, n := range []uint64{0, 1, 1 << 20, 1<<64 - 1} {
			if !l.Consume(n) {
				clk.t += min(l.wait, time.Hour)
				l.blocked = false
			}
		}
	})
}

func ExampleParseFlag() {
	cfg, err := ParseFlag("bw=10M/100+50M,ops=1000/1000")
	if err != nil {
		fmt.Println(err)
		return
	}
	js, _ := json.Marshal(cfg)
	fmt.Println(string(js))
	_, err = ParseFlag("bw=10M,ops=1000/1000")
	fmt.Println(err)
	// Output:
	// {"bandwidth":{"size":10485760,"one_time_burst":52428800,"refill_time":100},"ops":{"size":1000,"refill_time":1000}}
	// rate limiter "bw=10M,ops=1000/1000": bw: "10M": want size/refill_ms[+burst]
}

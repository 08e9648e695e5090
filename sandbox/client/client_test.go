package client

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"5", 5 * time.Second, true},
		{" 12 ", 12 * time.Second, true},
		{"0", 0, true},
		{"-1", 0, false},
		{"", 0, false},
		{"soon", 0, false},
		{"99999999999", 0, false},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
	} {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestExhausted(t *testing.T) {
	err := fmt.Errorf("create: %w", &APIError{Status: http.StatusTooManyRequests, Message: "memory budget exhausted", Budget: "memory", RetryAfter: 3 * time.Second})
	if b, d, ok := Exhausted(err); !ok || b != "memory" || d != 3*time.Second {
		t.Errorf("Exhausted(429) = %q, %v, %v", b, d, ok)
	}
	for _, err := range []error{nil, errors.New("x"), &APIError{Status: http.StatusConflict}} {
		if _, _, ok := Exhausted(err); ok {
			t.Errorf("Exhausted(%v) = true", err)
		}
	}
}

// FuzzParseRetryAfter: a header emberd (or a proxy) sends never panics
// the client and never yields a negative or unbounded wait.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"5", "0", "-3", "Wed, 21 Oct 2015 07:28:00 GMT", "", "1e9"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseRetryAfter(s, now)
		if ok && (d < 0 || d > maxRetryAfter*time.Second) {
			t.Fatalf("parseRetryAfter(%q) = %v", s, d)
		}
		if !ok && d != 0 {
			t.Fatalf("parseRetryAfter(%q) = %v but not ok", s, d)
		}
	})
}

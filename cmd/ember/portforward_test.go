package main

import "testing"

func TestParseForward(t *testing.T) {
	for _, c := range []struct {
		in, listen string
		port       int
	}{
		{"8000", "127.0.0.1:8000", 8000},
		{"9000:8000", "127.0.0.1:9000", 8000},
		{"0:80", "127.0.0.1:0", 80},
		{"0.0.0.0:9000:8000", "0.0.0.0:9000", 8000},
	} {
		listen, port, err := parseForward(c.in)
		if err != nil || listen != c.listen || port != c.port {
			t.Errorf("parseForward(%q) = %q, %d, %v; want %q, %d", c.in, listen, port, err, c.listen, c.port)
		}
	}
	for _, bad := range []string{"", "x", "0", "70000", "x:80", "a:b:c:d", "1:2:x"} {
		if _, _, err := parseForward(bad); err == nil {
			t.Errorf("parseForward(%q): no error", bad)
		}
	}
}

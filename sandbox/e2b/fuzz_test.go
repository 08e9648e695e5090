package e2b

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzListQuery: any query either parses or is refused with an error
// naming a parameter; a parsed one has a limit in range.
func FuzzListQuery(f *testing.F) {
	for _, s := range []string{"", "metadata=team%3Da", "state=running,paused&limit=2&order=asc", "nextToken=abc", "startedAfter=2024-01-01T00:00:00Z", "limit=0", "metadata=%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		lq, err := parseListQuery(q, true)
		if err != nil {
			if !strings.Contains(err.Error(), ":") {
				t.Fatalf("error %q names no parameter", err)
			}
			return
		}
		if lq.limit < 1 || lq.limit > maxListLimit || len(lq.states) == 0 {
			t.Fatalf("parsed %q into %+v", raw, lq)
		}
	})
}

// FuzzSandboxOf: any host and header give an ID with no dot and a port
// in range, or none.
func FuzzSandboxOf(f *testing.F) {
	for _, s := range []string{"49983-sb-abc.example.com", "127.0.0.1:3000", "8000-x.y:80", "-.", "0-a.b", "99999-a.b"} {
		f.Add(s, "")
	}
	f.Add("", "sb-1")
	f.Fuzz(func(t *testing.T, host, header string) {
		r := &http.Request{Host: host, Header: http.Header{}}
		if header != "" {
			r.Header.Set(headerSandboxID, header)
		}
		id, port := SandboxOf(r)
		if header == "" && strings.Contains(id, ".") {
			t.Fatalf("host %q gave ID %q", host, id)
		}
		if port <= 0 || port > 65535 {
			if r.Header.Get(headerSandboxPort) == "" {
				t.Fatalf("host %q gave port %d", host, port)
			}
		}
	})
}

// FuzzMessages: envd's messages and E2B's create body decode or fail
// cleanly, and what decodes encodes again.
func FuzzMessages(f *testing.F) {
	for _, s := range []string{`{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"]},"stdin":false}`,
		`{"process":{"pid":1},"signal":"SIGNAL_SIGKILL"}`, `{"process":{"tag":"x"},"signal":15}`, `{"signal":"SIGHUP"}`,
		`{"templateID":"t","timeout":10,"metadata":{"a":"b"},"autoResume":{"enabled":false}}`, `{"path":"/x","depth":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c jsonCodec
		for _, v := range []any{&StartRequest{}, &SendSignalRequest{}, &SendInputRequest{}, &ListDirRequest{}, &WatchDirRequest{}, &UpdateRequest{}, &newSandbox{}, &timeoutBody{}} {
			if err := c.Unmarshal(data, v); err != nil {
				continue
			}
			if _, err := json.Marshal(v); err != nil {
				t.Fatalf("%T decoded from %q does not encode: %v", v, data, err)
			}
		}
	})
}

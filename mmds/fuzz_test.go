package mmds

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzServiceRequest feeds the guest-facing handler whatever net/http
// parses out of arbitrary bytes (what a guest can send over its TCP
// connection): it must answer one of Firecracker's status codes, with a
// body bounded by the store and the request, and never panic.
func FuzzServiceRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /name/first HTTP/1.0\r\nAccept: application/json\r\n\r\n",
		"PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
		"PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: +7\r\nX-Forwarded-For: a\r\n\r\n",
		"GET /phones/home/ HTTP/1.1\r\nX-metadata-token: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n\r\n",
		"DELETE /a~1b/~0 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
		"GET http://169.254.169.254//phones//0 HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	services := []*Service{newService(f, V1, false), newService(f, V2, false), newService(f, V2, true)}
	storeLen := len(services[0].store.JSON())
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		for _, s := range services {
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			switch w.Code {
			case 200, 400, 401, 404, 405, 501:
			default:
				t.Fatalf("status %d for %q", w.Code, raw)
			}
			if max := storeLen + len(raw) + 256; w.Body.Len() > max {
				t.Fatalf("body of %d bytes (bound %d) for %q", w.Body.Len(), max, raw)
			}
		}
	})
}

// FuzzStore: any two JSON documents as a PUT and a PATCH keep the store
// within its limit and serialised as JSON that parses back to itself.
func FuzzStore(f *testing.F) {
	f.Add([]byte(`{"a":{"b":"c"},"d":[1,2]}`), []byte(`{"a":{"b":null,"x":"y"}}`), "/a")
	f.Add([]byte(`"s"`), []byte(`{"k":{"~":1}}`), "/k/~0")
	f.Fuzz(func(t *testing.T, put, patch []byte, path string) {
		s := NewStore(512)
		pv, err := ParseJSON(put)
		if err != nil {
			return
		}
		before := s.JSON()
		if s.Put(pv) != nil && !bytes.Equal(s.JSON(), before) {
			t.Fatal("a refused PUT changed the store")
		}
		if qv, err := ParseJSON(patch); err == nil {
			before = s.JSON()
			if s.Patch(qv) != nil && !bytes.Equal(s.JSON(), before) {
				t.Fatal("a refused PATCH changed the store")
			}
		}
		out := s.JSON()
		if len(out) > 512 {
			t.Fatalf("store of %d bytes over its limit", len(out))
		}
		back, err := ParseJSON(out)
		if err != nil {
			t.Fatalf("the store's JSON does not parse: %v: %s", err, out)
		}
		if again := AppendJSON(nil, back); !bytes.Equal(again, out) && s.Value() != nil {
			t.Fatalf("serialisation not stable: %s then %s", out, again)
		}
		for _, f := range []Format{FormatIMDS, FormatJSON} {
			if b, err := Lookup(s.Value(), path, f); err == nil && len(b) > len(out) {
				t.Fatalf("lookup of %q gave %d bytes, more than the store's %d", path, len(b), len(out))
			}
		}
	})
}

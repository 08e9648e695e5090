package mmds

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// request sends raw, an HTTP request as the guest writes it, to s.
func request(t testing.TB, s *Service, raw string) *httptest.ResponseRecorder {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func newService(t testing.TB, version string, imdsCompat bool) *Service {
	t.Helper()
	store := NewStore(0)
	if err := store.Put(mustParse(t, `{"name":{"first":"John","second":"Doe"},"age":43,
		"phones":{"home":{"RO":"+401234567","UK":"+441234567"},"mobile":"+442345678"}}`)); err != nil {
		t.Fatal(err)
	}
	s, err := NewService(store, Config{NetworkInterfaces: []string{"eth0"}, Version: version, IMDSCompat: imdsCompat}, "vm")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func check(t *testing.T, w *httptest.ResponseRecorder, status int, ctype, body string) {
	t.Helper()
	if w.Code != status || w.Header().Get("Content-Type") != ctype || w.Body.String() != body {
		t.Errorf("got %d %s %q; want %d %s %q", w.Code, w.Header().Get("Content-Type"), w.Body.String(), status, ctype, body)
	}
}

func getToken(t *testing.T, s *Service, ttl string) string {
	t.Helper()
	w := request(t, s, "PUT http://169.254.169.254/latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: "+ttl+"\r\n\r\n")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/plain" || w.Header().Get("X-Metadata-Token-Ttl-Seconds") != ttl {
		t.Fatalf("token: %d %v %q", w.Code, w.Header(), w.Body)
	}
	return w.Body.String()
}

// TestServiceV1: GETs answer without a token; missing and invalid tokens
// are counted; Accept picks JSON; other methods get 405.
func TestServiceV1(t *testing.T) {
	s := newService(t, V1, false)
	check(t, request(t, s, "GET http://169.254.169.254/ HTTP/1.0\r\n\r\n"), 200, "text/plain", "age\nname/\nphones/")
	check(t, request(t, s, "GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"), 200, "text/plain", "age\nname/\nphones/")
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\n\r\n"), 200, "text/plain", "John")
	check(t, request(t, s, "GET /phones HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n"), 200, "application/json",
		`{"home":{"RO":"+401234567","UK":"+441234567"},"mobile":"+442345678"}`)
	check(t, request(t, s, "GET /age HTTP/1.1\r\nHost: x\r\n\r\n"), 501, "text/plain", "Cannot retrieve value. The value has an unsupported type.")
	check(t, request(t, s, "GET /invalid HTTP/1.1\r\nHost: x\r\n\r\n"), 404, "text/plain", "Resource not found: /invalid.")
	if n, i := s.Metrics.RxNoToken.Load(), s.Metrics.RxInvalidToken.Load(); n != 6 || i != 0 {
		t.Errorf("rx_no_token %d rx_invalid_token %d, want 6 0", n, i)
	}
	tok := getToken(t, s, "60")
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\nX-metadata-token: "+tok+"\r\n\r\n"), 200, "text/plain", "John")
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\nX-metadata-token: INVALID\r\n\r\n"), 200, "text/plain", "John")
	if n, i := s.Metrics.RxNoToken.Load(), s.Metrics.RxInvalidToken.Load(); n != 6 || i != 1 {
		t.Errorf("rx_no_token %d rx_invalid_token %d, want 6 1", n, i)
	}
	w := request(t, s, "PATCH / HTTP/1.1\r\nHost: x\r\n\r\n")
	check(t, w, 405, "text/plain", "Not allowed HTTP method.")
	if w.Header().Get("Allow") != "GET, PUT" {
		t.Errorf("Allow: %q", w.Header().Get("Allow"))
	}
}

// TestServiceV2: GETs need a valid token; token requests with
// Firecracker's checks.
func TestServiceV2(t *testing.T) {
	s := newService(t, V2, false)
	var now time.Duration
	s.tokens.now = func() time.Duration { return now }
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\n\r\n"), 401, "text/plain", msgNoToken)
	tok := getToken(t, s, "5")
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\nX-metadata-token: "+tok+"\r\n\r\n"), 200, "text/plain", "John")
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\nx-aws-ec2-metadata-token: "+tok+"\r\n\r\n"), 200, "text/plain", "John")
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\nX-metadata-token: INVALID_TOKEN\r\n\r\n"), 401, "text/plain", msgInvalidToken)
	now = 5 * time.Second
	check(t, request(t, s, "GET /name/first HTTP/1.1\r\nHost: x\r\nX-metadata-token: "+tok+"\r\n\r\n"), 401, "text/plain", msgInvalidToken)
	if n, i := s.Metrics.RxNoToken.Load(), s.Metrics.RxInvalidToken.Load(); n != 1 || i != 2 {
		t.Errorf("rx_no_token %d rx_invalid_token %d, want 1 2", n, i)
	}

	w := request(t, s, "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
	if w.Code != 200 || w.Header().Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") != "60" {
		t.Errorf("aws ttl header: %d %v", w.Code, w.Header())
	}
	for _, tc := range []struct{ req, body string }{
		{"PUT /latest/api/token HTTP/1.0\r\nX-Forwarded-For: 203.0.113.195\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
			"Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For"},
		{"PUT /latest/api/token HTTP/1.0\r\nx-fOrWaRdEd-FoR: 1.2.3.4\r\n\r\n",
			"Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For"},
		{"PUT /latest/api/token HTTP/1.0\r\n\r\n", msgNoTTL},
		{"PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: application/json\r\n\r\n",
			"Invalid header. Reason: Invalid value. Key:X-Metadata-Token-Ttl-Seconds; Value:application/json"},
		{"PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n",
			"Invalid time to live value provided for token: 0. Please provide a value between 1 and 21600."},
		{"PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n",
			"Invalid time to live value provided for token: 21601. Please provide a value between 1 and 21600."},
	} {
		check(t, request(t, s, tc.req), 400, "text/plain", tc.body)
	}
	check(t, request(t, s, "PUT /token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n"), 404, "text/plain", "Resource not found: /token.")
	if w := request(t, s, "PUT //latest//api/token/ HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n"); w.Code != 200 {
		t.Errorf("token path with extra slashes: %d %q", w.Code, w.Body)
	}
}

// TestServiceIMDSCompat: imds_compat answers in the IMDS format whatever
// Accept asks.
func TestServiceIMDSCompat(t *testing.T) {
	s := newService(t, V1, true)
	check(t, request(t, s, "GET /name HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n"), 200, "text/plain", "first\nsecond")
}

package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// harness is a Server on a fake backend, with files to boot from and
// hooks that record their calls.
type harness struct {
	t      *testing.T
	s      *Server
	f      *fakeBackend
	dir    string
	kernel string
	initrd string
	disk   string
	disk2  string

	loggers []Logger
	metrics []Metrics
	flushes int
	counted []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, f: newFake(), dir: t.TempDir()}
	h.kernel = h.file("vmlinux")
	h.initrd = h.file("initrd")
	h.disk = h.file("rootfs.ext4")
	h.disk2 = h.file("data.ext4")
	h.s = New(h.f, Options{
		ID:      "test-vm",
		Version: "1.2.3",
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		ConfigureLogger: func(l Logger) error {
			h.loggers = append(h.loggers, l)
			return nil
		},
		ConfigureMetrics: func(m Metrics) error {
			h.metrics = append(h.metrics, m)
			return nil
		},
		FlushMetrics: func() error {
			h.flushes++
			return nil
		},
		CountRequest: func(method, path string) { h.counted = append(h.counted, method+" "+path) },
	})
	return h
}

// file creates a small file in the harness directory.
func (h *harness) file(name string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// do sends a request to the handler; it returns the status, the fault
// message (for errors) or the body, and the headers.
func (h *harness) do(method, path, body string) (int, string, http.Header) {
	h.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	w := httptest.NewRecorder()
	h.s.Handler().ServeHTTP(w, req)
	if ct := w.Header().Get("Content-Type"); ct != contentTypeJSON {
		h.t.Errorf("%s %s: Content-Type %q, want %q", method, path, ct, contentTypeJSON)
	}
	if w.Code == http.StatusBadRequest {
		var e Error
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.FaultMessage == "" {
			h.t.Fatalf("%s %s: 400 without a fault_message: %q", method, path, w.Body.String())
		}
		return w.Code, e.FaultMessage, w.Header()
	}
	return w.Code, w.Body.String(), w.Header()
}

// ok expects a 204 without a body.
func (h *harness) ok(method, path, body string) {
	h.t.Helper()
	code, msg, _ := h.do(method, path, body)
	if code != http.StatusNoContent || msg != "" {
		h.t.Fatalf("%s %s %s: got %d %q, want 204", method, path, body, code, msg)
	}
}

// get expects a 200 and decodes its JSON into v.
func (h *harness) get(path string, v any) {
	h.t.Helper()
	code, body, _ := h.do(http.MethodGet, path, "")
	if code != http.StatusOK {
		h.t.Fatalf("GET %s: got %d %q, want 200", path, code, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		h.t.Fatalf("GET %s: %v in %q", path, err, body)
	}
}

// fail expects a 400 whose fault_message contains every one of want.
func (h *harness) fail(method, path, body string, want ...string) string {
	h.t.Helper()
	code, msg, _ := h.do(method, path, body)
	if code != http.StatusBadRequest {
		h.t.Fatalf("%s %s %s: got %d %q, want 400", method, path, body, code, msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			h.t.Errorf("%s %s %s: fault %q does not contain %q", method, path, body, msg, w)
		}
	}
	return msg
}

// js marshals v for a request body.
func js(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// boot configures a kernel and starts the fake VM.
func (h *harness) boot() {
	h.t.Helper()
	h.ok("PUT", "/boot-source", js(h.t, BootSource{KernelImagePath: h.kernel}))
	h.ok("PUT", "/actions", `{"action_type": "InstanceStart"}`)
}

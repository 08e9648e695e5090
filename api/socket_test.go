package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// socketDir is a short temporary directory: unix socket paths are limited
// to 107 bytes, which t.TempDir() can exceed.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ember-api")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serve serves s on a new socket in a short directory and returns its
// path; the server is shut down at the end of the test.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	path := filepath.Join(socketDir(t), "api.sock")
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

// unixHTTP is an HTTP client of the socket at path.
func unixHTTP(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestInstanceInfoWhileStartHangs: GET / answers while the VMM is stuck
// in InstanceStart (and holds every other method).
func TestInstanceInfoWhileStartHangs(t *testing.T) {
	f := newFake()
	f.cfg.KernelPath = "/vmlinux"
	f.startGate = make(chan struct{})
	f.startEntered = make(chan struct{})
	entered := f.startEntered
	path := serve(t, New(f, Options{Logger: discardLogger()}))

	slow := unixHTTP(path, 0)
	started := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("PUT", "http://localhost/actions", strings.NewReader(`{"action_type": "InstanceStart"}`))
		resp, err := slow.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				err = fmt.Errorf("InstanceStart: %s", resp.Status)
			}
		}
		started <- err
	}()
	<-entered

	fast := unixHTTP(path, 2*time.Second)
	for range 3 {
		resp, err := fast.Get("http://localhost/")
		if err != nil {
			t.Fatalf("GET / while Start hangs: %v", err)
		}
		var info InstanceInfo
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || info.State != "Not started" {
			t.Fatalf("GET / while Start hangs: %d %+v %v", resp.StatusCode, info, err)
		}
	}
	close(f.startGate)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
}

func TestListenUnix(t *testing.T) {
	dir := socketDir(t)

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("ListenUnix on a file: %v", err)
	}

	// A socket nobody serves any more is replaced.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = ListenUnix(stale)
	if err != nil {
		t.Fatalf("ListenUnix on a stale socket: %v", err)
	}

	// A socket someone serves is not taken over.
	if _, err := ListenUnix(stale); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("ListenUnix on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the socket outlived its listener: %v", err)
	}
}

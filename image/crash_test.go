package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The crash helper process pulls ref into home when these are set.
const (
	crashHomeEnv = "EMBER_IMAGE_TEST_CRASH_HOME"
	crashRefEnv  = "EMBER_IMAGE_TEST_CRASH_REF"
)

// crashWait bounds how long the test waits for the helper to reach the
// stalled blob: a guard against a hang, not a measurement.
const crashWait = 2 * time.Minute

// TestCrashHelper is the process TestCrashLeavesNoVisibleImage kills.
func TestCrashHelper(t *testing.T) {
	home, ref := os.Getenv(crashHomeEnv), os.Getenv(crashRefEnv)
	if home == "" {
		t.Skip("run by TestCrashLeavesNoVisibleImage")
	}
	s := openStore(t, home)
	_, err := s.Pull(context.Background(), ref, PullOptions{})
	t.Fatalf("the pull should have been killed, it returned %v", err)
}

// TestCrashLeavesNoVisibleImage kills (SIGKILL) a process in the middle of
// pulling an image, after its first layer is stored and while its second
// is half read: the store shows no image, prune removes what was left,
// and the next pull works (the dead process's locks are gone).
func TestCrashLeavesNoVisibleImage(t *testing.T) {
	needRoot(t)
	img := testImage(t)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	stallDigest, _ := layers[1].Digest()
	rc, _ := layers[1].Compressed()
	blob, _ := io.ReadAll(rc)
	rc.Close()

	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var stall atomic.Bool
	stall.Store(true)
	reached := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stall.Load() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+stallDigest.String()) {
			// Send half the blob, then hang until the client is gone.
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.WriteHeader(http.StatusOK)
			w.Write(blob[:len(blob)/2])
			w.(http.Flusher).Flush()
			once.Do(func() { close(reached) })
			<-r.Context().Done()
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/crash/app:v1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}

	home := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashHomeEnv+"="+home, crashRefEnv+"="+ref)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-reached:
	case err := <-exited:
		t.Fatalf("helper exited before the stall: %v\n%s", err, out.String())
	case <-time.After(crashWait):
		cmd.Process.Kill()
		t.Fatal("helper never reached the second layer")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited

	s := openStore(t, home)
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("after the crash List = %v, %v; want nothing", list, err)
	}
	if _, err := s.Inspect(ref); !errors.Is(err, ErrNotFound) {
		t.Errorf("after the crash Inspect = %v, want ErrNotFound", err)
	}
	left := storeFiles(t, s)
	if len(left) == 0 {
		t.Fatal("the crash left nothing: the helper did not get as far as the test thinks")
	}
	freed, err := s.Prune()
	if err != nil {
		t.Fatal(err)
	}
	if files := storeFiles(t, s); len(files) != 0 || freed == 0 {
		t.Errorf("prune freed %d bytes of %v and left %v", freed, left, files)
	}

	stall.Store(false)
	got, err := s.Pull(context.Background(), ref, PullOptions{})
	if err != nil {
		t.Fatalf("pull after the crash: %v", err)
	}
	if len(got.Layers) != 2 {
		t.Errorf("pulled %d layers", len(got.Layers))
	}
}

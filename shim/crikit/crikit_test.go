package crikit

import (
	"archive/tar"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestImageThroughRegistry: the app image goes through a local registry
// as containerd pulls it: its config and its busybox layer come back.
func TestImageThroughRegistry(t *testing.T) {
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("no %s: %v", busybox, err)
	}
	img, err := busyboxImage(v1.Config{Cmd: []string{"/bin/sh"}}, map[string]string{"etc/os-release": "ID=" + OSReleaseID + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/"+appRepo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := got.ConfigFile()
	if err != nil || cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.Config.Cmd) != 1 {
		t.Fatalf("config: %+v, %v", cf, err)
	}
	rc := mutate.Extract(got)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = true
	}
	for _, f := range []string{"bin/busybox", "bin/sh", "etc/os-release", "etc/passwd"} {
		if !files[f] {
			t.Errorf("%s missing from the pulled image (has %v)", f, files)
		}
	}
}

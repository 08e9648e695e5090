package vmm

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/mmds"
	vnet "github.com/embervm/ember/virtio/net"
)

// inTestNetns runs f on a thread in a network namespace of the test's own
// (the taps the VMs create go there), or skips the test without root.
func inTestNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (taps, network namespaces)")
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := "embvm-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine, never back in the host's namespace
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		f()
	}()
	<-done
}

// mmdsGet asks v's MMDS for path as the guest would (the handler only: the
// network path has its own tests).
func mmdsGet(v *VM, path string) (int, string) {
	w := httptest.NewRecorder()
	v.mmds.svc.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
	return w.Code, w.Body.String()
}

// TestMMDSSnapshot: the MMDS configuration is in the snapshot and comes
// back with the restore; the data store does not: the restored VM answers
// from the store it is given (its owner's PUT after the load). A VM without
// MMDS has none of it.
func TestMMDSSnapshot(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	cfg.Nets = []vnet.Config{{IfaceID: "eth0", HostDevName: "embmmds0"}}
	cfg.MMDS = &mmds.Config{NetworkInterfaces: []string{"eth0"}, Version: mmds.V2, IPv4Address: "169.254.170.2", IMDSCompat: true}
	cfg.MMDSStore = mmds.NewStore(0)
	src, _ := mmds.ParseJSON([]byte(`{"id":"source"}`))
	cfg.MMDSStore.Put(src)
	cfg.InstanceID = "vm-a"
	dir := t.TempDir()
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	inTestNetns(t, func() {
		a, err := New(cfg)
		if err != nil {
			t.Error(err)
			return
		}
		defer a.Close()
		if a.mmds == nil || len(a.mmds.stacks) != 1 {
			t.Errorf("VM with MMDS: %+v", a.mmds)
			return
		}
		groups := map[string]bool{}
		a.readMetrics(func(g, _ string, _ uint64) { groups[g] = true })
		if !groups["mmds"] {
			t.Error("no mmds metrics group")
		}
		doneA := runAsync(a)
		waitCount(t, a, 0)
		a.Pause()
		if err := a.CreateSnapshot(SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); err != nil {
			t.Error(err)
			return
		}
		a.Stop()
		<-doneA
		a.Close() // frees the tap for the restore

		base, _ := tinyConfig(t, tiny.Image())
		base.MMDSStore = mmds.NewStore(0)
		clone, _ := mmds.ParseJSON([]byte(`{"id":"clone"}`))
		base.MMDSStore.Put(clone)
		b, bcfg, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap, MemFilePath: mem})
		if err != nil {
			t.Error(err)
			return
		}
		defer b.Close()
		if bcfg.MMDS == nil || bcfg.MMDS.Version != mmds.V2 || bcfg.MMDS.IPv4Address != "169.254.170.2" ||
			!bcfg.MMDS.IMDSCompat || len(bcfg.MMDS.NetworkInterfaces) != 1 {
			t.Errorf("restored MMDS configuration %+v", bcfg.MMDS)
		}
		if b.mmds == nil {
			t.Error("restored VM without MMDS")
			return
		}
		// V2 came back: no token, no answer.
		if code, _ := mmdsGet(b, "/id"); code != http.StatusUnauthorized {
			t.Errorf("restored V2 MMDS answered %d without a token", code)
		}
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPut, mmds.TokenPath, nil)
		r.Header.Set("X-metadata-token-ttl-seconds", "60")
		b.mmds.svc.ServeHTTP(w, r)
		r = httptest.NewRequest(http.MethodGet, "/id", nil)
		r.Header.Set("X-metadata-token", w.Body.String())
		w = httptest.NewRecorder()
		b.mmds.svc.ServeHTTP(w, r)
		if w.Code != http.StatusOK || w.Body.String() != "clone" {
			t.Errorf("restored VM answered %d %q, want the clone's own data", w.Code, w.Body)
		}

		plain, _ := tinyConfig(t, tiny.Image())
		plain.Nets = []vnet.Config{{IfaceID: "eth0", HostDevName: "embmmds1"}}
		c, err := New(plain)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		if c.mmds != nil {
			t.Error("a VM without MMDS has an MMDS")
		}
	})
}

func TestMMDSConfigValidate(t *testing.T) {
	cfg := Config{KernelPath: "k", VCPUs: 1, MemMiB: 128,
		Nets: []vnet.Config{{IfaceID: "eth0", HostDevName: "tap0"}},
		MMDS: &mmds.Config{NetworkInterfaces: []string{"eth1"}}}
	if err := cfg.Validate(); err == nil {
		t.Error("an MMDS on a missing interface was accepted")
	}
	cfg.MMDS.NetworkInterfaces = []string{"eth0"}
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
}

package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/virtio/balloon"
	"github.com/embervm/ember/vmm"
)

// backend is a minimal vmm.Backend: a configuration and a state.
type backend struct {
	mu      sync.Mutex
	cfg     vmm.Config
	state   vmm.State
	calls   []string
	balloon balloon.Stats
}

func (b *backend) Pause() error {
	if err := b.record("pause"); err != nil {
		return err
	}
	return b.setState(vmm.StatePaused)
}
func (b *backend) Resume() error {
	if err := b.record("resume"); err != nil {
		return err
	}
	return b.setState(vmm.StateRunning)
}
func (b *backend) CreateSnapshot(p vmm.SnapshotCreate) error {
	return b.record("snapshot " + p.Type + " " + p.SnapshotPath + " " + p.MemFilePath)
}
func (b *backend) LoadSnapshot(p vmm.SnapshotLoad) error {
	b.mu.Lock()
	b.calls = append(b.calls, "load "+p.SnapshotPath+" "+p.MemFilePath)
	b.mu.Unlock()
	return b.setState(vmm.StatePaused)
}

func (b *backend) setState(s vmm.State) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state = s
	return nil
}

func (b *backend) State() vmm.State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *backend) Config() vmm.Config {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.cfg
	c.Drives, c.Nets = slices.Clone(c.Drives), slices.Clone(c.Nets)
	return c
}

func (b *backend) Configure(edit func(*vmm.Config) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != vmm.StateNotStarted {
		return vmm.ErrStarted
	}
	next := b.cfg
	next.Drives, next.Nets = slices.Clone(next.Drives), slices.Clone(next.Nets)
	if err := edit(&next); err != nil {
		return err
	}
	b.cfg = next
	return nil
}

func (b *backend) record(call string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == vmm.StateNotStarted {
		return vmm.ErrNotStarted
	}
	b.calls = append(b.calls, call)
	return nil
}

func (b *backend) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != vmm.StateNotStarted {
		return vmm.ErrStarted
	}
	b.state = vmm.StateRunning
	return nil
}

func (b *backend) SendCtrlAltDel() error                              { return b.record("ctrl-alt-del") }
func (b *backend) UpdateDrive(id string, _ vmm.DriveUpdate) error     { return b.record("drive " + id) }
func (b *backend) UpdateNet(id string, _ vmm.NetUpdate) error         { return b.record("net " + id) }
func (b *backend) SetBalloonTarget(uint32) error                      { return b.record("balloon target") }
func (b *backend) SetBalloonStatsInterval(int) error                  { return b.record("balloon interval") }
func (b *backend) BalloonStats() (balloon.Stats, error)               { return b.balloon, b.record("balloon stats") }
func (b *backend) ReadMetrics(func(group, name string, value uint64)) {}

// serve serves an api.Server for b on a unix socket in a short directory.
func serve(t *testing.T, b vmm.Backend, opts api.Options) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ember-client")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "api.sock")
	ln, err := api.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s := api.New(b, opts)
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

func tempFile(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, make([]byte, 512), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClient(t *testing.T) {
	b := &backend{state: vmm.StateNotStarted, cfg: vmm.Config{VCPUs: 1, MemMiB: 128}}
	var flushed, loggerSet, metricsSet bool
	path := serve(t, b, api.Options{ID: "c1", Version: "9.9",
		ConfigureLogger:  func(api.Logger) error { loggerSet = true; return nil },
		ConfigureMetrics: func(api.Metrics) error { metricsSet = true; return nil },
		FlushMetrics:     func() error { flushed = true; return nil },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitForSocket(ctx, path); err != nil {
		t.Fatal(err)
	}
	c := New(path)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	info, err := c.Describe(ctx)
	must("Describe", err)
	if info.ID != "c1" || info.State != "Not started" || info.VMMVersion != "9.9" {
		t.Errorf("Describe: %+v", info)
	}
	v, err := c.Version(ctx)
	must("Version", err)
	if v != api.FirecrackerAPIVersion {
		t.Errorf("Version: %q", v)
	}
	kernel, disk := tempFile(t, "vmlinux"), tempFile(t, "disk")
	must("PutMachineConfig", c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: api.Ptr(2), MemSizeMiB: api.Ptr(256)}))
	must("PatchMachineConfig", c.PatchMachineConfig(ctx, api.MachineConfiguration{TrackDirtyPages: api.Ptr(true)}))
	mc, err := c.GetMachineConfig(ctx)
	must("GetMachineConfig", err)
	if *mc.VCPUCount != 2 || *mc.MemSizeMiB != 256 || !*mc.TrackDirtyPages {
		t.Errorf("GetMachineConfig: %+v", mc)
	}
	must("PutBootSource", c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel}))
	must("PutDrive", c.PutDrive(ctx, api.Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: disk}))
	must("PutNetworkInterface", c.PutNetworkInterface(ctx, api.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}))
	must("PutVsock", c.PutVsock(ctx, api.Vsock{GuestCID: 3, UDSPath: "/tmp/v.sock"}))
	must("PutMMDSConfig", c.PutMMDSConfig(ctx, api.MmdsConfig{NetworkInterfaces: []string{"eth0"}, Version: api.Ptr("V2")}))
	must("PutMMDS", c.PutMMDS(ctx, map[string]any{"a": map[string]any{"b": "c"}}))
	must("PatchMMDS", c.PatchMMDS(ctx, json.RawMessage(`{"a":{"d":"e"}}`)))
	md, err := c.GetMMDS(ctx)
	must("GetMMDS", err)
	if string(md) != `{"a":{"b":"c","d":"e"}}` {
		t.Errorf("GetMMDS: %s", md)
	}
	if b.cfg.MMDS == nil || b.cfg.MMDS.Version != "V2" {
		t.Errorf("mmds-config %+v", b.cfg.MMDS)
	}
	must("PutEntropy", c.PutEntropy(ctx, api.EntropyDevice{}))
	must("PutBalloon", c.PutBalloon(ctx, api.Balloon{AmountMiB: 16, StatsPollingIntervalS: 1}))
	bl, err := c.GetBalloon(ctx)
	must("GetBalloon", err)
	if bl.AmountMiB != 16 {
		t.Errorf("GetBalloon: %+v", bl)
	}
	must("PutSerial", c.PutSerial(ctx, api.SerialConfig{SerialOutPath: api.Ptr("/tmp/serial")}))
	must("PutCpuConfig", c.PutCpuConfig(ctx, api.CpuConfig{MSRModifiers: []api.MsrModifier{
		{Addr: 0x10a, Bitmap: "0b" + strings.Repeat("x", 63) + "1"}}}))
	must("PutLogger", c.PutLogger(ctx, api.Logger{Level: api.Ptr("Info")}))
	must("PutMetrics", c.PutMetrics(ctx, api.Metrics{MetricsPath: "/tmp/metrics"}))
	if !loggerSet || !metricsSet {
		t.Error("logger or metrics hook not called")
	}
	full, err := c.VMConfig(ctx)
	must("VMConfig", err)
	if len(full.Drives) != 1 || len(full.NetworkInterfaces) != 1 || full.Vsock == nil || full.CPUConfig == nil {
		t.Errorf("VMConfig: %+v", full)
	}

	must("InstanceStart", c.InstanceStart(ctx))
	err = c.InstanceStart(ctx)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest ||
		!strings.Contains(apiErr.FaultMessage, "not supported after starting") {
		t.Errorf("second InstanceStart: %v", err)
	}
	if e, ok := IsAPIError(err); !ok || e != apiErr {
		t.Errorf("IsAPIError: %v %v", e, ok)
	}
	must("PatchDrive", c.PatchDrive(ctx, api.PartialDrive{DriveID: "rootfs", PathOnHost: &disk}))
	must("PatchNetworkInterface", c.PatchNetworkInterface(ctx, api.PartialNetworkInterface{IfaceID: "eth0",
		RxRateLimiter: &api.RateLimiter{Ops: &api.TokenBucket{Size: 10, RefillTime: 100}}}))
	must("PatchBalloon", c.PatchBalloon(ctx, api.BalloonUpdate{AmountMiB: 8}))
	must("PatchBalloonStats", c.PatchBalloonStats(ctx, api.BalloonStatsUpdate{StatsPollingIntervalS: 2}))
	b.balloon.TargetMiB = 8
	st, err := c.GetBalloonStats(ctx)
	must("GetBalloonStats", err)
	if st.TargetMiB != 8 {
		t.Errorf("GetBalloonStats: %+v", st)
	}
	must("SendCtrlAltDel", c.SendCtrlAltDel(ctx))
	must("FlushMetrics", c.FlushMetrics(ctx))
	if !flushed {
		t.Error("FlushMetrics hook not called")
	}
	want := "drive rootfs|net eth0|balloon target|balloon interval|balloon stats|ctrl-alt-del"
	if got := strings.Join(b.calls, "|"); got != want {
		t.Errorf("backend calls %q, want %q", got, want)
	}
	if err := c.PutDrive(ctx, api.Drive{DriveID: "a b"}); err == nil {
		t.Error("PutDrive with a bad id: accepted")
	}
}

func TestAPIErrorWithoutJSON(t *testing.T) {
	dir, err := os.MkdirTemp("", "ember-client")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	_, err = New(path).Describe(context.Background())
	e, ok := IsAPIError(err)
	if !ok || e.Status != http.StatusInternalServerError || e.FaultMessage != "boom" {
		t.Errorf("error %v", err)
	}
}

func TestWaitForSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "ember-client")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "late.sock")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := WaitForSocket(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no socket: %v", err)
	}

	go func() {
		time.Sleep(30 * time.Millisecond)
		ln, err := net.Listen("unix", path)
		if err != nil {
			return
		}
		defer ln.Close()
		time.Sleep(time.Second)
	}()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := WaitForSocket(ctx, path); err != nil {
		t.Errorf("late socket: %v", err)
	}
}

package api

import (
	"fmt"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio/blk"
	"github.com/embervm/ember/vmm"
)

func TestInstanceInfoAndVersion(t *testing.T) {
	h := newHarness(t)
	var info InstanceInfo
	h.get("/", &info)
	want := InstanceInfo{AppName: AppName, ID: "test-vm", State: "Not started", VMMVersion: "1.2.3"}
	if info != want {
		t.Errorf("GET /: %+v, want %+v", info, want)
	}
	var v FirecrackerVersion
	h.get("/version", &v)
	if v.FirecrackerVersion != FirecrackerAPIVersion {
		t.Errorf("GET /version: %+v", v)
	}
	h.boot()
	h.get("/", &info)
	if info.State != string(vmm.StateRunning) {
		t.Errorf("GET / after boot: state %q", info.State)
	}
}

func TestDefaultOptions(t *testing.T) {
	s := New(newFake(), Options{})
	if s.opts.ID != DefaultID || s.opts.MaxPayload != DefaultMaxPayload || s.opts.Version != DefaultVersion {
		t.Errorf("defaults: %+v", s.opts)
	}
}

// TestConfigureAndBoot goes through every pre-boot endpoint, checks the
// VMM configuration they make, boots, and uses every run-time endpoint.
func TestConfigureAndBoot(t *testing.T) {
	h := newHarness(t)
	h.ok("PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256, "smt": true, "track_dirty_pages": true, "huge_pages": "Transparent"}`)
	h.ok("PATCH", "/machine-config", `{"vcpu_count": 4}`)
	h.ok("PUT", "/boot-source", js(t, BootSource{KernelImagePath: h.kernel, InitrdPath: &h.initrd, BootArgs: Ptr("console=ttyS0")}))
	h.ok("PUT", "/drives/rootfs", js(t, Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: h.disk, PartUUID: "abcd",
		RateLimiter: &RateLimiter{Bandwidth: &TokenBucket{Size: 1 << 20, RefillTime: 100}}}))
	h.ok("PUT", "/drives/data", js(t, Drive{DriveID: "data", PathOnHost: h.disk2, IsReadOnly: true, CacheType: CacheTypeWriteback, IOEngine: IOEngineAsync}))
	h.ok("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02", "mtu": 1500,
		"rx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000, "one_time_burst": 10}}}`)
	h.ok("PUT", "/vsock", `{"guest_cid": 3, "uds_path": "/tmp/v.sock"}`)
	h.ok("PUT", "/entropy", `{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}`)
	h.ok("PUT", "/balloon", `{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}`)
	h.ok("PUT", "/serial", `{"serial_out_path": "/tmp/serial.log", "rate_limiter": {"size": 4096, "refill_time": 100}}`)
	h.ok("PUT", "/cpu-config", `{"kvm_capabilities": ["!56"], "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
		"modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx10"}]}],
		"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0000000000000000000000000000000000000000000000000000000000000001"}]}`)
	h.ok("PUT", "/logger", `{"log_path": "/tmp/log", "level": "Debug", "show_level": true}`)
	h.ok("PUT", "/metrics", `{"metrics_path": "/tmp/metrics"}`)

	c := h.f.Config()
	wantCfg := vmm.Config{
		KernelPath: h.kernel, InitrdPath: h.initrd, Cmdline: "console=ttyS0",
		VCPUs: 4, MemMiB: 256, SMT: true, TrackDirtyPages: true, HugePages: vmm.HugePagesTransparent,
		SerialOutPath:      "/tmp/serial.log",
		SerialOutRateLimit: &ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{Size: 4096, RefillTime: 100}},
	}
	got := c
	got.Drives, got.Nets, got.Vsock, got.RNG, got.Balloon, got.CPU = nil, nil, nil, nil, nil, nil
	if !reflect.DeepEqual(got, wantCfg) {
		t.Errorf("config:\n%+v\nwant\n%+v", got, wantCfg)
	}
	wantDrives := []vmm.DriveConfig{
		{Config: blk.Config{ID: "rootfs", Path: h.disk, CacheType: blk.CacheUnsafe,
			RateLimit: &ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{Size: 1 << 20, RefillTime: 100}}},
			Root: true, PartUUID: "abcd"},
		{Config: blk.Config{ID: "data", Path: h.disk2, ReadOnly: true, CacheType: blk.CacheWriteback}},
	}
	if !reflect.DeepEqual(c.Drives, wantDrives) {
		t.Errorf("drives: %+v, want %+v", c.Drives, wantDrives)
	}
	if n := c.Nets; len(n) != 1 || n[0].IfaceID != "eth0" || n[0].HostDevName != "tap0" || n[0].MTU != 1500 ||
		n[0].RxRateLimit.Ops.OneTimeBurst != 10 || n[0].TxRateLimit != nil {
		t.Errorf("nets: %+v", n)
	}
	if c.Vsock.GuestCID != 3 || c.Vsock.UDSPath != "/tmp/v.sock" || c.RNG.RateLimit.Bandwidth.Size != 1000 {
		t.Errorf("vsock %+v rng %+v", c.Vsock, c.RNG)
	}
	if c.Balloon.AmountMiB != 64 || !c.Balloon.DeflateOnOOM || c.Balloon.StatsPollingIntervalS != 1 {
		t.Errorf("balloon %+v", c.Balloon)
	}
	wantCPU := &vmm.CPUConfig{KVMCapabilities: []string{"!56"},
		CPUID: []vmm.CPUIDModifier{{Leaf: 1, Registers: []vmm.RegisterModifier{{Register: "ecx", Mask: 3, Value: 2}}}},
		MSRs:  []vmm.MSRModifier{{Addr: 0x10a, Mask: ^uint64(0), Value: 1}}}
	if !reflect.DeepEqual(c.CPU, wantCPU) {
		t.Errorf("cpu: %+v, want %+v", c.CPU, wantCPU)
	}
	if len(h.loggers) != 1 || *h.loggers[0].Level != "Debug" || len(h.metrics) != 1 || h.metrics[0].MetricsPath != "/tmp/metrics" {
		t.Errorf("hooks: loggers %+v metrics %+v", h.loggers, h.metrics)
	}

	var mc MachineConfiguration
	h.get("/machine-config", &mc)
	if *mc.VCPUCount != 4 || *mc.MemSizeMiB != 256 || !*mc.SMT || *mc.HugePages != HugePagesTransparent || mc.CPUTemplate != nil {
		t.Errorf("GET /machine-config: %s", js(t, mc))
	}
	var b Balloon
	h.get("/balloon", &b)
	if b != (Balloon{AmountMiB: 64, DeflateOnOOM: true, StatsPollingIntervalS: 1}) {
		t.Errorf("GET /balloon: %+v", b)
	}
	var full FullVmConfiguration
	h.get("/vm/config", &full)
	if len(full.Drives) != 2 || full.BootSource.KernelImagePath != h.kernel || full.Logger == nil || full.Metrics == nil ||
		full.CPUConfig == nil || len(full.CPUConfig.Template.MSRModifiers) != 1 {
		t.Errorf("GET /vm/config: %s", js(t, full))
	}

	h.ok("PUT", "/actions", `{"action_type": "InstanceStart"}`)
	if h.f.started != 1 {
		t.Fatalf("Start called %d times", h.f.started)
	}
	h.ok("PATCH", "/drives/data", js(t, PartialDrive{DriveID: "data", PathOnHost: &h.disk}))
	h.ok("PATCH", "/drives/rootfs", `{"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}`)
	h.ok("PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 10, "refill_time": 10}}}`)
	if fmt.Sprint(h.f.driveUpdates, h.f.netUpdates) != "[data rootfs] [eth0]" {
		t.Errorf("updates: %v %v", h.f.driveUpdates, h.f.netUpdates)
	}
	h.ok("PATCH", "/balloon", `{"amount_mib": 100}`)
	if h.f.target != 100 {
		t.Errorf("balloon target %d", h.f.target)
	}
	h.ok("PATCH", "/balloon/statistics", `{"stats_polling_interval_s": 5}`)
	h.f.stats.ActualMiB = 7
	var st BalloonStats
	h.get("/balloon/statistics", &st)
	if st.ActualMiB != 7 {
		t.Errorf("stats %+v", st)
	}
	h.ok("PUT", "/actions", `{"action_type": "SendCtrlAltDel"}`)
	h.ok("PUT", "/actions", `{"action_type": "FlushMetrics"}`)
	if h.f.ctrlAltDel != 1 || h.flushes != 1 {
		t.Errorf("ctrl-alt-del %d, flushes %d", h.f.ctrlAltDel, h.flushes)
	}
	h.get("/machine-config", &mc)
	h.get("/vm/config", &full)
}

func TestCountRequest(t *testing.T) {
	h := newHarness(t)
	h.do("GET", "/", "")
	h.do("PUT", "/drives/x", "")
	h.do("GET", "/nowhere", "")
	h.do("PUT", "/mmds", "{}")
	h.do("OPTIONS", "/", "")
	want := "GET / | PUT /drives/{id} | GET /nowhere | PUT /mmds | OPTIONS /"
	if got := strings.Join(h.counted, " | "); got != want {
		t.Errorf("counted %q, want %q", got, want)
	}
}

func TestDeprecationHeader(t *testing.T) {
	h := newHarness(t)
	for _, c := range []struct {
		path, body string
		deprecated bool
	}{
		{"/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}`, true},
		{"/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`, false},
		{"/vsock", `{"guest_cid": 3, "uds_path": "/v", "vsock_id": "v"}`, true},
		{"/vsock", `{"guest_cid": 3, "uds_path": "/v"}`, false},
	} {
		code, msg, hdr := h.do("PUT", c.path, c.body)
		if code != http.StatusNoContent {
			t.Fatalf("PUT %s: %d %s", c.path, code, msg)
		}
		if got := hdr.Get(headerDeprecation) == "true"; got != c.deprecated {
			t.Errorf("PUT %s %s: deprecated %v, want %v", c.path, c.body, got, c.deprecated)
		}
	}
}

func TestDriveReplaceAndRoot(t *testing.T) {
	h := newHarness(t)
	h.ok("PUT", "/drives/a", js(t, Drive{DriveID: "a", IsRootDevice: true, PathOnHost: h.disk}))
	h.fail("PUT", "/drives/b", js(t, Drive{DriveID: "b", IsRootDevice: true, PathOnHost: h.disk2}),
		`drive "b"`, "root block device already exists", `"a"`)
	// The same id again replaces the drive, root or not.
	h.ok("PUT", "/drives/a", js(t, Drive{DriveID: "a", IsRootDevice: true, PathOnHost: h.disk2}))
	h.ok("PUT", "/drives/a", js(t, Drive{DriveID: "a", PathOnHost: h.disk}))
	h.ok("PUT", "/drives/b", js(t, Drive{DriveID: "b", IsRootDevice: true, PathOnHost: h.disk2}))
	if d := h.f.Config().Drives; len(d) != 2 || d[0].Root || d[0].Path != h.disk || !d[1].Root {
		t.Errorf("drives %+v", d)
	}
}

func TestNetReplaceAndUnique(t *testing.T) {
	h := newHarness(t)
	h.ok("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}`)
	h.fail("PUT", "/network-interfaces/eth1", `{"iface_id": "eth1", "host_dev_name": "tap0"}`,
		"host_dev_name", `"tap0"`, "already used", `"eth0"`)
	h.fail("PUT", "/network-interfaces/eth1", `{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "06:00:00:00:00:01"}`,
		"guest_mac", "already used")
	h.ok("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:02"}`)
	h.ok("PUT", "/network-interfaces/eth1", `{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "06:00:00:00:00:01"}`)
	if n := h.f.Config().Nets; len(n) != 2 {
		t.Errorf("nets %+v", n)
	}
}

func TestDeviceLimit(t *testing.T) {
	h := newHarness(t)
	for i := range vmm.MaxVirtioDevices {
		h.ok("PUT", fmt.Sprintf("/drives/d%d", i), js(t, Drive{DriveID: fmt.Sprintf("d%d", i), PathOnHost: h.disk}))
	}
	h.fail("PUT", "/drives/one_more", js(t, Drive{DriveID: "one_more", PathOnHost: h.disk}), "too many devices")
	h.fail("PUT", "/vsock", `{"guest_cid": 3, "uds_path": "/v"}`, "too many devices")
	// Replacing a drive needs no room.
	h.ok("PUT", "/drives/d0", js(t, Drive{DriveID: "d0", PathOnHost: h.disk2}))
}

func TestMachineConfigDefaultsAndMerge(t *testing.T) {
	h := newHarness(t)
	h.f.cfg = vmm.Config{} // a base configuration without the defaults
	var mc MachineConfiguration
	h.get("/machine-config", &mc)
	if *mc.VCPUCount != vmm.DefaultVCPUs || *mc.MemSizeMiB != vmm.DefaultMemMiB || *mc.HugePages != HugePagesNone {
		t.Errorf("defaults: %s", js(t, mc))
	}
	h.ok("PATCH", "/machine-config", `{"smt": true}`)
	h.ok("PATCH", "/machine-config", `{"vcpu_count": 2}`)
	h.fail("PATCH", "/machine-config", `{"vcpu_count": 3}`, "vcpu_count 3", "SMT")
	h.fail("PATCH", "/machine-config", `{}`, "Empty PATCH request.")
	h.get("/machine-config", &mc)
	if *mc.VCPUCount != 2 || !*mc.SMT || *mc.MemSizeMiB != vmm.DefaultMemMiB {
		t.Errorf("after PATCH: %s", js(t, mc))
	}
	// PUT resets what it does not give.
	h.ok("PUT", "/machine-config", `{"vcpu_count": 3, "mem_size_mib": 512}`)
	h.get("/machine-config", &mc)
	if *mc.VCPUCount != 3 || *mc.SMT || *mc.MemSizeMiB != 512 {
		t.Errorf("after PUT: %s", js(t, mc))
	}
}

func TestBalloonAgainstMemory(t *testing.T) {
	h := newHarness(t)
	h.fail("PUT", "/balloon", `{"amount_mib": 129, "deflate_on_oom": false}`, "amount_mib 129", "mem_size_mib 128")
	h.ok("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 512}`)
	h.ok("PUT", "/balloon", `{"amount_mib": 300, "deflate_on_oom": false}`)
	h.fail("PATCH", "/machine-config", `{"mem_size_mib": 256}`, "mem_size_mib 256", "amount_mib 300")
	// InstanceStart checks again (a backend whose memory changed
	// behind the API's back).
	h.ok("PUT", "/boot-source", js(t, BootSource{KernelImagePath: h.kernel}))
	h.f.cfg.MemMiB = 200
	h.fail("PUT", "/actions", `{"action_type": "InstanceStart"}`, "amount_mib 300")
	h.f.cfg.MemMiB = 512
	h.ok("PUT", "/actions", `{"action_type": "InstanceStart"}`)
	h.fail("PATCH", "/balloon", `{"amount_mib": 513}`, "amount_mib 513")
	h.fail("PATCH", "/balloon/statistics", `{"stats_polling_interval_s": 1}`, msgStatsOnOff)
	h.fail("GET", "/balloon/statistics", "", msgNoStats)
}

func TestNoBalloon(t *testing.T) {
	h := newHarness(t)
	h.fail("GET", "/balloon", "", msgNoBalloon)
	h.boot()
	h.fail("PATCH", "/balloon", `{"amount_mib": 1}`, msgNoBalloon)
	h.fail("GET", "/balloon/statistics", "", msgNoBalloon)
	h.fail("PATCH", "/balloon/statistics", `{"stats_polling_interval_s": 1}`, msgNoBalloon)
}

func TestStartErrors(t *testing.T) {
	h := newHarness(t)
	h.fail("PUT", "/actions", `{"action_type": "InstanceStart"}`, msgNoKernel)
	h.ok("PUT", "/boot-source", js(t, BootSource{KernelImagePath: h.kernel}))
	h.f.startErr = fmt.Errorf("%w: no KVM", vmm.ErrInvalidConfig)
	h.fail("PUT", "/actions", `{"action_type": "InstanceStart"}`, "Start microvm error", "no KVM")
	h.f.startErr = nil
	h.ok("PUT", "/actions", `{"action_type": "InstanceStart"}`)
	h.fail("PUT", "/actions", `{"action_type": "InstanceStart"}`, msgPostBoot)
}

func TestLoggerAndMetricsOnce(t *testing.T) {
	h := newHarness(t)
	h.fail("PUT", "/logger", `{"level": "Loud"}`, `level "Loud"`)
	h.ok("PUT", "/logger", `{"level": "warning"}`)
	h.fail("PUT", "/logger", `{"level": "Info"}`, "Reinitialization of logger not allowed.")
	h.fail("PUT", "/metrics", `{"metrics_path": ""}`, "metrics_path")
	h.ok("PUT", "/metrics", `{"metrics_path": "/m", "emit_id": true, "properties": {"a": "b"}}`)
	h.fail("PUT", "/metrics", `{"metrics_path": "/m"}`, "Reinitialization of metrics not allowed.")
	if len(h.loggers) != 1 || len(h.metrics) != 1 || h.metrics[0].Properties["a"] != "b" || !*h.metrics[0].EmitID {
		t.Errorf("loggers %+v metrics %+v", h.loggers, h.metrics)
	}
}

func TestNoHooks(t *testing.T) {
	f := newFake()
	h := newHarness(t)
	h.s = New(f, Options{Logger: h.s.log})
	h.f = f
	h.fail("PUT", "/logger", `{"level": "Info"}`, "not supported", "logger")
	h.fail("PUT", "/metrics", `{"metrics_path": "/m"}`, "not supported", "metrics")
	h.boot()
	// Firecracker answers 204 when there are no metrics to flush.
	h.ok("PUT", "/actions", `{"action_type": "FlushMetrics"}`)
}

func TestListenUnixLongPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), strings.Repeat("d", MaxSocketPath), "api.sock")
	_, err := ListenUnix(path)
	if err == nil || !strings.Contains(err.Error(), "a unix socket's is at most 107") {
		t.Fatalf("ListenUnix of a %d-byte path: %v", len(path), err)
	}
}

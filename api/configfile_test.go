package api

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/embervm/ember/vmm"
)

// configFile is a Firecracker config file using every supported section.
func (h *harness) configFile() string {
	return fmt.Sprintf(`{
  "boot-source": {"kernel_image_path": %q, "boot_args": "console=ttyS0 reboot=k", "initrd_path": %q},
  "drives": [
    {"drive_id": "rootfs", "path_on_host": %q, "is_root_device": true, "is_read_only": false},
    {"drive_id": "data", "path_on_host": %q, "is_root_device": false, "is_read_only": true,
     "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}
  ],
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false},
  "network-interfaces": [{"iface_id": "eth0", "guest_mac": "AA:FC:00:00:00:01", "host_dev_name": "tap0"}],
  "vsock": {"guest_cid": 3, "uds_path": "/tmp/vsock.sock"},
  "balloon": {"amount_mib": 512, "deflate_on_oom": true, "stats_polling_interval_s": 1},
  "entropy": {},
  "logger": {"log_path": "/tmp/fc.log", "level": "Info"},
  "metrics": {"metrics_path": "/tmp/fc.metrics"},
  "mmds-config": null,
  "pmem": []
}`, h.kernel, h.initrd, h.disk, h.disk2)
}

func TestApplyConfigFile(t *testing.T) {
	h := newHarness(t)
	if err := h.s.ApplyConfigFile([]byte(h.configFile())); err != nil {
		t.Fatal(err)
	}
	c := h.f.Config()
	if c.KernelPath != h.kernel || c.InitrdPath != h.initrd || c.Cmdline != "console=ttyS0 reboot=k" ||
		c.VCPUs != 2 || c.MemMiB != 1024 || len(c.Drives) != 2 || !c.Drives[0].Root || !c.Drives[1].ReadOnly ||
		c.Drives[1].RateLimit.Bandwidth.Size != 1<<20 || len(c.Nets) != 1 || c.Vsock == nil || c.RNG == nil ||
		c.Balloon == nil || c.Balloon.AmountMiB != 512 {
		t.Errorf("config %+v", c)
	}
	if len(h.loggers) != 1 || len(h.metrics) != 1 {
		t.Errorf("hooks: %d loggers, %d metrics", len(h.loggers), len(h.metrics))
	}
	// The logger and metrics count as configured: the API refuses them now.
	h.fail("PUT", "/logger", `{}`, "Reinitialization of logger")
	h.fail("PUT", "/metrics", `{"metrics_path": "/m"}`, "Reinitialization of metrics")

	// GET /vm/config gives back a config file that makes the same
	// configuration.
	var full FullVmConfiguration
	h.get("/vm/config", &full)
	h2 := newHarness(t)
	data, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.s.ApplyConfigFile(data); err != nil {
		t.Fatalf("applying GET /vm/config's answer: %v\n%s", err, data)
	}
	if got := h2.f.Config(); !reflect.DeepEqual(got, c) {
		t.Errorf("round trip:\n%+v\nwant\n%+v", got, c)
	}
}

func TestApplyConfigFileCPUConfig(t *testing.T) {
	h := newHarness(t)
	tmpl := `{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1,
		"modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"}]}]}`
	path := filepath.Join(h.dir, "template.json")
	if err := os.WriteFile(path, []byte(tmpl), 0o600); err != nil {
		t.Fatal(err)
	}
	want := &vmm.CPUConfig{CPUID: []vmm.CPUIDModifier{{Leaf: 7, Flags: 1,
		Registers: []vmm.RegisterModifier{{Register: "ebx", Mask: 1, Value: 0}}}}}
	for _, src := range []string{fmt.Sprintf("%q", path), tmpl} {
		f := newFake()
		file := fmt.Sprintf(`{"boot-source": {"kernel_image_path": %q}, "drives": [], "cpu-config": %s}`, h.kernel, src)
		if err := ApplyConfigFile(f, []byte(file)); err != nil {
			t.Fatalf("cpu-config %s: %v", src, err)
		}
		if got := f.Config().CPU; !reflect.DeepEqual(got, want) {
			t.Errorf("cpu-config %s: %+v, want %+v", src, got, want)
		}
	}
}

func TestApplyConfigFileErrors(t *testing.T) {
	h := newHarness(t)
	good := h.configFile()
	for _, c := range []struct {
		name, file string
		want       []string
	}{
		{"not JSON", `{"drives": [`, []string{"config file:", "EOF"}},
		{"unknown key", strings.Replace(good, `"vsock":`, `"vsocks":`, 1), []string{`unknown field "vsocks"`}},
		{"no boot source", `{"drives": []}`, []string{`missing field "boot-source"`}},
		{"null boot source", `{"boot-source": null, "drives": []}`, []string{`missing field "boot-source"`}},
		{"no drives", fmt.Sprintf(`{"boot-source": {"kernel_image_path": %q}}`, h.kernel), []string{`missing field "drives"`}},
		{"wrong type", strings.Replace(good, `"vcpu_count": 2`, `"vcpu_count": "2"`, 1), []string{`"machine-config.vcpu_count"`}},
		{"nested unknown", strings.Replace(good, `"is_read_only": true`, `"read_only": true`, 1), []string{`unknown field "drives[1].read_only"`}},
		{"bad vcpus", strings.Replace(good, `"vcpu_count": 2`, `"vcpu_count": 64`, 1), []string{`"machine-config"`, "vcpu_count 64"}},
		{"missing drive file", strings.Replace(good, h.disk2, "/nonexistent", 1), []string{`"drives"[1]`, "path_on_host", "no such file"}},
		{"drive without path", strings.Replace(good, fmt.Sprintf(`"path_on_host": %q, `, h.disk2), "", 1), []string{`"drives"[1]`, `missing field "path_on_host"`}},
		{"two roots", strings.Replace(good, `"is_root_device": false`, `"is_root_device": true`, 1), []string{`"drives"[1]`, "root block device"}},
		{"bad MAC", strings.Replace(good, `AA:FC:00:00:00:01`, `AA:FC`, 1), []string{`"network-interfaces"[0]`, "guest_mac"}},
		{"balloon too big", strings.Replace(good, `"amount_mib": 512`, `"amount_mib": 2048`, 1), []string{`"balloon"`, "amount_mib 2048"}},
		{"mmds on a missing interface", strings.Replace(good, `"mmds-config": null`, `"mmds-config": {"network_interfaces": ["eth1"]}`, 1), []string{`"mmds-config"`, "does not correspond"}},
		{"mmds address", strings.Replace(good, `"mmds-config": null`, `"mmds-config": {"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}`, 1), []string{`"mmds-config"`, "not link local"}},
		{"pmem", strings.Replace(good, `"pmem": []`, `"pmem": [{"id": "p", "path_on_host": "/p"}]`, 1), []string{`"pmem"`, "not supported"}},
		{"missing cpu template", strings.Replace(good, `"pmem": []`, `"pmem": [], "cpu-config": "/nonexistent.json"`, 1), []string{`"cpu-config"`, "no such file"}},
		{"bad logger level", strings.Replace(good, `"level": "Info"`, `"level": "Chatty"`, 1), []string{`"logger"`, `"Chatty"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t) // a fresh VMM; the file names the outer harness's files
			err := h.s.ApplyConfigFile([]byte(c.file))
			if err == nil {
				t.Fatal("applied")
			}
			for _, w := range append(c.want, "config file: ") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if cfg := h.f.Config(); cfg.KernelPath != "" || len(cfg.Drives) != 0 {
				t.Errorf("a refused file changed the configuration: %+v", cfg)
			}
			if strings.Contains(c.name, "logger") && len(h.loggers) != 0 {
				t.Errorf("the logger was configured by a refused file")
			}
		})
	}
}

func TestApplyConfigFileWithoutHooks(t *testing.T) {
	h := newHarness(t)
	f := newFake()
	err := ApplyConfigFile(f, []byte(h.configFile()))
	if err == nil || !strings.Contains(err.Error(), `"logger"`) || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("logger without a hook: %v", err)
	}
	f.state.Store(vmm.StateRunning)
	file := fmt.Sprintf(`{"boot-source": {"kernel_image_path": %q}, "drives": []}`, h.kernel)
	if err := ApplyConfigFile(f, []byte(file)); err == nil || !strings.Contains(err.Error(), msgPostBoot) {
		t.Errorf("after boot: %v", err)
	}
}

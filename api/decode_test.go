package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// requestDecoders decodes a body as each request model would be, then runs
// the validation that needs no files; FuzzDecode feeds them arbitrary
// bytes.
func requestDecoders() map[string]func([]byte) error {
	return map[string]func([]byte) error{
		"actions": func(b []byte) error { _, err := decodeModel[InstanceActionInfo](b); return err },
		"machine-config": func(b []byte) error {
			m, err := decodeModel[MachineConfiguration](b)
			if err == nil {
				_, err = machineConfigChange(m, true)
			}
			return err
		},
		"boot-source": func(b []byte) error { _, err := decodeModel[BootSource](b); return err },
		"drive":       func(b []byte) error { _, err := decodeModel[Drive](b); return err },
		"partial-drive": func(b []byte) error {
			d, err := decodeModel[PartialDrive](b)
			if err == nil {
				_, err = rateLimit(fieldRateLimiter, d.RateLimiter)
			}
			return err
		},
		"network-interface": func(b []byte) error {
			n, err := decodeModel[NetworkInterface](b)
			if err == nil {
				_, err = netChange(n)
			}
			return err
		},
		"partial-network-interface": func(b []byte) error {
			_, err := decodeModel[PartialNetworkInterface](b)
			return err
		},
		"vsock": func(b []byte) error {
			v, err := decodeModel[Vsock](b)
			if err == nil {
				_, err = vsockChange(v)
			}
			return err
		},
		"entropy": func(b []byte) error {
			e, err := decodeModel[EntropyDevice](b)
			if err == nil {
				_, err = entropyChange(e)
			}
			return err
		},
		"balloon": func(b []byte) error {
			bl, err := decodeModel[Balloon](b)
			if err == nil {
				_, err = balloonChange(bl)
			}
			return err
		},
		"balloon-update":       func(b []byte) error { _, err := decodeModel[BalloonUpdate](b); return err },
		"balloon-stats-update": func(b []byte) error { _, err := decodeModel[BalloonStatsUpdate](b); return err },
		"logger":               func(b []byte) error { _, err := decodeModel[Logger](b); return err },
		"metrics":              func(b []byte) error { _, err := decodeModel[Metrics](b); return err },
		"serial": func(b []byte) error {
			sc, err := decodeModel[SerialConfig](b)
			if err == nil {
				_, err = serialChange(sc)
			}
			return err
		},
		"ember-image": func(b []byte) error {
			m, err := decodeModel[EmberImage](b)
			if err == nil {
				err = m.Validate()
			}
			return err
		},
		"cpu-config": func(b []byte) error {
			c, err := decodeModel[CpuConfig](b)
			if err == nil {
				_, err = cpuConfigChange(c)
			}
			return err
		},
		"config-file": func(b []byte) error {
			var f FullVmConfiguration
			return decodeStrict(b, &f)
		},
	}
}

func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"action_type": "InstanceStart"}`,
		`{"vcpu_count": 2, "mem_size_mib": 256, "smt": true, "huge_pages": "None", "cpu_template": "None"}`,
		`{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}`,
		`{"drive_id": "a", "is_root_device": true, "path_on_host": "/d", "rate_limiter": {"ops": {"size": 1, "refill_time": 1, "one_time_burst": 2}}}`,
		`{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01", "mtu": 1500}`,
		`{"guest_cid": 3, "uds_path": "/v", "vsock_id": "v"}`,
		`{"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 1}`,
		`{"metrics_path": "/m", "emit_id": true, "properties": {"a": "b"}}`,
		`{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": 0, "flags": 0, "modifiers": [{"register": "eax", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx01"}]}], "msr_modifiers": [{"addr": "0b1", "bitmap": "0b1"}]}`,
		`{"boot-source": {"kernel_image_path": "/k"}, "drives": [], "cpu-config": "/t.json", "pmem": []}`,
		`{"boot-source": {"kernel_image_path": "/k"}, "drives": [], "cpu-config": {"kvm_capabilities": ["!1"]}}`,
		`{"ref": "busybox:1", "args": ["sh", "-c", "echo"], "env": ["A=1"], "user": "app", "working_dir": "/w", "hostname": "h", "disk": "/d", "disk_mib": 64}`,
		`{"drives": [], "ember-image": {"ref": "x", "env": ["=1"]}}`,
		`null`, `[]`, `{"a":`, `"\u0000"`, `{"size": 1e400}`, `{} {}`,
	} {
		f.Add([]byte(seed))
	}
	decoders := requestDecoders()
	f.Fuzz(func(t *testing.T, data []byte) {
		for name, decode := range decoders {
			if err := decode(data); err != nil && err.Error() == "" {
				t.Errorf("%s: an error without a message", name)
			}
		}
	})
}

func TestDecodeStrict(t *testing.T) {
	for _, c := range []struct {
		body, want string
	}{
		{`{"drive_id": "a", "is_root_device": true}`, ""},
		{`{"drive_id": "a"}`, `missing field "is_root_device"`},
		{`{"drive_id": "a", "is_root_device": true, "DRIVE_ID": "b"}`, `unknown field "DRIVE_ID"`},
		{`{"drive_id": "a", "is_root_device": "yes"}`, `invalid type for field "is_root_device": string, expected a boolean`},
		{`{"drive_id": "a", "is_root_device": true, "rate_limiter": null}`, ""},
		{`{"drive_id": "a", "is_root_device": true, "rate_limiter": []}`, `invalid type for field "rate_limiter": array, expected an object`},
		{`{"drive_id": "a", "is_root_device": true, "rate_limiter": {"ops": {"size": -1, "refill_time": 1}}}`, `field "rate_limiter.ops.size"`},
		{`{"drive_id": null, "is_root_device": true}`, `invalid type for field "drive_id": null`},
		{`{"drive_id": "a", "is_root_device": true}x`, "trailing characters"},
		{``, "no JSON value"},
		{`{"drive_id": "a", "is_root_device": true`, "incomplete"},
	} {
		var d Drive
		err := decodeStrict([]byte(c.body), &d)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.body, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want %q", c.body, err, c.want)
		}
	}
}

func TestNumber(t *testing.T) {
	for in, want := range map[string]uint32{`"0x1f"`: 31, `"0X1F"`: 31, `"0b101"`: 5, `"42"`: 42, `42`: 42, `"0x8000_0001"`: 0x80000001} {
		var n Number
		if err := json.Unmarshal([]byte(in), &n); err != nil || uint32(n) != want {
			t.Errorf("%s: %d, %v; want %d", in, n, err, want)
		}
	}
	for _, in := range []string{`"0x"`, `"0x100000000"`, `-1`, `1.5`, `"ten"`, `null`, `true`, `4294967296`} {
		var n Number
		if err := json.Unmarshal([]byte(in), &n); err == nil {
			t.Errorf("%s: accepted as %d", in, n)
		}
	}
	if data, _ := json.Marshal(Number(0x10a)); string(data) != `"0x10a"` {
		t.Errorf("marshal: %s", data)
	}
}

func TestBitmap(t *testing.T) {
	s := "0b" + strings.Repeat("x", 28) + "1_0x0"
	mask, value, err := parseBitmap(s, cpuidRegBits)
	if err != nil || mask != 0b1101 || value != 0b1000 {
		t.Fatalf("%s: mask %b value %b %v", s, mask, value, err)
	}
	if back := formatBitmap(mask, value, cpuidRegBits); back != strings.ReplaceAll(s, "_", "") {
		t.Errorf("format: %s", back)
	}
	all := "0b" + strings.Repeat("1", msrBits)
	if mask, value, err := parseBitmap(all, msrBits); err != nil || mask != ^uint64(0) || value != ^uint64(0) {
		t.Errorf("%s: %x %x %v", all, mask, value, err)
	}
	for _, bad := range []string{"", "0b", "1" + strings.Repeat("0", 32), "0b" + strings.Repeat("0", 33), "0b" + strings.Repeat("2", 32)} {
		if _, _, err := parseBitmap(bad, cpuidRegBits); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCheckID(t *testing.T) {
	for id, ok := range map[string]bool{"rootfs": true, "eth_0": true, "ÿ1": true, "": false, "a-b": false, "a/b": false, "a b": false} {
		if err := checkID(id); (err == nil) != ok {
			t.Errorf("checkID(%q): %v", id, err)
		}
	}
}

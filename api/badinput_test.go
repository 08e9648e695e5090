package api

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestBadRequests covers each class of bad input; every answer is a 400
// whose fault_message names what is wrong.
func TestBadRequests(t *testing.T) {
	h := newHarness(t)
	for _, c := range []struct {
		name, method, path, body string
		want                     []string
	}{
		{"malformed JSON", "PUT", "/machine-config", `{"vcpu_count": 1,`, []string{"deserializing", "EOF"}},
		{"not JSON", "PUT", "/boot-source", `kernel=/vmlinux`, []string{"invalid JSON at byte 1"}},
		{"unknown field", "PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 1, "turbo": true}`, []string{`unknown field "turbo"`}},
		{"unknown nested field", "PUT", "/entropy", `{"rate_limiter": {"bandwith": {}}}`, []string{`unknown field "rate_limiter.bandwith"`}},
		{"key in the wrong case", "PUT", "/boot-source", `{"Kernel_Image_Path": "/k"}`, []string{`missing field "kernel_image_path"`}},
		{"missing field", "PUT", "/boot-source", `{"boot_args": "x"}`, []string{`missing field "kernel_image_path"`}},
		{"missing nested field", "PUT", "/entropy", `{"rate_limiter": {"ops": {"size": 1}}}`, []string{`missing field "rate_limiter.ops.refill_time"`}},
		{"missing machine field", "PUT", "/machine-config", `{"mem_size_mib": 128}`, []string{`missing field "vcpu_count"`}},
		{"missing drive path", "PUT", "/drives/a", `{"drive_id": "a", "is_root_device": false}`, []string{`missing field "path_on_host"`}},
		{"wrong type", "PUT", "/machine-config", `{"vcpu_count": "two", "mem_size_mib": 1}`, []string{`field "vcpu_count"`, "string", "integer"}},
		{"wrong nested type", "PUT", "/vsock", `{"guest_cid": -3, "uds_path": "/v"}`, []string{`field "guest_cid"`, "number -3"}},
		{"fraction", "PUT", "/balloon", `{"amount_mib": 1.5, "deflate_on_oom": true}`, []string{`field "amount_mib"`}},
		{"null for a value", "PUT", "/balloon", `{"amount_mib": null, "deflate_on_oom": true}`, []string{`field "amount_mib"`, "null"}},
		{"not an object", "PUT", "/actions", `["InstanceStart"]`, []string{"invalid type: array, expected an object"}},
		{"two values", "PUT", "/actions", `{"action_type": "InstanceStart"} {"action_type": "InstanceStart"}`, []string{"trailing characters"}},
		{"unknown action", "PUT", "/actions", `{"action_type": "Reboot"}`, []string{`"Reboot"`, "InstanceStart"}},
		{"empty PUT", "PUT", "/boot-source", ``, []string{"Empty PUT request."}},
		{"empty PATCH", "PATCH", "/machine-config", ``, []string{"Empty PATCH request."}},
		{"blank body", "PUT", "/boot-source", ` `, []string{"no JSON value"}},
		{"GET with a body", "GET", "/machine-config", `{}`, []string{msgGetBody}},
		{"unknown path", "GET", "/no/such/path", ``, []string{"Invalid request method and/or path: GET /no/such/path."}},
		{"wrong method", "POST", "/actions", `{}`, []string{"Invalid request method and/or path: POST /actions."}},
		{"wrong method on a known path", "GET", "/actions", ``, []string{"Invalid request method and/or path: GET /actions."}},
		{"DELETE of config", "DELETE", "/machine-config", ``, []string{"Invalid request method and/or path: DELETE /machine-config."}},
		{"id mismatch", "PUT", "/drives/a", `{"drive_id": "b", "is_root_device": false, "path_on_host": "/x"}`, []string{msgIDMismatch}},
		{"net id mismatch", "PUT", "/network-interfaces/eth0", `{"iface_id": "eth1", "host_dev_name": "tap0"}`, []string{msgIDMismatch}},
		{"invalid id", "PUT", "/drives/a-b", `{"drive_id": "a-b", "is_root_device": false, "path_on_host": "/x"}`, []string{msgInvalidID}},
		{"empty id", "PUT", "/drives/", `{}`, []string{msgEmptyID}},
		{"no id", "PATCH", "/network-interfaces", `{}`, []string{msgEmptyID}},
	} {
		t.Run(c.name, func(t *testing.T) { h.fail(c.method, c.path, c.body, c.want...) })
	}
}

// TestBadValues covers Firecracker's validation rules; faults name the
// field.
func TestBadValues(t *testing.T) {
	h := newHarness(t)
	missing := h.dir + "/missing"
	drive := func(extra string) string {
		return fmt.Sprintf(`{"drive_id": "a", "is_root_device": false, "path_on_host": %q%s}`, h.disk, extra)
	}
	for _, c := range []struct {
		name, method, path, body string
		want                     []string
	}{
		{"no vCPU", "PUT", "/machine-config", `{"vcpu_count": 0, "mem_size_mib": 128}`, []string{"vcpu_count 0"}},
		{"33 vCPUs", "PUT", "/machine-config", `{"vcpu_count": 33, "mem_size_mib": 128}`, []string{"vcpu_count 33", "1 to 32"}},
		{"odd vCPUs with SMT", "PUT", "/machine-config", `{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}`, []string{"vcpu_count 3", "SMT"}},
		{"no memory", "PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 0}`, []string{"mem_size_mib 0"}},
		{"2M huge pages", "PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}`, []string{"not supported", `huge_pages "2M"`}},
		{"bad huge pages", "PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}`, []string{`huge_pages "1G"`}},
		{"static template", "PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}`, []string{"not supported", `"T2"`}},
		{"bad template", "PATCH", "/machine-config", `{"cpu_template": "Z9"}`, []string{`cpu_template "Z9"`}},
		{"missing kernel", "PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q}`, missing), []string{"kernel_image_path", "no such file"}},
		{"kernel is a directory", "PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q}`, h.dir), []string{"kernel_image_path", "directory"}},
		{"empty kernel path", "PUT", "/boot-source", `{"kernel_image_path": ""}`, []string{"kernel_image_path", "empty"}},
		{"missing initrd", "PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q, "initrd_path": %q}`, h.kernel, missing), []string{"initrd_path", "no such file"}},
		{"long boot args", "PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q, "boot_args": %q}`, h.kernel, strings.Repeat("a", maxBootArgs+1)), []string{"boot_args"}},
		{"missing drive file", "PUT", "/drives/a", fmt.Sprintf(`{"drive_id": "a", "is_root_device": true, "path_on_host": %q}`, missing), []string{`drive "a"`, "path_on_host", "no such file"}},
		{"vhost-user drive", "PUT", "/drives/a", `{"drive_id": "a", "is_root_device": false, "socket": "/s"}`, []string{"not supported", "vhost-user"}},
		{"bad cache type", "PUT", "/drives/a", drive(`, "cache_type": "Fast"`), []string{`cache_type "Fast"`}},
		{"bad io engine", "PUT", "/drives/a", drive(`, "io_engine": "Turbo"`), []string{`io_engine "Turbo"`}},
		{"huge refill time", "PUT", "/drives/a", drive(`, "rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709551615}}`), []string{"rate_limiter.ops.refill_time"}},
		{"no tap name", "PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": ""}`, []string{"host_dev_name"}},
		{"long tap name", "PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap012345678901234"}`, []string{"host_dev_name"}},
		{"bad MAC", "PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}`, []string{"guest_mac"}},
		{"small MTU", "PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67}`, []string{"mtu 67", "68 to 65535"}},
		{"bad net limiter", "PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 18446744073709551615}}}`, []string{"tx_rate_limiter"}},
		{"host CID", "PUT", "/vsock", `{"guest_cid": 2, "uds_path": "/v"}`, []string{"guest_cid 2"}},
		{"no vsock path", "PUT", "/vsock", `{"guest_cid": 3, "uds_path": ""}`, []string{"uds_path"}},
		{"free page hinting", "PUT", "/balloon", `{"amount_mib": 1, "deflate_on_oom": true, "free_page_hinting": true}`, []string{"not supported", "free_page_hinting"}},
		{"free page reporting", "PUT", "/balloon", `{"amount_mib": 1, "deflate_on_oom": true, "free_page_reporting": true}`, []string{"not supported", "free_page_reporting"}},
		{"stats interval", "PUT", "/balloon", `{"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 65536}`, []string{"stats_polling_interval_s 65536"}},
		{"serial limiter", "PUT", "/serial", `{"serial_out_path": "/s", "rate_limiter": {"size": 10, "refill_time": 18446744073709551615}}`, []string{"serial", "refill_time"}},
		{"bad register", "PUT", "/cpu-config", `{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 0, "modifiers": [{"register": "rax", "bitmap": "0b1"}]}]}`, []string{"cpuid_modifiers[0].modifiers[0].register", `"rax"`}},
		{"short bitmap", "PUT", "/cpu-config", `{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "flags": 0, "modifiers": [{"register": "eax", "bitmap": "0b1"}]}]}`, []string{"cpuid_modifiers[0].modifiers[0].bitmap"}},
		{"bad leaf", "PUT", "/cpu-config", `{"cpuid_modifiers": [{"leaf": "0xZZ", "subleaf": 0, "flags": 0, "modifiers": []}]}`, []string{`"cpuid_modifiers[0].leaf"`, `"0xZZ"`}},
		{"bad MSR address", "PUT", "/cpu-config", `{"msr_modifiers": [{"addr": true, "bitmap": "0b1"}]}`, []string{`"msr_modifiers[0].addr"`}},
		{"bad capability", "PUT", "/cpu-config", `{"kvm_capabilities": ["x"]}`, []string{"kvm_capabilities[0]"}},
		{"arm modifiers", "PUT", "/cpu-config", `{"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}`, []string{"reg_modifiers", "aarch64"}},
	} {
		t.Run(c.name, func(t *testing.T) { h.fail(c.method, c.path, c.body, c.want...) })
	}
	if c := h.f.Config(); c.KernelPath != "" || len(c.Drives) != 0 || len(c.Nets) != 0 || c.Balloon != nil || c.Vsock != nil {
		t.Errorf("a refused request changed the configuration: %+v", c)
	}
}

// TestPayloadLimit refuses bodies over MaxPayload, with or without a
// Content-Length.
func TestPayloadLimit(t *testing.T) {
	h := newHarness(t)
	h.s.opts.MaxPayload = 100
	big := fmt.Sprintf(`{"kernel_image_path": %q}`, strings.Repeat("k", 200))
	h.fail("PUT", "/boot-source", big,
		fmt.Sprintf("Request payload with size %d is larger than the limit of 100 allowed by server.", len(big)))

	req := httptest.NewRequest("PUT", "/boot-source", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1 // chunked: the size is found while reading
	w := httptest.NewRecorder()
	h.s.ServeHTTP(w, req)
	if w.Code != http.StatusBadRequest || !bytes.Contains(w.Body.Bytes(), []byte("larger than the limit of 100")) {
		t.Errorf("chunked oversize body: %d %s", w.Code, w.Body)
	}
	// At the limit is fine (here: a valid request).
	exact := fmt.Sprintf(`{"kernel_image_path": %q}`, h.kernel)
	h.s.opts.MaxPayload = len(exact)
	h.ok("PUT", "/boot-source", exact)
}

// TestStateRules: pre-boot requests after InstanceStart, and run-time ones
// before, are refused with Firecracker's sentences.
func TestStateRules(t *testing.T) {
	h := newHarness(t)
	runTime := []struct{ method, path, body string }{
		{"PATCH", "/drives/a", `{"drive_id": "a", "path_on_host": "/x"}`},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0"}`},
		{"PATCH", "/balloon", `{"amount_mib": 1}`},
		{"PATCH", "/balloon/statistics", `{"stats_polling_interval_s": 1}`},
		{"GET", "/balloon/statistics", ``},
		{"PUT", "/actions", `{"action_type": "SendCtrlAltDel"}`},
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`},
	}
	for _, r := range runTime {
		h.fail(r.method, r.path, r.body, msgPreBoot)
	}
	h.boot()
	preBoot := []struct{ method, path, body string }{
		{"PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`},
		{"PATCH", "/machine-config", `{"vcpu_count": 2}`},
		{"PUT", "/boot-source", `{"kernel_image_path": "/nonexistent"}`},
		{"PUT", "/drives/a", `{"drive_id": "a", "is_root_device": false, "path_on_host": "/nonexistent"}`},
		{"PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`},
		{"PUT", "/vsock", `{"guest_cid": 3, "uds_path": "/v"}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/balloon", `{"amount_mib": 1, "deflate_on_oom": true}`},
		{"PUT", "/serial", `{}`},
		{"PUT", "/cpu-config", `{}`},
		{"PUT", "/logger", `{}`},
		{"PUT", "/metrics", `{"metrics_path": "/m"}`},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`},
	}
	for _, r := range preBoot {
		h.fail(r.method, r.path, r.body, msgPostBoot)
	}
	// Unknown devices after boot.
	h.fail("PATCH", "/drives/nope", `{"drive_id": "nope", "path_on_host": "/x"}`, `drive "nope"`, "no such device")
	h.fail("PATCH", "/drives/nope", `{"drive_id": "nope"}`, "nothing to update")
	h.fail("PATCH", "/network-interfaces/nope", `{"iface_id": "nope"}`, `network interface "nope"`, "no such device")
}

// TestNotSupportedYet: the endpoints Ember does not implement answer a
// clear 400.
func TestNotSupportedYet(t *testing.T) {
	h := newHarness(t)
	for _, r := range []struct{ method, path, body, want string }{
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/u"}, "huge_pages": "2M"}`, "huge_pages"},
		{"PUT", "/pmem/p0", `{"id": "p0", "path_on_host": "/p"}`, "pmem"},
		{"PATCH", "/pmem/p0", `{"id": "p0"}`, "pmem"},
		{"PUT", "/hotplug/memory", `{"total_size_mib": 1024}`, "hot-plug"},
		{"PATCH", "/hotplug/memory", `{"requested_size_mib": 128}`, "hot-plug"},
		{"GET", "/hotplug/memory", ``, "hot-plug"},
		{"PATCH", "/balloon/hinting/start", ``, "hinting"},
		{"GET", "/balloon/hinting/status", ``, "hinting"},
		{"PATCH", "/balloon/hinting/stop", ``, "hinting"},
		{"DELETE", "/drives/rootfs", ``, "hot-unplug"},
		{"DELETE", "/network-interfaces/eth0", ``, "hot-unplug"},
		{"DELETE", "/pmem/p0", ``, "hot-unplug"},
	} {
		h.fail(r.method, r.path, r.body, "not supported", r.want, r.method+" "+r.path)
	}
}

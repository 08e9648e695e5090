package api

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/embervm/ember/mmds"
)

// TestMMDSData: PUT replaces, PATCH merges (RFC 7396), GET reads, before
// and after boot; PATCH needs a PUT first; bodies must be JSON.
func TestMMDSData(t *testing.T) {
	h := newHarness(t)
	if code, body, _ := h.do("GET", "/mmds", ""); code != 200 || body != "{}" {
		t.Fatalf("empty store: %d %q", code, body)
	}
	h.fail("PATCH", "/mmds", `{"a": 1}`, "MMDS error: The MMDS data store is not initialized.")
	h.fail("PUT", "/mmds", `{"a": `, "An error occurred when deserializing the json body of a request")
	h.fail("PUT", "/mmds", `{} {}`, "trailing characters")
	h.ok("PUT", "/mmds", `{"latest": {"meta-data": {"ami-id": "ami-1", "tag": "<&>"}}, "x": [1, 2.50]}`)
	if code, body, _ := h.do("GET", "/mmds", ""); code != 200 || body != `{"latest":{"meta-data":{"ami-id":"ami-1","tag":"<&>"}},"x":[1,2.50]}` {
		t.Fatalf("after PUT: %d %q", code, body)
	}
	h.boot()
	h.ok("PATCH", "/mmds", `{"latest": {"meta-data": {"tag": null, "new": "v"}}, "x": null}`)
	if code, body, _ := h.do("GET", "/mmds", ""); code != 200 || body != `{"latest":{"meta-data":{"ami-id":"ami-1","new":"v"}}}` {
		t.Fatalf("after PATCH: %d %q", code, body)
	}
	h.ok("PUT", "/mmds", `"just a string"`)
	if _, body, _ := h.do("GET", "/mmds", ""); body != `"just a string"` {
		t.Fatalf("after PUT of a string: %q", body)
	}
	h.ok("PUT", "/mmds", `null`)
	if _, body, _ := h.do("GET", "/mmds", ""); body != `{}` {
		t.Fatalf("after PUT of null: %q", body)
	}
}

// TestMMDSSizeLimit: a PUT or PATCH that would take the store over its
// limit is answered 413 (Firecracker's PayloadTooLarge) and changes nothing.
func TestMMDSSizeLimit(t *testing.T) {
	h := newHarness(t)
	h.s = New(h.f, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MMDS: mmds.NewStore(40)})
	h.ok("PUT", "/mmds", `{"a": "0123456789"}`)
	for _, r := range []struct{ method, body string }{
		{"PUT", `{"a": "01234567890123456789012345678901234567890"}`},
		{"PATCH", `{"b": "01234567890123456789012345"}`},
	} {
		code, msg, _ := h.do(r.method, "/mmds", r.body)
		if code != http.StatusRequestEntityTooLarge || msg != `{"fault_message":"MMDS limit exceeded error: The MMDS patch request doesn't fit."}` {
			t.Errorf("%s over the limit: %d %s", r.method, code, msg)
		}
	}
	if _, body, _ := h.do("GET", "/mmds", ""); body != `{"a":"0123456789"}` {
		t.Errorf("after refused writes: %s", body)
	}
}

// TestMMDSConfig: PUT /mmds/config before boot, checked against the
// interfaces, shown by GET /vm/config; refused after boot.
func TestMMDSConfig(t *testing.T) {
	h := newHarness(t)
	h.fail("PUT", "/mmds/config", `{"network_interfaces": ["eth0"]}`, "does not correspond to any existing network interface")
	h.ok("PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`)
	for _, r := range []struct{ body, want string }{
		{`{"network_interfaces": []}`, "The list of network interface IDs that allow forwarding MMDS requests is empty."},
		{`{}`, `missing field "network_interfaces"`},
		{`{"network_interfaces": ["eth0"], "version": "V3"}`, `version "V3"`},
		{`{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}`, "The MMDS IPv4 address is not link local."},
		{`{"network_interfaces": ["eth0"], "ipv4_address": "169.254.255.7"}`, "not link local"},
		{`{"network_interfaces": ["eth0"], "ipv4_address": "nope"}`, "not an IPv4 address"},
		{`{"network_interfaces": ["eth0"], "imds": true}`, `unknown field "imds"`},
	} {
		h.fail("PUT", "/mmds/config", r.body, r.want)
	}
	var f FullVmConfiguration
	h.get("/vm/config", &f)
	if f.MMDSConfig != nil {
		t.Errorf("mmds-config before PUT: %+v", f.MMDSConfig)
	}
	h.ok("PUT", "/mmds/config", `{"network_interfaces": ["eth0"], "version": "V2", "imds_compat": true}`)
	h.get("/vm/config", &f)
	m := f.MMDSConfig
	if m == nil || strings.Join(m.NetworkInterfaces, ",") != "eth0" || *m.Version != "V2" || *m.IPv4Address != "169.254.169.254" || !*m.IMDSCompat {
		t.Fatalf("mmds-config %+v", m)
	}
	if c := h.f.Config().MMDS; c == nil || c.Version != mmds.V2 {
		t.Errorf("VMM configuration %+v", c)
	}
	h.boot()
	h.fail("PUT", "/mmds/config", `{"network_interfaces": ["eth0"]}`, msgPostBoot)
}

// TestMMDSConfigFile: "mmds-config" in a config file.
func TestMMDSConfigFile(t *testing.T) {
	h := newHarness(t)
	file := strings.Replace(h.configFile(), `"mmds-config": null`,
		`"mmds-config": {"network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2"}`, 1)
	if err := h.s.ApplyConfigFile([]byte(file)); err != nil {
		t.Fatal(err)
	}
	c := h.f.Config().MMDS
	if c == nil || c.IPv4Address != "169.254.170.2" || c.Version != mmds.V1 {
		t.Fatalf("mmds-config %+v", c)
	}
}

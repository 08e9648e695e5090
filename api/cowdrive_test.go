package api

import (
	"path/filepath"
	"testing"
)

// TestCOWDriveAPI: ember_base_path (an Ember extension of the drive body)
// reaches the drive's configuration and GET /vm/config; a base that cannot
// be opened is refused, naming the field.
func TestCOWDriveAPI(t *testing.T) {
	h := newHarness(t)
	base := h.file("base.img")
	h.fail("PUT", "/drives/rootfs", js(t, Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: h.disk,
		EmberBasePath: filepath.Join(h.dir, "missing")}), `drive "rootfs"`, "ember_base_path")
	h.ok("PUT", "/drives/rootfs", js(t, Drive{DriveID: "rootfs", IsRootDevice: true, PathOnHost: h.disk, EmberBasePath: base}))
	if d := h.f.Config().Drives; len(d) != 1 || d[0].BasePath != base || d[0].Path != h.disk {
		t.Fatalf("drives %+v", d)
	}
	var c FullVmConfiguration
	h.get("/vm/config", &c)
	if len(c.Drives) != 1 || c.Drives[0].EmberBasePath != base {
		t.Fatalf("GET /vm/config drives %+v", c.Drives)
	}
	h.fail("PUT", "/drives/x", `{"drive_id": "x", "is_root_device": false, "path_on_host": "`+h.disk+`", "ember_base": "`+base+`"}`, "ember_base")
}

// TestSnapshotLoadDriveOverrides: ember_drive_overrides (an Ember
// extension of the snapshot/load body) reaches the load; a drive given
// twice, or an override without its fields, is refused.
func TestSnapshotLoadDriveOverrides(t *testing.T) {
	h := newHarness(t)
	h.fail("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m",
		"ember_drive_overrides": [{"drive_id": "rootfs", "path_on_host": "/a"}, {"drive_id": "rootfs", "path_on_host": "/b"}]}`, "given twice")
	h.fail("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m",
		"ember_drive_overrides": [{"drive_id": "rootfs"}]}`, "path_on_host")
	h.ok("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m",
		"ember_drive_overrides": [{"drive_id": "rootfs", "path_on_host": "/clone1.cow"}, {"drive_id": "data", "path_on_host": "/data1.img"}]}`)
	if l := h.f.loads[0]; len(l.DriveOverrides) != 2 || l.DriveOverrides["rootfs"] != "/clone1.cow" || l.DriveOverrides["data"] != "/data1.img" {
		t.Fatalf("load %+v", l)
	}
}

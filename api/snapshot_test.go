package api

import (
	"testing"

	"github.com/embervm/ember/vmm"
)

// TestPauseResumeAPI: PATCH /vm before boot is refused, after boot it
// pauses and resumes, and GET / shows the state.
func TestPauseResumeAPI(t *testing.T) {
	h := newHarness(t)
	h.fail("PATCH", "/vm", `{"state": "Paused"}`, msgPreBoot)
	h.fail("PATCH", "/vm", `{"state": "Sleeping"}`, "unknown variant")
	h.fail("PATCH", "/vm", `{}`, "state")
	h.fail("PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, msgPreBoot)
	h.boot()
	h.fail("PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, "must be paused")
	h.ok("PATCH", "/vm", `{"state": "Paused"}`)
	var info InstanceInfo
	h.get("/", &info)
	if info.State != string(vmm.StatePaused) {
		t.Fatalf("state %q after pause", info.State)
	}
	h.fail("PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Half"}`, "unknown variant")
	h.fail("PUT", "/snapshot/create", `{"snapshot_path": "/s"}`, "mem_file_path")
	h.ok("PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}`)
	if len(h.f.snapshots) != 1 || h.f.snapshots[0] != (vmm.SnapshotCreate{SnapshotPath: "/s", MemFilePath: "/m", Type: "Diff"}) {
		t.Errorf("snapshots %+v", h.f.snapshots)
	}
	h.ok("PATCH", "/vm", `{"state": "Resumed"}`)
	h.get("/", &info)
	if info.State != string(vmm.StateRunning) {
		t.Fatalf("state %q after resume", info.State)
	}
	h.fail("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, "not allowed after starting")
}

// TestSnapshotLoadAPI: the body forms of PUT /snapshot/load.
func TestSnapshotLoadAPI(t *testing.T) {
	h := newHarness(t)
	h.fail("PUT", "/snapshot/load", `{"snapshot_path": "/s"}`, msgNoMemBackend)
	h.fail("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}`, msgBothMemBackend)
	h.fail("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}`, "unknown variant")
	h.fail("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "huge_pages": "2M"}`, "not supported")
	h.ok("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
		"track_dirty_pages": true, "resume_vm": true, "clock_realtime": true,
		"network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7"}], "vsock_override": {"uds_path": "/v.sock"}}`)
	want := vmm.SnapshotLoad{SnapshotPath: "/s", MemFilePath: "/m", TrackDirtyPages: true, ResumeVM: true, ClockRealtime: true,
		NetOverrides: map[string]string{"eth0": "tap7"}, VsockUDSPath: "/v.sock"}
	if len(h.f.loads) != 1 || h.f.loads[0].SnapshotPath != want.SnapshotPath || h.f.loads[0].MemFilePath != want.MemFilePath ||
		!h.f.loads[0].TrackDirtyPages || !h.f.loads[0].ResumeVM || !h.f.loads[0].ClockRealtime ||
		h.f.loads[0].NetOverrides["eth0"] != "tap7" || h.f.loads[0].VsockUDSPath != "/v.sock" {
		t.Fatalf("loads %+v, want %+v", h.f.loads, want)
	}
	var info InstanceInfo
	h.get("/", &info)
	if info.State != string(vmm.StateRunning) {
		t.Fatalf("state %q after load with resume_vm", info.State)
	}

	// The Uffd backend.
	h3 := newHarness(t)
	h3.ok("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/uffd.sock"}}`)
	if l := h3.f.loads[0]; l.UffdPath != "/uffd.sock" || l.MemFilePath != "" {
		t.Fatalf("Uffd: %+v", l)
	}

	// The older form.
	h2 := newHarness(t)
	h2.ok("PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true}`)
	if l := h2.f.loads[0]; l.MemFilePath != "/m" || !l.TrackDirtyPages || l.ResumeVM {
		t.Fatalf("older form: %+v", l)
	}
}

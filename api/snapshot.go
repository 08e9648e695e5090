package api

import (
	"errors"
	"fmt"

	"github.com/embervm/ember/vmm"
)

// The VM state and snapshot endpoints: PATCH /vm, PUT /snapshot/create and
// PUT /snapshot/load.

// Vm is the body of PATCH /vm.
type Vm struct {
	State string `json:"state" api:"required"`
}

// VM states of PATCH /vm.
const (
	VMStatePaused  = "Paused"
	VMStateResumed = "Resumed"
)

// SnapshotCreateParams is the body of PUT /snapshot/create.
type SnapshotCreateParams struct {
	SnapshotPath string `json:"snapshot_path" api:"required"`
	MemFilePath  string `json:"mem_file_path" api:"required"`
	SnapshotType string `json:"snapshot_type,omitempty"`
	// Version is deprecated in Firecracker; accepted and ignored.
	Version *string `json:"version,omitempty"`
}

// MemoryBackend is snapshot/load's mem_backend.
type MemoryBackend struct {
	BackendType string `json:"backend_type" api:"required"`
	BackendPath string `json:"backend_path" api:"required"`
}

// Memory backend types.
const (
	BackendFile = "File"
	BackendUffd = "Uffd"
)

// NetworkOverride re-attaches a snapshotted interface to another tap.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id" api:"required"`
	HostDevName string `json:"host_dev_name" api:"required"`
}

// VsockOverride gives the restored vsock device another socket path.
type VsockOverride struct {
	UDSPath string `json:"uds_path" api:"required"`
}

// DriveOverride (an Ember extension) gives a restored drive a new file:
// for a raw drive the file to use (a copy the caller made), for a
// copy-on-write drive a new overlay, which must not exist, that the load
// makes over the snapshot's overlay.
type DriveOverride struct {
	DriveID    string `json:"drive_id" api:"required"`
	PathOnHost string `json:"path_on_host" api:"required"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load.
type SnapshotLoadParams struct {
	SnapshotPath string         `json:"snapshot_path" api:"required"`
	MemBackend   *MemoryBackend `json:"mem_backend,omitempty"`
	// MemFilePath is the older form of mem_backend {File, path}.
	MemFilePath *string `json:"mem_file_path,omitempty"`
	// EnableDiffSnapshots is the older name of TrackDirtyPages.
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
	ClockRealtime       bool              `json:"clock_realtime,omitempty"`
	HugePages           *string           `json:"huge_pages,omitempty"`
	// EmberDriveOverrides is an Ember extension (see DriveOverride).
	EmberDriveOverrides []DriveOverride `json:"ember_drive_overrides,omitempty"`
}

// Firecracker's messages for snapshot/load's memory source.
const (
	msgNoMemBackend   = "missing field: either `mem_backend` or `mem_file_path` is required"
	msgBothMemBackend = "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"
)

func (s *Server) patchVM(c *call) (any, error) {
	m, err := decodeModel[Vm](c.body)
	if err != nil {
		return nil, err
	}
	switch m.State {
	case VMStatePaused, VMStateResumed:
	default:
		return nil, bodyError{fmt.Errorf("state %q: unknown variant, expected %s or %s", m.State, VMStatePaused, VMStateResumed)}
	}
	if err := s.started(); err != nil {
		return nil, err
	}
	if m.State == VMStatePaused {
		return nil, s.b.Pause()
	}
	return nil, s.b.Resume()
}

func (s *Server) putSnapshotCreate(c *call) (any, error) {
	p, err := decodeModel[SnapshotCreateParams](c.body)
	if err != nil {
		return nil, err
	}
	switch p.SnapshotType {
	case "", vmm.SnapshotFull, vmm.SnapshotDiff:
	default:
		return nil, bodyError{fmt.Errorf("snapshot_type %q: unknown variant, expected %s or %s", p.SnapshotType, vmm.SnapshotFull, vmm.SnapshotDiff)}
	}
	if err := s.started(); err != nil {
		return nil, err
	}
	if s.b.State() != vmm.StatePaused {
		return nil, fmt.Errorf("Cannot create snapshot: %w", vmm.ErrNotPaused)
	}
	if err := s.b.CreateSnapshot(vmm.SnapshotCreate{SnapshotPath: p.SnapshotPath, MemFilePath: p.MemFilePath, Type: p.SnapshotType}); err != nil {
		return nil, fmt.Errorf("Create snapshot error: %w", err)
	}
	return nil, nil
}

func (s *Server) putSnapshotLoad(c *call) (any, error) {
	p, err := decodeModel[SnapshotLoadParams](c.body)
	if err != nil {
		return nil, err
	}
	var mem, uffd string
	switch {
	case p.MemBackend == nil && p.MemFilePath == nil:
		return nil, bodyError{errors.New(msgNoMemBackend)}
	case p.MemBackend != nil && p.MemFilePath != nil:
		return nil, bodyError{errors.New(msgBothMemBackend)}
	case p.MemFilePath != nil:
		mem = *p.MemFilePath
	default:
		switch p.MemBackend.BackendType {
		case BackendFile:
			mem = p.MemBackend.BackendPath
		case BackendUffd:
			uffd = p.MemBackend.BackendPath
		default:
			return nil, bodyError{fmt.Errorf("backend_type %q: unknown variant, expected %s or %s", p.MemBackend.BackendType, BackendFile, BackendUffd)}
		}
	}
	if p.HugePages != nil && *p.HugePages != "Snapshot" && *p.HugePages != vmm.HugePagesNone {
		// 2M needs hugetlbfs-backed guest memory, which Ember does not have.
		return nil, notSupported("huge_pages %q on PUT /snapshot/load is not implemented by Ember yet", *p.HugePages)
	}
	l := vmm.SnapshotLoad{SnapshotPath: p.SnapshotPath, MemFilePath: mem, UffdPath: uffd,
		TrackDirtyPages: p.TrackDirtyPages || p.EnableDiffSnapshots, ResumeVM: p.ResumeVM, ClockRealtime: p.ClockRealtime}
	for _, o := range p.NetworkOverrides {
		if l.NetOverrides == nil {
			l.NetOverrides = map[string]string{}
		}
		l.NetOverrides[o.IfaceID] = o.HostDevName
	}
	if p.VsockOverride != nil {
		l.VsockUDSPath = p.VsockOverride.UDSPath
	}
	for _, o := range p.EmberDriveOverrides {
		if l.DriveOverrides == nil {
			l.DriveOverrides = map[string]string{}
		}
		if _, dup := l.DriveOverrides[o.DriveID]; dup {
			return nil, bodyError{fmt.Errorf("ember_drive_overrides: drive %q given twice", o.DriveID)}
		}
		l.DriveOverrides[o.DriveID] = o.PathOnHost
	}
	if err := s.b.LoadSnapshot(l); err != nil {
		if errors.Is(err, vmm.ErrLoadAfterConfig) || errors.Is(err, vmm.ErrLoadAfterStart) {
			return nil, err
		}
		return nil, fmt.Errorf("Load snapshot error: %w", err)
	}
	return nil, nil
}

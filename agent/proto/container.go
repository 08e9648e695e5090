package proto

import (
	"path"
	"strconv"
	"strings"
	"time"
)

// Containers: a pod's containers in one guest (the containerd shim's one
// VM per pod). The guest's root is the pod sandbox's (its pause image);
// each further container gets its own root filesystem, stacked with
// overlayfs from read-only layer drives the host attached (by drive
// serial) over an upper directory on the guest's writable drive, and its
// own mounts. Volumes are guest directories (or files) on the writable
// drive shared by the containers that name them: a pod's emptyDir.
//
// These operations, and [ExecStart.Container], are sent only to an agent
// that announces [FeatureContainer]: an older agent would ignore the field
// and run the process in the guest's root.
const (
	// FeatureContainer: container.volume, container.create,
	// container.remove and ExecStart.Container.
	FeatureContainer = "container"

	// OpContainerVolume (unary): [ContainerVolume] → [VolumeInfo]: the
	// guest path of a volume, created empty if missing.
	OpContainerVolume = "container.volume"
	// OpContainerCreate (unary): [ContainerCreate] → [ContainerInfo]:
	// mount a container's root filesystem and its mounts.
	OpContainerCreate = "container.create"
	// OpContainerRemove (unary): [ContainerRef] → {}: kill what still
	// runs in the container, unmount its filesystems (its layer drives are
	// then free for the host to swap) and remove its upper directory.
	OpContainerRemove = "container.remove"

	// FeatureContainerStats: container.stats.
	FeatureContainerStats = "container.stats"
	// OpContainerStats (unary): [ContainerRef] → [ContainerStats]: what
	// a container's processes use now.
	OpContainerStats = "container.stats"
)

// Limits of container requests.
const (
	// MaxIDLen bounds container and volume IDs (containerd's IDs are 64
	// hex digits; its identifiers package allows 76 bytes).
	MaxIDLen = 128
	// MaxContainerLayers bounds a container's layer drives (the VMM has
	// fewer virtio slots than this anyway).
	MaxContainerLayers = 64
	// MaxContainerMounts bounds a container's mounts.
	MaxContainerMounts = 256
)

// Kinds of volume.
const (
	VolumeDir  = "dir"
	VolumeFile = "file"
)

// Mount types of [ContainerMount].
const (
	// MountVolume binds a volume ([ContainerVolume]'s name in Source).
	MountVolume = "volume"
	// MountTmpfs, MountProc, MountSysfs and MountMqueue mount a new file
	// system of that type.
	MountTmpfs  = "tmpfs"
	MountProc   = "proc"
	MountSysfs  = "sysfs"
	MountMqueue = "mqueue"
	// MountDev binds the guest's /dev (devtmpfs, with /dev/pts): the
	// devices the VM has are the container's.
	MountDev = "dev"
)

// ContainerVolume names a volume.
type ContainerVolume struct {
	// Name is the volume's name, 1-MaxIDLen bytes of [A-Za-z0-9._-].
	Name string `json:"name"`
	// Kind is VolumeDir (default) or VolumeFile.
	Kind string `json:"kind,omitempty"`
}

// Validate checks the request.
func (r *ContainerVolume) Validate() error {
	if err := CheckID("name", r.Name); err != nil {
		return err
	}
	switch r.Kind {
	case "", VolumeDir, VolumeFile:
		return nil
	}
	return Errorf(CodeInvalid, "kind: %q: want %q or %q", r.Kind, VolumeDir, VolumeFile)
}

// VolumeInfo is a volume in the guest.
type VolumeInfo struct {
	Path string `json:"path"`
	// Created says the volume did not exist before this request (the
	// host fills a new one with what it should start with).
	Created bool `json:"created"`
}

// LayerDrive is one read-only layer drive of a container.
type LayerDrive struct {
	// Serial is the drive's virtio-blk serial (the host's drive ID).
	Serial string `json:"serial"`
	// FSType is "erofs" or "ext4".
	FSType string `json:"fs_type"`
	// Size, if set, is the drive's size in bytes as the host last set it:
	// the agent waits until the guest's kernel sees that capacity (a
	// swapped drive's config-change interrupt is handled asynchronously)
	// before it mounts the drive.
	Size int64 `json:"size,omitempty"`
}

// ContainerMount is one mount of a container, applied in order after
// its root filesystem.
type ContainerMount struct {
	// Destination is the absolute path in the container.
	Destination string `json:"destination"`
	// Type is one of the Mount* constants.
	Type string `json:"type"`
	// Source is the volume's name for MountVolume, unused otherwise.
	Source string `json:"source,omitempty"`
	// ReadOnly mounts it read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// Data are the file system's options for MountTmpfs ("size=64m",
	// "mode=1777"), as mount(8)'s -o takes them.
	Data string `json:"data,omitempty"`
}

// ContainerCreate mounts a container's filesystems.
type ContainerCreate struct {
	// ID names the container (as ExecStart.Container does), 1-MaxIDLen
	// bytes of [A-Za-z0-9._-].
	ID string `json:"id"`
	// Layers are its root filesystem's layer drives, lowest first.
	Layers []LayerDrive `json:"layers"`
	// Mounts are mounted over the root, in order.
	Mounts []ContainerMount `json:"mounts,omitempty"`
	// ReadOnlyRoot makes the root file system read-only.
	ReadOnlyRoot bool `json:"read_only_root,omitempty"`
}

// Validate checks the request.
func (r *ContainerCreate) Validate() error {
	if err := CheckID("id", r.ID); err != nil {
		return err
	}
	if len(r.Layers) == 0 || len(r.Layers) > MaxContainerLayers {
		return Errorf(CodeInvalid, "layers: %d: want 1..%d", len(r.Layers), MaxContainerLayers)
	}
	for i, l := range r.Layers {
		if err := CheckID("layers["+strconv.Itoa(i)+"].serial", l.Serial); err != nil {
			return err
		}
		if l.Size < 0 {
			return Errorf(CodeInvalid, "layers[%d].size: %d", i, l.Size)
		}
		if l.FSType != "erofs" && l.FSType != "ext4" {
			return Errorf(CodeInvalid, "layers[%d].fs_type: %q: want erofs or ext4", i, l.FSType)
		}
	}
	if len(r.Mounts) > MaxContainerMounts {
		return Errorf(CodeInvalid, "mounts: %d (limit %d)", len(r.Mounts), MaxContainerMounts)
	}
	for i, m := range r.Mounts {
		field := "mounts[" + strconv.Itoa(i) + "]"
		if err := CheckPath(field+".destination", m.Destination); err != nil {
			return err
		}
		if !path.IsAbs(m.Destination) || path.Clean(m.Destination) == "/" {
			return Errorf(CodeInvalid, "%s.destination: %q: want an absolute path other than /", field, m.Destination)
		}
		switch m.Type {
		case MountVolume:
			if err := CheckID(field+".source", m.Source); err != nil {
				return err
			}
		case MountTmpfs, MountProc, MountSysfs, MountMqueue, MountDev:
		default:
			return Errorf(CodeInvalid, "%s.type: %q: want volume, tmpfs, proc, sysfs, mqueue or dev", field, m.Type)
		}
		if strings.IndexByte(m.Data, 0) >= 0 || len(m.Data) > 1024 {
			return Errorf(CodeInvalid, "%s.data: a NUL byte or more than 1024 bytes", field)
		}
	}
	return nil
}

// ContainerInfo is a created container.
type ContainerInfo struct {
	ID string `json:"id"`
	// Root is its root filesystem's path in the guest.
	Root string `json:"root"`
}

// ContainerStats is a container's resource use: its processes are the
// guest's processes whose root is the container's root.
type ContainerStats struct {
	Time time.Time `json:"time"`
	// UserNanos and SystemNanos are CPU time in nanoseconds: the live
	// processes' own and that of the children they waited for, plus, for
	// each process the agent started in the container and has reaped,
	// its whole (a process orphaned in the container and reaped by the
	// agent is not counted once it has ended).
	UserNanos   uint64 `json:"user_ns"`
	SystemNanos uint64 `json:"system_ns"`
	// MemoryBytes is the live processes' proportional set size summed
	// (a page n processes of the guest map counts 1/n in each: a sum
	// counts it once), or, where the guest's kernel has no smaps, their
	// resident memory summed; AnonBytes is their anonymous memory.
	MemoryBytes uint64 `json:"memory_bytes"`
	AnonBytes   uint64 `json:"anon_bytes"`
	// Pids is how many processes the container has.
	Pids uint64 `json:"pids"`
}

// ContainerRef names a container.
type ContainerRef struct {
	ID string `json:"id"`
}

// Validate checks the request.
func (r *ContainerRef) Validate() error { return CheckID("id", r.ID) }

// CheckID checks a container, volume or drive name: 1-MaxIDLen bytes of
// [A-Za-z0-9._-], not "." or "..", so that it is a file name.
func CheckID(field, id string) error {
	if id == "" || len(id) > MaxIDLen || id == "." || id == ".." {
		return Errorf(CodeInvalid, "%s: %q: want 1..%d characters of [A-Za-z0-9._-]", field, id, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return Errorf(CodeInvalid, "%s: %q: byte %d is not one of [A-Za-z0-9._-]", field, id, i)
		}
	}
	return nil
}

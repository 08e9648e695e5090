package proto

import (
	"strings"
	"time"
)

// Entry types.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
	TypeOther   = "other" // device, FIFO, socket
)

// Entry describes a file (envd's EntryInfo, field for field).
type Entry struct {
	Name string `json:"name"`
	// Path is absolute.
	Path string `json:"path"`
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Mode is the permission bits with setuid, setgid and sticky (07777).
	Mode uint32 `json:"mode"`
	// Permissions is Mode as ls shows it ("-rwxr-xr-x").
	Permissions string    `json:"permissions"`
	UID         uint32    `json:"uid"`
	GID         uint32    `json:"gid"`
	Owner       string    `json:"owner,omitempty"`
	Group       string    `json:"group,omitempty"`
	ModTime     time.Time `json:"mod_time"`
	// SymlinkTarget is a symlink's target as stored.
	SymlinkTarget string `json:"symlink_target,omitempty"`
}

// Transfer formats of [ReadRequest] and [WriteRequest].
const (
	// FormatFile is one regular file's bytes.
	FormatFile = "file"
	// FormatTar is a directory as a tar stream (POSIX ustar/PAX, as Go's
	// archive/tar writes it): regular files, directories, symbolic and
	// hard links, devices and FIFOs, with modes, owners and times.
	FormatTar = "tar"
)

// PathRequest names one path. Paths are absolute, or relative to the
// user's home directory.
type PathRequest struct {
	Path string `json:"path"`
	// User is whose home a relative path is in (empty: the agent's
	// default user); see [WriteRequest] for ownership.
	User string `json:"user,omitempty"`
}

// Validate checks the path.
func (r *PathRequest) Validate() error { return CheckPath("path", r.Path) }

// ListRequest lists a directory.
type ListRequest struct {
	PathRequest
	// Depth is how deep to go: 1 lists the directory's entries, 2 their
	// entries too, and so on (0 means 1).
	Depth int `json:"depth,omitempty"`
}

// MaxDepth bounds ListRequest.Depth (deeper trees are listed with more
// requests).
const MaxDepth = 256

// Validate checks the request.
func (r *ListRequest) Validate() error {
	if r.Depth < 0 || r.Depth > MaxDepth {
		return Errorf(CodeInvalid, "depth: %d: want 1..%d", r.Depth, MaxDepth)
	}
	return r.PathRequest.Validate()
}

// ListBatch is one message of a listing.
type ListBatch struct {
	Entries []Entry `json:"entries"`
}

// MkdirRequest makes a directory and any missing parents.
type MkdirRequest struct {
	PathRequest
	// Mode is the new directories' permissions (0: 0755).
	Mode uint32 `json:"mode,omitempty"`
}

// Validate checks the request.
func (r *MkdirRequest) Validate() error {
	if r.Mode&^0o7777 != 0 {
		return Errorf(CodeInvalid, "mode: %#o has bits beyond 07777", r.Mode)
	}
	return r.PathRequest.Validate()
}

// MoveRequest renames Source to Destination (replacing a file there).
type MoveRequest struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	User        string `json:"user,omitempty"`
}

// Validate checks the paths.
func (r *MoveRequest) Validate() error {
	if err := CheckPath("source", r.Source); err != nil {
		return err
	}
	return CheckPath("destination", r.Destination)
}

// ReadRequest downloads a file, or a directory as a tar.
type ReadRequest struct {
	PathRequest
	// Format is FormatFile (the default) or FormatTar.
	Format string `json:"format,omitempty"`
}

// Validate checks the request.
func (r *ReadRequest) Validate() error {
	if err := checkFormat(r.Format); err != nil {
		return err
	}
	return r.PathRequest.Validate()
}

// WriteRequest uploads a file, or a tar into a directory. A file is
// written beside its target and renamed over it once complete, so an
// interrupted upload leaves the old file (or none); missing parent
// directories are made. A tar is unpacked into Path (made if missing);
// an entry whose name leaves it (an absolute name, "..", or a path through
// a symbolic link) fails the upload.
type WriteRequest struct {
	PathRequest
	// Format is FormatFile (the default) or FormatTar.
	Format string `json:"format,omitempty"`
	// Mode is a file's permissions (0: 0644); a tar's entries keep theirs.
	Mode uint32 `json:"mode,omitempty"`
	// With User set, what is written (and the parents made) belongs to
	// that user; otherwise a file belongs to root and a tar's entries to
	// the owners recorded in it.
}

// Validate checks the request.
func (r *WriteRequest) Validate() error {
	if err := checkFormat(r.Format); err != nil {
		return err
	}
	if r.Mode&^0o7777 != 0 {
		return Errorf(CodeInvalid, "mode: %#o has bits beyond 07777", r.Mode)
	}
	return r.PathRequest.Validate()
}

func checkFormat(f string) error {
	switch f {
	case "", FormatFile, FormatTar:
		return nil
	}
	return Errorf(CodeInvalid, "format: %q: want %q or %q", f, FormatFile, FormatTar)
}

// WatchRequest watches a directory.
type WatchRequest struct {
	PathRequest
	// Recursive watches the subdirectories too, those made later
	// included.
	Recursive bool `json:"recursive,omitempty"`
}

// Watch event types (envd's EventType, by name).
const (
	EventCreate = "create"
	EventWrite  = "write"
	EventRemove = "remove"
	EventRename = "rename" // moved away; the new name gets a create
	EventChmod  = "chmod"  // metadata: mode, owner, times
	// EventOverflow says events were lost (the kernel's queue filled
	// because the client read too slowly).
	EventOverflow = "overflow"
)

// WatchEvent is one message of a watch.
type WatchEvent struct {
	// Started comes first, once every watch is in place.
	Started bool `json:"started,omitempty"`
	// Name is the changed entry's path relative to the watched directory.
	Name string `json:"name,omitempty"`
	Type string `json:"type,omitempty"`
}

// CheckPath checks a path field: non-empty, no NUL, at most MaxPathLen.
func CheckPath(field, p string) error {
	switch {
	case p == "":
		return Errorf(CodeInvalid, "%s: empty path", field)
	case len(p) >= MaxPathLen:
		return Errorf(CodeInvalid, "%s: %d bytes (limit %d)", field, len(p), MaxPathLen-1)
	case strings.IndexByte(p, 0) >= 0:
		return Errorf(CodeInvalid, "%s: contains a NUL byte", field)
	}
	return nil
}

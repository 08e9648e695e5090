package e2b

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The messages of envd's process.Process and filesystem.Filesystem
// services, written by hand from E2B's .proto files (process/process.proto
// and filesystem/filesystem.proto, as the SDK's generated process_pb.ts and
// filesystem_pb.ts show them) with JSON tags of their proto3 JSON names
// (lowerCamelCase). The Connect protocol carries them as JSON (the SDK
// sets useBinaryFormat: false), so no protobuf runtime is needed: optional
// fields and oneof members are pointers or omitempty, int64 fields are
// JSON strings, bytes are base64 (encoding/json's []byte), enums are
// their value names, and unknown fields are ignored.

// ProcessConfig is process.ProcessConfig.
type ProcessConfig struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args,omitempty"`
	Envs map[string]string `json:"envs,omitempty"`
	Cwd  *string           `json:"cwd,omitempty"`
}

// PTYSize is process.PTY.Size.
type PTYSize struct {
	Cols uint32 `json:"cols"`
	Rows uint32 `json:"rows"`
}

// PTY is process.PTY.
type PTY struct {
	Size *PTYSize `json:"size,omitempty"`
}

// StartRequest is process.StartRequest.
type StartRequest struct {
	Process *ProcessConfig `json:"process,omitempty"`
	PTY     *PTY           `json:"pty,omitempty"`
	Tag     *string        `json:"tag,omitempty"`
	// Stdin keeps standard input open; absent means open (envd before
	// 0.3.0 always kept it open, and SDKs that know the field send it).
	Stdin *bool `json:"stdin,omitempty"`
}

// ProcessSelector is process.ProcessSelector (a oneof: pid or tag).
type ProcessSelector struct {
	PID *uint32 `json:"pid,omitempty"`
	Tag *string `json:"tag,omitempty"`
}

// ConnectRequest is process.ConnectRequest.
type ConnectRequest struct {
	Process *ProcessSelector `json:"process,omitempty"`
}

// StartEvent is process.ProcessEvent.StartEvent.
type StartEvent struct {
	PID uint32 `json:"pid"`
}

// DataEvent is process.ProcessEvent.DataEvent (a oneof).
type DataEvent struct {
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	PTY    []byte `json:"pty,omitempty"`
}

// EndEvent is process.ProcessEvent.EndEvent: exitCode is a sint32 (absent
// means 0), status is Go's os.ProcessState.String() as envd sends it.
type EndEvent struct {
	ExitCode int32   `json:"exitCode,omitempty"`
	Exited   bool    `json:"exited,omitempty"`
	Status   string  `json:"status,omitempty"`
	Error    *string `json:"error,omitempty"`
}

// Empty is any message without fields (KeepAlive, the empty responses).
type Empty struct{}

// ProcessEvent is process.ProcessEvent (a oneof).
type ProcessEvent struct {
	Start     *StartEvent `json:"start,omitempty"`
	Data      *DataEvent  `json:"data,omitempty"`
	End       *EndEvent   `json:"end,omitempty"`
	Keepalive *Empty      `json:"keepalive,omitempty"`
}

// ProcessStreamResponse is process.StartResponse and
// process.ConnectResponse (the same shape).
type ProcessStreamResponse struct {
	Event *ProcessEvent `json:"event,omitempty"`
}

// ProcessInfo is process.ProcessInfo.
type ProcessInfo struct {
	Config *ProcessConfig `json:"config,omitempty"`
	PID    uint32         `json:"pid"`
	Tag    *string        `json:"tag,omitempty"`
}

// ListResponse is process.ListResponse.
type ListResponse struct {
	Processes []ProcessInfo `json:"processes"`
}

// ProcessInput is process.ProcessInput (a oneof).
type ProcessInput struct {
	Stdin []byte `json:"stdin,omitempty"`
	PTY   []byte `json:"pty,omitempty"`
}

// SendInputRequest is process.SendInputRequest.
type SendInputRequest struct {
	Process *ProcessSelector `json:"process,omitempty"`
	Input   *ProcessInput    `json:"input,omitempty"`
}

// SendSignalRequest is process.SendSignalRequest.
type SendSignalRequest struct {
	Process *ProcessSelector `json:"process,omitempty"`
	Signal  Signal           `json:"signal"`
}

// CloseStdinRequest is process.CloseStdinRequest.
type CloseStdinRequest struct {
	Process *ProcessSelector `json:"process,omitempty"`
}

// UpdateRequest is process.UpdateRequest.
type UpdateRequest struct {
	Process *ProcessSelector `json:"process,omitempty"`
	PTY     *PTY             `json:"pty,omitempty"`
}

// Signal is process.Signal: its values are Linux signal numbers
// (SIGNAL_SIGTERM = 15, SIGNAL_SIGKILL = 9).
type Signal int32

// signalNames are process.Signal's value names.
var signalNames = map[string]Signal{"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9}

// UnmarshalJSON takes the value's name or its number, as proto3 JSON
// allows.
func (s *Signal) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err == nil {
		v, ok := signalNames[name]
		if !ok {
			return fmt.Errorf("signal: %q: want SIGNAL_SIGTERM or SIGNAL_SIGKILL", name)
		}
		*s = v
		return nil
	}
	var n int32
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("signal: %s: want a name or a number", b)
	}
	*s = Signal(n)
	return nil
}

// File types (filesystem.FileType).
const (
	FileTypeUnspecified = "FILE_TYPE_UNSPECIFIED"
	FileTypeFile        = "FILE_TYPE_FILE"
	FileTypeDirectory   = "FILE_TYPE_DIRECTORY"
	FileTypeSymlink     = "FILE_TYPE_SYMLINK"
)

// Event types (filesystem.EventType).
const (
	EventTypeCreate = "EVENT_TYPE_CREATE"
	EventTypeWrite  = "EVENT_TYPE_WRITE"
	EventTypeRemove = "EVENT_TYPE_REMOVE"
	EventTypeRename = "EVENT_TYPE_RENAME"
	EventTypeChmod  = "EVENT_TYPE_CHMOD"
)

// Timestamp is google.protobuf.Timestamp in proto3 JSON: RFC 3339 in UTC
// with nine fractional digits.
type Timestamp time.Time

// timestampLayout is proto3 JSON's Timestamp form.
const timestampLayout = "2006-01-02T15:04:05.000000000Z"

// MarshalJSON writes the timestamp in UTC.
func (t Timestamp) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(time.Time(t).UTC().Format(timestampLayout))), nil
}

// UnmarshalJSON reads any RFC 3339 time.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return err
	}
	*t = Timestamp(v)
	return nil
}

// EntryInfo is filesystem.EntryInfo (size is an int64: a JSON string).
type EntryInfo struct {
	Name          string            `json:"name"`
	Type          string            `json:"type"`
	Path          string            `json:"path"`
	Size          int64             `json:"size,string"`
	Mode          uint32            `json:"mode"`
	Permissions   string            `json:"permissions"`
	Owner         string            `json:"owner"`
	Group         string            `json:"group"`
	ModifiedTime  *Timestamp        `json:"modifiedTime,omitempty"`
	SymlinkTarget *string           `json:"symlinkTarget,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
}

// PathRequest is filesystem.StatRequest, MakeDirRequest and
// RemoveRequest.
type PathRequest struct {
	Path string `json:"path"`
}

// EntryResponse is filesystem.StatResponse, MakeDirResponse and
// MoveResponse.
type EntryResponse struct {
	Entry *EntryInfo `json:"entry,omitempty"`
}

// MoveRequest is filesystem.MoveRequest.
type MoveRequest struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

// ListDirRequest is filesystem.ListDirRequest.
type ListDirRequest struct {
	Path  string `json:"path"`
	Depth uint32 `json:"depth,omitempty"`
}

// ListDirResponse is filesystem.ListDirResponse.
type ListDirResponse struct {
	Entries []EntryInfo `json:"entries"`
}

// WatchDirRequest is filesystem.WatchDirRequest.
type WatchDirRequest struct {
	Path               string `json:"path"`
	Recursive          bool   `json:"recursive,omitempty"`
	IncludeEntry       bool   `json:"includeEntry,omitempty"`
	AllowNetworkMounts bool   `json:"allowNetworkMounts,omitempty"`
}

// FilesystemEvent is filesystem.FilesystemEvent.
type FilesystemEvent struct {
	Name  string     `json:"name"`
	Type  string     `json:"type"`
	Entry *EntryInfo `json:"entry,omitempty"`
}

// WatchDirResponse is filesystem.WatchDirResponse (a oneof).
type WatchDirResponse struct {
	Start      *Empty           `json:"start,omitempty"`
	Filesystem *FilesystemEvent `json:"filesystem,omitempty"`
	Keepalive  *Empty           `json:"keepalive,omitempty"`
}

// jsonCodec is the Connect codec named "json" (Content-Type
// application/json for unary calls, application/connect+json for
// streams) over encoding/json, for the hand-written messages above. It
// replaces connect-go's own "json" codec, which needs generated protobuf
// messages.
type jsonCodec struct{}

func (jsonCodec) Name() string { return "json" }

func (jsonCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

func (jsonCodec) Unmarshal(data []byte, v any) error {
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil // proto3 JSON: an empty body is the empty message
	}
	return json.Unmarshal(data, v)
}

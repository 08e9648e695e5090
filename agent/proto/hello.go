package proto

import (
	"encoding/json"
	"fmt"
	"slices"
)

// Magic opens every Hello, so that a peer that is not an Ember agent (or
// a stray byte stream) is told apart at once.
const Magic = "ember-agent"

// Protocol versions this package speaks. A client offers [MinVersion,
// Version]; the agent answers the highest version both speak. Version 1
// is this package's frames, operations and messages.
const (
	Version    = 1
	MinVersion = 1
)

// Port is the agent's AF_VSOCK port in the guest. Through Ember's hybrid
// vsock the host reaches it with "CONNECT 1024\n" on the VM's uds_path.
// 1024 is the first port outside the privileged range, and the one
// Firecracker's and Kata's examples use for their agents.
const Port = 1024

// Features an agent may announce in its [HelloReply]. A request field or
// frame whose meaning must not be dropped by an older agent (which ignores
// unknown JSON fields) is sent only when the agent announced its feature.
const (
	FeatureExec     = "exec"             // exec.* with pipes, reattach and replay
	FeatureExecTTY  = "exec.tty"         // exec.start with a pseudo-terminal
	FeatureFiles    = "fs"               // fs.stat, list, mkdir, move, remove, read, write
	FeatureFilesTar = "fs.tar"           // fs.read and fs.write with FormatTar
	FeatureWatch    = "fs.watch"         // fs.watch, recursive
	FeatureRestore  = "restore"          // sys.restore: clock, entropy, generation, metadata
	FeatureNetwork  = "restore.network"  // sys.restore's network step
	FeatureHostname = "restore.hostname" // sys.restore's hostname step
)

// Hello is the client's first frame.
type Hello struct {
	Magic string `json:"magic"`
	// Version is the highest protocol version the client speaks,
	// MinVersion the lowest it accepts.
	Version    int `json:"version"`
	MinVersion int `json:"min_version"`
	// Features the client uses (informational: the agent logs them).
	Features []string `json:"features,omitempty"`
	// Client names the client's software, for the agent's log.
	Client string `json:"client,omitempty"`
}

// HelloReply is the agent's answer. With Error set, the agent closes the
// connection after sending it.
type HelloReply struct {
	Magic string `json:"magic"`
	// Version is the protocol version of the connection: the highest both
	// speak.
	Version int `json:"version"`
	// Agent names the agent's build.
	Agent string `json:"agent"`
	// Features are what this agent implements, Ops the operations it
	// serves; a client checks them before relying on anything newer than
	// protocol version 1.
	Features []string `json:"features"`
	Ops      []string `json:"ops"`
	// Generation is the guest's restore generation (see [Restore]).
	Generation uint64 `json:"generation"`
	Error      *Error `json:"error,omitempty"`
}

// Supports says whether the agent announced feature.
func (h HelloReply) Supports(feature string) bool { return slices.Contains(h.Features, feature) }

// Serves says whether the agent announced operation op.
func (h HelloReply) Serves(op string) bool { return slices.Contains(h.Ops, op) }

// Negotiate picks the version of a connection between a client offering
// [h.MinVersion, h.Version] and an agent speaking [minV, maxV].
func Negotiate(h *Hello, minV, maxV int) (int, error) {
	if h.Magic != Magic {
		return 0, Errorf(CodeInvalid, "hello: magic %q, want %q (is this an Ember agent client?)", h.Magic, Magic)
	}
	if h.MinVersion <= 0 || h.Version < h.MinVersion {
		return 0, Errorf(CodeInvalid, "hello: versions %d..%d make no sense", h.MinVersion, h.Version)
	}
	v := min(h.Version, maxV)
	if v < h.MinVersion || v < minV {
		return 0, Errorf(CodeUnsupported, "hello: client speaks protocol versions %d..%d, this agent %d..%d", h.MinVersion, h.Version, minV, maxV)
	}
	return v, nil
}

// Open is the payload of an Open frame.
type Open struct {
	// Op is the operation (Op* constants).
	Op string `json:"op"`
	// Req is the operation's request, a JSON object (absent: all
	// defaults).
	Req json.RawMessage `json:"req,omitempty"`
}

// End is the payload of an End frame that carries an error.
type End struct {
	Error *Error `json:"error,omitempty"`
}

// DecodeJSON decodes a message payload into v. Unknown fields are
// ignored: a newer peer may send fields an older one does not know (see
// the package documentation for the rule that keeps that safe).
func DecodeJSON(data []byte, v any) error {
	if len(data) == 0 {
		data = []byte("{}")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return Errorf(CodeInvalid, "decoding %T: %v", v, err)
	}
	return nil
}

// EncodeMessage encodes v for a Msg frame and checks it fits.
func EncodeMessage(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding %T: %w", v, err)
	}
	if len(b) > MaxMessage {
		return nil, Errorf(CodeExhausted, "%T: %d bytes encoded, more than a message may hold (%d)", v, len(b), MaxMessage)
	}
	return b, nil
}

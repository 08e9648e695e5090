package wire

import "github.com/embervm/ember/agent/proto"

// Log sources.
const (
	LogConsole = "console"
	LogVMM     = "vmm"
)

// ExecRequest is an exec in a sandbox.
type ExecRequest struct {
	Args []string          `json:"args"`
	Env  map[string]string `json:"env,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
	User string            `json:"user,omitempty"`
	// Stdin, if set, is the process's whole standard input (then EOF).
	Stdin []byte `json:"stdin,omitempty"`
	// Tag names the process for a later attach (default: "exec-" and
	// random digits); it must be unique among the sandbox's processes.
	Tag string `json:"tag,omitempty"`
	// TTY, if set, runs the process on a new terminal of this size (its
	// output all comes as stdout).
	TTY *proto.TTYSize `json:"tty,omitempty"`
}

// ExecStarted is the first thing an exec or attach reports: the process
// and the output offset its stream starts at.
type ExecStarted struct {
	PID  int    `json:"pid"`
	Tag  string `json:"tag"`
	From int64  `json:"from"`
}

// ExecEvent is one line of an exec's answer.
type ExecEvent struct {
	// Started comes first: the process's pid and tag (to attach to it
	// again) and the output offset the stream starts at. The offset of
	// later output is that plus the bytes of stdout and stderr before it.
	Started *ExecStarted `json:"started,omitempty"`
	Stdout  []byte       `json:"stdout,omitempty"`
	Stderr  []byte       `json:"stderr,omitempty"`
	Exit    *ExitStatus  `json:"exit,omitempty"`
	Error   string       `json:"error,omitempty"`
}

// ExitStatus is a process's end.
type ExitStatus struct {
	Code   int `json:"code"`
	Signal int `json:"signal,omitempty"`
	// OOMKilled: the guest's OOM killer ended the process (reason "oom").
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Reason is "exit", "signal" or "oom".
	Reason string `json:"reason"`
}

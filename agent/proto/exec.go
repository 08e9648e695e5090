package proto

import (
	"fmt"
	"strings"
)

// Operations of protocol version 1. "Unary" ones answer with one Msg and
// an End; "stream" ones send several Msg or Data frames first.
const (
	// OpExecStart (stream): start a process ([ExecStart]) and attach to
	// it, as [OpExecAttach] from offset 0.
	OpExecStart = "exec.start"
	// OpExecAttach (stream): reattach to a process ([ExecAttach]): an
	// [ExecEvent] with Attached, the output from the requested offset as
	// Data frames (replayed from the buffer, then as produced), Gap events
	// where output was dropped, and an ExecEvent with Exit at the end. The
	// client sends stdin as Data on ChanStdin (Close for EOF) and
	// acknowledgements as [ExecControl] messages.
	OpExecAttach = "exec.attach"
	// OpExecList (stream): one [ProcessInfo] message per process the
	// agent knows (running, or finished and not yet released).
	OpExecList = "exec.list"
	// OpExecInput (unary): write to a process's stdin ([ExecInput]).
	OpExecInput = "exec.input"
	// OpExecSignal (unary): signal a process group ([ExecSignal]).
	OpExecSignal = "exec.signal"
	// OpExecResize (unary): resize a process's terminal ([ExecResize]).
	OpExecResize = "exec.resize"
	// OpExecRelease (unary): forget a finished process and its buffered
	// output ([ProcessRef]).
	OpExecRelease = "exec.release"

	OpStat   = "fs.stat"   // unary: [PathRequest] → [Entry]
	OpList   = "fs.list"   // stream: [ListRequest] → [ListBatch] messages
	OpMkdir  = "fs.mkdir"  // unary: [MkdirRequest] → [Entry]
	OpMove   = "fs.move"   // unary: [MoveRequest] → [Entry]
	OpRemove = "fs.remove" // unary: [PathRequest] → {}
	// OpRead (stream): [ReadRequest] → an [Entry] message, then the file
	// or a tar of the directory as Data on ChanBody; the End says whether
	// all of it came.
	OpRead = "fs.read"
	// OpWrite (stream): [WriteRequest], then the contents as Data on
	// ChanBody from the client, Close at the end → an [Entry] message.
	OpWrite = "fs.write"
	// OpWatch (stream): [WatchRequest] → a [WatchEvent] with Started once
	// the watches are set, then one per change, until the client ends
	// the stream.
	OpWatch = "fs.watch"

	OpHealth  = "sys.health"  // unary: {} → [Health]
	OpRestore = "sys.restore" // unary: [Restore] → [RestoreReply]
)

// Limits of requests.
const (
	// MaxArgs bounds a command line's arguments and MaxEnv its environment
	// entries (Linux's own limit is on their total size, ARG_MAX, which
	// MaxFrame already bounds).
	MaxArgs = 1 << 16
	MaxEnv  = 1 << 16
	// MaxTagLen bounds a process tag.
	MaxTagLen = 256
	// MinOutputBuffer and MaxOutputBuffer bound [ExecStart.BufferSize];
	// DefaultOutputBuffer is used when it is 0. The minimum holds a full
	// pipe (64 KiB on Linux), the maximum keeps one process from taking a
	// large part of a small guest's memory.
	MinOutputBuffer     = 64 << 10
	DefaultOutputBuffer = 1 << 20
	MaxOutputBuffer     = 64 << 20
	// MaxPathLen is PATH_MAX (include/uapi/linux/limits.h).
	MaxPathLen = 4096
)

// TTYSize is a terminal's size in characters.
type TTYSize struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// ExecStart starts a process.
type ExecStart struct {
	// Args is the command line; Args[0] without a slash is looked up in
	// the PATH of the environment.
	Args []string `json:"args"`
	// Env is added to the agent's base environment (the image's, with
	// PATH, HOME and HOSTNAME completed), replacing keys it has.
	Env map[string]string `json:"env,omitempty"`
	// Cwd is the working directory; empty: the image's, else the user's
	// home, else "/".
	Cwd string `json:"cwd,omitempty"`
	// User is who runs it, as an OCI image's User ("", "name", "uid",
	// "name:group", "uid:gid"); empty: the agent's default (the image's
	// user).
	User string `json:"user,omitempty"`
	// Tag, if set, names the process for attach, signal and the rest; it
	// must be unique among the processes the agent knows.
	Tag string `json:"tag,omitempty"`
	// TTY, if set, runs the process on a new pseudo-terminal of this size
	// (stdin, stdout and stderr are the terminal; its output comes on
	// ChanStdout) as the leader of a session with it as controlling
	// terminal.
	TTY *TTYSize `json:"tty,omitempty"`
	// Stdin keeps standard input open for the client (a pipe); without it
	// stdin is /dev/null. A terminal always takes input.
	Stdin bool `json:"stdin,omitempty"`
	// BufferSize is the output buffer in bytes (0: DefaultOutputBuffer);
	// see [ExecAttach] for what it holds.
	BufferSize int `json:"buffer_size,omitempty"`
	// Overwrite drops the oldest unacknowledged output when the buffer is
	// full, instead of blocking the process's writes until a client
	// acknowledges (the default). For chatty background processes nobody
	// reads.
	Overwrite bool `json:"overwrite,omitempty"`
	// AutoAck treats output as acknowledged once sent on this stream.
	AutoAck bool `json:"auto_ack,omitempty"`
	// Container, if set, runs the process in that container (see
	// [OpContainerCreate]): chrooted into its root filesystem, with
	// Cwd and User taken there. The container's first process also gets
	// its own mount, PID and UTS namespaces. Sent only to an agent that
	// announces [FeatureContainer].
	Container string `json:"container,omitempty"`
}

// Validate checks the fields the agent cannot act on.
func (r *ExecStart) Validate() error {
	if len(r.Args) == 0 || r.Args[0] == "" {
		return Errorf(CodeInvalid, "args: empty command")
	}
	if len(r.Args) > MaxArgs {
		return Errorf(CodeInvalid, "args: %d arguments (limit %d)", len(r.Args), MaxArgs)
	}
	for i, a := range r.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return Errorf(CodeInvalid, "args[%d]: contains a NUL byte", i)
		}
	}
	if len(r.Env) > MaxEnv {
		return Errorf(CodeInvalid, "env: %d entries (limit %d)", len(r.Env), MaxEnv)
	}
	for k, v := range r.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return Errorf(CodeInvalid, "env: %q: a key must be non-empty without '=' or NUL, a value without NUL", k)
		}
	}
	if r.Cwd != "" {
		if err := CheckPath("cwd", r.Cwd); err != nil {
			return err
		}
	}
	if strings.IndexByte(r.User, 0) >= 0 {
		return Errorf(CodeInvalid, "user: contains a NUL byte")
	}
	if err := checkTag(r.Tag); err != nil {
		return err
	}
	if r.Container != "" {
		if err := CheckID("container", r.Container); err != nil {
			return err
		}
	}
	if r.TTY != nil && (r.TTY.Cols == 0 || r.TTY.Rows == 0) {
		return Errorf(CodeInvalid, "tty: size %dx%d: both must be positive", r.TTY.Cols, r.TTY.Rows)
	}
	if r.BufferSize != 0 && (r.BufferSize < MinOutputBuffer || r.BufferSize > MaxOutputBuffer) {
		return Errorf(CodeInvalid, "buffer_size: %d: must be 0 (the default, %d) or between %d and %d", r.BufferSize, DefaultOutputBuffer, MinOutputBuffer, MaxOutputBuffer)
	}
	return nil
}

func checkTag(tag string) error {
	if len(tag) > MaxTagLen {
		return Errorf(CodeInvalid, "tag: %d bytes (limit %d)", len(tag), MaxTagLen)
	}
	if strings.IndexByte(tag, 0) >= 0 {
		return Errorf(CodeInvalid, "tag: contains a NUL byte")
	}
	return nil
}

// ProcessRef names a process by PID or by tag (one of them).
type ProcessRef struct {
	PID int    `json:"pid,omitempty"`
	Tag string `json:"tag,omitempty"`
}

// Validate checks that exactly one of PID and Tag is set.
func (r *ProcessRef) Validate() error {
	switch {
	case r.PID < 0:
		return Errorf(CodeInvalid, "pid: %d", r.PID)
	case (r.PID == 0) == (r.Tag == ""):
		return Errorf(CodeInvalid, "process: give a pid or a tag (one of them)")
	}
	return checkTag(r.Tag)
}

func (r ProcessRef) String() string {
	if r.Tag != "" {
		return fmt.Sprintf("process tagged %q", r.Tag)
	}
	return fmt.Sprintf("process %d", r.PID)
}

// ExecAttach attaches to a running or finished process.
//
// Output is one sequence of bytes per process (stdout and stderr chunks in
// the order the agent read them) numbered by offset from 0. The agent keeps
// what no client has acknowledged, up to the process's buffer size; by
// default a full buffer stops reading the process's output, so the
// process blocks in write(2) until a client acknowledges, and nothing is
// lost. An attachment replays the buffer from From, then streams output as
// it is produced.
type ExecAttach struct {
	ProcessRef
	// From is the output offset to replay from: what the client last had
	// (0: all that is buffered; -1: only output produced from now on). If
	// the buffer no longer holds it, a Gap event says what was lost.
	From int64 `json:"from"`
	// AutoAck treats output as acknowledged once sent on this stream.
	AutoAck bool `json:"auto_ack,omitempty"`
	// NoOutput sends no output: the stream only reports the exit (a wait).
	NoOutput bool `json:"no_output,omitempty"`
}

// Validate checks the request.
func (r *ExecAttach) Validate() error {
	if r.From < -1 {
		return Errorf(CodeInvalid, "from: %d", r.From)
	}
	return r.ProcessRef.Validate()
}

// ExecEvent is an agent message on an exec stream; one field is set.
type ExecEvent struct {
	// Attached comes first.
	Attached *Attached `json:"attached,omitempty"`
	// Gap says output [From, To) was dropped before this stream sent it
	// (acknowledged by another client, or overwritten).
	Gap *Gap `json:"gap,omitempty"`
	// Exit comes last, after all output.
	Exit *ExitStatus `json:"exit,omitempty"`
}

// Attached is the first event of an exec stream.
type Attached struct {
	PID int    `json:"pid"`
	Tag string `json:"tag,omitempty"`
	// From is the offset of the first output byte this stream sends.
	From int64 `json:"from"`
}

// Gap is dropped output.
type Gap struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128+Signal when a signal killed it (as a
	// shell reports it).
	Code int `json:"code"`
	// Signal is the signal that killed it, 0 if it exited.
	Signal int `json:"signal,omitempty"`
	// CoreDumped says the kernel dumped its core.
	CoreDumped bool `json:"core_dumped,omitempty"`
	// OOMKilled says the guest kernel's OOM killer killed it (its
	// "Killed process PID" line is in the kernel log).
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Output is the total output the process produced, in bytes: the
	// offset after the last byte.
	Output int64 `json:"output"`
}

// ExecControl is a client message on an exec stream.
type ExecControl struct {
	// Ack acknowledges output before this offset: the agent may drop it.
	Ack *int64 `json:"ack,omitempty"`
}

// ProcessInfo describes a process in [OpExecList].
type ProcessInfo struct {
	PID  int               `json:"pid"`
	Tag  string            `json:"tag,omitempty"`
	Args []string          `json:"args"`
	Env  map[string]string `json:"env,omitempty"`
	Cwd  string            `json:"cwd"`
	User string            `json:"user,omitempty"`
	TTY  bool              `json:"tty,omitempty"`
	// Container is the container it runs in ([ExecStart.Container]).
	Container string `json:"container,omitempty"`
	// Exit is set once the process has exited.
	Exit *ExitStatus `json:"exit,omitempty"`
	// Output is the state of its buffer: Start is the oldest offset held,
	// End the offset after the newest, so End-Start bytes are buffered.
	Output OutputState `json:"output"`
}

// OutputState is a process's output buffer.
type OutputState struct {
	Start    int64 `json:"start"`
	End      int64 `json:"end"`
	Capacity int   `json:"capacity"`
	// Dropped is how much output was overwritten unacknowledged.
	Dropped int64 `json:"dropped,omitempty"`
}

// ExecInput writes to a process's stdin.
type ExecInput struct {
	ProcessRef
	Data []byte `json:"data,omitempty"`
	// EOF closes stdin after Data (on a terminal: sends its EOF
	// character, ^D).
	EOF bool `json:"eof,omitempty"`
}

// ExecSignal sends a signal.
type ExecSignal struct {
	ProcessRef
	// Signal is the Linux signal number (SIGKILL is 9).
	Signal int `json:"signal"`
	// LeaderOnly signals the process itself rather than its process group
	// (every process it started that did not leave the group).
	LeaderOnly bool `json:"leader_only,omitempty"`
}

// MaxSignal is the highest Linux signal number (SIGRTMAX, _NSIG-1).
const MaxSignal = 64

// Validate checks the request.
func (r *ExecSignal) Validate() error {
	if r.Signal <= 0 || r.Signal > MaxSignal {
		return Errorf(CodeInvalid, "signal: %d: want 1..%d", r.Signal, MaxSignal)
	}
	return r.ProcessRef.Validate()
}

// ExecResize resizes a process's terminal.
type ExecResize struct {
	ProcessRef
	TTYSize
}

// Validate checks the request.
func (r *ExecResize) Validate() error {
	if r.Cols == 0 || r.Rows == 0 {
		return Errorf(CodeInvalid, "size %dx%d: both must be positive", r.Cols, r.Rows)
	}
	return r.ProcessRef.Validate()
}

// Empty is the reply of operations that return nothing.
type Empty struct{}

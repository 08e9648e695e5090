package wire

import (
	"time"
)

// Readiness kinds (ReadyCheck.Kind).
const (
	// ReadyAgent waits until ember-agent answers on vsock.
	ReadyAgent = "agent"
	// ReadyBootTimer waits for the guest's write to the boot-timer device.
	ReadyBootTimer = "boot-timer"
	// ReadyConsole waits for ReadyCheck.Console on the guest's console.
	ReadyConsole = "console"
)

// Template states.
const (
	TemplateBuilding = "building"
	TemplateReady    = "ready"
)

// Sandbox states.
const (
	StateStarting = "starting"
	StateRunning  = "running"
	StatePaused   = "paused"
	StateExited   = "exited"
)

// Exit reasons (Exit.Reason).
const (
	ExitKilled     = "killed"
	ExitTimeout    = "timeout"
	ExitGuestPanic = "guest_panic"
	ExitWorkload   = "exit"
	ExitVMMCrash   = "vmm_crash"
	// ExitOOM: the guest's OOM killer ended the workload (its report is
	// on the console) and the guest went down.
	ExitOOM = "oom"
)

// Limits of a request.
const (
	// MaxVCPUs is Ember's limit (README: 1-32 vCPUs).
	MaxVCPUs = 32
	// MinMemoryMiB and MaxMemoryMiB bound a template's memory: a tiny
	// guest runs in 1 MiB past its load address; 1 TiB is far beyond a
	// sandbox.
	MinMemoryMiB = 2
	MaxMemoryMiB = 1 << 20
	// DefaultMemoryMiB is Ember's default (vmm.DefaultMemMiB).
	DefaultMemoryMiB = 128
	// DefaultReadyTimeout bounds a readiness wait when the request names
	// none.
	DefaultReadyTimeout = 60 * time.Second
	// MaxIDLen bounds a template's name.
	MaxIDLen = 64
	// MaxMetadata bounds a sandbox's metadata and env entries.
	MaxMetadata = 1024
)

// ReadyCheck says when a booted or restored guest is ready.
type ReadyCheck struct {
	// Kind is ReadyAgent, ReadyBootTimer or ReadyConsole.
	Kind string `json:"kind"`
	// Console is the text ReadyConsole waits for on the template's boot;
	// RestoredConsole, if set, what a restored sandbox must print (empty:
	// a sandbox is ready when its snapshot is loaded and resumed).
	Console         string `json:"console,omitempty"`
	RestoredConsole string `json:"restored_console,omitempty"`
	// TimeoutMS bounds the wait (default DefaultReadyTimeout).
	TimeoutMS int `json:"timeout_ms,omitempty"`
}

// TemplateSpec is the body of POST /templates.
type TemplateSpec struct {
	// Name is the template's ID (default: generated).
	Name string `json:"name,omitempty"`
	// Image, if set, names an image of Ember's store (ember image ls): the
	// guest boots it with ember-init serving the agent (ready.kind must be
	// "agent"), its layers as shared read-only drives and a writable
	// overlay; Initrd and Rootfs must then be empty.
	Image string `json:"image,omitempty"`
	// Kernel is the guest kernel (or tiny guest) to boot; Initrd an
	// optional initrd; BootArgs the kernel command line (default
	// Ember's).
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	BootArgs string `json:"boot_args,omitempty"`
	// Rootfs, if set, is a raw root filesystem, the template's read-only
	// base: the template writes to an overlay over it, each sandbox to its
	// own overlay over the template's.
	Rootfs string `json:"rootfs,omitempty"`
	// VCPUs (default 1) and MemoryMiB (default DefaultMemoryMiB).
	VCPUs     int `json:"vcpus,omitempty"`
	MemoryMiB int `json:"memory_mib,omitempty"`
	// Start is a command the agent starts once the guest is ready, before
	// the snapshot (needs Ready.Kind "agent").
	Start []string `json:"start,omitempty"`
	// Ready is the readiness check.
	Ready ReadyCheck `json:"ready"`
	// Network gives the guest one network interface (eth0; needs emberd's
	// networking and Ready.Kind "agent", which addresses it): the
	// template's own while it builds (so a start command has the
	// network), each sandbox's own after a restore.
	Network bool `json:"network,omitempty"`
}

// TemplateDrive is a drive of a template: its overlay over its base.
type TemplateDrive struct {
	ID string `json:"id"`
	// Overlay is the drive's file: a copy-on-write overlay over Base, or,
	// for a ReadOnly drive, the shared file itself.
	Overlay  string `json:"overlay"`
	Base     string `json:"base,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
	Root     bool   `json:"root,omitempty"`
}

// Template is a template's record.
type Template struct {
	ID        string          `json:"id"`
	Spec      TemplateSpec    `json:"spec"`
	State     string          `json:"state"`
	Dir       string          `json:"dir"`
	Snapshot  string          `json:"snapshot"`
	MemFile   string          `json:"mem_file"`
	Drives    []TemplateDrive `json:"drives,omitempty"`
	Vsock     bool            `json:"vsock,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	// PID and PIDStart are the building ember's (see Sandbox.PID).
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`
	// BuildMS is how long the build took (boot, ready, snapshot).
	BuildMS float64 `json:"build_ms"`
}

// SandboxSpec is the body of POST /sandboxes.
type SandboxSpec struct {
	// Template is the template's ID.
	Template string `json:"template"`
	// TimeoutS, if not 0, ends the sandbox (reason "timeout") this many
	// seconds of running after its creation.
	TimeoutS int `json:"timeout_s,omitempty"`
	// Env is added to every exec's environment.
	Env map[string]string `json:"env,omitempty"`
	// Metadata is stored with the sandbox and, with an agent, delivered to
	// the guest (/run/ember/metadata.json).
	Metadata map[string]string `json:"metadata,omitempty"`
	// Network configures the sandbox's network when its template has one.
	Network *NetworkSpec `json:"network,omitempty"`
}

// Timings are a create's phases, in milliseconds.
type Timings struct {
	// RestoreMS: from the request until the snapshot load answered.
	RestoreMS float64 `json:"restore_ms"`
	// AgentReadyMS: from the load's answer until the readiness check
	// passed (with an agent: including the restore transaction).
	AgentReadyMS float64 `json:"agent_ready_ms"`
	// NetworkMS: the network's setup (namespace, tap, address, policy),
	// part of RestoreMS.
	NetworkMS float64 `json:"network_ms"`
	// TotalMS: from the request until the sandbox was running.
	TotalMS float64 `json:"total_ms"`
}

// Exit is how a sandbox ended.
type Exit struct {
	// Reason is one of ExitKilled, ExitTimeout, ExitGuestPanic, ExitOOM,
	// ExitWorkload, ExitVMMCrash.
	Reason string `json:"reason"`
	// Code is ember's exit status, Signal the signal that ended it, when
	// known (nil: ember ended while emberd was not its parent).
	Code   *int `json:"code,omitempty"`
	Signal int  `json:"signal,omitempty"`
	// Message says more (the panic line, ember's last log line).
	Message string    `json:"message,omitempty"`
	At      time.Time `json:"at"`
	// Crash says a crash record was kept (GET /sandboxes/{id}/crash):
	// every end but "killed" and "exit" keeps one.
	Crash bool `json:"crash,omitempty"`
}

// Sandbox is a sandbox's record.
type Sandbox struct {
	ID       string            `json:"id"`
	Template string            `json:"template"`
	State    string            `json:"state"`
	Env      map[string]string `json:"env,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// PID is the ember process; PIDStart its start time in clock ticks
	// since boot (/proc/PID/stat field 22).
	PID      int    `json:"pid"`
	PIDStart uint64 `json:"pid_start"`
	Socket   string `json:"socket"`
	Dir      string `json:"dir"`
	// Vsock is the guest's hybrid vsock socket, when the template has an
	// agent.
	Vsock string `json:"vsock,omitempty"`
	// Generation is the restore generation the agent was given.
	Generation uint64    `json:"generation,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	// Deadline is when a running sandbox times out (nil: never);
	// RemainingMS is the time left of a paused one.
	Deadline    *time.Time `json:"deadline,omitempty"`
	RemainingMS int64      `json:"remaining_ms,omitempty"`
	Timings     Timings    `json:"timings"`
	Exit        *Exit      `json:"exit,omitempty"`
	// Network is its network, when its template has one.
	Network *SandboxNetwork `json:"network,omitempty"`
}

// IDPrefix starts every sandbox ID.
const IDPrefix = "sb-"

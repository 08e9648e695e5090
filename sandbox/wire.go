package sandbox

import "github.com/embervm/ember/sandbox/wire"

// The API's bodies and constants live in package wire, which links only
// the standard library (emberd's client and the ember CLI use it); the
// manager names them here as before. See package wire for their docs.
type (
	ReadyCheck     = wire.ReadyCheck
	TemplateSpec   = wire.TemplateSpec
	TemplateDrive  = wire.TemplateDrive
	Template       = wire.Template
	SandboxSpec    = wire.SandboxSpec
	Timings        = wire.Timings
	Exit           = wire.Exit
	Sandbox        = wire.Sandbox
	NetworkSpec    = wire.NetworkSpec
	SandboxNetwork = wire.SandboxNetwork
	NetworkState   = wire.NetworkState
	Crash          = wire.Crash
	APIKey         = wire.APIKey
	NewAPIKey      = wire.NewAPIKey
	ExecRequest    = wire.ExecRequest
	ExecStarted    = wire.ExecStarted
	Resources      = wire.Resources
	HostBudgets    = wire.HostBudgets
	Host           = wire.Host
	Usage          = wire.Usage
)

// Constants of the API (package wire).
const (
	APIKeyPrefix        = wire.APIKeyPrefix
	MaxAPIKeyName       = wire.MaxAPIKeyName
	CrashConsoleTail    = wire.CrashConsoleTail
	CrashLogTail        = wire.CrashLogTail
	CrashLogLines       = wire.CrashLogLines
	LogConsole          = wire.LogConsole
	LogVMM              = wire.LogVMM
	BudgetMemory        = wire.BudgetMemory
	BudgetVCPUs         = wire.BudgetVCPUs
	BudgetProcesses     = wire.BudgetProcesses
	BudgetFiles         = wire.BudgetFiles
	BudgetTaps          = wire.BudgetTaps
	ReadyAgent          = wire.ReadyAgent
	ReadyBootTimer      = wire.ReadyBootTimer
	ReadyConsole        = wire.ReadyConsole
	TemplateBuilding    = wire.TemplateBuilding
	TemplateReady       = wire.TemplateReady
	StateStarting       = wire.StateStarting
	StateRunning        = wire.StateRunning
	StatePaused         = wire.StatePaused
	StateExited         = wire.StateExited
	ExitKilled          = wire.ExitKilled
	ExitTimeout         = wire.ExitTimeout
	ExitGuestPanic      = wire.ExitGuestPanic
	ExitWorkload        = wire.ExitWorkload
	ExitVMMCrash        = wire.ExitVMMCrash
	ExitOOM             = wire.ExitOOM
	MaxVCPUs            = wire.MaxVCPUs
	MinMemoryMiB        = wire.MinMemoryMiB
	MaxMemoryMiB        = wire.MaxMemoryMiB
	DefaultMemoryMiB    = wire.DefaultMemoryMiB
	DefaultReadyTimeout = wire.DefaultReadyTimeout
	MaxIDLen            = wire.MaxIDLen
	MaxMetadata         = wire.MaxMetadata
	IDPrefix            = wire.IDPrefix
	MaxTimeout          = wire.MaxTimeout
)

// BudgetNames lists the budgets in the order a create checks them.
func BudgetNames() []string { return wire.BudgetNames() }

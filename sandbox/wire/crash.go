package wire

import "time"

// Crash records' bounds.
const (
	// CrashConsoleTail bounds the console kept in a crash record: enough
	// for a panic's stack and the lines before it.
	CrashConsoleTail = 64 << 10
	// CrashLogTail and CrashLogLines bound ember's log kept: enough for a
	// Go runtime's crash report of ember's goroutines.
	CrashLogTail  = 64 << 10
	CrashLogLines = 256
)

// Crash is a sandbox's crash record: what was seen when it ended
// abnormally (reasons guest_panic, oom, vmm_crash and timeout). It is kept
// in the sandbox's folder until the sandbox is forgotten.
type Crash struct {
	Sandbox  string `json:"sandbox"`
	Template string `json:"template"`
	PID      int    `json:"pid"`
	// Reason, Message, Code and Signal are the sandbox's Exit's.
	Reason     string    `json:"reason"`
	Message    string    `json:"message,omitempty"`
	Code       *int      `json:"code,omitempty"`
	Signal     int       `json:"signal,omitempty"`
	SignalName string    `json:"signal_name,omitempty"`
	At         time.Time `json:"at"`
	// Console is the guest console's last CrashConsoleTail bytes (bytes
	// that are not UTF-8 read as U+FFFD); ConsoleBytes the console's
	// whole size.
	Console      string `json:"console"`
	ConsoleBytes int64  `json:"console_bytes"`
	// EmberLog is ember's last log lines (at most CrashLogLines).
	EmberLog []string `json:"ember_log"`
}

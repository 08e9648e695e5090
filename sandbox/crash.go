package sandbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Crash records.
const (
	// crashName is the crash record's file in a sandbox's folder.
	crashName = "crash.json"
	// seccompExitCode is ember's status when its seccomp filter refused a
	// system call (seccomp.ExitCode, seccomp/trap_amd64.go).
	seccompExitCode = 148
	// crashLogContext is how many of ember's log lines before its crash
	// report a record keeps.
	crashLogContext = 16
)

// Markers of the guest console (Linux's messages).
var (
	// oomMarkers start the OOM killer's report of a victim
	// (mm/oom_kill.c, __oom_kill_process: "Out of memory: Killed process
	// %d (%s) ..."; under a memory cgroup "Memory cgroup out of memory:
	// Killed process ..."; before Linux 5.1 "Kill process") and the
	// panic it ends in when nothing is left to kill (out_of_memory:
	// "System is deadlocked on memory"; "Out of memory and no killable
	// processes...").
	oomMarkers = []string{"out of memory: Kill", "Out of memory: Kill", "Out of memory and no killable", "System is deadlocked on memory"}
)

// abnormal reports whether an end with reason keeps a crash record.
func abnormal(reason string) bool {
	switch reason {
	case ExitGuestPanic, ExitOOM, ExitVMMCrash, ExitTimeout:
		return true
	}
	return false
}

// exitOf says how l's ember ended: code is its exit status (nil: unknown,
// it was not emberd's child; negative: a signal ended it), sig the signal.
func (m *Manager) exitOf(l *live, code *int, sig int) Exit {
	e := Exit{At: time.Now(), Code: code, Signal: sig}
	if code != nil && *code < 0 {
		e.Code = nil
	}
	if l.reason != "" {
		e.Reason = l.reason
		return e
	}
	console := filepath.Join(l.sb.Dir, consoleName)
	panicLine, panicked := findLine(console, panicMarker)
	oomLine, oom := findAnyLine(console, oomMarkers)
	guestEnded := panicked || (code != nil && *code == 0 && sig == 0)
	switch {
	case oom && guestEnded:
		e.Reason, e.Message = ExitOOM, oomLine
	case panicked:
		e.Reason, e.Message = ExitGuestPanic, panicLine
	case code == nil:
		e = m.reasonUnknownStatus(l)
	case guestEnded:
		e.Reason, e.Message = ExitWorkload, "the guest reset or powered off"
	default:
		e.Reason = ExitVMMCrash
		switch {
		case sig != 0:
			e.Message = fmt.Sprintf("ember was killed by signal %d (%s)", sig, unix.SignalName(syscall.Signal(sig)))
		case *code == seccompExitCode:
			e.Message = fmt.Sprintf("ember's seccomp filter refused a system call (exit status %d)", *code)
		default:
			e.Message = fmt.Sprintf("ember exited with status %d", *code)
		}
		logTail, _, _ := tail(filepath.Join(l.sb.Dir, emberLogName), CrashLogTail)
		lines := lastLines(logTail, 1<<20)
		if i := goCrashStart(lines); i >= 0 {
			e.Message += "; its crash report: " + lines[i]
		} else if len(lines) > 0 {
			e.Message += "; its last log line: " + strings.TrimSpace(lines[len(lines)-1])
		}
	}
	return e
}

// goCrashRE starts the Go runtime's report of a crash (runtime/panic.go,
// runtime/signal_unix.go): "panic: ...", "fatal error: ...", or a signal's
// name and description ("SIGSEGV: segmentation violation").
var goCrashRE = regexp.MustCompile(`^(panic: |fatal error: |SIG[A-Z0-9]+: )`)

// goCrashStart returns the index of the last line that starts a Go
// runtime crash report, or -1.
func goCrashStart(lines []string) int {
	for i := len(lines) - 1; i >= 0; i-- {
		if goCrashRE.MatchString(lines[i]) {
			return i
		}
	}
	return -1
}

// crashLogLines picks ember's log lines for a crash record: the last
// CrashLogLines, or, when ember's Go runtime reported a crash that began
// before them (a report dumps every goroutine, the crashing one first),
// the lines from a few before the report's start.
func crashLogLines(logTail []byte) []string {
	all := lastLines(logTail, 1<<20)
	start := max(len(all)-CrashLogLines, 0)
	if i := goCrashStart(all); i >= 0 && i < start {
		start = max(i-crashLogContext, 0)
	}
	return all[start:min(start+CrashLogLines, len(all))]
}

// keepCrash writes sb's crash record for its end e into its folder.
func (m *Manager) keepCrash(sb Sandbox, e Exit) error {
	c := Crash{Sandbox: sb.ID, Template: sb.Template, PID: sb.PID, Reason: e.Reason, Message: e.Message,
		Code: e.Code, Signal: e.Signal, At: e.At}
	if e.Signal != 0 {
		c.SignalName = unix.SignalName(syscall.Signal(e.Signal))
	}
	console, size, err := tail(filepath.Join(sb.Dir, consoleName), CrashConsoleTail)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	c.Console, c.ConsoleBytes = string(console), size
	logTail, _, err := tail(filepath.Join(sb.Dir, emberLogName), CrashLogTail)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	c.EmberLog = crashLogLines(logTail)
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(sb.Dir, crashName+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(sb.Dir, crashName))
}

// Crash returns a sandbox's crash record; a sandbox without one is
// KindNotFound with a message saying why.
func (m *Manager) Crash(id string) (Crash, error) {
	sb, err := m.Sandbox(id)
	if err != nil {
		return Crash{}, err
	}
	if sb.Exit == nil {
		return Crash{}, notFound("sandbox %s has no crash record: it is %s", id, sb.State)
	}
	if !sb.Exit.Crash {
		if abnormal(sb.Exit.Reason) {
			return Crash{}, notFound("sandbox %s has no crash record: it ended with reason %q but the record could not be kept (see emberd's log)", id, sb.Exit.Reason)
		}
		return Crash{}, notFound("sandbox %s has no crash record: it ended with reason %q, which is not a crash", id, sb.Exit.Reason)
	}
	data, err := os.ReadFile(filepath.Join(sb.Dir, crashName))
	if errors.Is(err, os.ErrNotExist) {
		return Crash{}, notFound("sandbox %s has no crash record: its file %s is gone", id, filepath.Join(sb.Dir, crashName))
	}
	if err != nil {
		return Crash{}, err
	}
	var c Crash
	if err := json.Unmarshal(data, &c); err != nil {
		return Crash{}, fmt.Errorf("sandbox %s: crash record: %w", id, err)
	}
	return c, nil
}

// tail returns the last n bytes of the file at path and its size.
func tail(path string, n int64) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if st.Size() > n {
		if _, err := f.Seek(st.Size()-n, io.SeekStart); err != nil {
			return nil, 0, err
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, n))
	return data, st.Size(), err
}

// lastLines returns data's last n non-empty lines.
func lastLines(data []byte, n int) []string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		if l = strings.TrimRight(l, "\r"); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// findAnyLine returns the first line of the file at path (its last 1 MiB)
// holding one of markers.
func findAnyLine(path string, markers []string) (string, bool) {
	data, _, err := tail(path, 1<<20)
	if err != nil {
		return "", false
	}
	return scanConsole(data, markers)
}

// scanConsole returns the first line of data holding one of markers.
func scanConsole(data []byte, markers []string) (string, bool) {
	best := -1
	for _, mk := range markers {
		if i := bytes.Index(data, []byte(mk)); i >= 0 && (best < 0 || i < best) {
			best = i
		}
	}
	if best < 0 {
		return "", false
	}
	start := bytes.LastIndexByte(data[:best], '\n') + 1
	line := data[start:]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	return strings.TrimSpace(string(line)), true
}

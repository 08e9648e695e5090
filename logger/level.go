package logger

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
)

// Levels beyond slog's own. Firecracker's levels are Rust's log crate
// levels: Error, Warn, Info, Debug, Trace, plus the filter Off
// (src/vmm/src/logger/logging.rs, LevelFilter).
const (
	// LevelTrace is Firecracker's Trace: more verbose than Debug. slog's
	// levels are four apart, so Trace sits one step below Debug.
	LevelTrace = slog.LevelDebug - 4
	// LevelOff is Firecracker's Off: a handler at this level is enabled
	// for no record.
	LevelOff = slog.Level(math.MaxInt32)
)

// DefaultLevel is Firecracker's default level, Info (DEFAULT_LEVEL in
// src/vmm/src/logger/logging.rs, matching the swagger definition).
const DefaultLevel = slog.LevelInfo

// ErrInvalidLevel is returned (wrapped) by ParseLevel for an unknown name.
var ErrInvalidLevel = errors.New("invalid log level")

// ParseLevel parses one of Firecracker's level names, case-insensitively:
// Error, Warning (or Warn), Info, Debug, Trace, Off.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "error":
		return slog.LevelError, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "trace":
		return LevelTrace, nil
	case "off":
		return LevelOff, nil
	}
	return 0, fmt.Errorf("logger: %w %q: want Error, Warning, Info, Debug, Trace or Off", ErrInvalidLevel, s)
}

// LevelName returns the name Firecracker prints for a record's level with
// show_level: ERROR, WARN, INFO, DEBUG or TRACE (the Display of Rust's
// log::Level). A level between two names takes the lower one's name.
func LevelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "ERROR"
	case l >= slog.LevelWarn:
		return "WARN"
	case l >= slog.LevelInfo:
		return "INFO"
	case l >= slog.LevelDebug:
		return "DEBUG"
	}
	return "TRACE"
}

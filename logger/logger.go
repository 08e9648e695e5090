package logger

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

const (
	// DefaultID is the instance id Firecracker prints when none was given
	// (DEFAULT_INSTANCE_ID in src/vmm/src/logger/logging.rs).
	DefaultID = "anonymous-instance"
	// DefaultThread is the thread name of records without a "thread"
	// attribute: Firecracker's VMM thread is named "fc_vmm" (its API thread
	// "fc_api", its vCPU threads "fc_vcpu N").
	DefaultThread = "fc_vmm"
	// ThreadKey is the attribute whose value names the thread in the line's
	// prefix instead of being appended as key=value.
	ThreadKey = "thread"
)

// ErrConfigured is returned by Configure after a successful Configure:
// Firecracker's logger can be configured once only (docs/logger.md).
var ErrConfigured = errors.New("logger: already configured")

// Options are a Logger's settings that do not change.
type Options struct {
	// ID is the instance id printed in every line; "" prints DefaultID.
	ID string
	// Thread is the thread name of records without a "thread" attribute;
	// "" means DefaultThread.
	Thread string
	// Level is the level until Configure sets one; the zero value is
	// slog.LevelInfo, Firecracker's default.
	Level slog.Level
	// Writer receives the lines until Configure opens the configured
	// destination; nil means standard error, written without ever blocking
	// (lines that would block are dropped and counted).
	Writer io.Writer
	// ShowLevel and ShowOrigin apply until Configure sets them.
	ShowLevel, ShowOrigin bool
}

// Config is what Firecracker's PUT /logger (and its --log-path, --level,
// --show-level, --show-log-origin and --module flags) set.
type Config struct {
	// Path is the file or named pipe to write to; "" is standard output,
	// as in Firecracker.
	Path string
	// Level is one of ParseLevel's names; "" means DefaultLevel (Info).
	Level string
	// ShowLevel adds the record's level to the line's prefix.
	ShowLevel bool
	// ShowOrigin adds the record's file:line to the line's prefix.
	ShowOrigin bool
	// Module keeps only the records logged from packages whose import
	// path, or path relative to the main module (such as "vmm" or
	// "virtio/blk"), starts with it, as Firecracker's module filter keeps
	// the records whose Rust module path starts with it. Records without a
	// source position are dropped when it is set.
	Module string
}

// Logger is Ember's logging destination and settings. Its Handler may be
// used before and after Configure; all methods are safe for concurrent use.
type Logger struct {
	id, thread string
	modPath    string // main module's import path, trimmed from origins
	level      slog.LevelVar
	showLevel  atomic.Bool
	showOrigin atomic.Bool
	module     atomic.Pointer[string]
	lost       atomic.Uint64
	bufs       sync.Pool // *[]byte line buffers

	cfgMu      sync.Mutex // serializes Configure
	configured bool

	mu     sync.Mutex // guards out and closer; held while writing a line
	out    io.Writer
	closer io.Closer // the configured destination, closed by Close
}

// New returns a Logger writing to opts.Writer (standard error) until
// Configure is called.
func New(opts Options) *Logger {
	l := &Logger{id: opts.ID, thread: opts.Thread, out: opts.Writer}
	if l.id == "" {
		l.id = DefaultID
	}
	if l.thread == "" {
		l.thread = DefaultThread
	}
	if l.out == nil {
		if w, err := newFDWriter(unix.Stderr, false); err == nil {
			l.out = w
		} else {
			l.out = io.Discard // no usable standard error
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		l.modPath = bi.Main.Path
	}
	l.level.Set(opts.Level)
	l.showLevel.Store(opts.ShowLevel)
	l.showOrigin.Store(opts.ShowOrigin)
	l.bufs.New = func() any {
		b := make([]byte, 0, initialLineCap)
		return &b
	}
	return l
}

// initialLineCap is the initial capacity of a line buffer; most lines fit.
const initialLineCap = 256

// maxPooledLineCap is the largest line buffer kept for reuse, so that one
// huge record does not pin a huge buffer.
const maxPooledLineCap = 64 << 10

// Handler returns the slog.Handler writing to l.
func (l *Logger) Handler() slog.Handler {
	return &Handler{l: l}
}

// Configure applies Firecracker's logger configuration: it opens the
// destination (see Open) and sets the level, the prefix's fields and the
// module filter. It succeeds once: later calls return ErrConfigured. A call
// that fails (bad level, path that cannot be opened) changes nothing and
// does not count.
func (l *Logger) Configure(c Config) error {
	l.cfgMu.Lock()
	defer l.cfgMu.Unlock()
	if l.configured {
		return ErrConfigured
	}
	level := DefaultLevel
	if c.Level != "" {
		var err error
		if level, err = ParseLevel(c.Level); err != nil {
			return fmt.Errorf("logger: configure: %w", err)
		}
	}
	w, err := Open(c.Path)
	if err != nil {
		return fmt.Errorf("logger: configure: %w", err)
	}
	l.mu.Lock()
	l.out, l.closer = w, w
	l.mu.Unlock()
	l.level.Set(level)
	l.showLevel.Store(c.ShowLevel)
	l.showOrigin.Store(c.ShowOrigin)
	if c.Module != "" {
		m := c.Module
		l.module.Store(&m)
	}
	l.configured = true
	return nil
}

// Configured reports whether Configure has succeeded.
func (l *Logger) Configured() bool {
	l.cfgMu.Lock()
	defer l.cfgMu.Unlock()
	return l.configured
}

// SetLevel changes the level at run time.
func (l *Logger) SetLevel(level slog.Level) { l.level.Set(level) }

// Level returns the current level.
func (l *Logger) Level() slog.Level { return l.level.Level() }

// Lost returns how many lines were dropped because the destination failed
// or would have blocked: Firecracker's logger.missed_log_count, a
// cumulative count.
func (l *Logger) Lost() uint64 { return l.lost.Load() }

// Close closes the configured destination and discards later lines. It
// does not close standard output, standard error or Options.Writer.
func (l *Logger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.closer
	l.out, l.closer = io.Discard, nil
	if c == nil {
		return nil
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("logger: close: %w", err)
	}
	return nil
}

// write writes one whole line, counting it as lost if it fails.
func (l *Logger) write(line []byte) {
	l.mu.Lock()
	n, err := l.out.Write(line)
	l.mu.Unlock()
	if err != nil || n != len(line) {
		l.lost.Add(1)
	}
}

func (l *Logger) getBuf() *[]byte { return l.bufs.Get().(*[]byte) }

func (l *Logger) putBuf(b *[]byte) {
	if cap(*b) > maxPooledLineCap {
		return
	}
	*b = (*b)[:0]
	l.bufs.Put(b)
}

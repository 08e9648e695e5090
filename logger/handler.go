package logger

import (
	"context"
	"log/slog"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// timeLayout is Firecracker's timestamp: local time, nanoseconds, no zone
// (the Display of utils::time::LocalTime in src/utils/src/time.rs,
// "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}").
const timeLayout = "2006-01-02T15:04:05.000000000"

// Handler is the slog.Handler of a Logger. Its WithAttrs and WithGroup
// return new handlers that share the Logger and its settings.
type Handler struct {
	l      *Logger
	thread string // from a "thread" attribute given to WithAttrs; "" if none
	prefix string // open groups, each followed by "."
	attrs  []byte // preformatted " key=value" pairs from WithAttrs
}

// Enabled reports whether records at level are written.
func (h *Handler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.l.level.Level()
}

// WithAttrs returns a handler whose lines carry attrs. A top-level "thread"
// attribute names the thread instead of being appended.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	h2.attrs = append([]byte(nil), h.attrs...)
	for _, a := range attrs {
		if h.prefix == "" && a.Key == ThreadKey {
			h2.thread = a.Value.Resolve().String()
			continue
		}
		h2.attrs = appendAttr(h2.attrs, h.prefix, a)
	}
	return &h2
}

// WithGroup returns a handler that qualifies later attributes' keys with
// name, as "name.key".
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + name + "."
	return &h2
}

// Handle writes r as one line. It never blocks on the destination: a line
// that cannot be written is dropped and counted (Logger.Lost).
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	l := h.l
	var frame runtime.Frame
	if r.PC != 0 && (l.showOrigin.Load() || l.module.Load() != nil) {
		frame, _ = runtime.CallersFrames([]uintptr{r.PC}).Next()
	}
	if m := l.module.Load(); m != nil && !l.moduleMatches(*m, frame) {
		return nil
	}

	thread := h.thread
	if h.prefix == "" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == ThreadKey {
				thread = a.Value.Resolve().String()
			}
			return true
		})
	}
	if thread == "" {
		thread = l.thread
	}

	bp := l.getBuf()
	b := *bp
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	b = t.Local().AppendFormat(b, timeLayout)
	b = append(b, " ["...)
	b = append(b, l.id...)
	b = append(b, ':')
	b = append(b, thread...)
	if l.showLevel.Load() {
		b = append(b, ':')
		b = append(b, LevelName(r.Level)...)
	}
	if l.showOrigin.Load() {
		b = append(b, ':')
		if frame.File == "" {
			b = append(b, "?:?"...) // as Firecracker prints a record without a location
		} else {
			b = append(b, l.originFile(frame)...)
			b = append(b, ':')
			b = strconv.AppendInt(b, int64(frame.Line), 10)
		}
	}
	b = append(b, "] "...)
	b = append(b, r.Message...)
	b = append(b, h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		if h.prefix == "" && a.Key == ThreadKey {
			return true
		}
		b = appendAttr(b, h.prefix, a)
		return true
	})
	b = append(b, '\n')
	l.write(b)
	*bp = b
	l.putBuf(bp)
	return nil
}

// pkgPath returns the import path of the package of a frame's function,
// such as "github.com/embervm/ember/vmm" for
// "github.com/embervm/ember/vmm.(*VM).Start".
func pkgPath(function string) string {
	slash := strings.LastIndexByte(function, '/')
	if slash < 0 {
		slash = 0
	}
	if dot := strings.IndexByte(function[slash:], '.'); dot >= 0 {
		return function[:slash+dot]
	}
	return function
}

// relPkg returns pkg relative to the main module ("vmm"), "" for the main
// module's root package, or pkg itself when it is outside the main module.
func (l *Logger) relPkg(pkg string) string {
	if l.modPath == "" {
		return pkg
	}
	if pkg == l.modPath {
		return ""
	}
	if rel, ok := strings.CutPrefix(pkg, l.modPath+"/"); ok {
		return rel
	}
	return pkg
}

// originFile returns the file of a frame as its package path relative to
// the main module plus the file's name ("vmm/vm.go"), like the
// crate-relative paths Firecracker prints.
func (l *Logger) originFile(f runtime.Frame) string {
	base := path.Base(f.File)
	if f.Function == "" {
		return base
	}
	rel := l.relPkg(pkgPath(f.Function))
	if rel == "" {
		return base
	}
	return rel + "/" + base
}

// moduleMatches reports whether a record logged at frame passes the
// module filter m.
func (l *Logger) moduleMatches(m string, f runtime.Frame) bool {
	if f.Function == "" {
		return false
	}
	pkg := pkgPath(f.Function)
	return strings.HasPrefix(pkg, m) || strings.HasPrefix(l.relPkg(pkg), m)
}

// appendAttr appends " key=value" for a, with groups flattened into
// "group.key" and empty attributes and groups left out, as slog's handlers
// do.
func appendAttr(b []byte, prefix string, a slog.Attr) []byte {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return b
	}
	if a.Value.Kind() == slog.KindGroup {
		attrs := a.Value.Group()
		if len(attrs) == 0 {
			return b
		}
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, ga := range attrs {
			b = appendAttr(b, prefix, ga)
		}
		return b
	}
	b = append(b, ' ')
	b = appendMaybeQuoted(b, prefix+a.Key)
	b = append(b, '=')
	switch a.Value.Kind() {
	case slog.KindInt64:
		return strconv.AppendInt(b, a.Value.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(b, a.Value.Uint64(), 10)
	case slog.KindBool:
		return strconv.AppendBool(b, a.Value.Bool())
	case slog.KindFloat64:
		return strconv.AppendFloat(b, a.Value.Float64(), 'g', -1, 64)
	case slog.KindTime:
		return appendMaybeQuoted(b, a.Value.Time().Format(time.RFC3339Nano))
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok {
			return appendMaybeQuoted(b, err.Error())
		}
	}
	return appendMaybeQuoted(b, a.Value.String())
}

// appendMaybeQuoted appends s, Go-quoted if it is empty or holds spaces,
// '=', '"', or characters that are not printable.
func appendMaybeQuoted(b []byte, s string) []byte {
	if needsQuoting(s) {
		return strconv.AppendQuote(b, s)
	}
	return append(b, s...)
}

func needsQuoting(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c <= ' ' || c == '=' || c == '"' || c == 0x7f {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return true
		}
		i += size
	}
	return false
}

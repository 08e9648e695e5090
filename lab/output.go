package lab

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// OutputFilter turns the lab's raw console stream into the command's output.
// It drops carriage returns and everything before the start marker and after
// the end marker (kernel and init noise), writes the rest to Out line by line
// as it arrives, and records the exit status carried by the end marker.
// It implements io.Writer so that it can be QEMU's stdout.
type OutputFilter struct {
	// Out receives the command's output.
	Out io.Writer
	// Raw, if not nil, receives the whole console stream unfiltered.
	Raw io.Writer
	// OnLabFault, if set, is called with each console line in which the
	// lab's kernel reports a hung CPU (see labFaultPatterns).
	OnLabFault func(line string)

	markers Markers
	partial []byte // an incomplete line
	started bool
	ended   bool
	code    int
	// pendingNewline is the newline ending the last line written to Out; it
	// is held back because the job script prints one extra newline before the
	// end marker.
	pendingNewline bool
	// tail keeps the last lines of noise for diagnostics.
	tail []string
}

// noiseTailLines is how many lines of console noise are kept for diagnostics.
const noiseTailLines = 20

// NewOutputFilter returns a filter for the given markers.
func NewOutputFilter(out io.Writer, m Markers) *OutputFilter {
	return &OutputFilter{Out: out, markers: m}
}

// Write implements io.Writer.
func (f *OutputFilter) Write(p []byte) (int, error) {
	if f.Raw != nil {
		if _, err := f.Raw.Write(p); err != nil {
			return 0, fmt.Errorf("writing raw console: %w", err)
		}
	}
	n := len(p)
	p = bytes.ReplaceAll(p, []byte{'\r'}, nil)
	f.partial = append(f.partial, p...)
	for {
		i := bytes.IndexByte(f.partial, '\n')
		if i < 0 {
			break
		}
		line := string(f.partial[:i])
		f.partial = f.partial[i+1:]
		if err := f.line(line); err != nil {
			return 0, err
		}
	}
	// Keep the buffer from growing without bound on output without newlines.
	const maxPartial = 64 * 1024
	if len(f.partial) > maxPartial && f.started && !f.ended && !bytes.Contains(f.partial, []byte(markerPrefix)) {
		if err := f.emit(strings.ReplaceAll(string(f.partial), Heartbeat, ""), false); err != nil {
			return 0, err
		}
		f.partial = f.partial[:0]
	}
	return n, nil
}

// labFaultPatterns are the lab kernel's reports of a CPU that stopped
// making progress. Under TCG's nested SVM an L1 CPU occasionally hangs
// inside KVM_RUN (seen with QEMU's microvm guests as well as Ember's); the
// lab never recovers from it.
var labFaultPatterns = []string{
	"watchdog: BUG: soft lockup",
	"self-detected stall on CPU",
	"detected stalls on CPUs/tasks",
	LabFaultMarker,
}

// LabFaultMarker starts a line a command in the lab prints when it has
// seen a lab fault it cannot recover from (the e2e harness: an ember
// process that SIGKILL does not end, its vCPU thread stuck inside the
// lab's KVM). The lab run is stopped there and run again like one whose
// kernel reported a stall.
const LabFaultMarker = "EMBER-LAB-FAULT:"

// labCrashPattern matches the lab kernel's own reports of a crash, which
// start a console line with the kernel's timestamp (the nested guests'
// consoles reach this console only inside the tests' indented logs). One
// seen: an L1 "stack guard page was hit" in ember's KVM_RUN with the
// nested guest's GS base loaded, a fault of the emulated SVM's state
// switch, after which the lab panics.
var labCrashPattern = regexp.MustCompile(`^\[\s*\d+\.\d+\] (BUG: |Oops|Kernel panic|general protection fault|stack guard page)`)

// Heartbeat is what the lab's init prints on the console every
// HeartbeatInterval, without a newline; the filter removes it wherever it
// lands. A lab silent for longer than DefaultSilence has hung. (It must
// not contain markerPrefix.)
const (
	Heartbeat         = "@@ember-beat@@"
	HeartbeatInterval = 5 * time.Second // the sleep in labinit.sh
)

// line handles one complete console line.
func (f *OutputFilter) line(line string) error {
	line = strings.ReplaceAll(line, Heartbeat, "")
	if f.OnLabFault != nil {
		fault := labCrashPattern.MatchString(line)
		for _, p := range labFaultPatterns {
			fault = fault || strings.Contains(line, p)
		}
		if fault {
			f.OnLabFault(line)
		}
	}
	switch {
	case f.ended:
		f.noise(line)
	case !f.started:
		if strings.HasSuffix(line, f.markers.Start) {
			f.started = true
			return nil
		}
		f.noise(line)
	default:
		if i := strings.Index(line, f.markers.End+" rc="); i >= 0 {
			code, err := strconv.Atoi(strings.TrimSpace(line[i+len(f.markers.End)+len(" rc="):]))
			if err != nil {
				code = ExitSetupFailed
			}
			f.ended, f.code = true, code
			// Text before the marker on the same line is output whose final
			// newline is the one the script added: drop that one.
			if i > 0 {
				if err := f.emit(line[:i], false); err != nil {
					return err
				}
			}
			return nil
		}
		return f.emit(line, true)
	}
	return nil
}

// emit writes s to Out, followed by a newline if newline is set. The newline
// is held back until more output arrives.
func (f *OutputFilter) emit(s string, newline bool) error {
	var b []byte
	if f.pendingNewline {
		b = append(b, '\n')
		f.pendingNewline = false
	}
	b = append(b, s...)
	if len(b) > 0 {
		if _, err := f.Out.Write(b); err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
	}
	f.pendingNewline = newline
	return nil
}

// Flush writes out what is held back when the console ended without an end
// marker (the lab died mid-command): the last newline and any partial line.
func (f *OutputFilter) Flush() error {
	if !f.started || f.ended {
		return nil
	}
	rest := strings.ReplaceAll(string(f.partial), Heartbeat, "")
	f.partial = f.partial[:0]
	if rest == "" && !f.pendingNewline {
		return nil
	}
	if err := f.emit(rest, false); err != nil {
		return err
	}
	if _, err := f.Out.Write([]byte{'\n'}); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

func (f *OutputFilter) noise(line string) {
	if len(f.tail) == noiseTailLines {
		f.tail = f.tail[1:]
	}
	f.tail = append(f.tail, line)
}

// Result returns the command's exit status and whether the end marker was
// seen; without it the status is meaningless.
func (f *OutputFilter) Result() (code int, ended bool) {
	return f.code, f.ended
}

// Started reports whether the start marker was seen.
func (f *OutputFilter) Started() bool { return f.started }

// NoiseTail returns the last console lines outside the markers, and any
// incomplete line, for diagnostics.
func (f *OutputFilter) NoiseTail() []string {
	out := append([]string(nil), f.tail...)
	if len(f.partial) > 0 {
		out = append(out, string(f.partial))
	}
	return out
}

package doctor

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Status is a check's verdict.
type Status int

const (
	// OK: nothing to change.
	OK Status = iota
	// Warn: N VMs will run, with a caveat the line names.
	Warn
	// Fail: N VMs will not all start (or not at all) until this changes.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	}
	return "FAIL"
}

// Result is one check's outcome.
type Result struct {
	// Name is what was checked: a sysctl's name, a limit, a device.
	Name   string
	Status Status
	// Detail is what was found, against what is needed, and what to change.
	Detail string
	// fix, when set, is the change Fix applies.
	fix *fix
}

// Fixable reports whether Fix can change what this result found.
func (r Result) Fixable() bool { return r.fix != nil }

// fix is a change that makes a check pass.
type fix struct {
	// what says what it changes, "kernel.pid_max 32768 -> 65536".
	what  string
	apply func(h *Host) error
}

// Host is the machine being checked.
type Host struct {
	// Root is the host's root directory: "/" on a real host, a fake tree
	// of proc/, sys/ and dev/ files in tests. Sysctl writes of Fix go
	// there too.
	Root string
	// PID is the process whose resource limits are checked and raised:
	// the one that will start the VMs (for `ember doctor`, its parent
	// shell).
	PID int
	// EUID is the effective user ID that will run ember.
	EUID int
	// Probe runs the checks that need system calls.
	Probe Probe
}

// Probe runs the checks that need system calls rather than file reads.
type Probe interface {
	// KVM opens /dev/kvm, queries what Ember uses and creates a scratch
	// VM to try it.
	KVM() (KVMInfo, error)
	// Userfaultfd creates and closes a userfaultfd as Ember's Uffd
	// snapshot backend does.
	Userfaultfd() error
	// OpenTun opens and closes /dev/net/tun.
	OpenTun() error
	// SetNofile sets process pid's RLIMIT_NOFILE.
	SetNofile(pid int, soft, hard uint64) error
	// SetNproc sets process pid's RLIMIT_NPROC.
	SetNproc(pid int, soft, hard uint64) error
}

// KVMInfo is what the KVM probe found.
type KVMInfo struct {
	// MissingCaps names the capabilities Ember needs that KVM lacks.
	MissingCaps []string
	// AdjustClock is KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK): the
	// KVM_CLOCK_* flags KVM_GET_CLOCK can return.
	AdjustClock int
	// ClockRealtime: a scratch VM's KVM_GET_CLOCK carried a
	// CLOCK_REALTIME reference (the host clocksource is TSC-based), which
	// a restore with clock_realtime uses.
	ClockRealtime bool
	// DirtyLog is nil when a memory slot registered with
	// KVM_MEM_LOG_DIRTY_PAGES gave its dirty bitmap (Diff snapshots).
	DirtyLog error
}

// Check runs every check for vms VMs.
func Check(h *Host, vms int) []Result {
	var rs []Result
	for _, c := range checks {
		rs = append(rs, c(h, vms))
	}
	return rs
}

// Ready reports whether no check failed.
func Ready(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return false
		}
	}
	return true
}

// Fix applies the fixes of the results that are not ok, in order, and
// returns what it changed and what it could not.
func Fix(h *Host, rs []Result) (changed []string, errs []error) {
	for _, r := range rs {
		if r.Status == OK || r.fix == nil {
			continue
		}
		if err := r.fix.apply(h); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", r.Name, r.fix.what, err))
			continue
		}
		changed = append(changed, r.fix.what)
	}
	return changed, errs
}

// Print writes one line per result: status, name, detail.
func Print(w io.Writer, rs []Result) {
	width := 0
	for _, r := range rs {
		width = max(width, len(r.Name))
	}
	for _, r := range rs {
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", r.Status, width, r.Name, r.Detail)
	}
}

// path is p below the host's root.
func (h *Host) path(p string) string { return filepath.Join(h.Root, p) }

// read returns the trimmed contents of p below the root.
func (h *Host) read(p string) (string, error) {
	b, err := os.ReadFile(h.path(p))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// sysctlPath is the /proc/sys file of a dotted sysctl name.
func sysctlPath(name string) string {
	return filepath.Join("proc/sys", strings.ReplaceAll(name, ".", "/"))
}

// sysctl reads an integer sysctl.
func (h *Host) sysctl(name string) (int, error) {
	s, err := h.read(sysctlPath(name))
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.Fields(s + " x")[0])
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a number", name, s)
	}
	return v, nil
}

// setSysctl is the fix that writes value to a sysctl.
func setSysctl(name string, old, value int) *fix {
	return &fix{
		what: fmt.Sprintf("%s %d -> %d", name, old, value),
		apply: func(h *Host) error {
			return os.WriteFile(h.path(sysctlPath(name)), []byte(strconv.Itoa(value)+"\n"), 0o644)
		},
	}
}

// result builders.
func ok(name, format string, a ...any) Result {
	return Result{Name: name, Status: OK, Detail: fmt.Sprintf(format, a...)}
}
func warn(name, format string, a ...any) Result {
	return Result{Name: name, Status: Warn, Detail: fmt.Sprintf(format, a...)}
}
func fail(name, format string, a ...any) Result {
	return Result{Name: name, Status: Fail, Detail: fmt.Sprintf(format, a...)}
}
func unreadable(name string, err error) Result {
	return warn(name, "cannot tell: %v", err)
}

package seccomp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
)

// Filter names: the keys of a policy file, and the filters Ember installs.
const (
	// NameBoot confines every thread from start-up until the guest first
	// runs (Ember's own key; optional in a file).
	NameBoot = "boot"
	// NameVMM confines every thread once the guest runs (every thread
	// from start-up when a file has no "boot").
	NameVMM = "vmm"
	// NameAPI is Firecracker's API-thread filter. Ember serves the API on
	// goroutines that share the VMM's threads, so its rules join the vmm
	// filter's.
	NameAPI = "api"
	// NameVCPU confines each vCPU thread, on top of the process's filters.
	NameVCPU = "vcpu"
)

// maxArgs is the number of system call arguments seccomp sees
// (struct seccomp_data's args[6]).
const maxArgs = 6

// Limits of the action data (include/uapi/linux/seccomp.h): the errno of
// SECCOMP_RET_ERRNO is at most MAX_ERRNO (4095, include/linux/err.h); the
// data of SECCOMP_RET_TRACE is the 16 bits of SECCOMP_RET_DATA.
const (
	maxErrno     = 4095
	maxTraceData = math.MaxUint16
)

// ActionKind is what a filter does with a system call.
type ActionKind int

// Actions, as Firecracker's seccompiler names them.
const (
	ActAllow ActionKind = iota
	ActTrap
	ActErrno
	ActKillThread
	ActKillProcess
	ActLog
	ActTrace
)

var actionNames = [...]string{ActAllow: "allow", ActTrap: "trap", ActErrno: "errno",
	ActKillThread: "kill_thread", ActKillProcess: "kill_process", ActLog: "log", ActTrace: "trace"}

func (k ActionKind) String() string {
	if k < 0 || int(k) >= len(actionNames) {
		return fmt.Sprintf("action(%d)", int(k))
	}
	return actionNames[k]
}

// Action is an action with its datum (the errno of ActErrno, the tracer's
// datum of ActTrace). In JSON it is a string ("allow") or, with a datum, an
// object ({"errno": 38}).
type Action struct {
	Kind ActionKind
	Data uint16
}

// Common actions.
var (
	Allow = Action{Kind: ActAllow}
	Trap  = Action{Kind: ActTrap}
)

func (a Action) String() string {
	if a.Kind == ActErrno || a.Kind == ActTrace {
		return fmt.Sprintf("%s(%d)", a.Kind, a.Data)
	}
	return a.Kind.String()
}

// MarshalJSON writes the seccompiler form.
func (a Action) MarshalJSON() ([]byte, error) {
	if a.Kind == ActErrno || a.Kind == ActTrace {
		return json.Marshal(map[string]uint16{a.Kind.String(): a.Data})
	}
	return json.Marshal(a.Kind.String())
}

// UnmarshalJSON reads the seccompiler form. "kill" (the name in
// Firecracker's seccompiler documentation) is kill_process.
func (a *Action) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		switch s {
		case "kill":
			*a = Action{Kind: ActKillProcess}
			return nil
		case "errno", "trace":
			return fmt.Errorf("action %q needs a number: {%q: N}", s, s)
		}
		for k, n := range actionNames {
			if n == s {
				*a = Action{Kind: ActionKind(k)}
				return nil
			}
		}
		return fmt.Errorf("unknown action %q: want allow, trap, kill_thread, kill_process, log, {\"errno\": N} or {\"trace\": N}", s)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || len(m) != 1 {
		return fmt.Errorf("action %s: want a name or an object with one key, errno or trace", b)
	}
	for k, v := range m {
		var n uint64
		if err := json.Unmarshal(v, &n); err != nil {
			return fmt.Errorf("action %q: %s is not a non-negative integer", k, v)
		}
		switch k {
		case "errno":
			if n > maxErrno {
				return fmt.Errorf("action errno: %d is over %d", n, maxErrno)
			}
			*a = Action{Kind: ActErrno, Data: uint16(n)}
		case "trace":
			if n > maxTraceData {
				return fmt.Errorf("action trace: %d is over %d", n, maxTraceData)
			}
			*a = Action{Kind: ActTrace, Data: uint16(n)}
		default:
			return fmt.Errorf("unknown action %q: want errno or trace with a number", k)
		}
	}
	return nil
}

// Op compares a system call argument with a value.
type Op int

// Comparisons, as Firecracker's seccompiler names them. OpMaskedEq
// compares (arg & Mask) with the value.
const (
	OpEq Op = iota
	OpNe
	OpGt
	OpGe
	OpLt
	OpLe
	OpMaskedEq
)

var opNames = [...]string{OpEq: "eq", OpNe: "ne", OpGt: "gt", OpGe: "ge", OpLt: "lt", OpLe: "le", OpMaskedEq: "masked_eq"}

func (o Op) String() string {
	if o < 0 || int(o) >= len(opNames) {
		return fmt.Sprintf("op(%d)", int(o))
	}
	return opNames[o]
}

// Cond is one condition on an argument: Arg Op Val, on the low 32 bits
// (Dword) or all 64 (qword).
type Cond struct {
	Arg   int    // 0..5
	Dword bool   // compare only the low 32 bits ("type": "dword")
	Op    Op     //
	Mask  uint64 // OpMaskedEq's mask
	Val   uint64 // the value (ignored when PID is set)
	// PID compares with the pid of the process that installs the filter
	// (Ember's extension: "val": "pid"), so kill and tgkill can be held to
	// the process itself.
	PID     bool
	Comment string
}

// condJSON is a condition as seccompiler writes it.
type condJSON struct {
	Index   *int            `json:"index"`
	Type    string          `json:"type"`
	Op      json.RawMessage `json:"op"`
	Val     json.RawMessage `json:"val"`
	Comment string          `json:"comment,omitempty"`
}

// pidValue is Ember's "val" for the installing process's pid.
const pidValue = "pid"

// MarshalJSON writes the seccompiler form.
func (c Cond) MarshalJSON() ([]byte, error) {
	j := condJSON{Index: &c.Arg, Type: "qword", Comment: c.Comment}
	if c.Dword {
		j.Type = "dword"
	}
	var err error
	if c.Op == OpMaskedEq {
		j.Op, err = json.Marshal(map[string]uint64{"masked_eq": c.Mask})
	} else {
		j.Op, err = json.Marshal(c.Op.String())
	}
	if err != nil {
		return nil, err
	}
	if c.PID {
		j.Val, _ = json.Marshal(pidValue)
	} else {
		j.Val, _ = json.Marshal(c.Val)
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the seccompiler form and checks it.
func (c *Cond) UnmarshalJSON(b []byte) error {
	var j condJSON
	if err := strictUnmarshal(b, &j); err != nil {
		return fmt.Errorf("condition: %w", err)
	}
	var n Cond
	if j.Index == nil {
		return errors.New("condition: no index (the argument's number, 0 to 5)")
	}
	n.Arg, n.Comment = *j.Index, j.Comment
	switch j.Type {
	case "dword":
		n.Dword = true
	case "qword":
	default:
		return fmt.Errorf("condition on argument %d: type %q: want dword or qword", n.Arg, j.Type)
	}
	if err := n.parseOp(j.Op); err != nil {
		return fmt.Errorf("condition on argument %d: %w", n.Arg, err)
	}
	if err := n.parseVal(j.Val); err != nil {
		return fmt.Errorf("condition on argument %d: %w", n.Arg, err)
	}
	if err := n.check(); err != nil {
		return err
	}
	*c = n
	return nil
}

func (c *Cond) parseOp(raw json.RawMessage) error {
	if len(raw) == 0 {
		return errors.New("no op")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		for o, name := range opNames {
			if name == s && Op(o) != OpMaskedEq {
				c.Op = Op(o)
				return nil
			}
		}
		return fmt.Errorf("op %q: want eq, ne, gt, ge, lt, le or {\"masked_eq\": MASK}", s)
	}
	var m map[string]uint64
	if err := json.Unmarshal(raw, &m); err != nil || len(m) != 1 {
		return fmt.Errorf("op %s: want eq, ne, gt, ge, lt, le or {\"masked_eq\": MASK}", raw)
	}
	mask, ok := m["masked_eq"]
	if !ok {
		return fmt.Errorf("op %s: the only op with a parameter is masked_eq", raw)
	}
	c.Op, c.Mask = OpMaskedEq, mask
	return nil
}

func (c *Cond) parseVal(raw json.RawMessage) error {
	if len(raw) == 0 {
		return errors.New("no val")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if s != pidValue {
			return fmt.Errorf("val %q: want a non-negative integer or %q", s, pidValue)
		}
		c.PID = true
		return nil
	}
	if err := json.Unmarshal(raw, &c.Val); err != nil {
		return fmt.Errorf("val %s: want a non-negative integer below 2^64 or %q", raw, pidValue)
	}
	return nil
}

// check validates a condition built in Go or read from JSON.
func (c Cond) check() error {
	switch {
	case c.Arg < 0 || c.Arg >= maxArgs:
		return fmt.Errorf("condition: index %d: want 0 to %d", c.Arg, maxArgs-1)
	case c.Op < OpEq || c.Op > OpMaskedEq:
		return fmt.Errorf("condition on argument %d: unknown op %d", c.Arg, c.Op)
	case c.Dword && c.Val > math.MaxUint32:
		return fmt.Errorf("condition on argument %d: val %d does not fit the dword it is compared with", c.Arg, c.Val)
	case c.Dword && c.Op == OpMaskedEq && c.Mask > math.MaxUint32:
		return fmt.Errorf("condition on argument %d: mask %#x does not fit the dword it is applied to", c.Arg, c.Mask)
	}
	return nil
}

func (c Cond) String() string {
	typ := "qword"
	if c.Dword {
		typ = "dword"
	}
	val := fmt.Sprintf("%#x", c.Val)
	if c.PID {
		val = "<pid>"
	}
	s := fmt.Sprintf("%s(arg%d) %s %s", typ, c.Arg, c.Op, val)
	if c.Op == OpMaskedEq {
		s = fmt.Sprintf("%s(arg%d) & %#x == %s", typ, c.Arg, c.Mask, val)
	}
	if c.Comment != "" {
		s += " (" + c.Comment + ")"
	}
	return s
}

// Rule matches one system call, by name, when all its conditions hold.
type Rule struct {
	Syscall string `json:"syscall"`
	Args    []Cond `json:"args,omitempty"`
	// Action, if set, replaces the filter's filter_action for this rule
	// (Ember's extension: a rule that answers ENOSYS, say).
	Action  *Action `json:"action,omitempty"`
	Comment string  `json:"comment,omitempty"`
}

// Filter is one filter: the default action, the action of a matching
// rule, and the rules, or-ed.
type Filter struct {
	DefaultAction Action `json:"default_action"`
	FilterAction  Action `json:"filter_action"`
	Rules         []Rule `json:"filter"`
}

// filterJSON is a filter as read: every field is required (a missing
// default_action must not read as the zero action, allow).
type filterJSON struct {
	DefaultAction *Action `json:"default_action"`
	FilterAction  *Action `json:"filter_action"`
	Rules         *[]Rule `json:"filter"`
}

// UnmarshalJSON reads a filter, refusing one with a field missing.
func (f *Filter) UnmarshalJSON(b []byte) error {
	var j filterJSON
	if err := strictUnmarshal(b, &j); err != nil {
		return err
	}
	switch {
	case j.DefaultAction == nil:
		return errors.New("no default_action")
	case j.FilterAction == nil:
		return errors.New("no filter_action")
	case j.Rules == nil:
		return errors.New(`no "filter" (the list of rules)`)
	}
	*f = Filter{DefaultAction: *j.DefaultAction, FilterAction: *j.FilterAction, Rules: *j.Rules}
	for i := range f.Rules {
		if len(f.Rules[i].Args) == 0 {
			f.Rules[i].Args = nil // "args": [] is no condition, as no "args"
		}
	}
	return nil
}

// Policy is what Ember installs: Boot (if set) process-wide from
// start-up, VMM process-wide once the guest runs (stacked on Boot), VCPU
// on each vCPU thread (stacked on both). Its JSON form is Firecracker's
// seccompiler file: an object from filter names (boot, vmm, api, vcpu) to
// filters.
type Policy struct {
	Boot *Filter
	VMM  Filter
	VCPU Filter
}

// MarshalJSON writes the policy as a seccompiler file.
func (p *Policy) MarshalJSON() ([]byte, error) {
	m := map[string]*Filter{NameVMM: &p.VMM, NameVCPU: &p.VCPU}
	if p.Boot != nil {
		m[NameBoot] = p.Boot
	}
	return json.Marshal(m)
}

// Parse reads a policy file in Firecracker's seccompiler schema. It needs
// "vmm" and "vcpu"; the rules of "api", if any, join vmm's (they must
// agree on the actions); "boot" is Ember's optional pre-boot filter. Every
// syscall name must be an x86-64 system call. Errors name the filter and
// rule at fault.
func Parse(data []byte) (*Policy, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("seccomp filter file: %w", err)
	}
	if m == nil {
		return nil, errors.New("seccomp filter file: want an object from thread categories (vmm, api, vcpu, boot) to filters")
	}
	fs := map[string]*Filter{}
	for _, name := range sortedKeys(m) {
		switch name {
		case NameBoot, NameVMM, NameAPI, NameVCPU:
		default:
			return nil, fmt.Errorf("seccomp filter file: unknown thread category %q: want vmm, api, vcpu or boot", name)
		}
		f := &Filter{}
		if err := strictUnmarshal(m[name], f); err != nil {
			return nil, fmt.Errorf("seccomp filter file: filter %q: %w", name, err)
		}
		if err := f.Check(); err != nil {
			return nil, fmt.Errorf("seccomp filter file: filter %q: %w", name, err)
		}
		fs[name] = f
	}
	for _, need := range []string{NameVMM, NameVCPU} {
		if fs[need] == nil {
			return nil, fmt.Errorf("seccomp filter file: no %q filter", need)
		}
	}
	p := &Policy{Boot: fs[NameBoot], VMM: *fs[NameVMM], VCPU: *fs[NameVCPU]}
	if api := fs[NameAPI]; api != nil {
		if api.DefaultAction != p.VMM.DefaultAction || api.FilterAction != p.VMM.FilterAction {
			return nil, errors.New("seccomp filter file: the api filter's actions differ from the vmm filter's: Ember serves the API on the VMM's threads, so the two are one filter")
		}
		p.VMM.Rules = append(p.VMM.Rules, api.Rules...)
	}
	return p, nil
}

// Check validates a filter: known system calls, well-formed conditions.
func (f *Filter) Check() error {
	for i, r := range f.Rules {
		if _, ok := syscallNumber(r.Syscall); !ok {
			return fmt.Errorf("rule %d: %q is not an x86-64 system call", i, r.Syscall)
		}
		for _, c := range r.Args {
			if err := c.check(); err != nil {
				return fmt.Errorf("rule %d (%s): %w", i, r.Syscall, err)
			}
		}
	}
	return nil
}

// strictUnmarshal decodes one JSON value into v, refusing unknown fields
// (a misspelt key would otherwise drop a condition silently) and trailing
// data.
func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data after the value")
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

//go:generate go run gen_syscalls.go

// syscallNumbers maps the x86-64 system call names to their numbers, made
// once from syscallNames (constant data, read-only once made).
var syscallNumbers = sync.OnceValue(func() map[string]int {
	m := make(map[string]int, len(syscallNames))
	for n, s := range syscallNames {
		if s != "" {
			m[s] = n
		}
	}
	return m
})

// syscallNumber is the x86-64 number of a system call name.
func syscallNumber(name string) (int, bool) {
	n, ok := syscallNumbers()[name]
	return n, ok
}

// SyscallName is the x86-64 name of a system call number, or "" if the
// kernel assigns none.
func SyscallName(nr int) string {
	if nr < 0 || nr >= len(syscallNames) {
		return ""
	}
	return syscallNames[nr]
}

// describe is one line per rule for Print.
func (r Rule) describe() string {
	var b strings.Builder
	b.WriteString(r.Syscall)
	if len(r.Args) > 0 {
		parts := make([]string, len(r.Args))
		for i, c := range r.Args {
			parts[i] = c.String()
		}
		b.WriteString(" if " + strings.Join(parts, " and "))
	}
	if r.Action != nil {
		b.WriteString(" -> " + r.Action.String())
	}
	if r.Comment != "" {
		b.WriteString("  # " + r.Comment)
	}
	return b.String()
}

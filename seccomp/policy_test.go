package seccomp

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// firecrackerStyle is a policy file as Firecracker writes them
// (resources/seccomp/*.json), with comments and an api filter.
const firecrackerStyle = `{
  "vmm": {
    "default_action": "trap",
    "filter_action": "allow",
    "filter": [
      {"syscall": "read"},
      {"syscall": "write", "comment": "logs"},
      {"syscall": "accept4", "comment": "vsock", "args": [
        {"index": 3, "type": "dword", "op": "eq", "val": 524288, "comment": "libc::SOCK_CLOEXEC"}]},
      {"syscall": "mmap", "args": [
        {"index": 2, "type": "dword", "op": {"masked_eq": 4}, "val": 0, "comment": "no PROT_EXEC"}]},
      {"syscall": "tgkill", "args": [{"index": 0, "type": "dword", "op": "eq", "val": "pid"}]},
      {"syscall": "clone3", "action": {"errno": 38}}
    ]
  },
  "api": {
    "default_action": "trap",
    "filter_action": "allow",
    "filter": [{"syscall": "epoll_pwait"}, {"syscall": "lseek", "args": [{"index": 1, "type": "qword", "op": "le", "val": 4294967296}]}]
  },
  "vcpu": {
    "default_action": {"errno": 1},
    "filter_action": "allow",
    "filter": [{"syscall": "ioctl", "args": [{"index": 1, "type": "dword", "op": "eq", "val": 44672, "comment": "KVM_RUN"}]}]
  }
}`

func TestParseFirecrackerStyle(t *testing.T) {
	p, err := Parse([]byte(firecrackerStyle))
	if err != nil {
		t.Fatal(err)
	}
	if p.Boot != nil {
		t.Error("a boot filter from a file without one")
	}
	if n := len(p.VMM.Rules); n != 8 {
		t.Errorf("vmm has %d rules, want 8 (6 of its own and api's 2)", n)
	}
	want := Rule{Syscall: "mmap", Args: []Cond{{Arg: 2, Dword: true, Op: OpMaskedEq, Mask: 4, Val: 0, Comment: "no PROT_EXEC"}}}
	if !reflect.DeepEqual(p.VMM.Rules[3], want) {
		t.Errorf("mmap rule %+v, want %+v", p.VMM.Rules[3], want)
	}
	if !p.VMM.Rules[4].Args[0].PID {
		t.Error(`"val": "pid" not read as the pid`)
	}
	if a := p.VCPU.DefaultAction; a != (Action{Kind: ActErrno, Data: 1}) {
		t.Errorf("vcpu default action %v, want errno(1)", a)
	}
	vmm, err := Compile(&p.VMM, 99, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		call call
		want uint32
	}{
		{sys("accept4", 3, 0, 0, unix.SOCK_CLOEXEC), retAllow},
		{sys("accept4", 3, 0, 0, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK), retTrap | 1},
		{sys("mmap", 0, 4096, unix.PROT_READ), retAllow},
		{sys("mmap", 0, 4096, unix.PROT_EXEC), retTrap | 1},
		{sys("tgkill", 99, 1, 23), retAllow},
		{sys("tgkill", 98, 1, 23), retTrap | 1},
		{sys("clone3"), retErrno | 38},
		{sys("epoll_pwait"), retAllow},
		{sys("lseek", 3, 1<<32), retAllow},
		{sys("lseek", 3, 1<<32+1), retTrap | 1},
	} {
		if got := run(t, vmm, c.call); got != c.want {
			t.Errorf("%s %v: %#x, want %#x", SyscallName(c.call.nr), c.call.args, got, c.want)
		}
	}
}

func TestParseRoundTrip(t *testing.T) {
	p, err := Parse([]byte(firecrackerStyle))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	q, err := Parse(b)
	if err != nil {
		t.Fatalf("re-parse: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(p, q) {
		t.Errorf("round trip changed the policy:\n%+v\n%+v", p, q)
	}
}

// TestParseErrors: every malformed file gets one error naming what is
// wrong.
func TestParseErrors(t *testing.T) {
	ok := `"default_action": "trap", "filter_action": "allow"`
	vcpu := `"vcpu": {` + ok + `, "filter": []}`
	for _, c := range []struct{ name, file, want string }{
		{"not JSON", `{`, "seccomp filter file"},
		{"not an object", `[]`, "seccomp filter file"},
		{"null", `null`, "want an object"},
		{"unknown category", `{"vmm": {` + ok + `, "filter": []}, ` + vcpu + `, "fc_vcpu": {}}`, `unknown thread category "fc_vcpu"`},
		{"no vcpu", `{"vmm": {` + ok + `, "filter": []}}`, `no "vcpu" filter`},
		{"unknown syscall", `{"vmm": {` + ok + `, "filter": [{"syscall": "frobnicate"}]}, ` + vcpu + `}`, `"frobnicate" is not an x86-64 system call`},
		{"unknown field", `{"vmm": {` + ok + `, "filter": [{"syscall": "read", "argz": []}]}, ` + vcpu + `}`, `argz`},
		{"old doc's arg_index", `{"vmm": {` + ok + `, "filter": [{"syscall": "read", "args": [{"arg_index": 0, "arg_type": "dword", "op": "eq", "val": 1}]}]}, ` + vcpu + `}`, `arg_index`},
		{"index out of range", `{"vmm": {` + ok + `, "filter": [{"syscall": "read", "args": [{"index": 6, "type": "dword", "op": "eq", "val": 1}]}]}, ` + vcpu + `}`, "index 6"},
		{"dword too big", `{"vmm": {` + ok + `, "filter": [{"syscall": "read", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 4294967296}]}]}, ` + vcpu + `}`, "does not fit"},
		{"bad type", `{"vmm": {` + ok + `, "filter": [{"syscall": "read", "args": [{"index": 0, "type": "word", "op": "eq", "val": 1}]}]}, ` + vcpu + `}`, `type "word"`},
		{"bad op", `{"vmm": {` + ok + `, "filter": [{"syscall": "read", "args": [{"index": 0, "type": "dword", "op": "eqq", "val": 1}]}]}, ` + vcpu + `}`, `op "eqq"`},
		{"negative val", `{"vmm": {` + ok + `, "filter": [{"syscall": "read", "args": [{"index": 0, "type": "qword", "op": "eq", "val": -1}]}]}, ` + vcpu + `}`, "val -1"},
		{"bad action", `{"vmm": {"default_action": "explode", "filter_action": "allow", "filter": []}, ` + vcpu + `}`, `unknown action "explode"`},
		{"no default action", `{"vmm": {"filter_action": "allow", "filter": []}, ` + vcpu + `}`, "no default_action"},
		{"no rules", `{"vmm": {` + ok + `}, ` + vcpu + `}`, `no "filter"`},
		{"errno too big", `{"vmm": {"default_action": {"errno": 5000}, "filter_action": "allow", "filter": []}, ` + vcpu + `}`, "over 4095"},
		{"api disagrees", `{"vmm": {` + ok + `, "filter": []}, "api": {"default_action": "kill_process", "filter_action": "allow", "filter": []}, ` + vcpu + `}`, "api filter's actions differ"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.file))
			if err == nil {
				t.Fatal("parsed")
			}
			if msg := err.Error(); !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line containing %q", msg, c.want)
			}
		})
	}
}

// FuzzParse: no input makes Parse panic; a policy it accepts compiles (or
// fails to, with an error) and survives a round trip through JSON.
func FuzzParse(f *testing.F) {
	f.Add([]byte(firecrackerStyle))
	if b, err := json.Marshal(Builtin()); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"vmm": {"default_action": "trap", "filter_action": "allow", "filter": []}, "vcpu": {"default_action": "trap", "filter_action": "allow", "filter": []}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		for _, fl := range []*Filter{p.Boot, &p.VMM, &p.VCPU} {
			if fl == nil {
				continue
			}
			if _, err := Compile(fl, 1, 1); err != nil && !strings.Contains(err.Error(), "over the kernel's limit") {
				t.Fatalf("an accepted filter does not compile: %v", err)
			}
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		q, err := Parse(b)
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip changed the policy")
		}
	})
}

package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/embervm/ember/agent/proto"
)

// Sizing of a container's VM.
const (
	// DefaultMemoryMiB is a VM's memory when the spec sets no memory limit
	// (as sandbox.DefaultMemoryMiB: enough for the agent and a small
	// workload).
	DefaultMemoryMiB = 256
	// GuestOverheadMiB is added to a spec's memory limit: the guest
	// kernel, ember-init and the agent live in the same RAM as the
	// container (the kernel and page tables of the minimal guest take
	// about 40 MiB at 256 MiB; rounded up).
	GuestOverheadMiB = 64
	// MaxVCPUs is the most vCPUs a VM gets from a CPU quota (the VMM's
	// limit, vmm.MaxVCPUs; the platform does not import the VMM).
	MaxVCPUs = 32
	// specFile is the OCI runtime spec in a bundle (runtime-spec
	// bundle.md: "config.json").
	specFile = "config.json"
	// maxSpecSize bounds config.json: containerd writes a few KiB; 4 MiB
	// holds any real environment and keeps a bad file from filling memory.
	maxSpecSize = 4 << 20
)

// readSpec reads the OCI runtime spec of the bundle at dir.
func readSpec(dir string) (*specs.Spec, error) {
	f, err := os.Open(filepath.Join(dir, specFile))
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > maxSpecSize {
		return nil, fmt.Errorf("bundle: %s is %d bytes, more than the %d accepted", specFile, st.Size(), maxSpecSize)
	}
	return parseSpec(f, filepath.Join(dir, specFile))
}

func parseSpec(f *os.File, name string) (*specs.Spec, error) {
	var s specs.Spec
	if err := json.NewDecoder(f).Decode(&s); err != nil {
		return nil, fmt.Errorf("bundle: %s: %w", name, err)
	}
	if s.Process == nil {
		return nil, fmt.Errorf("bundle: %s has no process", name)
	}
	return &s, nil
}

// execStart maps an OCI process (the container's, or an exec's) to the
// agent's ExecStart. The agent adds the spec's environment to its base
// environment (which the shim fills from the same spec), so the process
// sees the spec's variables; the user is the spec's numeric uid:gid (the
// agent resolves nothing by name then); a terminal gets the spec's console
// size, 80x24 when it has none. Additional groups, capabilities, rlimits,
// no_new_privileges, apparmor and SELinux labels are not carried: the
// VM is the boundary (see doc.go).
func execStart(p *specs.Process, tag string, stdin bool) (proto.ExecStart, error) {
	if p == nil {
		return proto.ExecStart{}, fmt.Errorf("spec: no process")
	}
	if len(p.Args) == 0 || p.Args[0] == "" {
		return proto.ExecStart{}, fmt.Errorf("spec: process.args is empty: nothing to run")
	}
	if p.Cwd != "" && !filepath.IsAbs(p.Cwd) {
		return proto.ExecStart{}, fmt.Errorf("spec: process.cwd %q: must be an absolute path", p.Cwd)
	}
	req := proto.ExecStart{
		Args: append([]string(nil), p.Args...),
		Cwd:  p.Cwd,
		User: strconv.FormatUint(uint64(p.User.UID), 10) + ":" + strconv.FormatUint(uint64(p.User.GID), 10),
		Tag:  tag,
		// The shim reads everything the process writes, at once: the
		// agent may forget output once sent.
		AutoAck: true,
	}
	if len(p.Env) > 0 {
		req.Env = make(map[string]string, len(p.Env))
		for i, kv := range p.Env {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return proto.ExecStart{}, fmt.Errorf("spec: process.env[%d] %q: want NAME=value", i, kv)
			}
			req.Env[k] = v
		}
	}
	if p.Terminal {
		size := proto.TTYSize{Cols: 80, Rows: 24}
		if p.ConsoleSize != nil && p.ConsoleSize.Width > 0 && p.ConsoleSize.Height > 0 {
			size = proto.TTYSize{Cols: clampU16(p.ConsoleSize.Width), Rows: clampU16(p.ConsoleSize.Height)}
		}
		req.TTY = &size
	} else {
		req.Stdin = stdin
	}
	if err := req.Validate(); err != nil {
		return proto.ExecStart{}, fmt.Errorf("spec: %w", err)
	}
	return req, nil
}

func clampU16(v uint) uint16 {
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}

// vmSize is the VM's vCPUs and memory for a spec: the memory limit plus
// GuestOverheadMiB (DefaultMemoryMiB without a limit), and the CPU quota
// over its period rounded up (1 without one), at most MaxVCPUs.
func vmSize(s *specs.Spec) (vcpus, memMiB int) {
	vcpus, memMiB = 1, DefaultMemoryMiB
	if s.Linux == nil || s.Linux.Resources == nil {
		return vcpus, memMiB
	}
	r := s.Linux.Resources
	if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		lim := *r.Memory.Limit
		mib := (lim + (1<<20 - 1)) >> 20
		if mib > 1<<20 { // 1 TiB: Ember's largest guest
			mib = 1 << 20
		}
		memMiB = int(mib) + GuestOverheadMiB
	}
	if r.CPU != nil && r.CPU.Quota != nil && *r.CPU.Quota > 0 && r.CPU.Period != nil && *r.CPU.Period > 0 {
		q, p := uint64(*r.CPU.Quota), *r.CPU.Period
		n := (q + p - 1) / p
		if n > MaxVCPUs {
			n = MaxVCPUs
		}
		vcpus = int(n)
	}
	return vcpus, memMiB
}

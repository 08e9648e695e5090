package wire

import (
	"os"
	"regexp"
	"strings"
	"time"
)

// nameRE is a template name: it becomes a folder name.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// MaxTimeout bounds a sandbox's timeout: 30 days.
const MaxTimeout = 30 * 24 * time.Hour

// Validate checks a template request; the error names the field.
func (s *TemplateSpec) Validate() error {
	if s.Name != "" && (len(s.Name) > MaxIDLen || !nameRE.MatchString(s.Name)) {
		return invalid("name", "%q: want 1-%d letters, digits, '_', '.' or '-', starting with a letter or digit", s.Name, MaxIDLen)
	}
	if s.Kernel == "" {
		return invalid("kernel", "missing: the kernel (or tiny guest) to boot")
	}
	if err := regularFile("kernel", s.Kernel); err != nil {
		return err
	}
	if s.Image != "" {
		if s.Initrd != "" || s.Rootfs != "" {
			return invalid("image", "an image brings its own initrd and drives: leave initrd and rootfs empty")
		}
		if s.Ready.Kind != "" && s.Ready.Kind != ReadyAgent {
			return invalid("ready.kind", "%q: an image's guest serves the agent; want %q", s.Ready.Kind, ReadyAgent)
		}
	}
	if s.Initrd != "" {
		if err := regularFile("initrd", s.Initrd); err != nil {
			return err
		}
	}
	if s.Rootfs != "" {
		if err := regularFile("rootfs", s.Rootfs); err != nil {
			return err
		}
	}
	if s.VCPUs < 0 || s.VCPUs > MaxVCPUs {
		return invalid("vcpus", "%d: want 1-%d", s.VCPUs, MaxVCPUs)
	}
	if s.MemoryMiB != 0 && (s.MemoryMiB < MinMemoryMiB || s.MemoryMiB > MaxMemoryMiB) {
		return invalid("memory_mib", "%d: want %d-%d", s.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	}
	switch s.Ready.Kind {
	case ReadyAgent, ReadyBootTimer:
	case ReadyConsole:
		if s.Ready.Console == "" {
			return invalid("ready.console", "missing: the text the console must show when kind is %q", ReadyConsole)
		}
	case "":
		return invalid("ready.kind", "missing; want %q, %q or %q", ReadyAgent, ReadyBootTimer, ReadyConsole)
	default:
		return invalid("ready.kind", "%q; want %q, %q or %q", s.Ready.Kind, ReadyAgent, ReadyBootTimer, ReadyConsole)
	}
	if s.Ready.Kind != ReadyConsole && (s.Ready.Console != "" || s.Ready.RestoredConsole != "") {
		return invalid("ready.console", "only for kind %q", ReadyConsole)
	}
	if s.Ready.TimeoutMS < 0 {
		return invalid("ready.timeout_ms", "%d: want 0 (the default, %v) or more", s.Ready.TimeoutMS, DefaultReadyTimeout)
	}
	if s.Network && s.Ready.Kind != ReadyAgent {
		return invalid("network", "a network needs the agent (ready.kind %q), which addresses the guest", ReadyAgent)
	}
	if len(s.Start) > 0 {
		if s.Ready.Kind != ReadyAgent {
			return invalid("start", "a start command needs the agent (ready.kind %q)", ReadyAgent)
		}
		if s.Start[0] == "" {
			return invalid("start", "empty command")
		}
	}
	return nil
}

// regularFile checks that path names a readable regular file.
func regularFile(field, path string) error {
	if !strings.HasPrefix(path, "/") {
		return invalid(field, "%q: want an absolute path (emberd resolves no relative paths)", path)
	}
	st, err := os.Stat(path)
	if err != nil {
		return invalid(field, "%v", err)
	}
	if !st.Mode().IsRegular() {
		return invalid(field, "%s: not a regular file", path)
	}
	return nil
}

// Validate checks a sandbox request; the error names the field.
func (s *SandboxSpec) Validate() error {
	if s.Template == "" {
		return invalid("template", "missing: the template to restore")
	}
	if s.TimeoutS < 0 || time.Duration(s.TimeoutS)*time.Second > MaxTimeout {
		return invalid("timeout_s", "%d: want 0 (none) to %d", s.TimeoutS, int(MaxTimeout/time.Second))
	}
	if err := checkMap("env", s.Env, true); err != nil {
		return err
	}
	if s.Network != nil && s.Network.Policy != nil {
		if err := s.Network.Policy.Validate(); err != nil {
			return invalid("network.policy", "%v", err)
		}
	}
	return checkMap("metadata", s.Metadata, false)
}

// checkMap checks a string map's size and, for an environment, its keys.
func checkMap(field string, m map[string]string, env bool) error {
	if len(m) > MaxMetadata {
		return invalid(field, "%d entries (limit %d)", len(m), MaxMetadata)
	}
	for k, v := range m {
		if k == "" || strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) || (env && strings.ContainsRune(k, '=')) {
			return invalid(field, "%q: a key must be non-empty without NUL (or '=' in env), a value without NUL", k)
		}
	}
	return nil
}

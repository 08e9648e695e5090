package wire

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/internal/depcheck"
	"github.com/embervm/ember/sandbox/network/egress"
)

// TestLeaf: the client and the ember CLI link this package; it must stay
// free of the manager's dependencies.
func TestLeaf(t *testing.T) {
	depcheck.Leaf(t, ".", depcheck.Module+"/agent/proto", depcheck.Module+"/sandbox/network/egress")
}

// invalidField checks that err is a KindInvalid error naming field.
func invalidField(t *testing.T, what string, err error, field string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindInvalid {
		t.Errorf("%s: %v, want a KindInvalid error", what, err)
		return
	}
	if !strings.HasPrefix(e.Msg, field+": ") {
		t.Errorf("%s: %q does not name %q", what, e.Msg, field)
	}
}

func TestTemplateSpecValidate(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := TemplateSpec{Kernel: kernel, Ready: ReadyCheck{Kind: ReadyAgent}, Network: true, Start: []string{"/bin/sh"}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("%+v: %v", ok, err)
	}
	for field, mod := range map[string]func(*TemplateSpec){
		"name":          func(s *TemplateSpec) { s.Name = "../x" },
		"kernel":        func(s *TemplateSpec) { s.Kernel = "vmlinux" },
		"initrd":        func(s *TemplateSpec) { s.Initrd = filepath.Dir(kernel) },
		"image":         func(s *TemplateSpec) { s.Image = "debian"; s.Rootfs = kernel },
		"vcpus":         func(s *TemplateSpec) { s.VCPUs = MaxVCPUs + 1 },
		"memory_mib":    func(s *TemplateSpec) { s.MemoryMiB = 1 },
		"ready.kind":    func(s *TemplateSpec) { s.Ready.Kind = "" },
		"ready.console": func(s *TemplateSpec) { s.Ready.Console = "login:" },
		"network":       func(s *TemplateSpec) { s.Ready.Kind = ReadyBootTimer; s.Start = nil },
		"start":         func(s *TemplateSpec) { s.Start = []string{""} },
	} {
		s := ok
		mod(&s)
		invalidField(t, field, s.Validate(), field)
	}
}

func TestSandboxSpecValidate(t *testing.T) {
	ok := SandboxSpec{Template: "t", TimeoutS: 60, Env: map[string]string{"A": "1"},
		Network: &NetworkSpec{Policy: &egress.Policy{Mode: egress.DenyAll}}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("%+v: %v", ok, err)
	}
	for field, mod := range map[string]func(*SandboxSpec){
		"template":       func(s *SandboxSpec) { s.Template = "" },
		"timeout_s":      func(s *SandboxSpec) { s.TimeoutS = -1 },
		"env":            func(s *SandboxSpec) { s.Env = map[string]string{"A=B": "1"} },
		"metadata":       func(s *SandboxSpec) { s.Metadata = map[string]string{"": "x"} },
		"network.policy": func(s *SandboxSpec) { s.Network = &NetworkSpec{Policy: &egress.Policy{Mode: "open"}} },
	} {
		s := ok
		mod(&s)
		invalidField(t, field, s.Validate(), field)
	}
}

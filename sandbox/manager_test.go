package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testbin"
	"github.com/embervm/ember/internal/testkvm"
)

// emberBin is the ember binary the tests build (static, as its seccomp
// filters need).
var emberBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sandbox-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	emberBin, err = testbin.Build(dir, "ember", "github.com/embervm/ember/cmd/ember")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func openTest(t *testing.T, state string) *Manager {
	t.Helper()
	m, err := Open(Config{StateDir: state, Ember: emberBin})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func tinySpec(t *testing.T) TemplateSpec {
	k := filepath.Join(t.TempDir(), "sandbox.elf")
	if err := os.WriteFile(k, tiny.Sandbox(), 0o644); err != nil {
		t.Fatal(err)
	}
	return TemplateSpec{Name: "tiny", Kernel: k, MemoryMiB: 16, Ready: ReadyCheck{Kind: ReadyBootTimer}}
}

// TestManagerConcurrentCreatesAndReopen: creates in parallel, a Close that
// leaves the VMs running, and a second manager that adopts and kills
// them (in process, for the race detector).
func TestManagerConcurrentCreatesAndReopen(t *testing.T) {
	testkvm.Need(t)
	state := t.TempDir()
	m := openTest(t, state)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.BuildTemplate(ctx, tinySpec(t)); err != nil {
		t.Fatal(err)
	}
	const n = 6
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := m.Create(ctx, SandboxSpec{Template: "tiny", TimeoutS: 60})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m = openTest(t, state)
	defer m.Close()
	sbs, err := m.Sandboxes()
	if err != nil {
		t.Fatal(err)
	}
	if len(sbs) != n {
		t.Fatalf("%d sandboxes after reopening, want %d", len(sbs), n)
	}
	if h := m.Host(); h.Sandboxes != n || h.Used.VCPUs != n {
		t.Errorf("the adopted sandboxes hold %d vCPUs in %d shares; want %d", h.Used.VCPUs, h.Sandboxes, n)
	}
	var kills sync.WaitGroup
	for _, sb := range sbs {
		if sb.State != StateRunning || sb.Deadline == nil {
			t.Errorf("sandbox %s after reopening: %s, deadline %v", sb.ID, sb.State, sb.Deadline)
		}
		kills.Go(func() {
			got, _, err := m.Kill(ctx, sb.ID)
			if err != nil || got.Exit == nil || got.Exit.Reason != ExitKilled {
				t.Errorf("kill %s: %+v, %v", sb.ID, got.Exit, err)
			}
		})
	}
	kills.Wait()
}

// TestExitReasons: how an ember's end is read (console, status).
func TestExitReasons(t *testing.T) {
	state := t.TempDir()
	m, err := Open(Config{StateDir: state, Ember: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	intp := func(i int) *int { return &i }
	for _, tc := range []struct {
		name, console, reason string
		code                  *int
		sig                   int
		killed                bool
	}{
		{"reset", "", ExitWorkload, intp(0), 0, false},
		{"panic", "[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n", ExitGuestPanic, intp(0), 0, false},
		{"vmm failure", "", ExitVMMCrash, intp(1), 0, false},
		{"seccomp", "", ExitVMMCrash, intp(148), 0, false},
		{"signal", "", ExitVMMCrash, intp(-1), 9, false},
		{"unknown", "", ExitVMMCrash, nil, 0, false},
		{"killed", "Kernel panic - not syncing\n", ExitKilled, intp(-1), 9, true},
	} {
		dir := filepath.Join(state, tc.name)
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(dir, consoleName), []byte(tc.console), 0o644)
		l := &live{sb: Sandbox{ID: tc.name, Dir: dir, State: StateRunning}, done: make(chan struct{})}
		if tc.killed {
			l.reason = ExitKilled
		}
		m.ended(l, tc.code, tc.sig)
		sb, err := m.Sandbox(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if sb.State != StateExited || sb.Exit.Reason != tc.reason {
			t.Errorf("%s: %s %+v, want reason %q", tc.name, sb.State, sb.Exit, tc.reason)
		}
		if tc.reason == ExitVMMCrash && tc.code != nil && *tc.code > 0 && (sb.Exit.Code == nil || *sb.Exit.Code != *tc.code) {
			t.Errorf("%s: code %v, want %d", tc.name, sb.Exit.Code, *tc.code)
		}
	}
}

package main

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
)

// TestWatchSignals: the first signal stops the run; a second one, or a
// run that does not end within the timeout, exits; a run that ends after
// the first signal does not.
func TestWatchSignals(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	type result struct {
		stops  int
		reason string
	}
	watch := func(signals int, timeout time.Duration, end bool) result {
		sigs := make(chan os.Signal, 2)
		done := make(chan struct{})
		var r result
		stopped := make(chan struct{})
		exited := make(chan string, 1)
		returned := make(chan struct{})
		go func() {
			defer close(returned)
			watchSignals(log, sigs, done, func() { r.stops++; close(stopped) }, timeout, func(reason string) { exited <- reason })
		}()
		sigs <- unix.SIGTERM
		<-stopped
		for i := 1; i < signals; i++ {
			sigs <- unix.SIGTERM
		}
		if end {
			close(done)
		}
		select {
		case r.reason = <-exited:
		case <-returned:
			// The test's exit returns, so watchSignals returns after
			// calling it: both may be ready.
			select {
			case r.reason = <-exited:
			default:
			}
		}
		return r
	}
	if r := watch(2, hangLimit, false); r.stops != 1 || !strings.Contains(r.reason, "second") {
		t.Errorf("two signals: %+v, want one stop, then an exit for the second signal", r)
	}
	if r := watch(1, time.Millisecond, false); r.stops != 1 || !strings.Contains(r.reason, "did not stop") {
		t.Errorf("a stop that never ends: %+v, want one stop, then an exit for the timeout", r)
	}
	if r := watch(1, hangLimit, true); r.stops != 1 || r.reason != "" {
		t.Errorf("a stop that ends the run: %+v, want one stop and no exit", r)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds, failing the test after hangLimit.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(hangLimit); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestSecondSignalEndsEmber: a guest that prints to a stdout nobody reads
// fills the pipe; a SIGTERM asks Ember to stop, and a second one ends the
// process even if the stop could not (a vCPU stuck writing the console,
// before the console had a writer of its own; now the first one does).
func TestSecondSignalEndsEmber(t *testing.T) {
	testkvm.Need(t)
	kernel := write(t, "chatter.elf", tiny.Chatter())
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(emberBin, "run", "--kernel", kernel)
	var stderr syncBuffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	size, err := unix.FcntlInt(r.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A quarter of the pipe's capacity: the pipe may count as full with
	// less than its capacity in it (each write of a page or more starts a
	// new page), and before the console had its own writer (and this test
	// was written) the guest's vCPU blocked once the pipe was full.
	waitFor(t, "the guest to fill the stdout pipe", func() bool {
		n, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ) // FIONREAD
		return err == nil && n >= size/4
	})
	cmd.Process.Signal(unix.SIGTERM)
	waitFor(t, "ember to log the stop", func() bool { return strings.Contains(stderr.String(), "msg=\"stopping the") })
	cmd.Process.Signal(unix.SIGTERM) // fails harmlessly if the first one sufficed
	select {
	case <-exited:
		if cmd.ProcessState.ExitCode() == 0 {
			t.Errorf("exit 0 after SIGTERM, want a failure\n%s", stderr.String())
		}
	case <-time.After(hangLimit):
		t.Fatalf("ember did not exit after two SIGTERMs\n%s", stderr.String())
	}
	t.Logf("stderr:\n%s", stderr.String())
}

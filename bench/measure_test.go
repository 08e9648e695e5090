package bench

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/embervm/ember/internal/testbin"
)

// hogCommand makes the test binary a child that touches a given number of
// MiB (TestMain, scale_test.go).
const hogCommand = "hog-mib"

// touch writes n MiB and returns one byte of it (so it is not optimised away).
func touch(n int) byte {
	b := make([]byte, n<<20)
	for i := range b {
		b[i] = byte(i)
	}
	return b[len(b)/2]
}

// A child's peak RSS is its own, not its parent's: this process grows to
// 300 MiB first, then measures, through the real bin/ember-rusage, a
// child that touches 40 MiB.
func TestRunToExitRSS(t *testing.T) {
	measurer, err := testbin.Build(t.TempDir(), "ember-rusage", "github.com/embervm/ember/cmd/ember-rusage")
	if err != nil {
		t.Fatal(err)
	}
	const parentMiB, childMiB = 300, 40
	keep := make([]byte, parentMiB<<20)
	for i := range keep {
		keep[i] = 1
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s, _, err := RunToExitRSS(context.Background(), measurer, []string{self, hogCommand, strconv.Itoa(childMiB)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := mib(s.PeakRSS)
	t.Logf("child's peak RSS %.1f MiB in %v (parent at %d MiB)", got, s.Wall, parentMiB)
	if got < childMiB || got > parentMiB/2 {
		t.Errorf("child's peak RSS %.1f MiB, want its own %d MiB and a little, not its parent's %d", got, childMiB, parentMiB)
	}
	if s.Wall <= 0 {
		t.Errorf("wall time %v", s.Wall)
	}
	// A failing child is an error that shows its output; its exit status
	// passes through the measurer.
	if _, out, err := RunToExitRSS(context.Background(), measurer, []string{"/bin/sh", "-c", "echo boom; exit 3"}, 0); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("a child exiting 3: %v\n%s", err, out)
	}
	if _, _, err := RunToExitRSS(context.Background(), measurer, []string{self, hogCommand, strconv.Itoa(childMiB), "kill"}, 128+9); err != nil {
		t.Errorf("a child killed by SIGKILL: the measurer did not exit 137: %v", err)
	}
	if _, _, err := RunToExitRSS(context.Background(), measurer, []string{"/nonexistent/cmd"}, 0); err == nil {
		t.Error("a command that cannot start was measured")
	}
	_ = keep[len(keep)-1]
}

package bench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testbin"
	"github.com/embervm/ember/internal/testkvm"
)

// TestMain lets the test binary be the process group leader the scale
// benchmarks start (os.Executable with LeaderSubcommand).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == LeaderSubcommand {
		RunLeader()
	}
	if len(os.Args) > 2 && os.Args[1] == hogCommand { // measure_test.go
		n, _ := strconv.Atoi(os.Args[2])
		touch(n)
		if len(os.Args) > 3 && os.Args[3] == "kill" {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// alive reports whether pid is a process that has not exited (a zombie
// counts as exited).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// TestProcGroupEndsEverythingOnCancel: when the benchmark's context ends
// (SIGINT), every process of the group dies at once, even one nobody
// waits for; close reaps them and removes the directory.
func TestProcGroupEndsEverythingOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g, err := newProcGroup(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for range 3 {
		cmd := exec.Command("sleep", "600")
		if err := g.start(cmd); err != nil {
			g.close()
			t.Fatal(err)
		}
		pids = append(pids, cmd.Process.Pid)
	}
	waited := exec.Command("sleep", "600")
	if err := g.start(waited); err != nil {
		g.close()
		t.Fatal(err)
	}
	pids = append(pids, waited.Process.Pid, g.leader.Process.Pid)
	runErr := make(chan error, 1)
	go func() { runErr <- g.wait(waited) }()

	cancel()
	if err := <-runErr; err == nil {
		t.Error("the waited-for sleep ended normally, not killed")
	}
	g.close()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still alive after close", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if _, err := os.Stat(g.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s left behind: %v", g.dir, err)
	}
	if err := g.start(exec.Command("true")); !errors.Is(err, errStopping) {
		t.Errorf("start after close: %v", err)
	}
}

func TestSetExitFlagInStream(t *testing.T) {
	counter := tiny.Counter()
	page := make([]byte, 4096)
	copy(page, counter)
	page[tiny.CounterAddr-tiny.LoadAddr] = 7 // the count the guest reached
	// Two copies of the page (precopy resent it), framed by other data.
	stream := bytes.Join([][]byte{[]byte("QEVM header"), page, bytes.Repeat([]byte{0xab}, 5000), page, []byte("EOF")}, nil)
	mig := filepath.Join(t.TempDir(), "vm.mig")
	if err := os.WriteFile(mig, stream, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := setExitFlagInStream(mig, counter); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(mig)
	flag := tiny.ExitFlagAddr - tiny.LoadAddr
	first := len("QEVM header")
	second := first + 4096 + 5000
	if got[first+flag] != 1 || got[second+flag] != 1 {
		t.Errorf("exit flag bytes %d and %d, want 1 and 1", got[first+flag], got[second+flag])
	}
	stream[first+flag], stream[second+flag] = 1, 1
	if !bytes.Equal(got, stream) {
		t.Error("bytes other than the two flags changed")
	}

	if err := os.WriteFile(mig, []byte("no guest page here"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := setExitFlagInStream(mig, counter); err == nil {
		t.Error("a stream without the guest's page was accepted")
	}
}

func TestReadUsageOfThisProcess(t *testing.T) {
	u, err := readUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.pssKiB <= 0 || u.threads < 1 || u.fds < 3 || u.maps < 1 || u.cpuTicks < 0 {
		t.Errorf("implausible usage of this process: %+v", u)
	}
}

// buildEmber builds cmd/ember into a temporary directory.
func buildEmber(t *testing.T) string {
	t.Helper()
	bin, err := testbin.Build(t.TempDir(), "ember", "github.com/embervm/ember/cmd/ember")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestDensityOfAFewEmberVMs runs the density benchmark for real on a
// handful of VMs: every VM starts through the API, answers GET /, prints
// its line, and nothing is left running afterwards.
func TestDensityOfAFewEmberVMs(t *testing.T) {
	testkvm.Need(t)
	ember := buildEmber(t)
	// Any answer counts (the lab answers slower than a host's KVM): the
	// test checks the ramp, the benchmark measures the latency.
	var progress bytes.Buffer
	r, err := Density(context.Background(), DensityOptions{Ember: ember, Max: 4, Step: 2, Parallel: 2, MemMiB: 64,
		P99Limit: densityPingTimeout}, &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, &progress)
	}
	if r.VMs != 4 || !strings.Contains(r.Limit, "reached --max 4") {
		t.Errorf("VMs %d (%s), want 4", r.VMs, r.Limit)
	}
	if r.ThreadsPerVM < 2 || r.FDsPerVM < 3 || r.PSSMiBPerVM <= 0 {
		t.Errorf("implausible per-VM figures: %+v", r)
	}
	if strings.Count(progress.String(), "VMs up") != 2 {
		t.Errorf("want two steps:\n%s", &progress)
	}
	out, _ := exec.Command("pgrep", "-f", ember).Output()
	if len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("ember processes left running: %s", out)
	}
}

package workload

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests run the real thing in-process: this test binary becomes a
// child subreaper, so orphans of the workloads it starts are re-parented
// to it as they would be to PID 1, and it reaps them with wait4(-1).
func TestMain(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

const testPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// run starts the workload with its output on a pipe (unless spec has a
// console) and returns the pid, the output lines and the signal channel
// Supervise reads, registered for SIGCHLD before the start as the init does.
func run(t *testing.T, spec Spec) (int, *bufio.Scanner, chan os.Signal) {
	t.Helper()
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGCHLD)
	t.Cleanup(func() { signal.Stop(sigs) })
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if spec.Console == nil {
		spec.Console = w
	}
	if spec.Env == nil {
		spec.Env = []string{"PATH=" + testPath}
	}
	if spec.Dir == "" {
		spec.Dir = "/"
	}
	pid, err := Start(spec)
	w.Close()
	if err != nil {
		t.Fatalf("Start(%q): %v", spec.Args, err)
	}
	return pid, bufio.NewScanner(r), sigs
}

func sh(script string) []string { return []string{"sh", "-c", script} }

func supervise(t *testing.T, pid int, sigs chan os.Signal) int {
	t.Helper()
	ws, err := Supervise(pid, sigs)
	if err != nil {
		t.Fatal(err)
	}
	return ExitCode(ws)
}

func TestExitCodes(t *testing.T) {
	for script, want := range map[string]int{
		"exit 0":        0,
		"exit 3":        3,
		"exit 255":      255,
		"kill -TERM $$": 128 + 15,
		"kill -KILL $$": 128 + 9,
		"kill -SEGV $$": 128 + 11,
	} {
		pid, _, sigs := run(t, Spec{Args: sh(script)})
		if got := supervise(t, pid, sigs); got != want {
			t.Errorf("%q: exit code %d, want %d", script, got, want)
		}
	}
	if !ReapRemaining(time.Minute) {
		t.Error("children left")
	}
}

// A SIGTERM that PID 1 receives reaches the workload, which can exit
// cleanly on it.
func TestForwardsSignals(t *testing.T) {
	pid, out, sigs := run(t, Spec{Args: sh(`trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done`)})
	if !out.Scan() || out.Text() != "ready" {
		t.Fatalf("workload said %q, %v", out.Text(), out.Err())
	}
	sigs <- unix.SIGTERM
	if got := supervise(t, pid, sigs); got != 42 {
		t.Errorf("exit code %d, want 42 from the TERM trap", got)
	}
	if !out.Scan() || out.Text() != "got TERM" {
		t.Errorf("workload said %q", out.Text())
	}
	ReapRemaining(time.Minute)
}

// Orphans are reaped while the workload runs: the workload waits until
// its orphaned grandchild is gone from the process table, which happens
// only if Supervise reaps it (kill -0 succeeds on a zombie).
func TestReapsOrphansWhileRunning(t *testing.T) {
	pid, out, sigs := run(t, Spec{Args: sh(`g=$(sh -c 'sleep 0.01 >/dev/null & echo $!'); ` +
		`echo orphan $g; while kill -0 $g 2>/dev/null; do sleep 0.01; done; echo reaped; exit 7`)})
	if got := supervise(t, pid, sigs); got != 7 {
		t.Errorf("exit code %d, want 7", got)
	}
	var lines []string
	for out.Scan() {
		lines = append(lines, out.Text())
	}
	if len(lines) != 2 || lines[1] != "reaped" {
		t.Errorf("output %q", lines)
	}
}

// An orphan that outlives the workload is left to ReapRemaining, after the
// caller kills it (the init kills everything with kill(-1, SIGKILL)).
func TestReapRemaining(t *testing.T) {
	pid, out, sigs := run(t, Spec{Args: sh(`sleep 1000 >/dev/null & echo $!; exit 5`)})
	if got := supervise(t, pid, sigs); got != 5 {
		t.Errorf("exit code %d, want 5", got)
	}
	if !out.Scan() {
		t.Fatal("no pid printed")
	}
	orphan, err := strconv.Atoi(out.Text())
	if err != nil {
		t.Fatal(err)
	}
	if ppid := parentOf(t, orphan); ppid != os.Getpid() {
		t.Fatalf("orphan %d has parent %d, want this subreaper %d", orphan, ppid, os.Getpid())
	}
	if ReapRemaining(0) {
		t.Fatal("ReapRemaining says none is left while the orphan sleeps")
	}
	if err := unix.Kill(orphan, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !ReapRemaining(time.Minute) {
		t.Fatal("orphan not reaped")
	}
	if err := unix.Kill(orphan, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("orphan %d still in the process table: %v", orphan, err)
	}
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ppid ...
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	noExec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badInterp := filepath.Join(dir, "badinterp")
	if err := os.WriteFile(badInterp, []byte("#!/nonexistent/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		spec Spec
		code int
		msg  string
	}{
		{"absolute path missing", Spec{Args: []string{"/nonexistent/cmd"}}, ExitNotFound, "cannot run /nonexistent/cmd: no such file or directory"},
		{"not in PATH", Spec{Args: []string{"no-such-command-ember"}}, ExitNotFound, "cannot run no-such-command-ember: executable file not found in $PATH"},
		{"no PATH", Spec{Args: []string{"sh"}, Env: []string{"X=1"}}, ExitNotFound, "executable file not found"},
		{"not executable", Spec{Args: []string{noExec}}, ExitNotExecutable, "permission denied"},
		{"not executable in PATH", Spec{Args: []string{"noexec"}, Env: []string{"PATH=" + dir}}, ExitNotExecutable, "cannot run " + noExec + ": permission denied"},
		{"directory", Spec{Args: []string{dir}}, ExitNotExecutable, "cannot run " + dir + " in /: permission denied"},
		{"missing interpreter", Spec{Args: []string{badInterp}}, ExitNotFound, "no such file"},
		{"empty", Spec{Args: []string{""}}, ExitNotFound, "empty command"},
	} {
		if tc.spec.Env == nil {
			tc.spec.Env = []string{"PATH=" + testPath}
		}
		if tc.spec.Dir == "" {
			tc.spec.Dir = "/"
		}
		_, err := Start(tc.spec)
		var se *StartError
		if !errors.As(err, &se) {
			t.Errorf("%s: error %v, want a StartError", tc.name, err)
			continue
		}
		if se.Code != tc.code || !strings.Contains(se.Error(), tc.msg) {
			t.Errorf("%s: %q code %d, want code %d and %q", tc.name, se, se.Code, tc.code, tc.msg)
		}
	}
}

// The workload gets its directory, environment and credentials.
func TestSpec(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to change credentials")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pid, out, sigs := run(t, Spec{
		Args: sh(`echo "$(pwd) $FOO $(id -u) $(id -g) $(id -G)"`),
		Env:  []string{"PATH=" + testPath, "FOO=bar baz"},
		Dir:  dir, UID: 1234, GID: 2345, Groups: []uint32{3456, 4567},
	})
	if got := supervise(t, pid, sigs); got != 0 {
		t.Errorf("exit code %d", got)
	}
	want := dir + " bar baz 1234 2345 2345 3456 4567" // id -G: gid, then the groups
	if !out.Scan() || out.Text() != want {
		t.Errorf("workload saw %q, want %q", out.Text(), want)
	}
}

// With Ctty, a terminal console becomes the controlling terminal of the
// workload's new session.
func TestControllingTerminal(t *testing.T) {
	ptmx, pts := openPTY(t)
	pid, _, sigs := run(t, Spec{
		Args:    sh(`echo "tty_nr=$(cut -d' ' -f7 /proc/self/stat) sid=$(cut -d' ' -f6 /proc/self/stat) pid=$$"`),
		Console: pts, Ctty: true,
	})
	pts.Close()
	if got := supervise(t, pid, sigs); got != 0 {
		t.Errorf("exit code %d", got)
	}
	line, err := bufio.NewReader(ptmx).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var ttyNr, sid, shPid int
	if _, err := fmt.Sscanf(strings.TrimSpace(line), "tty_nr=%d sid=%d pid=%d", &ttyNr, &sid, &shPid); err != nil {
		t.Fatalf("output %q: %v", line, err)
	}
	if ttyNr == 0 {
		t.Errorf("no controlling terminal: %q", line)
	}
	if sid != shPid {
		t.Errorf("workload is not a session leader: %q", line)
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (ptmx, pts *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no /dev/ptmx: %v", err)
	}
	ptmx = os.NewFile(uintptr(fd), "/dev/ptmx")
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ptmx, pts
}

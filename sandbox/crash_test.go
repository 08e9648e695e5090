package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCrashRecords: how an end is read (the OOM killer, seccomp, a Go
// crash report of ember) and which ends keep a crash record.
func TestCrashRecords(t *testing.T) {
	state := t.TempDir()
	m, err := Open(Config{StateDir: state, Ember: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	intp := func(i int) *int { return &i }
	const (
		oomLine   = "[    2.1] Out of memory: Killed process 42 (hog) total-vm:1048576kB, anon-rss:900000kB"
		panicLine = "[    2.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009"
	)
	goCrash := "time=1 level=INFO msg=\"API server listening\"\nSIGSEGV: segmentation violation\nPC=0x0 m=0 sigcode=0\n" + strings.Repeat("goroutine trace line\n", 400)
	for _, tc := range []struct {
		name, console, log string
		code               *int
		sig                int
		reason             string
		message            string // a part of Exit.Message
		crash              bool
		logHas             string // a line the record's ember log holds
	}{
		{"oom then poweroff", "ready\n" + oomLine + "\n", "", intp(0), 0, ExitOOM, "Out of memory: Killed process 42", true, ""},
		{"oom then panic", oomLine + "\n" + panicLine + "\n", "", intp(0), 0, ExitOOM, "Killed process 42", true, ""},
		{"memcg oom", "Memory cgroup out of memory: Killed process 7 (x)\n", "", intp(0), 0, ExitOOM, "Memory cgroup out of memory", true, ""},
		{"oom then vmm crash", oomLine + "\n", "", intp(-1), 9, ExitVMMCrash, "signal 9 (SIGKILL)", true, ""},
		{"panic", panicLine + "\n", "", intp(0), 0, ExitGuestPanic, "Attempted to kill init", true, ""},
		{"seccomp", "", "ember: seccomp: bad syscall 110 (getppid) on a vmm thread (vmm filter); exiting with status 148\n", intp(148), 0, ExitVMMCrash, "seccomp filter refused a system call (exit status 148); its last log line: ember: seccomp: bad syscall 110", true, "bad syscall 110"},
		{"go crash", "ready\n", goCrash, intp(2), 0, ExitVMMCrash, "status 2; its crash report: SIGSEGV: segmentation violation", true, "SIGSEGV: segmentation violation"},
		{"reset", "ready\n", "", intp(0), 0, ExitWorkload, "reset or powered off", false, ""},
	} {
		dir := filepath.Join(state, strings.ReplaceAll(tc.name, " ", "-"))
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(dir, consoleName), []byte(tc.console), 0o644)
		os.WriteFile(filepath.Join(dir, emberLogName), []byte(tc.log), 0o644)
		id := filepath.Base(dir)
		l := &live{sb: Sandbox{ID: id, Template: "tpl", Dir: dir, State: StateRunning, PID: 1234}, done: make(chan struct{})}
		m.ended(l, tc.code, tc.sig)
		sb, err := m.Sandbox(id)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Exit.Reason != tc.reason || !strings.Contains(sb.Exit.Message, tc.message) || sb.Exit.Crash != tc.crash {
			t.Errorf("%s: exit %+v; want reason %q, message with %q, crash %v", tc.name, sb.Exit, tc.reason, tc.message, tc.crash)
			continue
		}
		c, err := m.Crash(id)
		if !tc.crash {
			if KindOf(err) != KindNotFound || !strings.Contains(err.Error(), "which is not a crash") {
				t.Errorf("%s: Crash: %v; want not found, not a crash", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if c.Reason != tc.reason || c.Console != tc.console || c.ConsoleBytes != int64(len(tc.console)) || c.PID != 1234 || c.Template != "tpl" {
			t.Errorf("%s: crash record %+v", tc.name, c)
		}
		if tc.code != nil && *tc.code >= 0 && (c.Code == nil || *c.Code != *tc.code) {
			t.Errorf("%s: crash record code %v, want %d", tc.name, c.Code, *tc.code)
		}
		if tc.sig != 0 && (c.Signal != tc.sig || c.SignalName != "SIGKILL") {
			t.Errorf("%s: crash record signal %d %q", tc.name, c.Signal, c.SignalName)
		}
		if tc.logHas != "" && !contains(c.EmberLog, tc.logHas) {
			t.Errorf("%s: ember log of the record lacks %q: %d lines from %q", tc.name, tc.logHas, len(c.EmberLog), c.EmberLog[0])
		}
		if len(c.EmberLog) > CrashLogLines {
			t.Errorf("%s: %d log lines kept, over %d", tc.name, len(c.EmberLog), CrashLogLines)
		}
	}
	// A timeout keeps a record; a kill does not.
	for reason, crash := range map[string]bool{ExitTimeout: true, ExitKilled: false} {
		dir := filepath.Join(state, reason)
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(dir, consoleName), []byte("ready\n"), 0o644)
		l := &live{sb: Sandbox{ID: reason, Dir: dir, State: StateRunning}, reason: reason, done: make(chan struct{})}
		m.ended(l, intp(-1), 9)
		sb, _ := m.Sandbox(reason)
		c, err := m.Crash(reason)
		if sb.Exit == nil || sb.Exit.Reason != reason || sb.Exit.Crash != crash || (err == nil) != crash || crash && (c.Console != "ready\n" || c.Signal != 9) {
			t.Errorf("%s: exit %+v, record %+v, %v", reason, sb.Exit, c, err)
		}
	}
	// A running sandbox and an unknown one have none, each said plainly.
	if err := m.db.put(bucketSandboxes, "sb-run", Sandbox{ID: "sb-run", State: StateRunning}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Crash("sb-run"); KindOf(err) != KindNotFound || !strings.Contains(err.Error(), "it is running") {
		t.Errorf("Crash of a running sandbox: %v", err)
	}
	if _, err := m.Crash("sb-nope"); KindOf(err) != KindNotFound || !strings.Contains(err.Error(), "no such sandbox") {
		t.Errorf("Crash of an unknown sandbox: %v", err)
	}
}

// TestCrashConsoleTail: a long console is cut to its last
// CrashConsoleTail bytes; bytes that are not UTF-8 survive as U+FFFD.
func TestCrashConsoleTail(t *testing.T) {
	state := t.TempDir()
	m, err := Open(Config{StateDir: state, Ember: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dir := filepath.Join(state, "sb-long")
	os.Mkdir(dir, 0o755)
	console := strings.Repeat("x", 3*CrashConsoleTail) + "\xff\xfe" + "Kernel panic - not syncing: end\n"
	os.WriteFile(filepath.Join(dir, consoleName), []byte(console), 0o644)
	l := &live{sb: Sandbox{ID: "sb-long", Dir: dir, State: StateRunning}, done: make(chan struct{})}
	code := 0
	m.ended(l, &code, 0)
	c, err := m.Crash("sb-long")
	if err != nil {
		t.Fatal(err)
	}
	if c.Reason != ExitGuestPanic || c.ConsoleBytes != int64(len(console)) || !strings.HasSuffix(c.Console, "not syncing: end\n") || !utf8.ValidString(c.Console) {
		t.Errorf("record: reason %q, %d of %d bytes, ends %q", c.Reason, len(c.Console), c.ConsoleBytes, c.Console[max(len(c.Console)-40, 0):])
	}
	if len(c.Console) > CrashConsoleTail+8 {
		t.Errorf("console kept: %d bytes, want about %d", len(c.Console), CrashConsoleTail)
	}
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// FuzzScanConsole: the guest writes the console, so any bytes may come;
// the scan never panics and what it returns is one line holding a marker.
func FuzzScanConsole(f *testing.F) {
	f.Add([]byte("Out of memory: Killed process 1 (x)\n"))
	f.Add([]byte("a\nb Memory cgroup out of memory: Killed process\nc"))
	f.Add([]byte("\n\n\x00System is deadlocked on memory"))
	f.Fuzz(func(t *testing.T, data []byte) {
		line, ok := scanConsole(data, oomMarkers)
		if !ok {
			return
		}
		if strings.Contains(line, "\n") {
			t.Fatalf("a line with a newline: %q", line)
		}
		found := false
		for _, mk := range oomMarkers {
			found = found || strings.Contains(line, mk)
		}
		if !found {
			t.Fatalf("line %q holds no marker", line)
		}
	})
}

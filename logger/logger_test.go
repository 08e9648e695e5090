package logger

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lineRE matches a whole line: time, prefix, message and attributes.
var lineRE = regexp.MustCompile(`^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}) \[([^\]]*)\] (.*)\n$`)

// syncBuffer is a bytes.Buffer safe for concurrent use.
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

func newTest(opts Options) (*Logger, *slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	if opts.Writer == nil {
		opts.Writer = buf
	}
	l := New(opts)
	return l, slog.New(l.Handler()), buf
}

// parse splits one line into its prefix and the text after it.
func parse(t *testing.T, line string) (ts time.Time, prefix, rest string) {
	t.Helper()
	m := lineRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("line %q does not match %s", line, lineRE)
	}
	ts, err := time.ParseInLocation(timeLayout, m[1], time.Local)
	if err != nil {
		t.Fatalf("time %q: %v", m[1], err)
	}
	return ts, m[2], m[3]
}

func TestLineFormat(t *testing.T) {
	_, log, buf := newTest(Options{ID: "vm1"})
	before := time.Now()
	log.Info("hello world", "k", "v w", "n", 3, "ok", true)
	ts, prefix, rest := parse(t, buf.String())
	if prefix != "vm1:fc_vmm" {
		t.Errorf("prefix %q, want vm1:fc_vmm", prefix)
	}
	if want := `hello world k="v w" n=3 ok=true`; rest != want {
		t.Errorf("rest %q, want %q", rest, want)
	}
	if d := ts.Sub(before); d < 0 || d > time.Minute {
		t.Errorf("timestamp %v is %v after the call started; want local time now", ts, d)
	}
}

func TestDefaultIDAndThread(t *testing.T) {
	_, log, buf := newTest(Options{})
	log.Info("m")
	if _, prefix, _ := parse(t, buf.String()); prefix != DefaultID+":"+DefaultThread {
		t.Errorf("prefix %q", prefix)
	}
	_, log, buf = newTest(Options{ID: "x", Thread: "main"})
	log.Info("m")
	if _, prefix, _ := parse(t, buf.String()); prefix != "x:main" {
		t.Errorf("prefix %q, want x:main", prefix)
	}
}

func TestShowLevel(t *testing.T) {
	_, log, buf := newTest(Options{ID: "vm1", ShowLevel: true, Level: LevelTrace})
	ctx := context.Background()
	log.Error("e")
	log.Warn("w")
	log.Info("i")
	log.Debug("d")
	log.Log(ctx, LevelTrace, "t")
	lines := strings.SplitAfter(buf.String(), "\n")
	want := []string{"vm1:fc_vmm:ERROR", "vm1:fc_vmm:WARN", "vm1:fc_vmm:INFO", "vm1:fc_vmm:DEBUG", "vm1:fc_vmm:TRACE"}
	if len(lines) != len(want)+1 {
		t.Fatalf("got %d lines: %q", len(lines)-1, buf.String())
	}
	for i, w := range want {
		if _, prefix, _ := parse(t, lines[i]); prefix != w {
			t.Errorf("line %d prefix %q, want %q", i, prefix, w)
		}
	}
}

func TestShowOrigin(t *testing.T) {
	_, log, buf := newTest(Options{ID: "vm1", ShowLevel: true, ShowOrigin: true})
	_, _, line, _ := runtime.Caller(0)
	log.Warn("here")
	_, prefix, rest := parse(t, buf.String())
	want := fmt.Sprintf("vm1:fc_vmm:WARN:logger/logger_test.go:%d", line+1)
	if prefix != want && !strings.HasSuffix(prefix, fmt.Sprintf("/logger/logger_test.go:%d", line+1)) {
		t.Errorf("prefix %q, want %q", prefix, want)
	}
	if rest != "here" {
		t.Errorf("rest %q", rest)
	}

	// Origin without level.
	_, log, buf = newTest(Options{ID: "vm1", ShowOrigin: true})
	log.Info("x")
	if _, prefix, _ := parse(t, buf.String()); !strings.HasPrefix(prefix, "vm1:fc_vmm:") || !strings.Contains(prefix, "logger_test.go:") || strings.Contains(prefix, "INFO") {
		t.Errorf("prefix %q, want vm1:fc_vmm:<file>:<line>", prefix)
	}
}

func TestOriginUnknown(t *testing.T) {
	l, _, buf := newTest(Options{ID: "vm1", ShowOrigin: true})
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "no pc", 0)
	if err := l.Handler().Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if _, prefix, _ := parse(t, buf.String()); prefix != "vm1:fc_vmm:?:?" {
		t.Errorf("prefix %q, want vm1:fc_vmm:?:?", prefix)
	}
}

func TestThreadAttr(t *testing.T) {
	_, log, buf := newTest(Options{ID: "vm1"})
	vcpu := log.With("thread", "fc_vcpu 0")
	vcpu.Info("run", "exit", "hlt")
	log.Info("req", "thread", "fc_api", "path", "/machine-config")
	vcpu.Info("override", "thread", "fc_vcpu 1")
	log.WithGroup("g").Info("grouped", "thread", "t")
	lines := strings.SplitAfter(buf.String(), "\n")
	tests := []struct{ prefix, rest string }{
		{"vm1:fc_vcpu 0", "run exit=hlt"},
		{"vm1:fc_api", "req path=/machine-config"},
		{"vm1:fc_vcpu 1", "override"},
		{"vm1:fc_vmm", "grouped g.thread=t"},
	}
	for i, tt := range tests {
		_, prefix, rest := parse(t, lines[i])
		if prefix != tt.prefix || rest != tt.rest {
			t.Errorf("line %d: [%s] %s, want [%s] %s", i, prefix, rest, tt.prefix, tt.rest)
		}
	}
}

func TestAttrs(t *testing.T) {
	_, log, buf := newTest(Options{ID: "vm1"})
	log.With("a", 1).WithGroup("g").Info("m",
		"b", "x=y",
		slog.Group("h", "c", true),
		"err", errors.New("boom bad"),
		"empty", "",
		"u", uint64(7),
		"d", 1500*time.Millisecond,
		slog.Group("nothing"),
		"q", `say "hi"`,
		"nl", "a\nb",
	)
	_, _, rest := parse(t, buf.String())
	want := `m a=1 g.b="x=y" g.h.c=true g.err="boom bad" g.empty="" g.u=7 g.d=1.5s g.q="say \"hi\"" g.nl="a\nb"`
	if rest != want {
		t.Errorf("rest\n%s\nwant\n%s", rest, want)
	}
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in   string
		want slog.Level
	}{
		{"Error", slog.LevelError}, {"ERROR", slog.LevelError}, {"error", slog.LevelError},
		{"Warning", slog.LevelWarn}, {"warn", slog.LevelWarn}, {"WaRn", slog.LevelWarn},
		{"Info", slog.LevelInfo}, {"INFO", slog.LevelInfo},
		{"Debug", slog.LevelDebug}, {"debug", slog.LevelDebug},
		{"Trace", LevelTrace}, {"tRaCe", LevelTrace},
		{"Off", LevelOff}, {"off", LevelOff},
	}
	for _, tt := range tests {
		got, err := ParseLevel(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "verbose", "warnings", "5"} {
		_, err := ParseLevel(bad)
		if !errors.Is(err, ErrInvalidLevel) {
			t.Errorf("ParseLevel(%q) error %v, want ErrInvalidLevel", bad, err)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("ParseLevel(%q) error %q does not name the input", bad, err)
		}
	}
	if LevelTrace >= slog.LevelDebug {
		t.Error("Trace is not below Debug")
	}
}

func TestLevelFilterAndRuntimeChange(t *testing.T) {
	l, log, buf := newTest(Options{ID: "vm1"})
	log.Debug("hidden")
	log.Info("shown")
	l.SetLevel(slog.LevelDebug)
	log.Debug("now shown")
	l.SetLevel(LevelOff)
	log.Error("off drops errors too")
	if got := strings.Count(buf.String(), "\n"); got != 2 {
		t.Errorf("%d lines, want 2:\n%s", got, buf.String())
	}
	if l.Level() != LevelOff {
		t.Errorf("Level() = %v", l.Level())
	}
	if log.Enabled(context.Background(), slog.Level(1000)) {
		t.Error("Off enables a high level")
	}
}

func TestConfigureOff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	l, log, _ := newTest(Options{ID: "vm1"})
	if err := l.Configure(Config{Path: path, Level: "off"}); err != nil {
		t.Fatal(err)
	}
	log.Error("dropped")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 0 {
		t.Errorf("Off wrote %q", data)
	}
}

func TestConfigureOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fc.log")
	if err := os.WriteFile(path, []byte("old line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, log, buf := newTest(Options{ID: "vm1"})
	log.Info("before")

	// Failed calls change nothing and do not count.
	if err := l.Configure(Config{Path: path, Level: "loud"}); !errors.Is(err, ErrInvalidLevel) {
		t.Fatalf("bad level: %v", err)
	}
	if err := l.Configure(Config{Path: filepath.Join(dir, "no/such/dir/log")}); err == nil {
		t.Fatal("unopenable path accepted")
	}
	if l.Configured() {
		t.Fatal("failed Configure counted")
	}

	if err := l.Configure(Config{Path: path, Level: "Warning", ShowLevel: true}); err != nil {
		t.Fatal(err)
	}
	if !l.Configured() {
		t.Fatal("Configured() false")
	}
	err := l.Configure(Config{Path: path})
	if !errors.Is(err, ErrConfigured) {
		t.Fatalf("second Configure: %v, want ErrConfigured", err)
	}
	log.Info("filtered by Warning")
	log.Warn("after")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	log.Warn("after close")

	if !strings.Contains(buf.String(), "before") || strings.Contains(buf.String(), "after") {
		t.Errorf("default writer got %q", buf.String())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first, second, _ := strings.Cut(string(data), "\n")
	if first != "old line" {
		t.Errorf("file not appended to: %q", data)
	}
	if _, prefix, rest := parse(t, second); prefix != "vm1:fc_vmm:WARN" || rest != "after" {
		t.Errorf("file line [%s] %s", prefix, rest)
	}
	if l.Lost() != 0 {
		t.Errorf("Lost() = %d", l.Lost())
	}
}

func TestConfigureCreatesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.log")
	l, log, _ := newTest(Options{})
	if err := l.Configure(Config{Path: path}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	log.Info("x")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != fileMode || st.Size() == 0 {
		t.Errorf("created %v size %d", st.Mode(), st.Size())
	}
}

func mkfifo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFIFO(t *testing.T) {
	path := mkfifo(t)
	l, log, _ := newTest(Options{ID: "vm1"})
	// No reader yet: Configure must not wait for one.
	done := make(chan error, 1)
	go func() { done <- l.Configure(Config{Path: path, Level: "Info"}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Configure blocked on a FIFO without a reader")
	}
	defer l.Close()

	log.Info("into the pipe", "n", 1)
	r, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	log.Info("second")
	br := bufio.NewReader(r)
	for _, want := range []string{"into the pipe n=1", "second"} {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if _, prefix, rest := parse(t, line); prefix != "vm1:fc_vmm" || rest != want {
			t.Errorf("[%s] %s, want %s", prefix, rest, want)
		}
	}
}

// TestFullPipe fills a FIFO nobody reads: lines are dropped and counted,
// logging never blocks, and the pipe holds only whole lines.
func TestFullPipe(t *testing.T) {
	path := mkfifo(t)
	l, log, _ := newTest(Options{ID: "vm1"})
	if err := l.Configure(Config{Path: path}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	const lines = 4000
	small := strings.Repeat("s", 100)
	big := strings.Repeat("b", 6000) // above PIPE_BUF: not atomic
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range lines {
			msg := small
			if i%7 == 0 {
				msg = big
			}
			log.Info(msg, "i", i)
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("logging to a full pipe blocked")
	}
	lost := l.Lost()
	if lost == 0 {
		t.Fatal("no line counted as lost")
	}

	// Drain the pipe: every line in it is whole.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var data []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			data = append(data, buf[:n]...)
			continue
		}
		if err == unix.EINTR {
			continue
		}
		break
	}
	got := strings.SplitAfter(string(data), "\n")
	got = got[:len(got)-1] // after the last newline
	if len(got) == 0 {
		t.Fatal("pipe empty")
	}
	for _, line := range got {
		_, _, rest := parse(t, line)
		if !strings.HasPrefix(rest, small+" i=") && !strings.HasPrefix(rest, big+" i=") {
			t.Fatalf("torn line %.80q...", rest)
		}
	}
	if uint64(len(got))+lost != lines {
		t.Errorf("%d lines in the pipe + %d lost != %d", len(got), lost, lines)
	}
}

func TestModuleFilter(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		module string
		keep   bool
	}{
		{"github.com/embervm/ember/logger", true},
		{"github.com/embervm/ember/log", true}, // prefix, as Firecracker's starts_with
		{"vmm", false},
	} {
		l, log, _ := newTest(Options{})
		path := filepath.Join(dir, strings.ReplaceAll(tt.module, "/", "_"))
		if err := l.Configure(Config{Path: path, Module: tt.module}); err != nil {
			t.Fatal(err)
		}
		log.Info("m")
		// No source position: dropped whenever a module is set.
		_ = l.Handler().Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "no pc", 0))
		l.Close()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(string(data), "\n"); (got == 1) != tt.keep || got > 1 {
			t.Errorf("module %q: %d lines, keep %v: %q", tt.module, got, tt.keep, data)
		}
	}
}

func TestConcurrent(t *testing.T) {
	_, log, buf := newTest(Options{ID: "vm1"})
	const workers, each = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lw := log.With("thread", fmt.Sprintf("fc_vcpu %d", w))
			for i := range each {
				lw.Info("tick", "i", i)
			}
		}()
	}
	wg.Wait()
	lines := strings.SplitAfter(buf.String(), "\n")
	lines = lines[:len(lines)-1]
	if len(lines) != workers*each {
		t.Fatalf("%d lines, want %d", len(lines), workers*each)
	}
	for _, line := range lines {
		parse(t, line)
	}
}

func TestOpen(t *testing.T) {
	if _, err := Open(t.TempDir()); err == nil {
		t.Error("Open accepted a directory")
	}
	w, err := Open("")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(unix.Stdout), unix.F_GETFD, 0); err != nil {
		t.Errorf("closing the stdout writer closed stdout: %v", err)
	}
	if _, err := w.Write([]byte("x\n")); err == nil {
		t.Error("write after Close succeeded")
	}
}

func TestLevelName(t *testing.T) {
	for l, want := range map[slog.Level]string{
		slog.LevelError + 4: "ERROR", slog.LevelError: "ERROR", slog.LevelWarn: "WARN",
		slog.LevelInfo: "INFO", slog.LevelInfo + 1: "INFO", slog.LevelDebug: "DEBUG",
		LevelTrace: "TRACE", LevelTrace - 4: "TRACE",
	} {
		if got := LevelName(l); got != want {
			t.Errorf("LevelName(%v) = %s, want %s", l, got, want)
		}
	}
}

func TestPipeHasRoom(t *testing.T) {
	const page, size = 4096, 16 * 4096
	for _, tt := range []struct {
		used, n int
		want    bool
	}{
		{0, size, true},
		{0, size + 1, false},
		{1, 9000, true},             // 2*1+2 + 3+1 = 8 <= 16
		{5 * page, 9000, true},      // 2*5+2 + 4 = 16
		{5*page + 1, 9000, false},   // 2*6+2 + 4 = 18
		{10 * page, 100, false},     // 22 + 2
		{5 * page, page + 1, true},  // 12 + 3
		{6 * page, page + 1, false}, // 14 + 3
	} {
		if got := pipeHasRoom(size, tt.used, tt.n, page); got != tt.want {
			t.Errorf("pipeHasRoom(used %d, n %d) = %v, want %v", tt.used, tt.n, got, tt.want)
		}
	}
}

// TestPipeSlowReader writes long lines while a reader drains the pipe in
// small, uneven reads: no line is ever torn.
func TestPipeSlowReader(t *testing.T) {
	path := mkfifo(t)
	l, log, _ := newTest(Options{ID: "vm1"})
	if err := l.Configure(Config{Path: path}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	var (
		mu   sync.Mutex
		data []byte
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		buf := make([]byte, 3001)
		for i := 0; ; i++ {
			n, _ := unix.Read(fd, buf[:1+(i*977)%len(buf)])
			if n > 0 {
				mu.Lock()
				data = append(data, buf[:n]...)
				mu.Unlock()
				continue
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	sizes := []int{50, 2049, 4097, 6145, 9000, 12000}
	const lines = 3000
	for i := range lines {
		log.Info(strings.Repeat("x", sizes[i%len(sizes)]), "i", i)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	<-done
	data = append(data, func() []byte {
		buf := make([]byte, 64<<10)
		n, _ := unix.Read(fd, buf)
		return buf[:max(n, 0)]
	}()...)
	got := strings.SplitAfter(string(data), "\n")
	got = got[:len(got)-1]
	for _, line := range got {
		_, _, rest := parse(t, line)
		msg, _, _ := strings.Cut(rest, " ")
		if strings.Trim(msg, "x") != "" || !slices.Contains(sizes, len(msg)) {
			t.Fatalf("torn line: message of %d bytes", len(msg))
		}
	}
	if uint64(len(got))+l.Lost() != lines {
		t.Errorf("%d lines read + %d lost != %d", len(got), l.Lost(), lines)
	}
	t.Logf("%d lines read, %d lost", len(got), l.Lost())
}

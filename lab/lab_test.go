package lab

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestShellQuoteRoundTrip(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	words := []string{"", "plain", "with space", "it's", `"double"`, "$HOME", "`id`", "a\nb", `back\slash`, "*", "'", "''", "-n"}
	for _, w := range words {
		out, err := exec.Command(sh, "-c", "printf '%s' "+ShellQuote(w)).Output()
		if err != nil {
			t.Fatalf("sh for %q: %v", w, err)
		}
		if string(out) != w {
			t.Errorf("ShellQuote(%q) through sh = %q", w, out)
		}
	}
}

func TestJobScript(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	m := MarkersFor("test")
	j := Job{
		Dir:  dir,
		Argv: []string{sh, "-c", `printf '%s|' "$0" "$1" "$EMBER_X" "$PWD"; exit 7`, "arg with 'quote'", "$notexpanded"},
		Env:  []string{"EMBER_X=va lue's", "PATH=/usr/bin:/bin"},
	}
	script, err := j.Script(m)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("env", "-i", sh, "-c", script)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("running the job script: %v\n%s", err, script)
	}
	var got bytes.Buffer
	f := NewOutputFilter(&got, m)
	if _, err := f.Write(out); err != nil {
		t.Fatal(err)
	}
	code, ended := f.Result()
	if !ended || code != 7 {
		t.Errorf("Result() = %d, %v; want 7, true; raw output %q", code, ended, out)
	}
	want := "arg with 'quote'|$notexpanded|va lue's|" + dir + "|"
	if got.String() != want {
		t.Errorf("output %q, want %q", got.String(), want)
	}
}

func TestJobScriptBadDir(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	m := MarkersFor("x")
	script, err := Job{Dir: "/nonexistent/dir", Argv: []string{"true"}}.Script(m)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(sh, "-c", script).CombinedOutput()
	var got bytes.Buffer
	f := NewOutputFilter(&got, m)
	f.Write(out)
	if code, ended := f.Result(); !ended || code != ExitSetupFailed {
		t.Errorf("Result() = %d, %v; want %d, true", code, ended, ExitSetupFailed)
	}
	if !strings.Contains(got.String(), "cannot enter /nonexistent/dir") {
		t.Errorf("output %q lacks the cd error", got.String())
	}
}

func TestJobScriptErrors(t *testing.T) {
	m := MarkersFor("x")
	if _, err := (Job{Dir: "/"}).Script(m); err == nil {
		t.Error("no argv: want an error")
	}
	if _, err := (Job{Dir: "rel", Argv: []string{"true"}}).Script(m); err == nil {
		t.Error("relative dir: want an error")
	}
	if _, err := (Job{Dir: "/", Argv: []string{"true"}, Env: []string{"BAD-NAME=1"}}).Script(m); err == nil {
		t.Error("bad env name: want an error")
	}
}

func TestOutputFilter(t *testing.T) {
	m := MarkersFor("abc")
	tests := []struct {
		name  string
		raw   string
		want  string
		code  int
		ended bool
	}{
		{
			name:  "noise stripped",
			raw:   "[ 1.0] kernel noise\r\nember-lab-init: hi\r\n" + m.Start + "\r\nhello\r\nworld\r\n\r\n" + m.End + " rc=3\r\n[ 2.0] reboot: Power down\r\n",
			want:  "hello\nworld\n",
			code:  3,
			ended: true,
		},
		{
			name:  "heartbeats removed, lines kept whole",
			raw:   Heartbeat + "noise\n" + m.Start + Heartbeat + "\nhel" + Heartbeat + "lo\n" + Heartbeat + "\nworld" + Heartbeat + "\n\n" + m.End + " rc=0\n" + Heartbeat,
			want:  "hello\n\nworld\n",
			ended: true,
		},
		{
			name:  "no trailing newline",
			raw:   m.Start + "\npartial\n" + m.End + " rc=0\n",
			want:  "partial",
			ended: true,
		},
		{
			name:  "empty output",
			raw:   m.Start + "\n\n" + m.End + " rc=0\n",
			want:  "",
			ended: true,
		},
		{
			name:  "blank lines kept",
			raw:   m.Start + "\n\na\n\n\n" + m.End + " rc=1\n",
			want:  "\na\n\n",
			code:  1,
			ended: true,
		},
		{
			name: "no end marker",
			raw:  "noise\n" + m.Start + "\nout\n[ 9.9] Kernel panic\n",
			want: "out\n[ 9.9] Kernel panic",
		},
		{
			name: "other nonce ignored",
			raw:  MarkersFor("zzz").Start + "\nx\n" + MarkersFor("zzz").End + " rc=0\n",
			want: "",
		},
		{
			name:  "noise prefix on marker line",
			raw:   "[ 1.0] x" + m.Start + "\nok\n\n" + m.End + " rc=42\n",
			want:  "ok\n",
			code:  42,
			ended: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Feed the stream one byte at a time and all at once: the result
			// must not depend on how the console output is chunked.
			for _, chunk := range []int{1, 7, len(tc.raw)} {
				var out bytes.Buffer
				f := NewOutputFilter(&out, m)
				for i := 0; i < len(tc.raw); i += chunk {
					end := min(i+chunk, len(tc.raw))
					if _, err := f.Write([]byte(tc.raw[i:end])); err != nil {
						t.Fatal(err)
					}
				}
				code, ended := f.Result()
				if out.String() != tc.want || code != tc.code || ended != tc.ended {
					t.Errorf("chunk %d: got %q, %d, %v; want %q, %d, %v", chunk, out.String(), code, ended, tc.want, tc.code, tc.ended)
				}
			}
		})
	}
}

func TestOutputFilterFlush(t *testing.T) {
	m := MarkersFor("f")
	var out bytes.Buffer
	f := NewOutputFilter(&out, m)
	f.Write([]byte("noise\n" + m.Start + "\nline\npartial"))
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "line\npartial\n" {
		t.Errorf("after Flush: %q", out.String())
	}
	if _, ended := f.Result(); ended {
		t.Error("ended without an end marker")
	}
}

func TestMarkersUnique(t *testing.T) {
	a, err := NewMarkers()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewMarkers()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a.Start == a.End {
		t.Errorf("markers not unique: %+v %+v", a, b)
	}
}

const sampleModulesDep = `kernel/fs/9p/9p.ko: kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko kernel/drivers/crypto/ccp/ccp.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/loop/cycle-a.ko: kernel/loop/cycle-b.ko
kernel/loop/cycle-b.ko: kernel/loop/cycle-a.ko
`

const sampleModulesBuiltin = "kernel/net/packet/af_packet.ko\n"

func TestModuleResolve(t *testing.T) {
	db, err := ParseModulesDep(strings.NewReader(sampleModulesDep), strings.NewReader(sampleModulesBuiltin))
	if err != nil {
		t.Fatal(err)
	}
	got, err := db.Resolve([]string{"9p", "9pnet_virtio", "kvm-amd", "af_packet", "bridge", "kvm"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"fscache", "netfs", "9pnet", "9p", "virtio_ring", "virtio", "9pnet_virtio",
		"kvm", "irqbypass", "ccp", "kvm_amd", "llc", "stp", "bridge"}
	// The exact order is one valid topological order; check validity and
	// membership rather than a single permutation.
	if !sameSet(got, want) {
		t.Fatalf("Resolve = %v, want the modules %v", got, want)
	}
	pos := map[string]int{}
	for i, m := range got {
		pos[m] = i
	}
	for _, m := range got {
		for _, d := range db.Deps[m] {
			if pos[d] > pos[m] {
				t.Errorf("%s loaded before its dependency %s in %v", m, d, got)
			}
		}
	}
	if db.Path["kvm_amd"] != "kernel/arch/x86/kvm/kvm-amd.ko" {
		t.Errorf("path of kvm_amd = %q", db.Path["kvm_amd"])
	}
}

func TestModuleResolveErrors(t *testing.T) {
	db, err := ParseModulesDep(strings.NewReader(sampleModulesDep), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Resolve([]string{"nosuchmod"}); err == nil {
		t.Error("unknown module: want an error")
	}
	if _, err := db.Resolve([]string{"cycle-a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: got %v, want a cycle error", err)
	}
	if _, err := ParseModulesDep(strings.NewReader("no colon here\n"), nil); err == nil {
		t.Error("malformed modules.dep: want an error")
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kvm-amd":                           "kvm_amd",
		"kernel/arch/x86/kvm/kvm-amd.ko":    "kvm_amd",
		"kernel/fs/9p/9p.ko.xz":             "9p",
		"vmw_vsock_virtio_transport.ko":     "vmw_vsock_virtio_transport",
		"kernel/net/9p/9pnet_virtio.ko.zst": "9pnet_virtio",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		seen[x]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestCacheKey(t *testing.T) {
	k := CacheKey([]byte("a"), []byte("bc"))
	if len(k) != cacheKeyLen {
		t.Errorf("key %q has length %d", k, len(k))
	}
	if k != CacheKey([]byte("a"), []byte("bc")) {
		t.Error("CacheKey is not deterministic")
	}
	if k == CacheKey([]byte("ab"), []byte("c")) {
		t.Error("CacheKey ignores part boundaries")
	}
	if k == CacheKey([]byte("a"), []byte("bd")) {
		t.Error("CacheKey ignores content")
	}
}

func TestParseKernelDepends(t *testing.T) {
	show := "Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: x\n"
	pkg, ver, err := ParseKernelDepends(show)
	if err != nil || pkg != "linux-image-6.1.0-56-amd64" || ver != "6.1.192-2" {
		t.Errorf("ParseKernelDepends = %q, %q, %v", pkg, ver, err)
	}
	if _, _, err := ParseKernelDepends("Package: x\nDepends: libc6\n"); err == nil {
		t.Error("no kernel dependency: want an error")
	}
}

func TestSelectEnv(t *testing.T) {
	got := SelectEnv([]string{
		"HOME=/root", "TERM=xterm", "EMBER_GUEST_DIR=/g", "GOFLAGS=-x", "GOTMPDIR=/c/t",
		"PATH=/host/path", "SECRET=no", "LANG=C", "BAD-NAME=1",
	}, "/work/main/bin")
	want := []string{
		"EMBER_GUEST_DIR=/g", "EMBER_LAB=1", "GOFLAGS=-x", "HOME=/root",
		"PATH=/work/main/bin:" + labDefaultPath, "TERM=xterm",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SelectEnv =\n%v\nwant\n%v", got, want)
	}
}

func TestSharesFor(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	file := filepath.Join(sub, "f.txt")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	isDir := func(p string) (bool, error) {
		st, err := os.Stat(p)
		if err != nil {
			return false, err
		}
		return st.IsDir(), nil
	}
	shares, err := SharesFor([]string{file, dir, sub}, isDir)
	if err != nil {
		t.Fatal(err)
	}
	want := []Share{{Tag: "emberadd0", Path: dir}, {Tag: "emberadd1", Path: sub}}
	if !reflect.DeepEqual(shares, want) {
		t.Errorf("SharesFor = %v, want %v", shares, want)
	}
	if _, err := SharesFor([]string{filepath.Join(dir, "missing")}, isDir); err == nil {
		t.Error("missing path: want an error")
	}
	script := MountScript(shares, MarkersFor("n"))
	if !strings.Contains(script, "mkdir -p /host'"+sub+"' && mount -t 9p") ||
		!strings.Contains(script, "'emberadd1' /host'"+sub+"'") {
		t.Errorf("mount script lacks the sub mount:\n%s", script)
	}
	if !strings.Contains(script, "rc=125") {
		t.Errorf("mount script does not report failures:\n%s", script)
	}
}

func TestQEMUArgs(t *testing.T) {
	args := strings.Join(QEMUArgs(Assets{Kernel: "/k", Initrd: "/i"}, "/c/jobs/job-1",
		[]Share{{Tag: "emberadd0", Path: "/w"}}), " ")
	for _, want := range []string{
		"-accel tcg -cpu max", "-kernel /k -initrd /i", "ember_lab_job=/c/jobs/job-1",
		"path=/,mount_tag=hostroot,security_model=none,readonly=on", "path=/w,mount_tag=emberadd0,security_model=none,multidevs=remap",
		"-no-reboot", "-nodefaults",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("QEMU args lack %q: %s", want, args)
		}
	}
}

func TestSplitModules(t *testing.T) {
	db, err := ParseModulesDep(strings.NewReader(sampleModulesDep), strings.NewReader(sampleModulesBuiltin))
	if err != nil {
		t.Fatal(err)
	}
	early, late, err := SplitModules(db, []string{"9pnet_virtio", "kvm_amd"}, []string{"bridge", "kvm", "af_packet"})
	if err != nil {
		t.Fatal(err)
	}
	if !sameSet(early, []string{"9pnet", "virtio_ring", "virtio", "9pnet_virtio", "kvm", "irqbypass", "ccp", "kvm_amd"}) {
		t.Errorf("early = %v", early)
	}
	if !reflect.DeepEqual(late, []string{"llc", "stp", "bridge"}) {
		t.Errorf("late = %v, want [llc stp bridge]", late)
	}
}

func TestShadowedInLab(t *testing.T) {
	for p, want := range map[string]bool{
		"/tmp": true, "/tmp/go-build1/b001/x.test": true, "/run/x": true,
		"/tmpfoo": false, "/var/cache/ember": false, "/work/main": false,
	} {
		if got := shadowedInLab(p); got != want {
			t.Errorf("shadowedInLab(%q) = %v, want %v", p, got, want)
		}
	}
	if err := checkVisible("/tmp/cache"); err == nil {
		t.Error("checkVisible(/tmp/cache): want an error")
	}
}

func TestValidEnvName(t *testing.T) {
	for name, want := range map[string]bool{"A": true, "_x1": true, "GO_FLAGS": true, "": false, "1A": false, "A-B": false, "A.B": false} {
		if got := validEnvName(name); got != want {
			t.Errorf("validEnvName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestOutputFilterReportsLabFault(t *testing.T) {
	m := Markers{Start: "@@s@@", End: "@@e@@"}
	var out strings.Builder
	f := NewOutputFilter(&out, m)
	var faults []string
	f.OnLabFault = func(line string) { faults = append(faults, line) }
	f.Write([]byte("boot noise\n@@s@@\nhello\n[  104.6] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [ember:273]\n"))
	f.Write([]byte("[  105.1] rcu: INFO: rcu_sched self-detected stall on CPU\n"))
	if len(faults) != 2 || !strings.Contains(faults[0], "soft lockup") {
		t.Fatalf("faults = %q", faults)
	}
	// The lab kernel's own crash reports count; a nested guest's panic,
	// quoted indented in a test's log, does not.
	f.Write([]byte("        [    3.1] Kernel panic - not syncing: VFS\n"))
	f.Write([]byte("[  167.294950] BUG: TASK stack guard page was hit at 00000000c9386059\n"))
	if len(faults) != 3 || !strings.Contains(faults[2], "stack guard page") {
		t.Fatalf("faults = %q", faults)
	}
	// A command's own report of a lab fault (the e2e harness's).
	f.Write([]byte(LabFaultMarker + " TestSnapshotDiff: ember could not be stopped\n"))
	if len(faults) != 4 || !strings.HasPrefix(faults[3], LabFaultMarker) {
		t.Fatalf("faults = %q", faults)
	}
	if !strings.Contains(out.String(), "hello") {
		t.Fatalf("output = %q", out.String())
	}
}

func TestWatchSilenceReportsAQuietLab(t *testing.T) {
	heard := &lastWrite{w: io.Discard}
	heard.mark()
	got := make(chan string, 1)
	go watchSilence(context.Background(), heard, 50*time.Millisecond, func(why string) { got <- why })
	select {
	case why := <-got:
		if !strings.Contains(why, "no output from the lab") {
			t.Fatalf("fault %q", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a silent lab was not reported")
	}
	// Output keeps it quiet.
	heard.mark()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go watchSilence(ctx, heard, time.Second, func(why string) { got <- why })
	for range 5 {
		time.Sleep(100 * time.Millisecond)
		heard.Write([]byte("x"))
	}
	select {
	case why := <-got:
		t.Fatalf("a lab that prints was reported: %q", why)
	default:
	}
}

func TestTestProgress(t *testing.T) {
	var p testProgress
	out := "=== RUN   TestA\n--- PASS: TestA (1.00s)\n=== RUN   TestB\n    --- FAIL: TestB/sub (0.1s)\n--- FA" +
		"IL: TestB (2.00s)\n\x16--- SKIP: TestC (0.00s)\n=== RUN   TestD\n    harness_test.go:1: --- PASS: TestX (\n"
	for _, chunk := range strings.SplitAfter(out, "A") { // lines arrive in pieces
		p.Write([]byte(chunk))
	}
	ended, failed := p.Ended()
	if !slices.Equal(ended, []string{"TestA", "TestB", "TestC"}) || !slices.Equal(failed, []string{"TestB"}) {
		t.Errorf("ended %q, failed %q", ended, failed)
	}
}

func TestSkipEnded(t *testing.T) {
	bin := "/x/e2e.test"
	for _, tc := range []struct {
		argv []string
		want []string
		ok   bool
	}{
		{[]string{bin, "-test.v=true"}, []string{bin, "-test.v=true", "-test.skip=^(TestA|Test\\.B)$"}, true},
		{[]string{bin, "-test.skip=Slow", "-test.v=true"}, []string{bin, "-test.v=true", "-test.skip=^(TestA|Test\\.B)$|Slow"}, true},
		{[]string{bin, "-test.skip", "Slow"}, []string{bin, "-test.skip=^(TestA|Test\\.B)$|Slow"}, true},
		{[]string{bin, "-test.skip=TestX/sub"}, []string{bin, "-test.skip=TestX/sub"}, false},
	} {
		got, ok := skipEnded(tc.argv, []string{"TestA", "Test.B"})
		if !slices.Equal(got, tc.want) || ok != tc.ok {
			t.Errorf("skipEnded(%q) = %q, %v; want %q, %v", tc.argv, got, ok, tc.want, tc.ok)
		}
	}
	if !isGoTestBinary([]string{bin, "-test.v=true"}) || isGoTestBinary([]string{"ember", "run"}) {
		t.Error("isGoTestBinary")
	}
}

func TestShadowRoot(t *testing.T) {
	for p, want := range map[string]string{
		"/tmp/x/e2e":       "/tmp/x",
		"/tmp/x":           "/tmp/x",
		"/run/user/0/a":    "/run/user",
		"/tmp":             "",
		"/work/main/e2e":   "",
		"relative/tmp/x":   "",
		"/dev/shm/x":       "",
		"/tmp/../etc/x":    "",
		"/tmp/go-build1/b": "/tmp/go-build1",
	} {
		if got := shadowRoot(p); got != want {
			t.Errorf("shadowRoot(%q) = %q, want %q", p, got, want)
		}
	}
}

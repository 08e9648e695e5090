package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/client"
	"github.com/embervm/ember/x86"
)

// The MMDS tests boot the minimal kernel (test initramfs) through the API
// with eth0 on a tap in a test network namespace and an MMDS on it; the
// guest reads it with busybox wget (and nc for V2's token PUT, which
// busybox wget cannot send) after `ip route add 169.254.169.254 dev eth0`.

const (
	mmdsURL = "http://169.254.169.254"
	// mmdsNet is the guest's network set-up (hostIP/24 on the tap's side).
	mmdsNet = "ip link set lo up; ip addr add 10.79.0.2/24 dev eth0; ip link set eth0 up; " +
		"ip route add 169.254.169.254 dev eth0; "
	mmdsHostIP = "10.79.0.1"
	// mmdsRequests is how many MMDS reads the guest makes during the
	// 100 MiB transfer.
	mmdsRequests = 1000
)

// mmdsBig is the 40 KiB value the guest reads whole.
var mmdsBig = strings.Repeat("0123456789abcdef", 40<<10/16)

// bootMMDS boots the test guest running script with eth0 on tap0 in ns,
// the MMDS configured as cfg and holding data, extra configuring the rest;
// it waits for ready on the console.
func bootMMDS(t *testing.T, ns, script, ready string, cfg api.MmdsConfig, data any, extra func(ctx context.Context, c *client.Client) error) *apiVM {
	t.Helper()
	kernel, initrd := guestFile(t, "minimal-bzImage"), guestFile(t, "initramfs.cpio.gz")
	args := cmdline(`ember_mode=cmd ember_cmd="` + script + `"`)
	return bootAPI(t, []string{"ip", "netns", "exec", ns}, ready, func(ctx context.Context, c *client.Client) error {
		steps := []func() error{
			func() error {
				// One vCPU: the MMDS needs no more, and a two-vCPU nested
				// guest moving data over the tap broke the lab's emulated
				// SVM far more often (TestMMDSV1: three lab-kernel crashes
				// and a triple fault in a row, where the one-vCPU
				// TestNetTap moves more data and passes).
				return c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: ptr(1), MemSizeMiB: ptr(256)})
			},
			func() error {
				return c.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel, InitrdPath: &initrd, BootArgs: &args})
			},
			func() error {
				return c.PutNetworkInterface(ctx, api.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:0a:4f:00:02"})
			},
			func() error { return c.PutMMDSConfig(ctx, cfg) },
			func() error { return c.PutMMDS(ctx, data) },
		}
		if extra != nil {
			steps = append(steps, func() error { return extra(ctx, c) })
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestMMDSV1: the guest reads a value (IMDS format), a subtree as JSON and
// a 40 KiB value, and sees a PATCH made while it runs; then it makes 1,000
// MMDS requests while 100 MiB cross the same interface to the host's
// namespace intact.
func TestMMDSV1(t *testing.T) {
	ns := netns(t, "tap0", mmdsHostIP+"/24")
	script := mmdsV1Script()
	data := map[string]any{
		"latest": map[string]any{"meta-data": map[string]any{"instance-id": "i-e2e", "placement": map[string]any{"zone": "z1"}}},
		"big":    mmdsBig,
	}
	probe := probeDrive(t)
	// The transfer is where the lab's emulated SVM faults most (a nested
	// guest that hangs or dies of a triple fault mid-transfer): such a
	// run is retried whole, as a hung boot is; any other failure fails.
	for attempt := 1; ; attempt++ {
		sink, stopSink := startStoppableHelper(t, ns, "tcp-sink", mmdsHostIP+":5001")
		v := bootMMDS(t, ns, script, "ember-guest: waiting-patch", api.MmdsConfig{NetworkInterfaces: []string{"eth0"}}, data,
			func(ctx context.Context, c *client.Client) error {
				return c.PutDrive(ctx, api.Drive{DriveID: "probe", PathOnHost: probe, IsReadOnly: true})
			})
		out := v.out.String()
		if got := guestField(t, out, "v1-value"); got != "i-e2e" {
			t.Errorf("V1 value %q, want i-e2e", got)
		}
		if got := guestField(t, out, "v1-json"); got != `{"instance-id":"i-e2e","placement":{"zone":"z1"}}` {
			t.Errorf("V1 JSON subtree %q", got)
		}
		wantSHA := fmt.Sprintf("%x", sha256.Sum256([]byte(mmdsBig)))
		if got := guestField(t, out, "big-bytes"); !strings.HasPrefix(got, fmt.Sprintf("%d big-sha=%s", len(mmdsBig), wantSHA)) {
			t.Errorf("40 KiB value: %q, want %d bytes with sha256 %s", got, len(mmdsBig), wantSHA)
		}
		ctx, cancel := apiCtx()
		err := v.c.PatchMMDS(ctx, map[string]any{"latest": map[string]any{"meta-data": map[string]any{"patched": "yes"}}})
		cancel()
		if err != nil {
			t.Fatalf("PATCH /mmds: %v", err)
		}
		if !v.waitFor("ember-guest: transfer-done", transferTimeout) {
			fault := v.labFaulted()
			v.kill()
			stopSink()
			if fault == "" || attempt == bootAttempts {
				t.Fatalf("the guest did not finish (%d attempts)\n%s\n%s", attempt, tailString(v.out.String()), v.err)
			}
			t.Logf("the guest %s during the transfer (a lab fault?); trying again. Last output:\n%s\n%s", fault, tailString(v.out.String()), v.err)
			continue
		}
		out = v.out.String()
		if n := guestField(t, out, "patched-polls"); n == "601" {
			t.Errorf("the guest never saw the PATCH")
		}
		if got := guestField(t, out, "mmds-ok"); got != fmt.Sprint(mmdsRequests) {
			t.Errorf("%s of %d MMDS requests answered right during the transfer", got, mmdsRequests)
		}
		checkTransfer(t, "guest->host during MMDS requests", report(t, out, "probe", "sent"), report(t, sink.String(), "helper", "received"))
		if code, ok := v.exitCode(bootTimeout); !ok || code != 0 {
			t.Errorf("ember exit %d (ended %v)\n%s", code, ok, v.err)
		}
		return
	}
}

// TestMMDSV2: with V2 the guest gets a token with PUT /latest/api/token
// and reads with it; without it, with a PUT through a proxy
// (X-Forwarded-For) and after its TTL it is refused.
func TestMMDSV2(t *testing.T) {
	ns := netns(t, "tap0", mmdsHostIP+"/24")
	script := mmdsV2Script()
	data := map[string]any{"latest": map[string]any{"meta-data": map[string]any{"instance-id": "i-v2"}}}
	v := bootMMDS(t, ns, script, "ember-guest: v2-done", api.MmdsConfig{NetworkInterfaces: []string{"eth0"}, Version: ptr("V2")}, data, nil)
	out := v.out.String()
	for key, want := range map[string]string{
		"token-len": "48", "with-token": "i-v2", "aws-header": "i-v2",
		"without-token-401": "1", "forwarded-400": "1", "expired-401": "1",
	} {
		if got := guestField(t, out, key); got != want {
			t.Errorf("%s=%q, want %q", key, got, want)
		}
	}
}

// TestMMDSSnapshotClone: a VM restored from a snapshot keeps its MMDS
// configuration but not its data: it answers with what its owner PUT after
// the load. The clone is snapshotted in turn, cloneGenerations deep, and
// every generation's guest still receives on eth0: MMDS answers (queued
// into the guest's receive ring by Ember) and ping replies from the tap.
// Before virtio-net rewound the receive chains it held, each generation
// lost up to ~43 of the ring's 256 buffers, and a clone of a clone of ...
// ended deaf.
func TestMMDSSnapshotClone(t *testing.T) {
	const cloneGenerations = 7
	ns := netns(t, "tap0", mmdsHostIP+"/24")
	prefix := []string{"ip", "netns", "exec", ns}
	script := mmdsNet + "i=0; while true; do i=$((i+1)); " +
		"echo ember-guest: mmds n=$i id=$(wget -q -O - " + mmdsURL + "/id)" +
		" ping=$(ping -c 1 -W 1 " + mmdsHostIP + " >/dev/null 2>&1 && echo ok || echo no); sleep 0.3; done"
	cfg := api.MmdsConfig{NetworkInterfaces: []string{"eth0"}, IPv4Address: ptr("169.254.169.254")}
	v := bootMMDS(t, ns, script, "id=source ping=ok", cfg, map[string]any{"id": "source"}, nil)
	dir := scratchDir(t)
	prev := "source"
	for gen := 1; gen <= cloneGenerations; gen++ {
		snap, mem := filepath.Join(dir, fmt.Sprintf("gen%d.snap", gen)), filepath.Join(dir, fmt.Sprintf("gen%d.mem", gen))
		pauseSnapshot(t, v, snap, mem, "Full")
		killVM(v)
		if gen > 1 { // the previous generation's files: the lab's /tmp is RAM
			os.Remove(filepath.Join(dir, fmt.Sprintf("gen%d.snap", gen-1)))
			os.Remove(filepath.Join(dir, fmt.Sprintf("gen%d.mem", gen-1)))
		}
		id := fmt.Sprintf("clone%d", gen)
		for attempt := 1; ; attempt++ {
			v = loadClone(t, prefix, snap, mem, gen, id)
			if v.waitFor("id="+id+" ping=ok", bootTimeout) {
				break
			}
			fault := v.labFaulted()
			v.kill()
			if fault == "" || attempt == bootAttempts {
				t.Fatalf("generation %d never read its own MMDS data and reached the tap (%d attempts)\n%s\n%s", gen, attempt, tailString(v.out.String()), v.err)
			}
			t.Logf("generation %d %s (a lab fault?); loading it again. Last output:\n%s\n%s", gen, fault, tailString(v.out.String()), v.err)
		}
		if consoleHas(v.out.String(), "id="+prev+" ") {
			t.Errorf("generation %d read its source's MMDS data\n%s", gen, tailString(v.out.String()))
		}
		prev = id
	}
}

// loadClone loads generation gen of TestMMDSSnapshotClone into a fresh
// ember, gives it the MMDS data {"id": id} and resumes it.
func loadClone(t *testing.T, prefix []string, snap, mem string, gen int, id string) *apiVM {
	t.Helper()
	v := startAPI(t, prefix)
	ctx, cancel := apiCtx()
	defer cancel()
	if err := v.c.LoadSnapshot(ctx, api.SnapshotLoadParams{SnapshotPath: snap,
		MemBackend: &api.MemoryBackend{BackendType: "File", BackendPath: mem}}); err != nil {
		t.Fatalf("generation %d: load: %v\n%s", gen, err, v.err)
	}
	if err := v.c.PutMMDS(ctx, map[string]any{"id": id}); err != nil {
		t.Fatalf("generation %d: PUT /mmds after the load: %v", gen, err)
	}
	if gen == 1 {
		vc, err := v.c.VMConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m := vc.MMDSConfig; m == nil || strings.Join(m.NetworkInterfaces, ",") != "eth0" || *m.Version != "V1" {
			t.Errorf("restored mmds-config %+v", m)
		}
	}
	if err := v.c.Resume(ctx); err != nil {
		t.Fatalf("generation %d: resume: %v\n%s", gen, err, v.err)
	}
	return v
}

// guestField is field for lines the guest printed: the kernel's echo of its
// command line, which holds the script, is skipped.
func guestField(t *testing.T, out, key string) string {
	t.Helper()
	prefix := "ember-guest: " + key + "="
	val, found := "", false
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, prefix); i >= 0 && !strings.Contains(l, "ommand line") {
			val, found = strings.TrimSpace(strings.TrimRight(l[i+len(prefix):], "\r")), true
		}
	}
	if !found {
		t.Fatalf("guest printed no %q line\n%s", prefix, tailString(out))
	}
	return val
}

// mmdsV1Script is TestMMDSV1's guest script.
func mmdsV1Script() string {
	return mmdsNet + "M=" + mmdsURL + "; " +
		"echo ember-guest: v1-value=$(wget -q -O - $M/latest/meta-data/instance-id); " +
		"echo ember-guest: v1-json=$(wget -q -O - --header 'Accept: application/json' $M/latest/meta-data); " +
		"wget -q -O /tmp/big $M/big; echo ember-guest: big-bytes=$(wc -c < /tmp/big) big-sha=$(sha256sum /tmp/big | cut -c1-64); " +
		"echo ember-guest: waiting-patch; " +
		"n=0; until [ x$(wget -q -O - $M/latest/meta-data/patched 2>/dev/null) = xyes ]; do n=$((n+1)); [ $n -gt 600 ] && break; sleep 0.1; done; " +
		"echo ember-guest: patched-polls=$n; " +
		mountProbe("/dev/vda") + "; " +
		fmt.Sprintf("/probe/probe tcp-send %s:5001 %d & P=$!; ", mmdsHostIP, transferBytes) +
		fmt.Sprintf("ok=0; i=0; while [ $i -lt %d ]; do i=$((i+1)); [ x$(wget -q -O - $M/latest/meta-data/instance-id) = xi-e2e ] && ok=$((ok+1)); done; ", mmdsRequests) +
		"echo ember-guest: mmds-ok=$ok; wait $P; echo ember-guest: transfer-done"
}

// mmdsTokenTTL is the lifetime of TestMMDSV2's token, in seconds.
const mmdsTokenTTL = 10

// mmdsV2Script is TestMMDSV2's guest script.
func mmdsV2Script() string {
	put := func(hdrs string) string {
		return `printf 'PUT /latest/api/token HTTP/1.0\r\n` + hdrs + `\r\n' | nc 169.254.169.254 80`
	}
	return mmdsNet + "M=" + mmdsURL + "; " +
		fmt.Sprintf("T=$(%s | tail -n 1); ", put(fmt.Sprintf(`X-metadata-token-ttl-seconds: %d\r\n`, mmdsTokenTTL))) +
		"echo ember-guest: token-len=${#T}; " +
		"echo ember-guest: with-token=$(wget -q -O - --header X-metadata-token:$T $M/latest/meta-data/instance-id); " +
		"echo ember-guest: aws-header=$(wget -q -O - --header X-aws-ec2-metadata-token:$T $M/latest/meta-data/instance-id); " +
		"echo ember-guest: without-token-401=$(wget -q -O - $M/latest/meta-data/instance-id 2>&1 | grep -c 401); " +
		fmt.Sprintf("echo ember-guest: forwarded-400=$(%s | head -n 1 | grep -c ' 400 '); ", put(`X-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.0.9\r\n`)) +
		fmt.Sprintf("sleep %d; ", mmdsTokenTTL+1) +
		"echo ember-guest: expired-401=$(wget -q -O - --header X-metadata-token:$T $M/latest/meta-data/instance-id 2>&1 | grep -c 401); " +
		"echo ember-guest: v2-done"
}

// TestMMDSScriptsFit: the guest scripts fit on the kernel command line
// (runs outside the lab too).
func TestMMDSScriptsFit(t *testing.T) {
	for name, s := range map[string]string{"V1": mmdsV1Script(), "V2": mmdsV2Script()} {
		c := cmdline(`ember_mode=cmd ember_cmd="` + s + `"`)
		if err := x86.CheckCmdline(c, x86.CmdlineMaxSize-512); err != nil {
			t.Errorf("%s script: %v", name, err)
		}
		if strings.Contains(s, `"`) {
			t.Errorf("%s script has a double quote", name)
		}
	}
}

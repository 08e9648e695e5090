package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/vmm"
)

// Settings of the I/O benchmark (LabIO). Both VMMs get the same guest: the
// same kernel, initramfs and command line, ioGuestMemMiB of RAM, one vCPU,
// the data disk as /dev/vda, the probe disk as /dev/vdb and one NIC, eth0.
const (
	ioGuestMemMiB = 256
	// ioDataMiB is the data disk's size; the read test reads all of it.
	ioDataMiB = 256
	// ioWriteMiB is what the write test writes from the start of the disk.
	ioWriteMiB = 200
	// ioNetBytes is what each TCP test moves (guest→host, then host→guest):
	// in the lab, about 15 s each way at the 25-50 Mbit/s both VMMs reach
	// there, which keeps a QEMU run (with its slow start-up) near 2 minutes.
	ioNetBytes = 48 << 20

	// The lab network: a tap in its own network namespace, with the host
	// side's address on the tap and the guest's on its eth0.
	ioTap     = "tap0"
	ioHostIP  = "10.88.0.1"
	ioGuestIP = "10.88.0.2"
	ioMAC     = "06:00:0a:58:00:02"
	// ioSinkPort takes the guest's upload (probe tcp-send); ioSourcePort
	// serves its download (probe tcp-recv).
	ioSinkPort   = 5001
	ioSourcePort = 5002

	// ioReportPrefix starts the guest's result lines ("bench: KEY=VALUE").
	ioReportPrefix = "bench"
	// probeReportPrefix starts guest/probe's result lines.
	probeReportPrefix = "probe"
)

// Lab I/O runs that hang or fail: as with boots (labBootTimeout), a nested
// guest of either VMM now and then stops making progress under TCG's nested
// SVM. A run (boot, block tests, network tests, reset: under a minute with
// Ember, about 2 minutes with QEMU, which is slow to start there) that has
// not ended within labIOTimeout, or that fails, is logged and run again, up
// to labIOAttempts times.
const (
	labIOTimeout  = 3 * time.Minute
	labIOAttempts = 3
)

// IOSample is one run's throughputs. Tx is guest→host, Rx host→guest.
type IOSample struct {
	ReadMiBs, WriteMiBs float64
	TxGbits, RxGbits    float64
}

// IOResult holds the medians of the in-lab I/O benchmark.
type IOResult struct {
	Ember, QEMU IOSample
	Runs        int
	Net         bool // the network half ran
}

// Lines writes the absolute medians and then the Ember/QEMU ratios (higher
// is better) as "NAME VALUE UNIT" lines.
func (r IOResult) Lines(w io.Writer) {
	type fig struct {
		name, unit string
		e, q       float64
	}
	figs := []fig{
		{"blk_read", "MiB/s", r.Ember.ReadMiBs, r.QEMU.ReadMiBs},
		{"blk_write", "MiB/s", r.Ember.WriteMiBs, r.QEMU.WriteMiBs},
	}
	if r.Net {
		figs = append(figs, fig{"net_tx", "Gbit/s", r.Ember.TxGbits, r.QEMU.TxGbits},
			fig{"net_rx", "Gbit/s", r.Ember.RxGbits, r.QEMU.RxGbits})
	}
	for _, f := range figs {
		suffix := "_" + strings.ToLower(strings.ReplaceAll(f.unit, "/", "_"))
		Line(w, f.name+"_ember"+suffix, f.e, f.unit)
		Line(w, f.name+"_qemu"+suffix, f.q, f.unit)
	}
	for _, f := range figs {
		Line(w, f.name+"_ratio_vs_qemu", f.e/f.q, "ratio")
	}
}

// IOLineNames lists the names Lines prints, in order.
func IOLineNames(withNet bool) []string {
	var b bytes.Buffer
	IOResult{Net: withNet}.Lines(&b)
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		names = append(names, strings.Fields(l)[0])
	}
	return names
}

// LabIO measures sequential block read and write and TCP throughput both
// ways with Ember and with QEMU's microvm machine (virtio-mmio devices),
// alternately, runs times each, and returns the medians. It runs inside the
// lab, as root: it makes a network namespace with a tap, and serves the
// guest's TCP tests from there. Without withNet it measures the block
// devices only.
func LabIO(ctx context.Context, ember, kernel, initrd, probe string, runs int, withNet bool, progress io.Writer) (IOResult, error) {
	for _, p := range []string{kernel, initrd, probe} {
		if _, err := os.Stat(p); err != nil {
			return IOResult{}, err
		}
	}
	// The lab's own /tmp is a tmpfs; the host's root is shared read-only.
	dir, err := os.MkdirTemp("/tmp", "ember-bench-io-")
	if err != nil {
		return IOResult{}, err
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "data.img")
	if err := writeDataDisk(data, ioDataMiB); err != nil {
		return IOResult{}, err
	}
	probeImg, err := probeDisk(dir, probe)
	if err != nil {
		return IOResult{}, err
	}

	var prefix []string
	var peer *tcpPeer
	if withNet {
		ns := fmt.Sprintf("emberio%d", os.Getpid())
		if err := makeNetns(ns, ioTap, ioHostIP+"/24"); err != nil {
			return IOResult{}, err
		}
		defer exec.Command("ip", "netns", "del", ns).Run()
		prefix = []string{"ip", "netns", "exec", ns}
		peer = newTCPPeer(ns, ioNetBytes)
	}

	cmdline := vmm.DefaultCmdline + ` quiet ember_mode=cmd ember_cmd="` + ioGuestCmd(withNet) + `"`
	// Block devices: both VMMs go through the host page cache (the data
	// disk is on tmpfs, which has no O_DIRECT, so QEMU's cache=none is not
	// even possible): Ember reads and writes the file with pread/pwrite and
	// is given cache=Writeback, QEMU cache=writeback; both then honour the
	// guest's FLUSH with an fsync (free on tmpfs). Data disk first, so that
	// it is /dev/vda under both (QEMU 7.2's microvm lists its virtio-mmio
	// devices in ACPI in creation order; the guest checks vda's size).
	emberArgv := []string{ember, "run", "--kernel", kernel, "--initrd", initrd,
		"--mem-mib", fmt.Sprint(ioGuestMemMiB), "--vcpus", "1", "--cmdline", cmdline,
		"--drive", "path=" + data + ",cache=Writeback", "--drive", "path=" + probeImg + ",ro"}
	// Ember announces its virtio-mmio devices both on the kernel command
	// line and in ACPI; QEMU's microvm with ACPI on (the default) in ACPI
	// only: its x-auto-kernel-cmdline adds virtio_mmio.device= only without
	// ACPI (seen with QEMU 7.2: no such entries in the guest's /proc/cmdline).
	qemuArgv := []string{QEMUBinary, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm", "-cpu", "host",
		"-m", fmt.Sprint(ioGuestMemMiB), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-drive", "id=d0,file=" + data + ",format=raw,if=none,cache=writeback,aio=threads",
		"-device", "virtio-blk-device,drive=d0",
		"-drive", "id=d1,file=" + probeImg + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=d1"}
	if withNet {
		// Both on the same tap opened with IFF_VNET_HDR, with the same MAC.
		// vhost=off: QEMU moves the packets in its own process, as Ember
		// does; vhost-net would move them in the host kernel.
		emberArgv = append(emberArgv, "--net", "tap="+ioTap+",mac="+ioMAC)
		qemuArgv = append(qemuArgv,
			"-netdev", "tap,id=n0,ifname="+ioTap+",script=no,downscript=no,vhost=off",
			"-device", "virtio-net-device,netdev=n0,mac="+ioMAC)
	}
	emberArgv = append(append([]string(nil), prefix...), emberArgv...)
	qemuArgv = append(append([]string(nil), prefix...), qemuArgv...)

	var es, qs []IOSample
	for i := 0; i < runs; i++ {
		e, err := labIOOnce(ctx, "ember", emberArgv, peer, progress)
		if err != nil {
			return IOResult{}, err
		}
		q, err := labIOOnce(ctx, "qemu", qemuArgv, peer, progress)
		if err != nil {
			return IOResult{}, err
		}
		es, qs = append(es, e), append(qs, q)
		fmt.Fprintf(progress, "io run %d: ember %s\nio run %d: qemu  %s\n", i+1, e.describe(withNet), i+1, q.describe(withNet))
	}
	return IOResult{Ember: medianSample(es), QEMU: medianSample(qs), Runs: runs, Net: withNet}, nil
}

func (s IOSample) describe(withNet bool) string {
	d := fmt.Sprintf("read %.1f MiB/s, write %.1f MiB/s", s.ReadMiBs, s.WriteMiBs)
	if withNet {
		d += fmt.Sprintf(", tx %.3f Gbit/s, rx %.3f Gbit/s", s.TxGbits, s.RxGbits)
	}
	return d
}

func medianSample(ss []IOSample) IOSample {
	pick := func(f func(IOSample) float64) float64 {
		xs := make([]float64, len(ss))
		for i, s := range ss {
			xs[i] = f(s)
		}
		return Median(xs)
	}
	return IOSample{
		ReadMiBs:  pick(func(s IOSample) float64 { return s.ReadMiBs }),
		WriteMiBs: pick(func(s IOSample) float64 { return s.WriteMiBs }),
		TxGbits:   pick(func(s IOSample) float64 { return s.TxGbits }),
		RxGbits:   pick(func(s IOSample) float64 { return s.RxGbits }),
	}
}

// labIOOnce runs one VMM to the guest's reset, retrying hangs and failures
// (labIOAttempts), and returns its throughputs.
func labIOOnce(ctx context.Context, name string, argv []string, peer *tcpPeer, progress io.Writer) (IOSample, error) {
	for attempt := 1; ; attempt++ {
		t0 := time.Now()
		s, out, err := runIO(ctx, argv, peer)
		if err == nil {
			fmt.Fprintf(progress, "%s: done in %.0f s\n", name, time.Since(t0).Seconds())
			return s, nil
		}
		if attempt == labIOAttempts || ctx.Err() != nil {
			return IOSample{}, fmt.Errorf("%s: %w (%d attempts)\n%s", name, err, attempt, tail(withoutCmdline(out)))
		}
		fmt.Fprintf(progress, "%s run failed (%v), a lab fault? retrying; its last output:\n%s\n", name, err, tail(withoutCmdline(out)))
	}
}

// runIO runs argv once (the guest runs ioGuestCmd and resets) with the
// host's TCP peer listening, and returns the run's throughputs.
func runIO(ctx context.Context, argv []string, peer *tcpPeer) (IOSample, []byte, error) {
	if peer != nil {
		if err := peer.start(); err != nil {
			return IOSample{}, nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, labIOTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// On a timeout, ask first (Ember then logs where its vCPUs were).
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	w := &stopOn{marker: []byte(kvmInternalError), stop: cancel}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	var sink, source transfer
	if peer != nil {
		sink, source = peer.stop()
	}
	out, seen := w.result()
	// A run whose guest finished and reported every measurement counts,
	// whatever happened at its reset: in the lab QEMU's reset of a nested
	// guest now and then ends in a KVM internal error, after the work.
	withNet := peer != nil
	if bytes.Contains(out, []byte(guestDoneMarker)) {
		if g, perr := parseGuestIO(string(out), withNet); perr == nil {
			if s, serr := g.sample(withNet, sink, source); serr == nil {
				return s, out, nil
			}
		}
	}
	switch {
	case seen:
		return IOSample{}, out, fmt.Errorf("%s, stopped", kvmInternalError)
	case ctx.Err() != nil:
		return IOSample{}, out, fmt.Errorf("no reset within %v", labIOTimeout)
	case err != nil:
		return IOSample{}, out, fmt.Errorf("%s: %w", argv[0], err)
	}
	g, err := parseGuestIO(string(out), withNet)
	if err != nil {
		return IOSample{}, out, err
	}
	s, err := g.sample(withNet, sink, source)
	return s, out, err
}

// guestDoneMarker is what the test init prints when the guest's commands
// have finished (guest/testinit/init).
const guestDoneMarker = "ember-guest: cmd exit="

// kvmInternalError starts the message with which QEMU reports a KVM
// internal error (in the lab, an emulation failure early in the nested
// guest's boot, now and then); QEMU then pauses the guest instead of
// exiting. Ember exits at once on one.
const kvmInternalError = "KVM internal error"

// stopOn keeps a VMM's output and calls stop once it holds marker.
type stopOn struct {
	mu     sync.Mutex
	out    bytes.Buffer
	marker []byte
	stop   func()
	seen   bool
}

func (w *stopOn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	from := max(0, w.out.Len()-len(w.marker))
	w.out.Write(p)
	if !w.seen && bytes.Contains(w.out.Bytes()[from:], w.marker) {
		w.seen = true
		w.stop()
	}
	return len(p), nil
}

func (w *stopOn) result() (out []byte, seen bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.out.Bytes()), w.seen
}

// withoutCmdline drops the lines that echo the guest command (the kernel
// prints the command line three times and init's environment once), which
// would fill a failure's tail.
func withoutCmdline(out []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter(out, []byte("\n")) {
		if !bytes.Contains(l, []byte("ember_cmd=")) {
			b.Write(l)
		}
	}
	return b.Bytes()
}

// ioGuestCmd is the guest's shell command (ember_cmd): time a direct read
// of all of /dev/vda and a direct write of ioWriteMiB to it with the
// guest's /proc/uptime, then, withNet, send ioNetBytes to the host and
// receive them back with guest/probe. It holds no double quotes (the
// kernel command line has no other quoting), and it spells its report
// prefix through a variable: the kernel echoes its command line.
func ioGuestCmd(withNet bool) string {
	timed := func(key, what string) string {
		return "a=$(cut -d' ' -f1 /proc/uptime); " + what + " 2>/dev/null && b=$(cut -d' ' -f1 /proc/uptime) && " +
			"echo $p: " + key + "=$(echo $a $b | awk '{print $2-$1}')"
	}
	cmds := []string{
		"p=" + ioReportPrefix,
		"echo $p: vda_sectors=$(cat /sys/block/vda/size)",
		timed("blk_read_s", "dd if=/dev/vda of=/dev/null bs=1M iflag=direct"),
		timed("blk_write_s", fmt.Sprintf("dd if=/dev/zero of=/dev/vda bs=1M count=%d oflag=direct conv=fsync", ioWriteMiB)),
	}
	if withNet {
		cmds = append(cmds,
			"ip link set lo up", "ip addr add "+ioGuestIP+"/24 dev eth0", "ip link set eth0 up",
			"mkdir -p /probe", "mount -t ext4 -o ro /dev/vdb /probe",
			fmt.Sprintf("/probe/probe tcp-send %s:%d %d", ioHostIP, ioSinkPort, ioNetBytes),
			fmt.Sprintf("/probe/probe tcp-recv %s:%d", ioHostIP, ioSourcePort))
	}
	return strings.Join(cmds, "; ")
}

// guestIO is what the guest reported.
type guestIO struct {
	sectors         int64
	readS, writeS   float64
	sent, received  transfer // probe tcp-send, probe tcp-recv
	sentMS, recvdMS float64
}

// transfer is one side's account of a TCP transfer.
type transfer struct {
	bytes  int64
	sha256 string
}

// parseGuestIO reads the guest's "bench:" lines and, withNet, its probe
// lines.
func parseGuestIO(out string, withNet bool) (guestIO, error) {
	var g guestIO
	b := mergeReports(reportLines(out, ioReportPrefix))
	var err error
	if g.sectors, err = strconv.ParseInt(b["vda_sectors"], 10, 64); err != nil {
		return g, fmt.Errorf("guest reported no vda size: %q", b["vda_sectors"])
	}
	if g.readS, err = positive(b, "blk_read_s"); err != nil {
		return g, err
	}
	if g.writeS, err = positive(b, "blk_write_s"); err != nil {
		return g, err
	}
	if !withNet {
		return g, nil
	}
	probes := reportLines(out, probeReportPrefix)
	if e := lastWith(probes, "error"); e != nil {
		return g, fmt.Errorf("probe: %s", e["error"])
	}
	for _, c := range []struct {
		key string
		t   *transfer
		ms  *float64
	}{{"sent", &g.sent, &g.sentMS}, {"received", &g.received, &g.recvdMS}} {
		kv := lastWith(probes, c.key)
		if kv == nil {
			return g, fmt.Errorf("guest printed no %q line with %s=", probeReportPrefix+":", c.key)
		}
		if c.t.bytes, err = strconv.ParseInt(kv[c.key], 10, 64); err != nil {
			return g, fmt.Errorf("probe %s=%q: %w", c.key, kv[c.key], err)
		}
		c.t.sha256 = kv["sha256"]
		if *c.ms, err = positive(kv, "ms"); err != nil {
			return g, fmt.Errorf("probe %s: %w", c.key, err)
		}
	}
	return g, nil
}

// sample checks the guest's report against what was expected and what the
// host's side saw, and turns it into throughputs.
func (g guestIO) sample(withNet bool, sink, source transfer) (IOSample, error) {
	if want := int64(ioDataMiB << 20 / 512); g.sectors != want {
		return IOSample{}, fmt.Errorf("guest's /dev/vda has %d sectors, want %d: not the data disk", g.sectors, want)
	}
	s := IOSample{ReadMiBs: ioDataMiB / g.readS, WriteMiBs: ioWriteMiB / g.writeS}
	if !withNet {
		return s, nil
	}
	for _, c := range []struct {
		what     string
		from, to transfer
		ms       float64
		gbits    *float64
	}{{"guest→host", g.sent, sink, g.sentMS, &s.TxGbits}, {"host→guest", source, g.received, g.recvdMS, &s.RxGbits}} {
		if c.from.bytes != ioNetBytes || c.to != c.from {
			return IOSample{}, fmt.Errorf("%s: sent %d bytes (sha256 %s), received %d (sha256 %s), want %d intact",
				c.what, c.from.bytes, c.from.sha256, c.to.bytes, c.to.sha256, ioNetBytes)
		}
		*c.gbits = gbitPerS(ioNetBytes, c.ms)
	}
	return s, nil
}

// gbitPerS is bytes moved in ms milliseconds, in Gbit/s.
func gbitPerS(bytes int64, ms float64) float64 { return float64(bytes) * 8 / 1e9 / (ms / 1000) }

// reportLines returns the key=value pairs of each line holding "PREFIX: ",
// taken from after it, in order.
func reportLines(out, prefix string) []map[string]string {
	var r []map[string]string
	for _, l := range strings.Split(out, "\n") {
		i := strings.Index(l, prefix+": ")
		if i < 0 {
			continue
		}
		kv := map[string]string{}
		for _, f := range strings.Fields(l[i+len(prefix)+2:]) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		r = append(r, kv)
	}
	return r
}

// mergeReports merges report lines; later lines win.
func mergeReports(rs []map[string]string) map[string]string {
	m := map[string]string{}
	for _, r := range rs {
		for k, v := range r {
			m[k] = v
		}
	}
	return m
}

// lastWith returns the last report line that has key, or nil.
func lastWith(rs []map[string]string, key string) map[string]string {
	for i := len(rs) - 1; i >= 0; i-- {
		if _, ok := rs[i][key]; ok {
			return rs[i]
		}
	}
	return nil
}

func positive(kv map[string]string, key string) (float64, error) {
	v, err := strconv.ParseFloat(kv[key], 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("guest reported no positive %s: %q", key, kv[key])
	}
	return v, nil
}

// writeDataDisk writes a raw disk of mib MiB of pseudo-random bytes (real
// pages in the tmpfs, unlike a sparse file's holes).
func writeDataDisk(path string, mib int) error {
	chunk := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{'d', 'a', 't', 'a'}).Read(chunk)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("data disk: %w", err)
	}
	for i := 0; i < mib; i++ {
		if _, err := f.Write(chunk); err != nil {
			f.Close()
			return fmt.Errorf("data disk: %w", err)
		}
	}
	return f.Close()
}

// probeDisk makes a small ext4 image in dir holding the static guest
// program guest/probe (as the e2e tests do) and returns its path.
func probeDisk(dir, probe string) (string, error) {
	root := filepath.Join(dir, "probe-root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", err
	}
	b, err := os.ReadFile(probe)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "probe"), b, 0o755); err != nil {
		return "", err
	}
	img := filepath.Join(dir, "probe.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, "16M").CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.ext4 for the probe disk: %v\n%s", err, out)
	}
	return img, nil
}

// makeNetns makes network namespace ns holding a tap named tap with addr
// (CIDR), up.
func makeNetns(ns, tap, addr string) error {
	in := []string{"ip", "netns", "exec", ns}
	for _, c := range [][]string{
		{"ip", "netns", "add", ns},
		append(in, "ip", "link", "set", "lo", "up"),
		append(in, "ip", "tuntap", "add", "dev", tap, "mode", "tap"),
		append(in, "ip", "addr", "add", addr, "dev", tap),
		append(in, "ip", "link", "set", tap, "up"),
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return nil
}

// listenIn opens a TCP listener on addr inside network namespace ns. The
// socket is made on a thread moved into ns; it stays in ns whichever thread
// uses it later. That thread is never moved back: its goroutine ends still
// locked to it, which ends the thread too.
func listenIn(ns, addr string) (net.Listener, error) {
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, fmt.Errorf("network namespace: %w", err)
	}
	defer f.Close()
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		l, err := net.Listen("tcp", addr)
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// tcpPeer is the host's side of the guest's TCP tests, in the lab's network
// namespace: a sink that takes the guest's upload and a source that sends
// the guest a fixed pseudo-random payload (made and hashed once). The sink
// keeps the upload and hashes it after the run, so as not to compete with
// the VMM for the lab's two CPUs during it.
type tcpPeer struct {
	ns          string
	payload     []byte
	payloadHash string
	received    []byte

	// For one run (start to stop):
	sinkL, sourceL net.Listener
	mu             sync.Mutex
	conns          map[net.Conn]bool // open connections
	sinkN          int64             // bytes of the last upload
	source         transfer          // the last download
	wg             sync.WaitGroup
}

func newTCPPeer(ns string, n int) *tcpPeer {
	p := &tcpPeer{ns: ns, payload: make([]byte, n), received: make([]byte, n)}
	rand.NewChaCha8([32]byte{'h', 'o', 's', 't'}).Read(p.payload)
	p.payloadHash = fmt.Sprintf("%x", sha256.Sum256(p.payload))
	return p
}

// start listens for one run. A guest that connects again (a retried probe)
// replaces the last connection's account.
func (p *tcpPeer) start() error {
	var err error
	if p.sinkL, err = listenIn(p.ns, fmt.Sprintf("%s:%d", ioHostIP, ioSinkPort)); err != nil {
		return err
	}
	if p.sourceL, err = listenIn(p.ns, fmt.Sprintf("%s:%d", ioHostIP, ioSourcePort)); err != nil {
		p.sinkL.Close()
		return err
	}
	p.conns, p.sinkN, p.source = map[net.Conn]bool{}, -1, transfer{}
	p.serve(p.sinkL, func(c net.Conn) {
		n := p.sink(c)
		p.mu.Lock()
		p.sinkN = n
		p.mu.Unlock()
	})
	p.serve(p.sourceL, func(c net.Conn) {
		n, _ := c.Write(p.payload)
		t := transfer{bytes: int64(n)}
		if n == len(p.payload) {
			t.sha256 = p.payloadHash
		}
		p.mu.Lock()
		p.source = t
		p.mu.Unlock()
	})
	return nil
}

// serve handles l's connections one at a time until l is closed.
func (p *tcpPeer) serve(l net.Listener, handle func(net.Conn)) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns[c] = true
			p.mu.Unlock()
			handle(c)
			c.Close()
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}
	}()
}

// sink reads one connection to EOF into p.received and returns its length.
func (p *tcpPeer) sink(c net.Conn) int64 {
	var n int64
	var scratch []byte
	for {
		buf := p.received[min(n, int64(len(p.received))):]
		if len(buf) == 0 { // more than expected: count it only
			if scratch == nil {
				scratch = make([]byte, 64<<10)
			}
			buf = scratch
		}
		m, err := c.Read(buf)
		n += int64(m)
		if err != nil {
			return n
		}
	}
}

// stop ends the run (the VMM has exited): it closes the listeners and any
// connection left open by a guest that died mid-transfer, and returns the
// accounts of the last upload and download.
func (p *tcpPeer) stop() (sink, source transfer) {
	p.sinkL.Close()
	p.sourceL.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if p.sinkN >= 0 {
		sink = transfer{bytes: p.sinkN, sha256: fmt.Sprintf("%x", sha256.Sum256(p.received[:min(p.sinkN, int64(len(p.received)))]))}
	}
	return sink, p.source
}

// Command ember-bench runs Ember's benchmarks against QEMU's microvm machine.
//
//	ember-bench boot [--runs N] [--lab-runs N] [--kernel K --initrd I]
//	    tiny guest on this host's /dev/kvm, then Linux boot to init in the lab;
//	    ends with NAME VALUE UNIT lines.
//	ember-bench lab-boot --kernel K --initrd I [--runs N]
//	    the in-lab half (ember-bench boot runs it through ember-lab).
//	ember-bench io [--runs N] [--net=false] [--kernel K --initrd I --probe P]
//	    sequential block read and write and guest<->host TCP throughput in
//	    the lab; ends with NAME VALUE UNIT lines.
//	ember-bench api [--starts N] [--requests N]
//	    API start-up (exec until the socket accepts) and request latencies
//	    on this host; ends with NAME VALUE UNIT lines.
//	ember-bench snapshot [--runs N] [--sizes 128,1024] [--lab-runs N]
//	    snapshot restore on this host: a fresh ember per run, PUT
//	    /snapshot/load until the tiny guest runs; then a booted Linux
//	    guest's restore in the lab against QEMU's restore from a migration
//	    file; ends with NAME VALUE UNIT lines (restore_ms_128mib,
//	    restore_ms_1gib; restore_uffd_ms_* with the Uffd backend and ember
//	    snapshot serve-uffd; lab_restore_ratio_vs_qemu).
//	ember-bench lab-restore [--runs N] [--kernel K --initrd I]
//	    the in-lab half of the restore comparison.
//	ember-bench lab-io [--runs N] [--net=false] [--kernel K --initrd I --probe P]
//	    the in-lab half (ember-bench io runs it through ember-lab).
//	ember-bench image [--runs N] [--lab-runs N] [--rounds N] [--tarball T]
//	                  [--kernel K --home H --ref R --flat F]
//	    on this host, ember image import --rootfs of the Debian tarball
//	    (image_import_debian_s) and Ember's copy-on-write drive against a
//	    raw file (cow_read_ratio, cow_write_ratio); then in the lab the
//	    imported image's boot to its workload against the same files as
//	    one flat ext4 drive (boot_image_vs_flat_ratio); ends with NAME
//	    VALUE UNIT lines.
//	ember-bench lab-image [--runs N] [--kernel K --home H --ref R --flat F]
//	    the in-lab half of the boot comparison.
//	ember-bench density [--max N] [--step N] [--parallel P] [--qemu-max N]
//	    idle tiny guests on this host, each in its own ember --api-sock,
//	    ramped up in steps to --max while every VM answers GET / (p99
//	    within 100 ms) and every guest printed its line; then the same
//	    with QEMU's microvm and QMP up to --qemu-max; ends with NAME VALUE
//	    UNIT lines (density_vms, density_host_mib_per_vm,
//	    density_pss_mib_per_vm, the qemu_ figures and the ratios).
//	ember-bench launch [--launches N] [--parallel P]
//	    launch and snapshot-restore rates of the tiny guest on this host
//	    with P at a time, Ember and QEMU's microvm; ends with NAME VALUE
//	    UNIT lines (launch_rate_per_s, restore_rate_per_s, the qemu_
//	    figures and the ratios).
//	ember-bench sandbox-rate [--creates N] [--parallel P]
//	    creates through emberd (its binary beside ember-bench) of the tiny
//	    sandbox guest, P at a time, on this host; ends with NAME VALUE
//	    UNIT lines (emberd_restore_rate_per_s, emberd_create_p50_ms, ...).
//	ember-bench sandbox [--creates N] [--parallel P] [--lab-creates N] [--cold-runs N] [--restore-runs N]
//	    sandbox-rate, then the network's set-up cost (netns_tap_setup_ms_fresh,
//	    _pooled) on this host; then in the lab, Debian sandboxes created
//	    through emberd until an exec's first output byte
//	    (sandbox_create_to_exec_p50_ms, _p99_ms) against a cold boot of the
//	    image (sandbox_vs_cold_boot_ratio) and QEMU's restore from a
//	    migration file (sandbox_vs_qemu_restore_ratio).
//	ember-bench lab-sandbox [--creates N] [--cold-runs N] [--restore-runs N] [--kernel K --home H --ref R]
//	    the in-lab half.
//	ember-bench k8s [--runs N]
//	    in the lab, pods started through containerd 1.6's CRI
//	    (RunPodSandbox, CreateContainer, StartContainer until the
//	    container's first line is in its log) on Ember's handler and on
//	    runc by turns, busybox images from a local registry; ends with
//	    NAME VALUE UNIT lines (pod_start_p50_ms, pod_start_runc_p50_ms,
//	    pod_start_ratio_vs_runc).
//	ember-bench lab-k8s [--runs N] [--kernel K]
//	    the in-lab half.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/embervm/ember/bench"
)

const exitUsage = 2

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ember-bench boot|lab-boot|io|lab-io|api|snapshot|lab-restore|image|lab-image|density|launch|sandbox-rate|sandbox|lab-sandbox|k8s|lab-k8s [flags]")
		os.Exit(exitUsage)
	}
	var err error
	switch os.Args[1] {
	case "boot":
		err = boot(os.Args[2:])
	case "lab-boot":
		err = labBoot(os.Args[2:])
	case "io":
		err = ioBench(os.Args[2:])
	case "lab-io":
		err = labIO(os.Args[2:])
	case "api":
		err = apiBench(os.Args[2:])
	case "snapshot":
		err = snapshotBench(os.Args[2:])
	case "lab-restore":
		err = labRestore(os.Args[2:])
	case "image":
		err = imageBench(os.Args[2:])
	case "lab-image":
		err = labImage(os.Args[2:])
	case "density":
		err = densityBench(os.Args[2:])
	case "launch":
		err = launchBench(os.Args[2:])
	case "sandbox":
		err = sandboxBench(os.Args[2:])
	case "lab-sandbox":
		err = labSandbox(os.Args[2:])
	case "sandbox-rate":
		err = sandboxRateBench(os.Args[2:])
	case "k8s":
		err = k8sBench(os.Args[2:])
	case "lab-k8s":
		err = labK8s(os.Args[2:])
	case bench.LeaderSubcommand:
		bench.RunLeader()
	default:
		fmt.Fprintf(os.Stderr, "ember-bench: unknown benchmark %q\n", os.Args[1])
		os.Exit(exitUsage)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember-bench:", err)
		os.Exit(1)
	}
}

// sibling is a binary installed next to ember-bench (bin/).
func sibling(name string) string {
	exe, err := os.Executable()
	if err != nil {
		return name
	}
	return filepath.Join(filepath.Dir(exe), name)
}

func guestFile(name string) string {
	dir := os.Getenv("EMBER_GUEST_DIR")
	if dir == "" {
		dir = "build/guest"
	}
	p, _ := filepath.Abs(filepath.Join(dir, name))
	return p
}

func boot(args []string) error {
	fs := flag.NewFlagSet("boot", flag.ExitOnError)
	runs := fs.Int("runs", 20, "tiny-guest runs per VMM")
	labRuns := fs.Int("lab-runs", 5, "Linux boots per VMM in the lab")
	kernel := fs.String("kernel", guestFile("minimal-vmlinux"), "guest kernel for the lab runs")
	initrd := fs.String("initrd", guestFile("initramfs.cpio.gz"), "initramfs for the lab runs")
	fs.Parse(args)
	ctx := context.Background()

	fmt.Println("== tiny PVH guest on this host's /dev/kvm, Ember and QEMU microvm alternately")
	measurer := sibling("ember-rusage") // measures peak RSS (package rusage)
	tr, err := bench.Tiny(ctx, sibling("ember"), measurer, *runs, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Println("== tiny guest with a network interface, without and with an MMDS (8 KiB store) alternately")
	mr, err := bench.TinyMMDS(ctx, sibling("ember"), measurer, *runs, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Println("== Linux boot to init in the lab, Ember and QEMU microvm alternately")
	cmd := exec.Command(sibling("ember-lab"), "run", "--", sibling("ember-bench"), "lab-boot",
		"--kernel", *kernel, "--initrd", *initrd, "--runs", strconv.Itoa(*labRuns))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	err = cmd.Run()
	os.Stdout.Write(out.Bytes())
	if err != nil {
		return fmt.Errorf("lab boot benchmark: %w", err)
	}
	vals := map[string]float64{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && strings.HasPrefix(f[0], "lab_boot_") {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				vals[f[0]] = v
			}
		}
	}
	e, q := vals["lab_boot_ember_ms"], vals["lab_boot_qemu_ms"]
	if e == 0 || q == 0 {
		return fmt.Errorf("lab boot benchmark printed no lab_boot_ember_ms / lab_boot_qemu_ms")
	}
	fmt.Printf("== medians: tiny %d runs each, lab %d runs each\n", tr.Runs, *labRuns)
	bench.Line(os.Stdout, "lab_boot_ember_ms", e, "ms")
	bench.Line(os.Stdout, "lab_boot_qemu_ms", q, "ms")
	bench.Line(os.Stdout, "lab_boot_ratio_vs_qemu", e/q, "ratio")
	bench.Line(os.Stdout, "tiny_exec_to_guest_ms", tr.EmberGuestMS, "ms")
	bench.Line(os.Stdout, "tiny_exec_to_exit_ms", tr.EmberMS, "ms")
	bench.Line(os.Stdout, "tiny_exec_to_exit_seccomp_ms", tr.EmberSeccompMS, "ms")
	bench.Line(os.Stdout, "tiny_peak_rss_mib", tr.EmberRSSMiB, "MiB")
	bench.Line(os.Stdout, "mmds_extra_rss_mib", mr.ExtraMiB(), "MiB")
	bench.Line(os.Stdout, "qemu_tiny_exec_to_exit_ms", tr.QEMUMS, "ms")
	bench.Line(os.Stdout, "qemu_tiny_peak_rss_mib", tr.QEMURSSMiB, "MiB")
	return nil
}

func labBoot(args []string) error {
	fs := flag.NewFlagSet("lab-boot", flag.ExitOnError)
	runs := fs.Int("runs", 5, "boots per VMM")
	kernel := fs.String("kernel", guestFile("minimal-vmlinux"), "guest kernel")
	initrd := fs.String("initrd", guestFile("initramfs.cpio.gz"), "initramfs")
	fs.Parse(args)
	r, err := bench.LabBoot(context.Background(), sibling("ember"), *kernel, *initrd, *runs, os.Stdout)
	if err != nil {
		return err
	}
	bench.Line(os.Stdout, "lab_boot_ember_ms", r.EmberMS, "ms")
	bench.Line(os.Stdout, "lab_boot_qemu_ms", r.QEMUMS, "ms")
	return nil
}

// ioLabTime is the lab time allowed per run of both VMMs in ember-bench io
// (a run of each takes about 2 minutes; hung ones are retried), on top of
// ioLabBase for starting the lab and making the disks.
const (
	ioLabTime = 10 * time.Minute
	ioLabBase = 10 * time.Minute
)

// ioFlags are the flags io and lab-io share.
type ioFlags struct {
	runs                  *int
	net                   *bool
	kernel, initrd, probe *string
}

func newIOFlags(fs *flag.FlagSet) ioFlags {
	return ioFlags{
		runs:   fs.Int("runs", 3, "runs per VMM"),
		net:    fs.Bool("net", true, "measure TCP throughput too (the block devices are always measured)"),
		kernel: fs.String("kernel", guestFile("minimal-bzImage"), "guest kernel"),
		initrd: fs.String("initrd", guestFile("initramfs.cpio.gz"), "initramfs"),
		probe:  fs.String("probe", guestFile("probe"), "the static guest program guest/probe"),
	}
}

func (f ioFlags) args() []string {
	return []string{"--runs", strconv.Itoa(*f.runs), "--net=" + strconv.FormatBool(*f.net),
		"--kernel", *f.kernel, "--initrd", *f.initrd, "--probe", *f.probe}
}

// ioBench runs lab-io in the lab, streaming its progress, and ends with its
// NAME VALUE UNIT lines.
func ioBench(args []string) error {
	fs := flag.NewFlagSet("io", flag.ExitOnError)
	f := newIOFlags(fs)
	fs.Parse(args)
	fmt.Printf("== block and TCP throughput in the lab, Ember and QEMU microvm alternately, %d runs each\n", *f.runs)
	timeout := ioLabBase + time.Duration(*f.runs)*ioLabTime
	cmd := exec.Command(sibling("ember-lab"), append([]string{"run", "--timeout", timeout.String(), "--",
		sibling("ember-bench"), "lab-io"}, f.args()...)...)
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(os.Stdout, &out)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("lab I/O benchmark: %w", err)
	}
	vals := map[string]string{}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 {
			vals[f[0]] = sc.Text()
		}
	}
	names := bench.IOLineNames(*f.net)
	var lines []string
	for _, n := range names {
		l, ok := vals[n]
		if !ok {
			return fmt.Errorf("lab I/O benchmark printed no %s line", n)
		}
		lines = append(lines, l)
	}
	fmt.Printf("== medians of %d runs each (lab timings are software-emulated: only the ratios mean anything)\n", *f.runs)
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}

func labIO(args []string) error {
	fs := flag.NewFlagSet("lab-io", flag.ExitOnError)
	f := newIOFlags(fs)
	fs.Parse(args)
	r, err := bench.LabIO(context.Background(), sibling("ember"), *f.kernel, *f.initrd, *f.probe, *f.runs, *f.net, os.Stdout)
	if err != nil {
		return err
	}
	r.Lines(os.Stdout)
	return nil
}

func apiBench(args []string) error {
	fs := flag.NewFlagSet("api", flag.ExitOnError)
	starts := fs.Int("starts", 20, "process starts for api_start_to_socket_ms")
	requests := fs.Int("requests", 10000, "requests per latency figure")
	fs.Parse(args)
	fmt.Println("== Ember's API on this host")
	r, err := bench.API(context.Background(), sibling("ember"), *starts, *requests, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Printf("== medians of %d starts; latencies over %d requests each\n", r.StartRuns, r.Requests)
	r.Lines(os.Stdout)
	return nil
}

func snapshotBench(args []string) error {
	fs := flag.NewFlagSet("snapshot", flag.ExitOnError)
	runs := fs.Int("runs", 15, "restores per memory size")
	sizes := fs.String("sizes", "128,1024", "guest memory sizes in MiB, comma-separated")
	labRuns := fs.Int("lab-runs", 5, "Linux guest restores per VMM in the lab (0: none)")
	kernel := fs.String("kernel", guestFile("minimal-vmlinux"), "guest kernel for the lab runs")
	initrd := fs.String("initrd", guestFile("initramfs.cpio.gz"), "initramfs for the lab runs")
	fs.Parse(args)
	fmt.Println("== snapshot restore of the tiny guest on this host (fresh ember --api-sock per run)")
	var results []bench.SnapshotResult
	for _, s := range strings.Split(*sizes, ",") {
		mib, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || mib <= 0 {
			return fmt.Errorf("--sizes: %q is not a size in MiB", s)
		}
		r, err := bench.Snapshot(context.Background(), sibling("ember"), mib, *runs, os.Stdout)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	var lab []string
	if *labRuns > 0 {
		fmt.Println("== restore of a booted Linux guest in the lab, Ember and QEMU microvm (migration file) alternately")
		cmd := exec.Command(sibling("ember-lab"), "run", "--", sibling("ember-bench"), "lab-restore",
			"--kernel", *kernel, "--initrd", *initrd, "--runs", strconv.Itoa(*labRuns))
		var out bytes.Buffer
		cmd.Stdout = io.MultiWriter(os.Stdout, &out)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("lab restore benchmark: %w", err)
		}
		sc := bufio.NewScanner(&out)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 3 && strings.HasPrefix(f[0], "lab_restore_") {
				lab = append(lab, sc.Text())
			}
		}
		if len(lab) != 3 {
			return fmt.Errorf("lab restore benchmark printed %d lab_restore_ lines, want 3", len(lab))
		}
	}
	fmt.Printf("== medians of %d restores per size on this host; %d per VMM in the lab (lab timings are software-emulated: only the ratio means anything)\n", *runs, *labRuns)
	for _, r := range results {
		r.Lines(os.Stdout)
	}
	for _, l := range lab {
		fmt.Println(l)
	}
	return nil
}

func labRestore(args []string) error {
	fs := flag.NewFlagSet("lab-restore", flag.ExitOnError)
	runs := fs.Int("runs", 5, "restores per VMM")
	kernel := fs.String("kernel", guestFile("minimal-vmlinux"), "guest kernel")
	initrd := fs.String("initrd", guestFile("initramfs.cpio.gz"), "initramfs")
	fs.Parse(args)
	r, err := bench.LabRestore(context.Background(), sibling("ember"), *kernel, *initrd, *runs, os.Stdout)
	if err != nil {
		return err
	}
	r.Lines(os.Stdout)
	return nil
}

// interruptible is a context that ends on SIGINT or SIGTERM, so a scale
// benchmark cleans up what it started before it exits.
func interruptible() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func densityBench(args []string) error {
	fs := flag.NewFlagSet("density", flag.ExitOnError)
	maxVMs := fs.Int("max", 4000, "most Ember VMs to run at once")
	step := fs.Int("step", 0, "VMs added per step (default: --max/8)")
	parallel := fs.Int("parallel", 2*runtime.NumCPU(), "VMs started at once")
	qemuMax := fs.Int("qemu-max", 500, "most QEMU VMs to run at once (0: no QEMU run)")
	memMiB := fs.Int("mem-mib", 128, "guest memory per VM")
	fs.Parse(args)
	if *maxVMs < 1 || *qemuMax < 0 || *memMiB < 1 {
		return fmt.Errorf("density: --max and --mem-mib must be positive, --qemu-max not negative")
	}
	if err := bench.CheckHostFor(*maxVMs); err != nil {
		return fmt.Errorf("density --max %d: %w", *maxVMs, err)
	}
	ctx, stop := interruptible()
	defer stop()
	fmt.Printf("== density: idle tiny guests (%d MiB) in ember --api-sock, up to %d in steps, %d started at once\n", *memMiB, *maxVMs, *parallel)
	e, err := bench.Density(ctx, bench.DensityOptions{Ember: sibling("ember"), Max: *maxVMs, Step: *step, Parallel: *parallel, MemMiB: *memMiB}, os.Stdout)
	if err != nil {
		return err
	}
	var q bench.DensityResult
	if *qemuMax > 0 {
		fmt.Printf("== density: the same guest in QEMU microvm with a QMP socket, up to %d\n", *qemuMax)
		q, err = bench.Density(ctx, bench.DensityOptions{QEMU: true, Max: *qemuMax, Step: *step, Parallel: *parallel, MemMiB: *memMiB}, os.Stdout)
		if err != nil {
			return err
		}
	}
	fmt.Println("== density figures at the largest step every VM passed")
	e.Lines(os.Stdout)
	if *qemuMax > 0 {
		q.Lines(os.Stdout)
		bench.LineNote(os.Stdout, "density_host_mib_ratio_vs_qemu", q.HostMiBPerVM/e.HostMiBPerVM, "ratio", "QEMU/Ember MemAvailable drop per VM: > 1 means Ember uses less")
		bench.LineNote(os.Stdout, "density_pss_mib_ratio_vs_qemu", q.PSSMiBPerVM/e.PSSMiBPerVM, "ratio", "QEMU/Ember PSS per VM: > 1 means Ember uses less")
	}
	return nil
}

func launchBench(args []string) error {
	fs := flag.NewFlagSet("launch", flag.ExitOnError)
	launches := fs.Int("launches", 500, "VMs launched (and restored) per figure")
	parallel := fs.Int("parallel", 2*runtime.NumCPU(), "VMs launched at once")
	memMiB := fs.Int("mem-mib", 128, "guest memory per VM")
	fs.Parse(args)
	if *launches < 1 || *parallel < 1 || *memMiB < 1 {
		return fmt.Errorf("launch: --launches, --parallel and --mem-mib must be positive")
	}
	ctx, stop := interruptible()
	defer stop()
	fmt.Printf("== launch and restore rates of the tiny guest (%d MiB) on this host, %d at a time, Ember then QEMU microvm\n", *memMiB, *parallel)
	r, err := bench.Launch(ctx, bench.LaunchOptions{Ember: sibling("ember"), Launches: *launches, Parallel: *parallel, MemMiB: *memMiB}, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Printf("== rates over %d launches each\n", *launches)
	r.Lines(os.Stdout)
	return nil
}

func sandboxRateBench(args []string) error {
	fs := flag.NewFlagSet("sandbox-rate", flag.ExitOnError)
	creates := fs.Int("creates", 200, "sandboxes to create")
	parallel := fs.Int("parallel", 2*runtime.NumCPU(), "creates at a time")
	fs.Parse(args)
	if *creates < 1 || *parallel < 1 {
		return fmt.Errorf("--creates and --parallel must be at least 1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Println("== sandbox creates through emberd with the tiny guest on this host (ready: its boot-timer write)")
	r, err := bench.SandboxRate(ctx, sibling("emberd"), sibling("ember"), *creates, *parallel, os.Stdout)
	if err != nil {
		return err
	}
	r.Lines(os.Stdout)
	return nil
}

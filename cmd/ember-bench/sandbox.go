package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/embervm/ember/bench"
	"github.com/embervm/ember/sandbox/network"
)

// The lab time ember-bench sandbox allows: sandboxLabBase for starting the
// lab, building the template and QEMU's restores, plus sandboxLabPerRun per
// create or cold boot.
const (
	sandboxLabBase   = 15 * time.Minute
	sandboxLabPerRun = time.Minute
)

// Addresses of the throw-away network manager that measures
// netns_tap_setup_ms: apart from emberd's defaults (10.213/16, 10.214/16),
// so a running emberd is not disturbed.
var (
	benchBridgeCIDR = netip.MustParsePrefix("10.233.0.0/16")
	benchGuestCIDR  = netip.MustParsePrefix("10.234.0.0/16")
)

// netSetupRuns is how many namespaces each way the network measure makes.
const netSetupRuns = 50

// sandboxBench is ember-bench sandbox: on this host, emberd's restore rate
// with the tiny guest and the network's set-up cost; then, in the lab,
// creates of Debian sandboxes until an exec's output against a cold boot
// of the image and QEMU's restore.
func sandboxBench(args []string) error {
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	creates := fs.Int("creates", 200, "sandboxes created through emberd on this host")
	parallel := fs.Int("parallel", 2*runtime.NumCPU(), "creates at a time on this host")
	labCreates := fs.Int("lab-creates", 20, "sandboxes created in the lab, one after the other (0: no lab half)")
	coldRuns := fs.Int("cold-runs", 5, "cold boots of the image in the lab")
	restoreRuns := fs.Int("restore-runs", 5, "QEMU and Ember restores in the lab")
	sdk := fs.String("e2b-sdk", "", "folder with E2B's JS SDK installed and bench.mjs (sandbox/e2b/sdktest, after go test ./sandbox/e2b/): the lab's creates go through it too")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *creates < 1 || *parallel < 1 || *labCreates < 0 || *coldRuns < 1 || *restoreRuns < 1 {
		return fmt.Errorf("sandbox: --creates, --parallel, --cold-runs and --restore-runs must be at least 1, --lab-creates 0 or more")
	}
	ctx, stop := interruptible()
	defer stop()
	fmt.Println("== sandbox creates through emberd with the tiny guest on this host (ready: its boot-timer write)")
	rate, err := bench.SandboxRate(ctx, sibling("emberd"), sibling("ember"), *creates, *parallel, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Printf("== sandbox network set-up on this host (namespace, tap, veth, addresses, nftables), %d fresh and %d pooled\n", netSetupRuns, netSetupRuns)
	cost, err := measureNetSetup(ctx)
	if err != nil {
		return err
	}
	var lab []string
	if *labCreates > 0 {
		timeout := sandboxLabBase + time.Duration(*labCreates+*coldRuns)*sandboxLabPerRun
		argv := []string{"run", "--timeout", timeout.String(), "--", sibling("ember-bench"), "lab-sandbox",
			"--creates", strconv.Itoa(*labCreates), "--cold-runs", strconv.Itoa(*coldRuns), "--restore-runs", strconv.Itoa(*restoreRuns)}
		if *sdk != "" {
			argv = append(argv, "--e2b-sdk", *sdk)
		}
		fmt.Printf("== in the lab: %s %s\n", sibling("ember-lab"), strings.Join(argv, " "))
		cmd := exec.CommandContext(ctx, sibling("ember-lab"), argv...)
		var out bytes.Buffer
		cmd.Stdout = io.MultiWriter(os.Stdout, &out)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("lab sandbox benchmark: %w", err)
		}
		if lab, err = pickLines(out.Bytes(), "sandbox_create_to_exec_p50_ms", "sandbox_create_to_exec_p99_ms",
			"sandbox_cold_boot_ms", "sandbox_vs_cold_boot_ratio", "sandbox_qemu_restore_ms", "sandbox_vs_qemu_restore_ratio"); err != nil {
			return fmt.Errorf("lab sandbox benchmark printed %w", err)
		}
		if *sdk != "" {
			e2b, err := pickLines(out.Bytes(), "e2b_sdk_create_to_exec_p50_ms", "e2b_sdk_vs_ember_client_ratio")
			if err != nil {
				return fmt.Errorf("lab sandbox benchmark printed %w", err)
			}
			lab = append(lab, e2b...)
		}
	}
	fmt.Printf("== medians (percentiles where named); %d creates on this host, %d parallel; %d creates in the lab (lab timings are software-emulated: only the ratios mean anything)\n",
		*creates, *parallel, *labCreates)
	rate.Lines(os.Stdout)
	bench.Line(os.Stdout, "netns_tap_setup_ms_fresh", cost.FreshMS, "ms")
	bench.Line(os.Stdout, "netns_tap_setup_ms_pooled", cost.PooledMS, "ms")
	for _, l := range lab {
		fmt.Println(l)
	}
	return nil
}

// measureNetSetup measures the network's Setup on a throw-away manager
// (its own prefix, table and ranges), removed afterwards.
func measureNetSetup(ctx context.Context) (network.SetupCost, error) {
	m, err := network.New(network.Config{Prefix: "embbn", Table: "ember-bench", BridgeCIDR: benchBridgeCIDR, GuestCIDR: benchGuestCIDR})
	if err != nil {
		return network.SetupCost{}, err
	}
	defer m.Close()
	if err := m.Init(ctx); err != nil {
		return network.SetupCost{}, err
	}
	defer m.RemoveAll(context.Background())
	cost, err := network.MeasureSetup(ctx, m, netSetupRuns)
	if err != nil {
		return cost, err
	}
	fmt.Printf("fresh %.2f ms, pooled %.2f ms (making the pooled namespaces beforehand: %.2f ms each)\n",
		cost.FreshMS, cost.PooledMS, cost.PrepareTotalMS/float64(cost.N))
	return cost, nil
}

// labSandbox is ember-bench lab-sandbox, the in-lab half.
func labSandbox(args []string) error {
	fs := flag.NewFlagSet("lab-sandbox", flag.ContinueOnError)
	o := bench.LabSandboxOptions{Emberd: sibling("emberd"), Ember: sibling("ember")}
	fs.IntVar(&o.Creates, "creates", 20, "sandboxes, one after the other")
	fs.IntVar(&o.ColdRuns, "cold-runs", 5, "cold boots of the image")
	fs.IntVar(&o.RestoreRuns, "restore-runs", 5, "QEMU and Ember restores of the minimal guest")
	fs.StringVar(&o.Kernel, "kernel", sibling("ember-vmlinux"), "guest kernel")
	fs.StringVar(&o.Initrd, "initrd", guestFile("initramfs.cpio.gz"), "minimal initramfs of the restore comparison")
	fs.StringVar(&o.Home, "home", guestFile("debian-home"), "Ember home holding the image (make guest)")
	fs.StringVar(&o.Ref, "ref", debianRef, "the image in --home")
	fs.StringVar(&o.SDKDir, "e2b-sdk", "", "folder with E2B's JS SDK installed and bench.mjs (sandbox/e2b/sdktest): the creates through it too")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.Creates < 1 || o.ColdRuns < 1 || o.RestoreRuns < 1 {
		return fmt.Errorf("lab-sandbox: --creates, --cold-runs and --restore-runs must be at least 1")
	}
	r, err := bench.LabSandbox(context.Background(), o, os.Stdout)
	if err != nil {
		return err
	}
	r.Lines(os.Stdout)
	return nil
}

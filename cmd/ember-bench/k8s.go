package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/embervm/ember/bench"
	"github.com/embervm/ember/shim/crikit"
)

// The lab time ember-bench k8s allows: k8sLabBase for starting the lab and
// containerd, plus k8sLabPerRun per pod start (one on Ember, one on runc).
const (
	k8sLabBase   = 10 * time.Minute
	k8sLabPerRun = 3 * time.Minute
)

// k8sBench is ember-bench k8s: the in-lab half through ember-lab, then its
// figures.
func k8sBench(args []string) error {
	fs := flag.NewFlagSet("k8s", flag.ContinueOnError)
	runs := fs.Int("runs", 10, "pod starts on each runtime in the lab")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *runs < 1 || fs.NArg() > 0 {
		return fmt.Errorf("k8s: --runs %d: want at least 1 (and no arguments)", *runs)
	}
	ctx, stop := interruptible()
	defer stop()
	timeout := k8sLabBase + time.Duration(2**runs)*k8sLabPerRun
	argv := []string{"run", "--timeout", timeout.String(), "--", sibling("ember-bench"), "lab-k8s", "--runs", strconv.Itoa(*runs)}
	fmt.Printf("== in the lab: %s %s\n", sibling("ember-lab"), strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, sibling("ember-lab"), argv...)
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(os.Stdout, &out)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("lab k8s benchmark: %w", err)
	}
	lines, err := pickLines(out.Bytes(), "pod_start_p50_ms", "pod_start_runc_p50_ms", "pod_start_ratio_vs_runc")
	if err != nil {
		return fmt.Errorf("lab k8s benchmark printed %w", err)
	}
	fmt.Printf("== medians of %d pod starts each in the lab (software-emulated: only the ratio means anything)\n", *runs)
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}

// labK8s is ember-bench lab-k8s, the in-lab half: a containerd with the
// CRI (shim/crikit), pods started through the CRI on Ember's handler and
// on runc by turns, each timed from RunPodSandbox through CreateContainer
// and StartContainer until the container's first line is in its log.
func labK8s(args []string) error {
	fs := flag.NewFlagSet("lab-k8s", flag.ContinueOnError)
	runs := fs.Int("runs", 10, "pod starts on each runtime")
	kernel := fs.String("kernel", sibling("ember-vmlinux"), "guest kernel")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *runs < 1 || fs.NArg() > 0 {
		return fmt.Errorf("lab-k8s: --runs %d: want at least 1 (and no arguments)", *runs)
	}
	for _, tool := range []string{"containerd", "runc", "mkfs.erofs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("lab-k8s: %s: %w", tool, err)
		}
	}
	// containerd finds the shim on its PATH: the one beside ember-bench.
	os.Setenv("PATH", filepath.Dir(sibling("ember"))+string(os.PathListSeparator)+os.Getenv("PATH"))
	dir, err := os.MkdirTemp("", "ember-bench-k8s-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	shimCfg := filepath.Join(dir, "shim.json")
	if err := os.WriteFile(shimCfg, []byte(fmt.Sprintf(`{"ember": %q, "kernel": %q, "home": %q, "warm_pods": true}`,
		sibling("ember"), *kernel, filepath.Join(dir, "home"))), 0o644); err != nil {
		return err
	}
	ctx, stop := interruptible()
	defer stop()
	var cdLog bytes.Buffer
	env, err := crikit.Start(ctx, crikit.Options{Dir: filepath.Join(dir, "containerd"), ShimConfig: shimCfg, Log: &cdLog})
	if err != nil {
		return fmt.Errorf("%w; containerd's log ends:\n%s", err, tail(cdLog.String()))
	}
	defer env.Close()
	start := func(i int, handler string) (time.Duration, error) {
		name := fmt.Sprintf("bench-%s-%d", map[string]string{"": "runc", crikit.Handler: "ember"}[handler], i)
		d, err := env.PodStart(ctx, name, handler)
		if err != nil {
			return 0, fmt.Errorf("%w; containerd's log ends:\n%s", err, tail(cdLog.String()))
		}
		return d, nil
	}
	// A first pod on each, not counted: Ember's layer images are built
	// (mkfs.erofs) and cached then, containerd's snapshots made.
	for _, h := range []string{crikit.Handler, ""} {
		d, err := start(0, h)
		if err != nil {
			return err
		}
		fmt.Printf("warm-up on %q: %.1f ms\n", h, ms(d))
	}
	var ember, runc []float64
	for i := 1; i <= *runs; i++ {
		de, err := start(i, crikit.Handler)
		if err != nil {
			return err
		}
		dr, err := start(i, "")
		if err != nil {
			return err
		}
		ember, runc = append(ember, ms(de)), append(runc, ms(dr))
		fmt.Printf("run %d: ember %.1f ms, runc %.1f ms\n", i, ms(de), ms(dr))
	}
	// The warm-up pod's VM (the first line) built the pod template; the
	// timed ones restore it (the shim's warm_pods, set here; without it
	// they boot).
	for _, msg := range []string{"VM restored", "VM booted"} {
		if phases := bootPhases(cdLog.String(), msg, 1); phases != "" {
			fmt.Printf("ember pods' VM starts, medians of the timed runs (the shim's %q): %s\n", msg, phases)
		}
	}
	for _, line := range strings.Split(cdLog.String(), "\n") {
		if strings.Contains(line, `msg="pod template built"`) {
			fmt.Printf("the shim's pod template: %s\n", line)
		}
	}
	pe, pr := bench.Median(ember), bench.Median(runc)
	bench.Line(os.Stdout, "pod_start_p50_ms", pe, "ms")
	bench.Line(os.Stdout, "pod_start_runc_p50_ms", pr, "ms")
	bench.Line(os.Stdout, "pod_start_ratio_vs_runc", pe/pr, "x")
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// phaseField is one phase of the shim's "VM booted" and "VM restored"
// lines (shim.EmberLauncher).
var phaseField = regexp.MustCompile(`(\w+)_ms=([0-9.]+)`)

// bootPhases is the median of each phase of the shim's lines with message
// msg in containerd's log, after the first skip (the warm-up), in their
// order; "" if there are none.
func bootPhases(log, msg string, skip int) string {
	var names []string
	vals := map[string][]float64{}
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		if skip > 0 {
			skip--
			continue
		}
		for _, m := range phaseField.FindAllStringSubmatch(line, -1) {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				continue
			}
			if _, ok := vals[m[1]]; !ok {
				names = append(names, m[1])
			}
			vals[m[1]] = append(vals[m[1]], v)
		}
	}
	var out []string
	for _, n := range names {
		out = append(out, fmt.Sprintf("%s %.0f ms", n, bench.Median(vals[n])))
	}
	return strings.Join(out, ", ")
}

// tail is the end of a log, for an error.
func tail(s string) string {
	const max = 4000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/embervm/ember/bench"
)

// The lab time ember-bench image allows: imageLabBase for starting the lab,
// plus imageLabPerRun per run of both boots (a Debian boot under the lab's
// emulation takes tens of seconds; hung ones are retried).
const (
	imageLabBase   = 10 * time.Minute
	imageLabPerRun = 6 * time.Minute
)

// debianRef is the name make guest imports the Debian root filesystem
// under, in build/guest/debian-home (Makefile, guest-debian).
const debianRef = "e2e/debian:12"

// imageFlags are the flags of image and lab-image.
type imageFlags struct {
	runs, labRuns, rounds int
	tarball, kernel       string
	home, ref, flat       string
}

// parseImageFlags parses the flags of image (lab: lab-image, whose --runs
// is the number of boots) and checks them.
func parseImageFlags(name string, args []string) (imageFlags, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f imageFlags
	lab := name == "lab-image"
	if lab {
		fs.IntVar(&f.runs, "runs", 5, "boots of each, image and flat drive")
	} else {
		fs.IntVar(&f.runs, "runs", 5, "imports of the Debian tarball")
		fs.IntVar(&f.labRuns, "lab-runs", 21, "boots of each in the lab, image and flat drive, alternately (0: no lab half; single boots vary by ±20% in the lab, so a median needs many)")
		fs.IntVar(&f.rounds, "rounds", 31, "samples per copy-on-write ratio")
		fs.StringVar(&f.tarball, "tarball", guestFile("debian-rootfs.tar"), "the Debian root filesystem tarball (make guest)")
	}
	fs.StringVar(&f.kernel, "kernel", sibling("ember-vmlinux"), "guest kernel of both boots")
	fs.StringVar(&f.home, "home", guestFile("debian-home"), "Ember home holding the imported image (make guest)")
	fs.StringVar(&f.ref, "ref", debianRef, "the image in --home")
	fs.StringVar(&f.flat, "flat", guestFile("debian-flat.ext4"), "the flat ext4 drive of the same files (made from --tarball when older)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return f, fmt.Errorf("%s: %w", name, err)
	}
	switch {
	case fs.NArg() > 0:
		return f, fmt.Errorf("%s: unexpected argument %q", name, fs.Arg(0))
	case f.runs < 1:
		return f, fmt.Errorf("%s: --runs %d: want at least 1", name, f.runs)
	case f.labRuns < 0:
		return f, fmt.Errorf("%s: --lab-runs %d: want 0 or more", name, f.labRuns)
	case !lab && f.rounds < 1:
		return f, fmt.Errorf("%s: --rounds %d: want at least 1", name, f.rounds)
	case f.ref == "":
		return f, fmt.Errorf("%s: --ref is empty", name)
	}
	return f, nil
}

// labArgv is the in-lab half's command line: ember-bench lab-image with
// the lab runs and the files of both boots.
func (f imageFlags) labArgv(emberBench string) []string {
	return []string{emberBench, "lab-image", "--runs", strconv.Itoa(f.labRuns), "--kernel", f.kernel,
		"--home", f.home, "--ref", f.ref, "--flat", f.flat}
}

// labTimeout is the ember-lab run --timeout for labRuns runs.
func labTimeout(labRuns int) time.Duration {
	return imageLabBase + time.Duration(labRuns)*imageLabPerRun
}

// pickLines returns the output's "NAME VALUE UNIT" lines (a note may
// follow) of the given names, in that order, and fails naming the first
// missing one or one whose value is not a number.
func pickLines(out []byte, names ...string) ([]string, error) {
	found := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 {
			if _, err := strconv.ParseFloat(f[1], 64); err == nil {
				found[f[0]] = sc.Text()
			}
		}
	}
	var lines []string
	for _, n := range names {
		l, ok := found[n]
		if !ok {
			return nil, fmt.Errorf("no %s line", n)
		}
		lines = append(lines, l)
	}
	return lines, nil
}

// imageBench is ember-bench image: the import time and the copy-on-write
// ratios on this host, then the boot comparison in the lab.
func imageBench(args []string) error {
	f, err := parseImageFlags("image", args)
	if err != nil {
		return err
	}
	ctx, stop := interruptible()
	defer stop()
	fmt.Printf("== import of %s with ember image import --rootfs into a fresh home, %d times\n", f.tarball, f.runs)
	imp, err := bench.ImageImport(ctx, sibling("ember"), f.tarball, f.runs, os.Stdout)
	if err != nil {
		return err
	}
	fmt.Printf("== copy-on-write drive against a raw file, through package disk, %d rounds\n", f.rounds)
	dir, err := os.MkdirTemp("", "ember-bench-cow-")
	if err != nil {
		return err
	}
	cow, err := bench.COWRatios(dir, f.rounds)
	os.RemoveAll(dir)
	if err != nil {
		return fmt.Errorf("copy-on-write ratios: %w", err)
	}
	var lab []string
	if f.labRuns > 0 {
		fmt.Printf("== flat ext4 drive of the same files: %s\n", f.flat)
		if err := bench.FlatExt4(ctx, f.tarball, f.flat); err != nil {
			return err
		}
		argv := append([]string{"run", "--timeout", labTimeout(f.labRuns).String(), "--"}, f.labArgv(sibling("ember-bench"))...)
		fmt.Printf("== in the lab, the layered image against the flat drive, alternately: %s %s\n", sibling("ember-lab"), strings.Join(argv, " "))
		cmd := exec.CommandContext(ctx, sibling("ember-lab"), argv...)
		var out bytes.Buffer
		cmd.Stdout = io.MultiWriter(os.Stdout, &out)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("lab image boot benchmark: %w", err)
		}
		if lab, err = pickLines(out.Bytes(), "boot_image_ms", "boot_flat_ms", "boot_image_vs_flat_ratio"); err != nil {
			return fmt.Errorf("lab image boot benchmark printed %w", err)
		}
	}
	fmt.Printf("== medians: %d imports, %d copy-on-write rounds on this host; %d boots of each in the lab (lab timings are software-emulated: only the ratio means anything)\n",
		f.runs, f.rounds, f.labRuns)
	bench.Line(os.Stdout, "image_import_debian_s", imp, "s")
	cow.Lines(os.Stdout)
	for _, l := range lab {
		fmt.Println(l)
	}
	return nil
}

// labImage is ember-bench lab-image, the in-lab half.
func labImage(args []string) error {
	f, err := parseImageFlags("lab-image", args)
	if err != nil {
		return err
	}
	r, err := bench.LabImageBoot(context.Background(), bench.ImageBootOptions{
		Ember: sibling("ember"), Kernel: f.kernel, Home: f.home, Ref: f.ref, Flat: f.flat, Runs: f.runs,
	}, os.Stdout)
	if err != nil {
		return err
	}
	r.Lines(os.Stdout)
	return nil
}

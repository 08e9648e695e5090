package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/embervm/ember/disk"
)

// runDisk is `ember disk create|commit|info`: copy-on-write overlays (an
// Ember extension; see package disk).
func runDisk(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "ember disk: want create, commit or info")
		return exitUsage
	}
	switch args[0] {
	case "create":
		return diskCreate(args[1:])
	case "commit":
		if len(args) != 3 {
			fmt.Fprintln(os.Stderr, "ember disk commit: want two arguments, OVERLAY and NEWBASE")
			return exitUsage
		}
		if err := disk.Commit(args[1], args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "ember disk commit:", err)
			return exitFailure
		}
		return exitOK
	case "info":
		if len(args) != 2 {
			fmt.Fprintln(os.Stderr, "ember disk info: want one argument, the overlay")
			return exitUsage
		}
		in, err := disk.Inspect(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember disk info:", err)
			return exitFailure
		}
		printDiskInfo(os.Stdout, in)
		if in.BaseErr != nil {
			return exitFailure
		}
		return exitOK
	}
	fmt.Fprintf(os.Stderr, "ember disk: unknown command %q: want create, commit or info\n", args[0])
	return exitUsage
}

// diskCreate is `ember disk create --base FILE [--base-format raw|overlay]
// [--cluster-size BYTES] OVERLAY`.
func diskCreate(args []string) int {
	fs := flag.NewFlagSet("ember disk create", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	base := fs.String("base", "", "the read-only base file")
	format := fs.String("base-format", "raw", "raw, or overlay (the base is itself an overlay, e.g. a snapshot's)")
	cluster := fs.Int("cluster-size", disk.DefaultClusterSize, "allocation unit in bytes: a power of two from 4096 to 1048576")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Println("usage: ember disk create --base FILE [--base-format raw|overlay] [--cluster-size BYTES] OVERLAY")
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintln(os.Stderr, "ember disk create:", err)
		return exitUsage
	}
	switch {
	case *base == "":
		fmt.Fprintln(os.Stderr, "ember disk create: --base FILE is required")
		return exitUsage
	case fs.NArg() != 1:
		fmt.Fprintln(os.Stderr, "ember disk create: want one argument, the new overlay, after the flags")
		return exitUsage
	case *format != "raw" && *format != "overlay":
		fmt.Fprintf(os.Stderr, "ember disk create: --base-format %q: want raw or overlay\n", *format)
		return exitUsage
	}
	o := disk.CreateOptions{ClusterSize: *cluster, BaseIsOverlay: *format == "overlay"}
	if err := disk.CreateOverlay(fs.Arg(0), *base, o); err != nil {
		fmt.Fprintln(os.Stderr, "ember disk create:", err)
		return exitFailure
	}
	return exitOK
}

func printDiskInfo(w io.Writer, in *disk.Info) {
	format := "raw"
	if in.BaseIsOverlay {
		format = "overlay"
	}
	fmt.Fprintf(w, "overlay:       %s\n", in.Path)
	fmt.Fprintf(w, "virtual size:  %d bytes (%s)\n", in.VirtualSize, mib(in.VirtualSize))
	fmt.Fprintf(w, "cluster size:  %d bytes\n", in.ClusterSize)
	fmt.Fprintf(w, "base:          %s (%s)\n", in.BasePath, format)
	fmt.Fprintf(w, "base identity: %d bytes, modified %s, samples sha256 %x\n", in.Base.Size,
		time.Unix(0, in.Base.MtimeNs).UTC().Format(time.RFC3339Nano), in.Base.Sample[:8])
	if in.BaseErr != nil {
		fmt.Fprintf(w, "base check:    FAILED: %v\n", in.BaseErr)
	} else {
		fmt.Fprintln(w, "base check:    ok")
	}
	fmt.Fprintf(w, "written:       %d clusters (%s)\n", in.AllocatedClusters, mib(in.AllocatedClusters*int64(in.ClusterSize)))
	fmt.Fprintf(w, "on host disk:  %s\n", mib(in.FileBytes))
}

// mib shows n bytes in MiB, or KiB below one MiB.
func mib(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/embervm/ember/doctor"
)

// defaultDoctorVMs is the VM count ember doctor checks for (issue 15's
// target for one host).
const defaultDoctorVMs = 4000

// runDoctor is `ember doctor [--vms N] [--fix]`: exit 0 when the host is
// ready for N VMs, 1 when not, 2 for bad flags.
func runDoctor(args []string) int {
	fs := flag.NewFlagSet("ember doctor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	vms := fs.Int("vms", defaultDoctorVMs, "number of VMs the host should run at once")
	fix := fs.Bool("fix", false, "apply the sysctls and raise the calling shell's limits that the checks ask for")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Println("usage: ember doctor [--vms N] [--fix]")
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintln(os.Stderr, "ember doctor:", err)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ember doctor: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if *vms < 1 {
		fmt.Fprintf(os.Stderr, "ember doctor: --vms %d: want at least 1\n", *vms)
		return exitUsage
	}
	h := doctor.LocalHost()
	rs := doctor.Check(h, *vms)
	if *fix {
		changed, errs := doctor.Fix(h, rs)
		for _, c := range changed {
			fmt.Println("changed:", c)
		}
		for _, err := range errs {
			fmt.Println("not changed:", err)
		}
		rs = doctor.Check(h, *vms)
	}
	doctor.Print(os.Stdout, rs)
	if !doctor.Ready(rs) {
		fmt.Printf("this host is not ready for %d VMs\n", *vms)
		return exitFailure
	}
	fmt.Printf("this host is ready for %d VMs\n", *vms)
	return exitOK
}

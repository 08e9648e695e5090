package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/embervm/ember/jail"
)

// jailerName is the program name under which ember is the jailer: a
// binary (or link) called jailer behaves as `ember jail`, so tools that
// exec Firecracker's jailer work unchanged.
const jailerName = "jailer"

func jailUsage(w io.Writer) {
	fmt.Fprintf(w, `usage:
  ember jail --id ID --exec-file FILE --uid UID --gid GID [--chroot-base-dir DIR (%s)]
             [--netns FILE] [--cgroup-version 1|2] [--cgroup FILE=VALUE]... [--parent-cgroup PATH]
             [--resource-limit fsize=BYTES|no-file=N]... [--daemonize] [--new-pid-ns] [--keep-jail]
             [-- VMM ARGS...]
      run FILE as UID:GID in the jail DIR/<FILE's name>/ID/root (Firecracker's jailer flags);
      the jail and its cgroups are removed when the VM ends, unless --keep-jail
  ember jail sweep [--chroot-base-dir DIR] [--kept]
      remove jails whose VM has ended but which were never removed (--kept: those kept too)
`, jail.DefaultChrootBaseDir)
}

// runJail is `ember jail`. Exit status 1 for any failure, bad flags
// included, as Firecracker's jailer; one line on stderr says what.
func runJail(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "sweep":
			return runJailSweep(args[1:])
		case jail.EnterCommand: // the jailer's own child; the parent reports its failure
			if len(args) == 2 {
				jail.Enter(args[1]) // returns only on failure
			}
			return exitFailure
		case jail.ReapCommand: // the jailer's own reaper
			if len(args) != 2 {
				return exitFailure
			}
			if err := jail.Reap(args[1], os.Stderr); err != nil {
				fmt.Fprintln(os.Stderr, "ember jail:", err)
				return exitFailure
			}
			return exitOK
		}
	}
	o, showVersion, err := parseJailFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		jailUsage(os.Stdout)
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember jail:", err)
		return exitFailure
	}
	if showVersion {
		fmt.Println("Ember jailer v" + version)
		return exitOK
	}
	if err := jail.Run(o, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ember jail:", err)
		return exitFailure
	}
	return exitOK
}

func parseJailFlags(args []string) (jail.Options, bool, error) {
	o := jail.Options{ChrootBaseDir: jail.DefaultChrootBaseDir, CgroupVersion: jail.DefaultCgroupVersion}
	fs := flag.NewFlagSet("ember jail", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var uidSet, gidSet bool
	fs.Var(onceString{&o.ID, new(bool)}, "id", "the VM's id: letters, digits and '-', at most 64")
	fs.Var(onceString{&o.ExecFile, new(bool)}, "exec-file", "the VMM binary to jail (statically linked)")
	fs.Var(idFlag{&o.UID, &uidSet}, "uid", "user id the VMM runs as")
	fs.Var(idFlag{&o.GID, &gidSet}, "gid", "group id the VMM runs as")
	fs.Var(onceString{&o.ChrootBaseDir, new(bool)}, "chroot-base-dir", "where jails are made")
	fs.Var(onceString{&o.NetNS, new(bool)}, "netns", "network namespace file to join")
	fs.IntVar(&o.CgroupVersion, "cgroup-version", jail.DefaultCgroupVersion, "cgroup version: 1 or 2")
	fs.Var(listFlag{&o.Cgroups}, "cgroup", "FILE=VALUE to write in the VM's cgroup (repeatable)")
	fs.Var(onceString{&o.ParentCgroup, new(bool)}, "parent-cgroup", "cgroup the VM's group is made in (default: the exec file's name)")
	fs.Var(listFlag{&o.ResourceLimits}, "resource-limit", "fsize=BYTES or no-file=N (repeatable)")
	fs.BoolVar(&o.Daemonize, "daemonize", false, "new session, stdio on /dev/null; the jailer returns once the VMM runs")
	fs.BoolVar(&o.NewPIDNS, "new-pid-ns", false, "run the VMM as PID 1 of a new PID namespace")
	fs.BoolVar(&o.KeepJail, "keep-jail", false, "keep the jail and its cgroups after the VM ends")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, false, err
	}
	if *showVersion {
		return o, true, nil
	}
	if rest := fs.Args(); len(rest) > 0 {
		if i := len(args) - len(rest); i == 0 || args[i-1] != "--" {
			return o, false, fmt.Errorf("unexpected argument %q (the VMM's arguments go after --)", rest[0])
		}
		o.Args = rest
	}
	switch {
	case !uidSet:
		return o, false, errors.New("--uid is required")
	case !gidSet:
		return o, false, errors.New("--gid is required")
	}
	return o, false, nil
}

func runJailSweep(args []string) int {
	fs := flag.NewFlagSet("ember jail sweep", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	base := fs.String("chroot-base-dir", jail.DefaultChrootBaseDir, "where jails are made")
	kept := fs.Bool("kept", false, "remove jails made with --keep-jail too")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			jailUsage(os.Stdout)
			return exitOK
		}
		fmt.Fprintln(os.Stderr, "ember jail sweep:", err)
		return exitFailure
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ember jail sweep: unexpected argument %q\n", fs.Arg(0))
		return exitFailure
	}
	if err := jail.Sweep(*base, *kept, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ember jail sweep:", err)
		return exitFailure
	}
	return exitOK
}

// onceString is a string flag that may be given once, as Firecracker's
// jailer requires.
type onceString struct {
	p   *string
	set *bool
}

func (f onceString) String() string {
	if f.p == nil {
		return ""
	}
	return *f.p
}

func (f onceString) Set(s string) error {
	if *f.set {
		return errors.New("given more than once")
	}
	*f.set, *f.p = true, s
	return nil
}

// idFlag is a --uid or --gid: a 32-bit id, given once.
type idFlag struct {
	p   *uint32
	set *bool
}

func (f idFlag) String() string {
	if f.p == nil {
		return ""
	}
	return strconv.FormatUint(uint64(*f.p), 10)
}

func (f idFlag) Set(s string) error {
	if *f.set {
		return errors.New("given more than once")
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("want a number from 0 to 4294967294")
	}
	*f.set, *f.p = true, uint32(n)
	return nil
}

// listFlag collects a repeatable flag's values.
type listFlag struct{ p *[]string }

func (f listFlag) String() string { return "" }
func (f listFlag) Set(s string) error {
	*f.p = append(*f.p, s)
	return nil
}

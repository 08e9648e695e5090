package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/embervm/ember/seccomp"
	"github.com/embervm/ember/vmm"
)

// seccompFlags are --no-seccomp and --seccomp-filter FILE (Firecracker's),
// in both ember run and the Firecracker-compatible mode.
type seccompFlags struct {
	off  bool
	file string
}

func (s *seccompFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.off, "no-seccomp", false, "run without seccomp filters (not for production)")
	fs.StringVar(&s.file, "seccomp-filter", "", "seccomp filters from FILE, in Firecracker's seccompiler JSON schema, instead of the built-in ones (see ember seccomp print --json)")
}

// check rejects the two flags together.
func (s *seccompFlags) check() error {
	if s.off && s.file != "" {
		return fmt.Errorf("--no-seccomp and --seccomp-filter exclude each other")
	}
	return nil
}

// confinement compiles the filters the flags ask for: nil with
// --no-seccomp, the file's with --seccomp-filter, the built-in ones
// otherwise. Errors name the file.
func (s *seccompFlags) confinement() (*seccomp.Confinement, error) {
	if s.off {
		return nil, nil
	}
	p := seccomp.Builtin()
	if s.file != "" {
		data, err := os.ReadFile(s.file)
		if err != nil {
			return nil, fmt.Errorf("--seccomp-filter: %w", err)
		}
		if p, err = seccomp.Parse(data); err != nil {
			return nil, fmt.Errorf("--seccomp-filter %s: %w", s.file, err)
		}
	}
	c, err := seccomp.New(p)
	switch {
	case errors.Is(err, seccomp.ErrCgo):
		return nil, fmt.Errorf("%w, or pass --no-seccomp", err)
	case err != nil && s.file != "":
		return nil, fmt.Errorf("--seccomp-filter %s: %w", s.file, err)
	case err != nil:
		return nil, err
	}
	return c, nil
}

// asConfiner is c as a vmm.Confiner: nil (no filters) must be a nil
// interface, not one holding a nil pointer.
func asConfiner(c *seccomp.Confinement) vmm.Confiner {
	if c == nil {
		return nil
	}
	return c
}

// runSeccompCmd is `ember seccomp print [--json]`.
func runSeccompCmd(args []string) int {
	if len(args) == 0 || args[0] != "print" {
		fmt.Fprintln(os.Stderr, "usage: ember seccomp print [--json]")
		return exitUsage
	}
	fs := flag.NewFlagSet("ember seccomp print", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print the filters as a seccompiler JSON file (input for --seccomp-filter)")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: ember seccomp print [--json]")
		return exitUsage
	}
	print := seccomp.Print
	if *asJSON {
		print = seccomp.PrintJSON
	}
	if err := print(os.Stdout, seccomp.Builtin()); err != nil {
		fmt.Fprintln(os.Stderr, "ember seccomp print:", err)
		return exitFailure
	}
	return exitOK
}

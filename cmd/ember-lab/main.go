// Command ember-lab runs commands inside the Ember lab, a QEMU TCG virtual
// machine that provides a real /dev/kvm (see package lab), and builds the
// lab's and the test guests' assets.
//
// Usage:
//
//	ember-lab run [--add PATH]... [--timeout D] [--silence D] [--retries N] [-v] -- CMD [ARGS...]
//	ember-lab prepare
//	ember-lab guest-initramfs --init FILE -o OUT
//
// run boots the lab, runs CMD in the current directory on the lab's
// /dev/kvm, streams its output (stdout and stderr merged) to stdout and
// exits with its status, or with 125 if the lab itself failed. The host's
// root is visible read-only inside at the same paths; each --add PATH is
// made writable (a directory is shared itself, a file through its parent
// directory). The lab's /tmp is an empty tmpfs. PATH inside starts with the
// directory of ember-lab; HOME, TERM and EMBER_* and GO* variables are
// passed through and EMBER_LAB=1 is set. It works as `go test -exec`.
//
// The cache directory is $EMBER_CACHE (default /var/cache/ember).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/embervm/ember/lab"
)

// exitUsage is the exit status for command-line errors.
const exitUsage = 2

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  ember-lab run [--add PATH]... [--timeout D] [--silence D] [--retries N] [-v] -- CMD [ARGS...]
  ember-lab prepare
  ember-lab guest-initramfs --init FILE -o OUT
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := lab.Config{CacheDir: lab.CacheDirFromEnv()}
	switch args[0] {
	case "run":
		return cmdRun(ctx, cfg, args[1:], stdout, stderr)
	case "prepare":
		return cmdPrepare(ctx, cfg, args[1:], stderr)
	case "guest-initramfs":
		return cmdGuestInitramfs(ctx, cfg, args[1:], stderr)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "ember-lab: unknown command %q\n", args[0])
		usage(stderr)
		return exitUsage
	}
}

func newLogger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

func cmdRun(ctx context.Context, cfg lab.Config, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ember-lab run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var add stringList
	fs.Var(&add, "add", "host `PATH` made writable inside the lab at the same path (repeatable; a file shares its parent directory)")
	timeout := fs.Duration("timeout", lab.DefaultTimeout, "kill the lab after this long")
	verbose := fs.Bool("v", false, "copy the whole lab console to stderr")
	silence := fs.Duration("silence", lab.DefaultSilence, "a lab that prints nothing for this long has hung: run the command again (negative: never)")
	retries := fs.Int("retries", lab.DefaultRetries, "run the command again up to `N` times if the lab VM itself hangs (the command must be safe to repeat)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	argv := fs.Args()
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "ember-lab run: no command (use: ember-lab run [flags] -- CMD [ARGS...])")
		return exitUsage
	}
	cfg.Log = newLogger(stderr, *verbose)
	code, err := lab.Run(ctx, cfg, lab.RunOptions{
		Argv:    argv,
		Add:     add,
		Timeout: *timeout,
		Silence: *silence,
		Stdout:  stdout,
		Stderr:  stderr,
		Verbose: *verbose,
		Retries: *retries,
	})
	if err != nil {
		fmt.Fprintf(stderr, "ember-lab: %v\n", err)
	}
	return code
}

func cmdPrepare(ctx context.Context, cfg lab.Config, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("ember-lab prepare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	cfg.Log = newLogger(stderr, false)
	a, err := lab.Prepare(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "ember-lab prepare: %v\n", err)
		return 1
	}
	cfg.Log.Info("lab ready", "kernel", a.Kernel, "initrd", a.Initrd, "package", a.KernelPackage+"="+a.KernelVersion)
	return 0
}

func cmdGuestInitramfs(ctx context.Context, cfg lab.Config, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("ember-lab guest-initramfs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	initPath := fs.String("init", "guest/testinit/init", "the guest init script")
	busybox := fs.String("busybox", "/bin/busybox", "static busybox binary")
	out := fs.String("o", "", "output `FILE` (gzip-compressed newc cpio)")
	modDir := fs.String("modules", "", "kernel module `DIR` (lib/modules/VERSION with modules.dep) to take -module names from")
	modNames := fs.String("module", "", "comma-separated modules to include and load at boot, with their dependencies")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *out == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "ember-lab guest-initramfs: need -o FILE and no arguments")
		return exitUsage
	}
	cfg.Log = newLogger(stderr, false)
	if _, err := lab.BuildGuestInitramfs(ctx, cfg, lab.GuestInitramfsOptions{Init: *initPath, Busybox: *busybox, Out: *out,
		ModuleDir: *modDir, Modules: strings.FieldsFunc(*modNames, func(r rune) bool { return r == ',' })}); err != nil {
		if !errors.Is(err, context.Canceled) {
			fmt.Fprintf(stderr, "ember-lab guest-initramfs: %v\n", err)
		}
		return 1
	}
	return 0
}

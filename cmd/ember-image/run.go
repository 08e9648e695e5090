package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/embervm/ember/image"
	"github.com/embervm/ember/image/boot"
)

const runUsage = `usage: ember run --image REF [flags] [-- CMD [ARGS...]]
Boots image REF of the store with Ember's guest kernel and runs its Entrypoint and Cmd (CMD ARGS
replace Cmd), with the console on this terminal; exits with the workload's exit status (128+N when
a signal N ended it; 125 when the image could not be started, 126 when the command cannot run, 127
when it is not found).
  --home DIR        Ember's home folder (default $EMBER_HOME, else /var/lib/ember)
  --kernel PATH     the guest kernel (default $EMBER_KERNEL, else ember-vmlinux beside ember)
  --vcpus N, --mem-mib N, --net SPEC, --no-seccomp    as ember run
  --env NAME=VALUE  add to the image's environment (repeatable)
  --user USER       run as USER ("name", "uid", "name:group", "uid:gid") instead of the image's
  --workdir DIR     the working directory instead of the image's
  --hostname NAME   the guest's host name
  --disk PATH       keep the writable disk (an overlay) at PATH: created if missing, reused if present
  --disk-mib N      the writable filesystem's size when it is created (default 4096)
  --dry-run         prepare the VM and print the ember command instead of running it (its own files
                    are removed; what later runs share stays: the blank disk base, the init's initramfs)
`

// Binaries found beside ember-image (then on PATH).
const (
	emberBinary  = "ember"
	kernelBinary = "ember-vmlinux" // make guest copies the minimal vmlinux here
	kernelEnv    = "EMBER_KERNEL"
)

// repeated is a repeatable string flag.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

// runVM is `ember run --image REF ...` (ember hands it over as `ember-image
// run ...`): it prepares the image's drives and initrd in a temporary
// directory, runs ember as a child with them, and removes the directory
// when ember ends.
func runVM(args []string) int {
	start := time.Now()
	fs := flag.NewFlagSet("ember run --image", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ref := fs.String("image", "", "")
	home := fs.String("home", image.Home(), "")
	kernel := fs.String("kernel", os.Getenv(kernelEnv), "")
	vcpus := fs.Int("vcpus", 0, "")
	mem := fs.Int("mem-mib", 0, "")
	noSeccomp := fs.Bool("no-seccomp", false, "")
	user := fs.String("user", "", "")
	workdir := fs.String("workdir", "", "")
	hostname := fs.String("hostname", "", "")
	diskPath := fs.String("disk", "", "")
	diskMiB := fs.Int("disk-mib", 0, "")
	debug := fs.Bool("debug", false, "")
	dryRun := fs.Bool("dry-run", false, "")
	var env, nets repeated
	fs.Var(&env, "env", "")
	fs.Var(&nets, "net", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(runUsage)
			return exitOK
		}
		fmt.Fprintf(os.Stderr, "ember run: %v\n%s", err, runUsage)
		return exitUsage
	}
	if *ref == "" {
		fmt.Fprintf(os.Stderr, "ember run: --image REF is required here\n%s", runUsage)
		return exitUsage
	}
	for _, e := range env {
		if name, _, ok := strings.Cut(e, "="); !ok || name == "" {
			fmt.Fprintf(os.Stderr, "ember run: --env %q: want NAME=VALUE\n", e)
			return exitUsage
		}
	}
	emberPath, err := beside(emberBinary)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember run: %v\n", err)
		return exitFailure
	}
	if *kernel == "" {
		if *kernel, err = beside(kernelBinary); err != nil {
			fmt.Fprintf(os.Stderr, "ember run: no guest kernel: give --kernel or $%s (%v)\n", kernelEnv, err)
			return exitUsage
		}
	}

	level := slog.LevelWarn
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	store, err := image.Open(*home, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember run: %v\n", err)
		return exitFailure
	}
	dir, err := os.MkdirTemp("", "ember-run-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember run: %v\n", err)
		return exitFailure
	}
	defer os.RemoveAll(dir)
	vm, err := boot.Prepare(context.Background(), store, boot.Options{
		Ref: *ref, Args: fs.Args(), Env: env, User: *user, WorkingDir: *workdir, Hostname: *hostname,
		Terminal: term.IsTerminal(int(os.Stdin.Fd())), Dir: dir, Disk: *diskPath, DiskMiB: *diskMiB, Debug: *debug,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ember run --image %s: %v\n", *ref, err)
		return exitFailure
	}

	argv := []string{"run", "--kernel", *kernel, "--initrd", vm.Initrd, "--cmdline", boot.Cmdline}
	for _, d := range vm.Drives {
		argv = append(argv, "--drive", d.Flag())
	}
	if *vcpus > 0 {
		argv = append(argv, "--vcpus", strconv.Itoa(*vcpus))
	}
	if *mem > 0 {
		argv = append(argv, "--mem-mib", strconv.Itoa(*mem))
	}
	for _, n := range nets {
		argv = append(argv, "--net", n)
	}
	if *noSeccomp {
		argv = append(argv, "--no-seccomp")
	}
	if *debug {
		argv = append(argv, "--level", "debug")
		log.Debug("prepared", "image", *ref, "prepare_ms", float64(time.Since(start).Microseconds())/1000)
	}
	if *dryRun {
		fmt.Println(strings.Join(append([]string{emberPath}, argv...), " "))
		return exitOK
	}
	return runChild(emberPath, argv)
}

// runChild runs ember with the console on this process's stdio, passes on
// the signals that stop it (ember stops the VM on the first and exits on
// a second), and returns its exit status.
func runChild(path string, argv []string) int {
	cmd := exec.Command(path, argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "ember run: %v\n", err)
		return exitFailure
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode()
	default:
		fmt.Fprintf(os.Stderr, "ember run: %v\n", err)
		return exitFailure
	}
}

// beside finds a program in the directory of this executable, else on PATH.
func beside(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is not beside %s nor on PATH", name, os.Args[0])
	}
	return p, nil
}

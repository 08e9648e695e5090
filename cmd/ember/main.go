// Command ember is the Ember virtual machine monitor.
//
//	ember --api-sock PATH [--config-file FILE [--no-api]] ...   (Firecracker's flags and API)
//	ember run --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib N] [--boot-timer] [--pit]
//	          [--drive path=FILE[,id=ID][,ro][,root][,cache=MODE][,rate=LIMIT]]... [--rng]
//	ember extract-vmlinux BZIMAGE OUT
//	ember jail --id ID --exec-file FILE --uid UID --gid GID [...] [-- VMM ARGS]   (Firecracker's jailer; also as "jailer")
//	ember version
//
// Exit status of run: 0 when the guest resets or powers off, 1 when it
// crashes or Ember fails, 2 for bad flags or files.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/embervm/ember/loader"
	"github.com/embervm/ember/vmm"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// consoleEscape (Ctrl-A) followed by 'x' quits when the console is a terminal.
const consoleEscape = 0x01

func main() {
	start := time.Now()
	vmm.EmberVersion = version
	if filepath.Base(os.Args[0]) == jailerName {
		os.Exit(runJail(os.Args[1:]))
	}
	os.Exit(run(os.Args[1:], start))
}

func isHelp(a string) bool    { return a == "-h" || a == "--help" || a == "-help" }
func isVersion(a string) bool { return a == "--version" || a == "-version" }

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  ember --api-sock PATH [--id ID] [--config-file FILE [--no-api]] [--boot-timer] [--log-path P] [--level L]
        [--show-level] [--show-log-origin] [--metrics-path P] [--http-api-max-payload-size N]
      Firecracker-compatible: serve Firecracker's REST API on a unix socket
  ember --snapshot-version | --describe-snapshot FILE
      the snapshot format version Ember writes, or the one of FILE (as Firecracker's)
  ember run --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib N] [--boot-timer] [--pit]
  ember extract-vmlinux BZIMAGE OUT
  ember snapshot describe FILE          print a snapshot state file's header, devices and vCPUs
  ember snapshot apply-diff BASE DIFF   merge a Diff memory file into its base memory file
  ember snapshot serve-uffd SOCKET MEM  page-fault handler for loads with the Uffd backend
  ember jail --id ID --exec-file FILE --uid UID --gid GID [...] [-- VMM ARGS]
      Firecracker's jailer (also when invoked as "jailer"); ember jail --help for its flags
  ember jail sweep [--chroot-base-dir DIR]  remove jails whose VM ended but were never removed
  ember version
`)
}

func run(args []string, start time.Time) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	if strings.HasPrefix(args[0], "-") && !isHelp(args[0]) && !isVersion(args[0]) {
		return runFirecracker(args, start)
	}
	switch args[0] {
	case "run":
		return runVM(args[1:], start)
	case "extract-vmlinux":
		if len(args) != 3 {
			fmt.Fprintln(os.Stderr, "ember extract-vmlinux: want two arguments, BZIMAGE and OUT")
			return exitUsage
		}
		if err := loader.ExtractVmlinuxFile(args[1], args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "ember extract-vmlinux:", err)
			return exitFailure
		}
		return exitOK
	case "snapshot":
		return runSnapshot(args[1:])
	case "jail":
		return runJail(args[1:])
	case "version", "--version", "-version":
		fmt.Println("ember", version)
		return exitOK
	case "help", "-h", "--help":
		usage(os.Stdout)
		return exitOK
	}
	fmt.Fprintf(os.Stderr, "ember: unknown command %q\n", args[0])
	usage(os.Stderr)
	return exitUsage
}

func runVM(args []string, start time.Time) int {
	fs := flag.NewFlagSet("ember run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg := vmm.Config{StartTime: start}
	fs.StringVar(&cfg.KernelPath, "kernel", "", "guest kernel: ELF vmlinux (64-bit or PVH entry) or bzImage")
	fs.StringVar(&cfg.InitrdPath, "initrd", "", "initial ramdisk")
	fs.StringVar(&cfg.Cmdline, "cmdline", vmm.DefaultCmdline, "kernel command line")
	fs.IntVar(&cfg.VCPUs, "vcpus", vmm.DefaultVCPUs, "number of vCPUs (1-32)")
	fs.IntVar(&cfg.MemMiB, "mem-mib", vmm.DefaultMemMiB, "guest memory in MiB")
	fs.BoolVar(&cfg.PIT, "pit", false, "add the in-kernel i8254 PIT, for guests without kvm-clock that tick or calibrate with it")
	fs.BoolVar(&cfg.BootTimer, "boot-timer", false, "attach the boot-timer device (guest writes 123 at 0xC0000000)")
	fs.StringVar(&cfg.BootProtocol, "boot-protocol", "", "entry for ELF kernels: pvh or linux64 (default: pvh when the kernel has a PVH note)")
	fs.Var(driveFlag{&cfg.Drives}, "drive", "a virtio-blk drive: path=FILE[,id=ID][,ro][,root][,cache=Unsafe|Writeback][,rate=LIMIT] (repeatable)")
	fs.Var(balloonFlag{&cfg.Balloon}, "balloon", "add a virtio-balloon device with a target of MIB: MIB[,deflate-on-oom][,stats=SECONDS]")
	fs.Var(netFlag{&cfg.Nets}, "net", "a virtio-net interface on a tap: tap=NAME[,id=ID][,mac=MAC][,mtu=N][,rx-rate=LIMIT][,tx-rate=LIMIT] (repeatable)")
	fs.Var(vsockFlag{&cfg.Vsock}, "vsock", "add a vsock device: cid=N,uds=PATH (Firecracker's hybrid vsock over host unix sockets)")
	fs.Var(rngFlag{&cfg.RNG}, "rng", "add a virtio-rng entropy device (--rng=rate=LIMIT to limit it)")
	fs.BoolVar(&cfg.NoVirtioCmdline, "no-virtio-cmdline", false, "announce virtio devices in ACPI only, not also with virtio_mmio.device= on the kernel command line")
	level := fs.String("level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintln(os.Stderr, "ember run:", err)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ember run: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "ember run: --level %q: want debug, info, warn or error\n", *level)
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	cfg.Logger = log
	cfg.Console = os.Stdout
	cfg.AllowEmulatedKVM = os.Getenv("EMBER_ALLOW_EMULATED_KVM") == "1"

	// Console input: a terminal goes to raw mode (Ctrl-A x quits); a pipe or
	// file is passed through as it is.
	stdin := int(os.Stdin.Fd())
	var restore func()
	if term.IsTerminal(stdin) {
		cfg.ConsoleIn = escapeReader{os.Stdin}
	} else {
		cfg.ConsoleIn = os.Stdin
	}

	vm, err := vmm.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember:", err)
		if errors.Is(err, vmm.ErrInvalidConfig) {
			return exitUsage
		}
		return exitFailure
	}
	defer vm.Close()

	if term.IsTerminal(stdin) {
		if st, err := term.MakeRaw(stdin); err == nil {
			restore = func() { term.Restore(stdin, st) }
			defer restore()
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	go func() {
		s := <-sigs
		log.Info("stopping the VM", "signal", s)
		vm.Stop()
	}()

	fate := vm.Run()
	if restore != nil {
		restore()
	}
	switch fate.Kind {
	case vmm.FateReset, vmm.FatePoweroff:
		log.Debug("guest ended", "fate", fate.Kind)
		return exitOK
	case vmm.FateStopped:
		fmt.Fprintln(os.Stderr, "ember: VM stopped before the guest ended")
		return exitFailure
	}
	fmt.Fprintf(os.Stderr, "ember: guest %s: %v\n", fate.Kind, fate.Err)
	return exitFailure
}

// escapeReader passes terminal input through and turns Ctrl-A x into EOF
// plus a stop, so a user can leave a guest that does not exit.
type escapeReader struct{ r io.Reader }

func (e escapeReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	for i := 0; i+1 < n; i++ {
		if p[i] == consoleEscape && p[i+1] == 'x' {
			unix.Kill(os.Getpid(), unix.SIGTERM)
			return i, io.EOF
		}
	}
	return n, err
}

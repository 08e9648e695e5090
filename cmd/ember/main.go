// Command ember is the Ember virtual machine monitor.
//
//	ember --api-sock PATH [--config-file FILE [--no-api]] ...   (Firecracker's flags and API)
//	ember run --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib N] [--boot-timer] [--pit]
//	          [--drive path=FILE[,base=BASE][,id=ID][,ro][,root][,cache=MODE][,rate=LIMIT]]... [--rng]
//	          [--no-seccomp | --seccomp-filter FILE]
//	ember disk create --base FILE [--base-format raw|overlay] [--cluster-size BYTES] OVERLAY
//	ember disk commit OVERLAY NEWBASE
//	ember disk info OVERLAY
//	ember extract-vmlinux BZIMAGE OUT
//	ember image import|pull|ls|inspect|rm|prune ...
//	ember run --image REF [flags] [-- CMD ARGS...]   (its files made by ember-image prepare)
//	ember doctor [--vms N] [--fix]
//	ember sandbox create|ls|kill|pause|resume|logs|exec|host ...   (emberd's client)
//	ember template build|ls|rm ...                             (emberd's client)
//	ember apikey create|ls|rm ...                              (emberd's client)
//	ember e2b env [--key KEY]                                  (emberd's client)
//	ember seccomp print [--json]
//	ember jail --id ID --exec-file FILE --uid UID --gid GID [...] [-- VMM ARGS]   (Firecracker's jailer; also as "jailer")
//	ember version
//
// Exit status of run: 0 when the guest resets or powers off, 1 when it
// crashes or Ember fails, 2 for bad flags or files, 148 when a seccomp
// filter refuses a system call. A guest that wrote a status (0-255) to
// Ember's exit-status register (devices.ExitStatus) before it reset or
// powered off makes run exit with that status instead: an image's init
// reports its workload's exit code there (128+N for a workload killed by
// signal N; 125, 126, 127 when the init could not start it).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/embervm/ember/loader"
	"github.com/embervm/ember/seccomp"
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
        [--metadata FILE] [--mmds-size-limit N] [--no-seccomp | --seccomp-filter FILE]
      Firecracker-compatible: serve Firecracker's REST API on a unix socket
  ember --snapshot-version | --describe-snapshot FILE
      the snapshot format version Ember writes, or the one of FILE (as Firecracker's)
  ember run --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib N] [--boot-timer] [--pit]
            [--no-seccomp | --seccomp-filter FILE]
  ember extract-vmlinux BZIMAGE OUT
  ember snapshot describe FILE          print a snapshot state file's header, devices and vCPUs
  ember snapshot apply-diff BASE DIFF   merge a Diff memory file into its base memory file
  ember snapshot serve-uffd SOCKET MEM  page-fault handler for loads with the Uffd backend
  ember disk create --base FILE [--base-format raw|overlay] [--cluster-size BYTES] OVERLAY
                                        an empty copy-on-write overlay over FILE (--drive path=OVERLAY,base=FILE)
  ember disk commit OVERLAY NEWBASE     merge an overlay and its base into a new raw base
  ember disk info OVERLAY               an overlay's header, base check and space
  ember image import|pull|ls|inspect|rm|prune ...   the OCI image store (ember image help)
  ember run --image REF [--env K=V]... [--user U] [--disk PATH] [...] [-- CMD ARGS]
                                        boot an image and exit with its workload's status (ember run --help)
  ember doctor [--vms N] [--fix]        check this host for running N VMs (default 4000); --fix raises its limits
  ember sandbox create|ls|kill|pause|resume|logs|exec|host ...   sandboxes through emberd (--socket, $EMBERD_SOCKET)
  ember template build|ls|rm ...        templates (pre-warmed snapshots) through emberd
  ember apikey create|ls|rm ...         keys of emberd's E2B-compatible API (--e2b-addr)
  ember e2b env [--key KEY]             the variables that point E2B's SDK at emberd
  ember seccomp print [--json]          the built-in seccomp filters (--json: as a --seccomp-filter file)
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
	case "disk":
		return runDisk(args[1:])
	case "image":
		return runImage(args[1:])
	case "doctor":
		return runDoctor(args[1:])
	case "sandbox":
		return runSandboxCmd(args[1:])
	case "template":
		return runTemplateCmd(args[1:])
	case "apikey":
		return runAPIKeyCmd(args[1:])
	case "e2b":
		return runE2BCmd(args[1:])
	case "seccomp":
		return runSeccompCmd(args[1:])
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
	fs.Var(driveFlag{&cfg.Drives}, "drive", "a virtio-blk drive: path=FILE[,base=BASE][,id=ID][,ro][,root][,cache=Unsafe|Writeback][,rate=LIMIT] (repeatable; base= makes FILE a copy-on-write overlay over BASE, see ember disk create)")
	fs.Var(balloonFlag{&cfg.Balloon}, "balloon", "add a virtio-balloon device with a target of MIB: MIB[,deflate-on-oom][,stats=SECONDS]")
	fs.Var(netFlag{&cfg.Nets}, "net", "a virtio-net interface on a tap: tap=NAME[,id=ID][,mac=MAC][,mtu=N][,rx-rate=LIMIT][,tx-rate=LIMIT] (repeatable)")
	fs.Var(vsockFlag{&cfg.Vsock}, "vsock", "add a vsock device: cid=N,uds=PATH (Firecracker's hybrid vsock over host unix sockets)")
	fs.Var(rngFlag{&cfg.RNG}, "rng", "add a virtio-rng entropy device (--rng=rate=LIMIT to limit it)")
	fs.BoolVar(&cfg.NoVirtioCmdline, "no-virtio-cmdline", false, "announce virtio devices in ACPI only, not also with virtio_mmio.device= on the kernel command line")
	level := fs.String("level", "info", "log level: debug, info, warn, error")
	var sc seccompFlags
	sc.register(fs)
	var img imageFlags
	img.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return exitOK
		}
		fmt.Fprintln(os.Stderr, "ember run:", err)
		return exitUsage
	}
	if err := checkImageFlags(fs, &img); err != nil {
		fmt.Fprintln(os.Stderr, "ember run:", err)
		return exitUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "ember run: --level %q: want debug, info, warn or error\n", *level)
		return exitUsage
	}
	if img.debug && !set["level"] {
		lv = slog.LevelDebug
	}
	conf, err := sc.confinement()
	if err == nil {
		err = sc.check()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember run:", err)
		return exitUsage
	}
	log := slog.New(selfTestHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv})))
	cfg.Logger = log
	cfg.Console = os.Stdout
	cfg.AllowEmulatedKVM = os.Getenv("EMBER_ALLOW_EMULATED_KVM") == "1"

	// An image: its files are prepared while the kernel loads (runimage.go).
	if img.ref != "" {
		images := &imageBlocks{log: log, home: img.home, debug: img.debug}
		b := img.block(fs.Args())
		if img.dryRun {
			return dryRunImage(&cfg, images, b, set["cmdline"])
		}
		pi, err := startImage(&cfg, images, b, set["cmdline"])
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember run:", err)
			return exitUsage
		}
		defer pi.close()
	}

	// Console input: a terminal goes to raw mode (Ctrl-A x quits); a pipe or
	// file is passed through as it is.
	stdin := int(os.Stdin.Fd())
	var restore func()
	if term.IsTerminal(stdin) {
		cfg.ConsoleIn = escapeReader{os.Stdin}
	} else {
		cfg.ConsoleIn = os.Stdin
	}

	// Seccomp: the vmm and vcpu filters go on when the VM starts running
	// (vmm.VM.Run), Firecracker's points; the flags that built it are
	// trusted, so there is no boot filter. A violation logs one line, puts
	// the terminal back and exits 148.
	var rawTerm atomic.Pointer[term.State]
	if conf != nil {
		err := conf.Arm(func(v seccomp.Violation) {
			if st := rawTerm.Load(); st != nil {
				term.Restore(stdin, st)
			}
			log.Error(v.String())
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember:", err)
			return exitFailure
		}
		cfg.Confine = conf
	}

	// A stop signal while the VM is built (an image being prepared, say)
	// waits for it: the run then ends at once, and the deferred clean-ups
	// run.
	sigs := notifyStop()
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
			rawTerm.Store(st)
			restore = func() { term.Restore(stdin, st) }
			defer restore()
		}
	}
	ran := make(chan struct{})
	go watchSignals(log, sigs, ran, vm.Stop, stopTimeout, func(reason string) {
		if restore != nil {
			restore()
		}
		fmt.Fprintf(os.Stderr, "ember: exiting at once: %s\n", reason)
		os.Exit(exitFailure)
	})

	fate := vm.Run()
	close(ran)
	if restore != nil {
		restore()
	}
	switch fate.Kind {
	case vmm.FateReset, vmm.FatePoweroff:
		log.Debug("guest ended", "fate", fate.Kind, "exit_status", fate.ExitStatus, "has_exit_status", fate.HasExitStatus)
		if fate.HasExitStatus {
			return fate.ExitStatus
		}
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
type escapeReader struct{ f *os.File }

// Fd lets the VMM poll the terminal, so its console input ends with the run.
func (e escapeReader) Fd() uintptr { return e.f.Fd() }

func (e escapeReader) Read(p []byte) (int, error) {
	n, err := e.f.Read(p)
	for i := 0; i+1 < n; i++ {
		if p[i] == consoleEscape && p[i+1] == 'x' {
			unix.Kill(os.Getpid(), unix.SIGTERM)
			return i, io.EOF
		}
	}
	return n, err
}

package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/api/imageblock"
	"github.com/embervm/ember/vmm"
)

// `ember run --image REF [flags] [-- CMD ARGS...]` boots an image of the
// store in this process. The image's files (the initrd with ember-init and
// its configuration, a copy-on-write writable drive) are made by
// `ember-image prepare` in a process of its own (ember links no image code,
// see imageTool), started as soon as the flags are read; the VMM loads the
// kernel meanwhile and takes the image's initrd and drives when it needs
// them (vmm.Config.Complete). In the lab the kernel's load takes longer
// than the preparation, so preparing costs nothing; before, ember handed
// the run to ember-image, which prepared first and then started a second
// ember.

// imageFlags are ember run's flags for an image VM.
type imageFlags struct {
	ref, home, user, workdir, hostname, disk string
	diskMiB                                  int
	env                                      stringList
	debug, dryRun                            bool
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func (f *imageFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.ref, "image", "", "boot image REF of Ember's store and exit with its workload's status; arguments after -- replace its Cmd (125: the image could not start its workload, 126: not executable, 127: not found, 128+N: killed by signal N)")
	fs.StringVar(&f.home, "home", "", "with --image: Ember's home folder (default $EMBER_HOME, else /var/lib/ember)")
	fs.Var(&f.env, "env", "with --image: NAME=VALUE added to the image's environment (repeatable)")
	fs.StringVar(&f.user, "user", "", `with --image: run as USER ("name", "uid", "name:group", "uid:gid") instead of the image's`)
	fs.StringVar(&f.workdir, "workdir", "", "with --image: the working directory instead of the image's")
	fs.StringVar(&f.hostname, "hostname", "", "with --image: the guest's host name")
	fs.StringVar(&f.disk, "disk", "", "with --image: keep the writable disk (an overlay) at PATH: created if missing, reused if present")
	fs.IntVar(&f.diskMiB, "disk-mib", 0, "with --image: the writable filesystem's size when it is created (default 4096)")
	fs.BoolVar(&f.debug, "debug", false, "with --image: trace ember-init's steps on the console, and log at debug level")
	fs.BoolVar(&f.dryRun, "dry-run", false, "with --image: prepare the VM and print the plain ember run command instead of running it (its files are removed; what later runs share stays: the blank disk base, the init's initramfs)")
}

// imageOnly lists the flags that mean nothing without --image.
var imageOnly = []string{"home", "env", "user", "workdir", "hostname", "disk", "disk-mib", "debug", "dry-run"}

// checkImageFlags refuses image flags, or a command, given without --image.
func checkImageFlags(fs *flag.FlagSet, f *imageFlags) error {
	if f.ref != "" {
		return nil
	}
	var err error
	fs.Visit(func(fl *flag.Flag) {
		if err == nil && slices.Contains(imageOnly, fl.Name) {
			err = fmt.Errorf("--%s needs --image", fl.Name)
		}
	})
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q (a command is given only with --image)", fs.Arg(0))
	}
	return err
}

// block is the image block of these flags, with args replacing the Cmd.
func (f *imageFlags) block(args []string) api.EmberImage {
	return api.EmberImage{Ref: f.ref, Args: args, Env: f.env, User: f.user, WorkingDir: f.workdir,
		Hostname: f.hostname, Disk: f.disk, DiskMiB: f.diskMiB}
}

// pendingImage is an image VM's files being prepared while the kernel
// loads.
type pendingImage struct {
	images *imageBlocks
	ref    string
	done   chan struct{}
	// Set before done is closed.
	p       api.PreparedImage
	discard func()
	err     error
}

// startImage checks that cfg can take image block b, starts preparing it,
// and sets cfg.Complete to add it once the kernel is loaded (its command
// line too, unless keepCmdline). The caller must close what it returns.
func startImage(cfg *vmm.Config, images *imageBlocks, b api.EmberImage, keepCmdline bool) (*pendingImage, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if err := api.CheckImageConfig(cfg); err != nil {
		return nil, err
	}
	if cfg.KernelPath == "" {
		k, err := imageblock.DefaultKernel()
		if err != nil {
			return nil, fmt.Errorf("%w: give --kernel", err)
		}
		cfg.KernelPath = k
	}
	pi := &pendingImage{images: images, ref: b.Ref, done: make(chan struct{})}
	go func() {
		defer close(pi.done)
		pi.p, pi.discard, pi.err = images.prepare(b)
	}()
	cfg.Complete = func(c *vmm.Config) error {
		p, err := pi.wait()
		if err != nil {
			return err
		}
		if err := api.ApplyImage(c, p, keepCmdline); err != nil {
			pi.discard()
			return fmt.Errorf("image %q: %w", b.Ref, err)
		}
		return nil
	}
	return pi, nil
}

// wait waits for the preparation and returns its result.
func (pi *pendingImage) wait() (api.PreparedImage, error) {
	<-pi.done
	if pi.err != nil {
		return pi.p, fmt.Errorf("image %q: %w", pi.ref, pi.err)
	}
	return pi.p, nil
}

// close waits for a preparation still running (a VM that failed before it
// needed the image), then removes the image's files.
func (pi *pendingImage) close() {
	<-pi.done
	pi.images.cleanup()
}

// dryRunImage prepares block b and prints the ember run command that would
// boot it with cfg's kernel, then removes the files.
func dryRunImage(cfg *vmm.Config, images *imageBlocks, b api.EmberImage, keepCmdline bool) int {
	pi, err := startImage(cfg, images, b, keepCmdline)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember run:", err)
		return exitUsage
	}
	defer pi.close()
	if err := cfg.Complete(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "ember run:", err)
		return exitFailure
	}
	argv := []string{os.Args[0], "run", "--kernel", cfg.KernelPath, "--initrd", cfg.InitrdPath, "--cmdline", cfg.Cmdline}
	for _, d := range cfg.Drives {
		argv = append(argv, "--drive", driveFlagValue(d))
	}
	fmt.Println(strings.Join(argv, " "))
	return exitOK
}

// driveFlagValue is d as a --drive flag's value (the fields an image's
// drives have).
func driveFlagValue(d vmm.DriveConfig) string {
	s := "path=" + d.Path + ",id=" + d.ID
	if d.BasePath != "" {
		s += ",base=" + d.BasePath
	}
	if d.ReadOnly {
		s += ",ro"
	}
	return s
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/embervm/ember/api"
	"github.com/embervm/ember/logger"
	"github.com/embervm/ember/metrics"
	"github.com/embervm/ember/mmds"
	"github.com/embervm/ember/seccomp"
	"github.com/embervm/ember/snapshot"
	"github.com/embervm/ember/vmm"
)

// Firecracker's process exit codes (src/firecracker/src/main.rs), for the
// Firecracker-compatible mode.
const (
	exitBadConfig    = 152 // the --config-file is bad or the VM it describes does not build
	exitBadArguments = 153 // bad command-line arguments
)

// Firecracker's metric of seccomp violations.
const (
	seccompGroup     = "seccomp"
	seccompNumFaults = "num_faults"
)

// Firecracker-mode defaults.
const (
	defaultAPISock    = "/run/ember.socket"
	defaultInstanceID = "anonymous-instance"
	defaultMaxPayload = 51200 // bytes, Firecracker's --http-api-max-payload-size
	maxInstanceIDLen  = 64    // Firecracker's limit on --id
	// maxConfigFileSize bounds what --config-file reads: 1 MiB, far more
	// than any machine description (one with 32 drives and interfaces is
	// a few KiB), and little enough that a wrong path (a disk image,
	// /dev/zero) fails at once instead of filling memory.
	maxConfigFileSize = 1 << 20
)

// instanceIDPattern is what Firecracker accepts as --id: alphanumerics and '-'.
var instanceIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]+$`)

// fcFlags are Firecracker's command-line flags.
type fcFlags struct {
	apiSock, id, configFile                  string
	noAPI, bootTimer, version                bool
	snapshotVersion                          bool
	describeSnapshot                         string
	logPath, level, module                   string
	showLevel, showOrigin                    bool
	metricsPath                              string
	maxPayload                               int
	seccomp                                  seccompFlags
	metadata                                 string
	startTimeUS, startTimeCPUUS, parentCPUUS uint64
	mmdsSizeLimit                            int
}

func parseFCFlags(args []string) (*fcFlags, error) {
	f := &fcFlags{}
	fs := flag.NewFlagSet("ember", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.apiSock, "api-sock", defaultAPISock, "path of the API's unix socket")
	fs.StringVar(&f.id, "id", defaultInstanceID, "microVM id (alphanumerics and '-', at most 64)")
	fs.StringVar(&f.configFile, "config-file", "", "JSON configuration (the schema of GET /vm/config); boots at once")
	fs.BoolVar(&f.noAPI, "no-api", false, "no API socket (needs --config-file)")
	fs.BoolVar(&f.bootTimer, "boot-timer", false, "attach the boot-timer device")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.BoolVar(&f.snapshotVersion, "snapshot-version", false, "print the snapshot format version this Ember writes and exit")
	fs.StringVar(&f.describeSnapshot, "describe-snapshot", "", "print the format version of a snapshot state file and exit")
	fs.StringVar(&f.logPath, "log-path", "", "log to this file or FIFO")
	fs.StringVar(&f.level, "level", "Info", "log level: Error, Warning, Info, Debug, Trace, Off")
	fs.StringVar(&f.module, "module", "", "log only messages of this module")
	fs.BoolVar(&f.showLevel, "show-level", false, "show the level in log lines")
	fs.BoolVar(&f.showOrigin, "show-log-origin", false, "show file:line in log lines")
	fs.StringVar(&f.metricsPath, "metrics-path", "", "write metrics to this file or FIFO")
	fs.IntVar(&f.maxPayload, "http-api-max-payload-size", defaultMaxPayload, "largest API request body, in bytes")
	f.seccomp.register(fs)
	fs.StringVar(&f.metadata, "metadata", "", "JSON file to fill the MMDS data store with at start")
	fs.IntVar(&f.mmdsSizeLimit, "mmds-size-limit", 0, "MMDS data store limit, in bytes (default: --http-api-max-payload-size)")
	fs.Uint64Var(&f.startTimeUS, "start-time-us", 0, "process start time from the jailer (accepted)")
	fs.Uint64Var(&f.startTimeCPUUS, "start-time-cpu-us", 0, "process start CPU time from the jailer (accepted)")
	fs.Uint64Var(&f.parentCPUUS, "parent-cpu-time-us", 0, "the jailer's CPU time (accepted)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case f.noAPI && f.configFile == "":
		return nil, errors.New("--no-api needs --config-file: without the API nothing could configure the microVM")
	case len(f.id) > maxInstanceIDLen || !instanceIDPattern.MatchString(f.id):
		return nil, fmt.Errorf("--id %q: want 1 to %d letters, digits or '-'", f.id, maxInstanceIDLen)
	case f.maxPayload <= 0:
		return nil, fmt.Errorf("--http-api-max-payload-size %d: must be positive", f.maxPayload)
	case f.mmdsSizeLimit < 0:
		return nil, fmt.Errorf("--mmds-size-limit %d: must be positive", f.mmdsSizeLimit)
	}
	if f.mmdsSizeLimit == 0 {
		// Firecracker's default: the API's payload limit (51200).
		f.mmdsSizeLimit = f.maxPayload
	}
	if _, err := logger.ParseLevel(f.level); err != nil {
		return nil, fmt.Errorf("--level: %w", err)
	}
	if err := f.seccomp.check(); err != nil {
		return nil, err
	}
	return f, nil
}

// runFirecracker is Ember's Firecracker-compatible mode: `ember --api-sock
// PATH ...` behaves as `firecracker --api-sock PATH ...` does.
func runFirecracker(args []string, start time.Time) int {
	f, err := parseFCFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(os.Stdout)
			return exitOK
		}
		fmt.Fprintln(os.Stderr, "ember:", err)
		return exitBadArguments
	}
	if f.version {
		fmt.Println("Ember v" + version)
		return exitOK
	}
	if f.snapshotVersion {
		fmt.Printf("v%d\n", snapshot.FormatVersion)
		return exitOK
	}
	if f.describeSnapshot != "" {
		st, err := snapshot.Read(f.describeSnapshot)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember: --describe-snapshot:", err)
			return exitFailure
		}
		fmt.Printf("v%d\n", st.Version)
		return exitOK
	}

	conf, err := f.seccomp.confinement()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ember:", err)
		return exitBadArguments
	}
	level, _ := logger.ParseLevel(f.level) // checked by parseFCFlags
	logs := logger.New(logger.Options{ID: f.id, Level: level, ShowLevel: f.showLevel, ShowOrigin: f.showOrigin})
	defer logs.Close()
	log := slog.New(selfTestHandler(logs.Handler()))
	if f.logPath != "" {
		err := logs.Configure(logger.Config{Path: f.logPath, Level: f.level, ShowLevel: f.showLevel, ShowOrigin: f.showOrigin, Module: f.module})
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember: --log-path:", err)
			return exitBadArguments
		}
	}

	// The MMDS data store is the process's: the API edits it at any time,
	// the VM (and a VM restored from a snapshot) reads it.
	store := mmds.NewStore(f.mmdsSizeLimit)
	if f.metadata != "" {
		if err := loadMetadata(store, f.metadata); err != nil {
			fmt.Fprintf(os.Stderr, "ember: --metadata %s: %v\n", f.metadata, err)
			return exitBadArguments
		}
	}

	// An ember image block's files (PUT /ember/image, the config file's
	// "ember-image") go when the process ends, after the VM.
	images := &imageBlocks{log: log}
	defer images.cleanup()

	ctl := vmm.NewController(vmm.Config{
		VCPUs: vmm.DefaultVCPUs, MemMiB: vmm.DefaultMemMiB, Cmdline: vmm.DefaultCmdline,
		MMDSStore: store, InstanceID: f.id,
		BootTimer: f.bootTimer, Console: os.Stdout, ConsoleIn: os.Stdin, Logger: log,
		AllowEmulatedKVM: os.Getenv("EMBER_ALLOW_EMULATED_KVM") == "1",
		Confine:          asConfiner(conf),
	})
	defer ctl.Close()

	mets := metrics.New(metrics.Options{ID: f.id, Start: start,
		Collect: func(add func(group, name string, value uint64)) {
			ctl.ReadMetrics(add)
			add(metrics.LoggerGroup, metrics.MissedLogCount, logs.Lost())
		}})
	defer mets.Close()
	if f.metricsPath != "" {
		if err := mets.Configure(f.metricsPath); err != nil {
			fmt.Fprintln(os.Stderr, "ember: --metrics-path:", err)
			return exitBadArguments
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go mets.Run(ctx)
	defer mets.Flush()

	srv := api.New(ctl, api.Options{
		ID: f.id, Version: version, MaxPayload: f.maxPayload, Logger: log.With(logger.ThreadKey, "fc_api"),
		ConfigureLogger: func(c api.Logger) error {
			return logs.Configure(logger.Config{Path: deref(c.LogPath, ""), Level: deref(c.Level, "Info"),
				ShowLevel: deref(c.ShowLevel, false), ShowOrigin: deref(c.ShowLogOrigin, false), Module: deref(c.Module, "")})
		},
		ConfigureMetrics: func(c api.Metrics) error { return mets.Configure(c.MetricsPath) },
		FlushMetrics:     mets.Flush,
		CountRequest:     requestCounter(mets.Registry()),
		MMDS:             store,
		PrepareImage:     images.prepare,
	})
	// The config file is applied before the seccomp filter, which
	// forbids starting a program: its "ember-image" runs ember-image. It
	// is trusted as the command line is; its VM is built after.
	if f.configFile != "" {
		data, err := readConfigFile(f.configFile)
		if err == nil {
			err = srv.ApplyConfigFile(data)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "ember: --config-file %s: %v\n", f.configFile, err)
			return exitBadConfig
		}
	}

	// Seccomp from here on, before the API's first request and the
	// config file's VM is built: a violation logs one line, stores
	// seccomp.num_faults, flushes the metrics and exits 148.
	if conf != nil {
		err := conf.Start(func(v seccomp.Violation) {
			log.Error(v.String())
			mets.Counter(seccompGroup, seccompNumFaults).Inc()
			mets.Flush()
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "ember:", err)
			return exitFailure
		}
	}
	images.confined.Store(conf != nil)
	if f.configFile != "" {
		if err := ctl.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "ember: --config-file %s: %v\n", f.configFile, err)
			return exitBadConfig
		}
	}

	// Signals are caught before the socket exists: a client that sees the
	// socket may stop the VM at once, and must not meet the default action
	// (which would leave the socket file behind).
	sigs := notifyStop()
	if !f.noAPI {
		ln, err := api.ListenUnix(f.apiSock)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ember: --api-sock %s: %v\n", f.apiSock, err)
			ctl.Stop()
			return exitFailure
		}
		defer os.Remove(f.apiSock)
		go func() {
			if err := srv.Serve(ln); err != nil {
				log.Debug("API server stopped", "err", err)
			}
		}()
		mets.RecordStartup()
		log.Info("API server listening", "socket", f.apiSock)
	}

	go watchSignals(log, sigs, ctl.Done(), ctl.Stop, stopTimeout, func(reason string) {
		log.Error("exiting at once", "reason", reason)
		fmt.Fprintf(os.Stderr, "ember: exiting at once: %s\n", reason)
		if !f.noAPI {
			os.Remove(f.apiSock)
		}
		images.cleanup()
		os.Exit(exitFailure)
	})
	fate := ctl.Fate()
	if !f.noAPI {
		// A request may still be answering: the 400 of a failed PUT
		// /snapshot/load, or the 204 of a load whose guest, resumed,
		// ended at once. Let it out before the process exits.
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		srv.Shutdown(sctx)
		scancel()
	}
	switch fate.Kind {
	case vmm.FateReset, vmm.FatePoweroff:
		log.Info("guest ended", "fate", fate.Kind)
		return exitOK
	case vmm.FateStopped:
		return exitOK
	}
	log.Error("guest failed", "fate", fate.Kind, "err", fate.Err)
	fmt.Fprintf(os.Stderr, "ember: guest %s: %v\n", fate.Kind, fate.Err)
	return exitFailure
}

// loadMetadata fills store from the JSON file at path (--metadata), as a
// PUT /mmds would: a file that is not one JSON value, or whose value is
// over the store's limit, is refused.
func loadMetadata(store *mmds.Store, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// The store's compact JSON is at most its limit; the file may be
	// indented: allow it maxConfigFileSize on top.
	data, err := io.ReadAll(io.LimitReader(f, int64(store.Limit())+maxConfigFileSize+1))
	if err != nil {
		return err
	}
	if len(data) > store.Limit()+maxConfigFileSize {
		return fmt.Errorf("the file is larger than the MMDS limit (--mmds-size-limit %d) allows", store.Limit())
	}
	v, err := mmds.ParseJSON(data)
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if err := store.Put(v); err != nil {
		return fmt.Errorf("%w (--mmds-size-limit %d)", err, store.Limit())
	}
	return nil
}

// readConfigFile reads the --config-file at path, refusing one larger than
// maxConfigFileSize.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigFileSize {
		return nil, fmt.Errorf("the file is larger than the %d-byte (%d MiB) limit on a config file", maxConfigFileSize, maxConfigFileSize>>20)
	}
	return data, nil
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// requestCounter counts API requests in Firecracker's get/put/patch_api_requests
// groups, under its counter names.
func requestCounter(reg *metrics.Registry) func(method, path string) {
	return func(method, path string) {
		var group string
		switch method {
		case "GET":
			group = "get_api_requests"
		case "PUT":
			group = "put_api_requests"
		case "PATCH":
			group = "patch_api_requests"
		default:
			return
		}
		name := "other_count"
		switch first := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 2)[0]; first {
		case "":
			name = "instance_info_count"
		case "version":
			name = "vmm_version_count"
		case "machine-config":
			name = "machine_cfg_count"
		case "cpu-config":
			name = "cpu_cfg_count"
		case "boot-source":
			name = "boot_source_count"
		case "drives":
			name = "drive_count"
		case "network-interfaces":
			name = "network_count"
		case "actions", "logger", "metrics", "mmds", "vsock", "balloon", "serial", "entropy", "snapshot", "vm":
			name = first + "_count"
		}
		reg.Counter(group, name).Inc()
	}
}

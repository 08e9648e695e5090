package jail

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Firecracker's jailer defaults (src/jailer/src/main.rs, resource_limits.rs).
const (
	// DefaultChrootBaseDir is --chroot-base-dir when it is not given.
	DefaultChrootBaseDir = "/srv/jailer"
	// DefaultCgroupVersion is --cgroup-version when it is not given: 1, as
	// Firecracker's jailer, so a command line written for it means the same.
	DefaultCgroupVersion = 1
	// defaultNoFile is RLIMIT_NOFILE when --resource-limit no-file= is not
	// given (Firecracker's DEFAULT_NOFILE_LIMIT, docs/jailer.md).
	defaultNoFile = 2048
	// minNoFile is the smallest no-file accepted: Ember holds a descriptor
	// for /dev/kvm, the VM, each vCPU, an eventfd per virtqueue and irq, the
	// API socket and each connection; below this it could not start a VM,
	// and would fail far from the flag that caused it.
	minNoFile = 64
	// maxIDLen is Firecracker's limit on --id.
	maxIDLen = 64
	// nrOpenPath holds the kernel's ceiling for RLIMIT_NOFILE.
	nrOpenPath = "/proc/sys/fs/nr_open"
	// noChange is the uid or gid (-1) that setresuid and setresgid read as
	// "leave this one as it is": a jail must never be asked for it.
	noChange = ^uint32(0)
)

// Resource names of --resource-limit (Firecracker's FSIZE_ARG, NO_FILE_ARG).
const (
	limitFSize  = "fsize"
	limitNoFile = "no-file"
)

// Options are the jailer's command-line flags: Firecracker's, with their
// names and formats, plus Ember's --keep-jail.
type Options struct {
	ID       string // --id: the VM's id, letters, digits and '-', at most 64
	ExecFile string // --exec-file: the VMM binary to jail (a static ELF)
	UID, GID uint32 // --uid, --gid: who the VMM runs as
	// ChrootBaseDir is --chroot-base-dir; the jail is
	// <ChrootBaseDir>/<exec file name>/<ID>/root.
	ChrootBaseDir string
	NetNS         string   // --netns: a network namespace file to join
	CgroupVersion int      // --cgroup-version: 1 or 2
	Cgroups       []string // --cgroup FILE=VALUE, repeatable
	ParentCgroup  string   // --parent-cgroup: relative to each hierarchy's root
	// ResourceLimits are --resource-limit fsize=N and no-file=N.
	ResourceLimits []string
	Daemonize      bool // --daemonize: new session, stdio on /dev/null
	NewPIDNS       bool // --new-pid-ns: the VMM is PID 1 of a new PID namespace
	// KeepJail (--keep-jail) keeps the jail directory and cgroups after the
	// VM ends, as Firecracker does; by default Ember removes them.
	KeepJail bool
	// Args are the VMM's arguments (after --).
	Args []string
}

// CheckInstanceID applies Firecracker's rule for an instance id (its
// validators::validate_instance_id): 1 to 64 ASCII letters, digits or '-'.
func CheckInstanceID(id string) error {
	ok := id != "" && len(id) <= maxIDLen
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	}
	if !ok {
		return fmt.Errorf("%q: want 1 to %d letters, digits or '-'", id, maxIDLen)
	}
	return nil
}

// plan is everything the jailer will do, worked out and checked before
// anything is made. It also travels, as JSON, to the re-executed jailer
// that enters the jail for --new-pid-ns and --daemonize.
type plan struct {
	ID       string
	ExecPath string // the exec file, absolute and resolved
	ExecName string // its base name as given: the jail's directory and file name
	Dir      string // <base>/<exec name>/<id>: holds root and the record
	Root     string // Dir/root: the jail
	UID, GID uint32
	NetNS    string // path of the namespace file, or ""
	NoFile   uint64
	FSize    *uint64
	Daemon   bool
	NewPIDNS bool
	Keep     bool
	// NewSession asks the entering process for setsid: when daemonizing,
	// and for a PID namespace's first process when the jailer leads its
	// session (its exit would send that process SIGHUP).
	NewSession bool
	Argv       []string // the VMM's argv inside the jail
	Cgroups    *cgroupPlan
}

// validate checks every flag and the host features they need, and works out
// the plan, before anything is made on disk or in cgroupfs.
func validate(o Options) (*plan, error) {
	if o.ID == "" {
		return nil, errors.New("--id is required")
	}
	if err := CheckInstanceID(o.ID); err != nil {
		return nil, fmt.Errorf("--id %w", err)
	}
	if o.UID == noChange || o.GID == noChange {
		return nil, fmt.Errorf("--uid/--gid %d: that value means \"unchanged\" to the kernel; pick another", noChange)
	}
	p := &plan{ID: o.ID, UID: o.UID, GID: o.GID, NetNS: o.NetNS, NoFile: defaultNoFile,
		Daemon: o.Daemonize, NewPIDNS: o.NewPIDNS, Keep: o.KeepJail}
	var err error
	if p.ExecPath, err = checkExecFile(o.ExecFile); err != nil {
		return nil, err
	}
	// The name as given, not the resolved one: firecracker-go-sdk computes
	// the jail's path from it, and Ember is often installed under
	// Firecracker's name as a link.
	p.ExecName = filepath.Base(o.ExecFile)
	base, err := checkBaseDir(o.ChrootBaseDir)
	if err != nil {
		return nil, err
	}
	p.Dir = filepath.Join(base, p.ExecName, o.ID)
	p.Root = filepath.Join(p.Dir, rootDirName)
	if _, err := os.Lstat(filepath.Join(p.Dir, recordName)); err == nil {
		return nil, fmt.Errorf("--id %s: %w", o.ID, errJailExists(p.Dir))
	}
	if err := parseLimits(p, o.ResourceLimits); err != nil {
		return nil, err
	}
	if o.NetNS != "" {
		f, err := openNetNS(o.NetNS)
		if err != nil {
			return nil, err
		}
		f.Close()
	}
	if p.Cgroups, err = planCgroups(o, p.ExecName, mountInfoPath); err != nil {
		return nil, err
	}
	p.Argv = vmmArgv(p, o.Args)
	return p, nil
}

// checkExecFile resolves the exec file and checks it can run alone in an
// empty jail: a regular, executable, statically linked ELF file.
func checkExecFile(name string) (string, error) {
	if name == "" {
		return "", errors.New("--exec-file is required")
	}
	path, err := filepath.Abs(name)
	if err == nil {
		path, err = filepath.EvalSymlinks(path)
	}
	if err != nil {
		return "", fmt.Errorf("--exec-file %s: %w", name, unwrapPath(err))
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--exec-file %s: %w", name, unwrapPath(err))
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("--exec-file %s is not a regular file", name)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("--exec-file %s is not executable", name)
	}
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("--exec-file %s is not an ELF executable, and the jail holds nothing else to run it with", name)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("--exec-file %s is dynamically linked, and the jail holds no loader or libraries: build it static (CGO_ENABLED=0)", name)
		}
	}
	return path, nil
}

// checkBaseDir resolves --chroot-base-dir, which must exist (as for
// Firecracker) on a filesystem where device nodes and programs work.
func checkBaseDir(dir string) (string, error) {
	if dir == "" {
		dir = DefaultChrootBaseDir
	}
	path, err := filepath.Abs(dir)
	if err == nil {
		path, err = filepath.EvalSymlinks(path)
	}
	if err != nil {
		return "", fmt.Errorf("--chroot-base-dir %s: %w", dir, unwrapPath(err))
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--chroot-base-dir %s: %w", dir, unwrapPath(err))
	}
	if !st.IsDir() {
		return "", fmt.Errorf("--chroot-base-dir %s is not a directory", dir)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return "", fmt.Errorf("--chroot-base-dir %s: statfs: %w", dir, err)
	}
	switch {
	case fs.Flags&unix.ST_NODEV != 0:
		return "", fmt.Errorf("--chroot-base-dir %s is on a filesystem mounted nodev: the jail's /dev/kvm would not open", dir)
	case fs.Flags&unix.ST_NOEXEC != 0:
		return "", fmt.Errorf("--chroot-base-dir %s is on a filesystem mounted noexec: the jailed binary could not run", dir)
	case fs.Flags&unix.ST_RDONLY != 0:
		return "", fmt.Errorf("--chroot-base-dir %s is on a read-only filesystem", dir)
	}
	return path, nil
}

// parseLimits reads --resource-limit NAME=VALUE flags into the plan.
func parseLimits(p *plan, limits []string) error {
	for _, l := range limits {
		name, value, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("--resource-limit %q: want %s=BYTES or %s=COUNT", l, limitFSize, limitNoFile)
		}
		n, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			return fmt.Errorf("--resource-limit %q: %q is not a whole number", l, value)
		}
		switch name {
		case limitFSize:
			p.FSize = &n
		case limitNoFile:
			if n < minNoFile {
				return fmt.Errorf("--resource-limit %q: below %d descriptors Ember cannot run a VM", l, minNoFile)
			}
			if max, err := readUint(nrOpenPath); err == nil && n > max {
				return fmt.Errorf("--resource-limit %q: above the kernel's ceiling fs.nr_open (%d)", l, max)
			}
			p.NoFile = n
		default:
			return fmt.Errorf("--resource-limit %q: unknown resource %q (want %s or %s)", l, name, limitFSize, limitNoFile)
		}
	}
	return nil
}

// openNetNS opens a network namespace file, checking that it is one.
func openNetNS(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--netns %s: %w", path, unwrapPath(err))
	}
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || t != unix.CLONE_NEWNET {
		f.Close()
		return nil, fmt.Errorf("--netns %s is not a network namespace (want a file such as /var/run/netns/NAME or /proc/PID/ns/net)", path)
	}
	return f, nil
}

// vmmArgv is the VMM's command line inside the jail. As Firecracker's
// jailer does, it passes --id and the start times ahead of the user's
// arguments (which Ember's Firecracker mode accepts); when the arguments
// name an Ember subcommand instead (`-- run --kernel ...`), they go as they
// are.
func vmmArgv(p *plan, args []string) []string {
	argv := []string{"/" + p.ExecName}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return append(argv, args...)
	}
	wallUS, cpuUS := startTimes()
	argv = append(argv, "--id", p.ID,
		"--start-time-us", strconv.FormatUint(wallUS, 10),
		"--start-time-cpu-us", strconv.FormatUint(cpuUS, 10))
	return append(argv, args...)
}

// startTimes are the jailer's start as Firecracker's jailer passes it:
// CLOCK_MONOTONIC and the process's CPU time, in microseconds.
func startTimes() (wallUS, cpuUS uint64) {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
		wallUS = uint64(ts.Nano()) / 1000
	}
	if unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts) == nil {
		cpuUS = uint64(ts.Nano()) / 1000
	}
	return wallUS, cpuUS
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// unwrapPath drops the *PathError wrapper whose path the message already
// names, so errors read "--flag X: no such file or directory".
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

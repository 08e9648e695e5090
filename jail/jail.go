package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The jail's layout: Firecracker's <base>/<exec name>/<id>/root, with
// Ember's record beside root.
const (
	rootDirName = "root"
	// recordName is the file, beside root and out of the jailed process's
	// reach, that marks a jail as Ember's and says what to remove with it.
	recordName = "ember-jail.json"
	// pidFileSuffix names <root>/<exec name>.pid, which holds the VMM's
	// PID (Firecracker's PID_FILE_EXTENSION).
	pidFileSuffix = ".pid"
	// Modes: the jail's directories belong to the VMM's user alone
	// (Firecracker's FOLDER_PERMISSIONS), device nodes too (S_IRUSR|S_IWUSR).
	jailDirMode  = 0o700
	deviceMode   = 0o600
	baseDirMode  = 0o755
	recordMode   = 0o644
	execFileMode = 0o755
)

// jailDirs are the directories below the jail's root that the VMM's user
// owns, as it owns the root: /dev and /dev/net for its device nodes, and
// /run for the API socket. Parents come first.
var jailDirs = []string{"dev", "dev/net", "run"}

// selfExe re-executes the running jailer, for its reaper and for the
// child that enters the jail in --new-pid-ns and --daemonize modes.
const selfExe = "/proc/self/exe"

// Internal commands of `ember jail`: the re-executed jailer runs these.
const (
	EnterCommand = "__enter"
	ReapCommand  = "__reap"
)

// record is the jail's record file.
type record struct {
	ID      string   `json:"id"`
	Root    string   `json:"root"`
	Cgroups []string `json:"cgroups,omitempty"` // groups made for the VM
	Keep    bool     `json:"keep,omitempty"`    // --keep-jail: sweep leaves it unless asked
}

func errJailExists(dir string) error {
	return fmt.Errorf("the jail %s already exists (its VM may still run; `ember jail sweep` removes jails whose VM has ended)", dir)
}

// Run jails the VMM as the options say and execs it. In the plain mode it
// returns only on failure: on success the process has become the VMM. With
// --new-pid-ns or --daemonize the VMM runs in a child and Run returns nil
// once that child has exec'd it. Unless --keep-jail, a detached reaper
// removes the jail and its cgroups when the VMM ends. Errors name the flag
// or host feature at fault, and nothing is left behind.
func Run(o Options, stderr *os.File) error {
	if err := closeInheritedFDs(); err != nil {
		return err
	}
	os.Clearenv()
	p, err := validate(o)
	if err != nil {
		return err
	}
	j, err := build(p)
	if err != nil {
		return err
	}
	defer j.lock.Close()
	if p.NewPIDNS || p.Daemon {
		return j.runChild(stderr)
	}
	if err := writePIDFile(p, os.Getpid()); err != nil {
		j.remove()
		return err
	}
	if !p.Keep {
		if err := startReaper(p.Dir, os.Getpid(), j.lock, stderr); err != nil {
			j.remove()
			return fmt.Errorf("start the jail's reaper: %w", err)
		}
	}
	jailed, err := enter(p)
	if !jailed && p.Keep {
		j.remove() // without --keep-jail the reaper does it when this process exits
	}
	return err
}

// closeInheritedFDs closes every descriptor above stderr that this process
// inherited, so none reaches the jail. Inherited ones are those without
// close-on-exec: Go opens everything of its own with it.
func closeInheritedFDs() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list open files: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			unix.Close(fd)
		}
	}
	return nil
}

// jail is a jail being made: what was made so far, in order, so a failure
// removes exactly that, and the lock that marks it in use.
type jail struct {
	p    *plan
	made []string // host paths: directories, files, cgroups
	// madeInside removes what was made below the jail's root, through the
	// directory descriptors in dirs (see makeInside).
	madeInside []func()
	dirs       []int
	lock       *os.File
}

// build makes the jail: its directories, the exec file, device nodes, the
// record and the cgroups. On failure it removes what it made. The umask is
// cleared meanwhile, so every mode is the one given.
func build(p *plan) (*jail, error) {
	umask := syscall.Umask(0)
	defer syscall.Umask(umask)
	j := &jail{p: p}
	err := j.make()
	if err != nil {
		j.undo()
	}
	for _, fd := range j.dirs {
		unix.Close(fd)
	}
	if err != nil {
		return nil, err
	}
	return j, nil
}

func (j *jail) make() error {
	p := j.p
	var err error
	for _, d := range []string{filepath.Dir(p.Dir), p.Dir} {
		if err := j.mkdir(d, baseDirMode); err != nil {
			return err
		}
	}
	// The lock says "in use" to `ember jail sweep` and to a second jailer
	// given the same --id, until the reaper is done with the jail.
	if j.lock, err = os.Open(p.Dir); err != nil {
		return fmt.Errorf("jail %s: %w", p.Dir, err)
	}
	if err := unix.Flock(int(j.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("--id %s: the jail %s is in use by another jailer", p.ID, p.Dir)
	}
	// The record is made exclusively, so a finished jail that was kept or
	// orphaned is never taken over.
	rec := record{ID: p.ID, Root: p.Root, Cgroups: p.Cgroups.groupDirs(), Keep: p.Keep}
	data, _ := json.Marshal(rec)
	recPath := filepath.Join(p.Dir, recordName)
	f, err := os.OpenFile(recPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, recordMode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("--id %s: %w", p.ID, errJailExists(p.Dir))
		}
		return fmt.Errorf("jail %s: %w", p.Dir, err)
	}
	j.made = append(j.made, recPath)
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", recPath, err)
	}
	if err := j.mkdir(p.Root, jailDirMode); err != nil {
		return err
	}
	if err := j.placeExecFile(); err != nil {
		return err
	}
	if err := j.makeInside(); err != nil {
		return err
	}
	return p.Cgroups.create(&j.made)
}

// mkdir makes a directory unless it is there, noting it if made.
func (j *jail) mkdir(dir string, mode os.FileMode) error {
	created, err := mkdirNew(dir, mode)
	if err != nil {
		return fmt.Errorf("jail directory %s: %w", dir, err)
	}
	if created {
		j.made = append(j.made, dir)
	}
	return nil
}

// mkdirNew makes dir, reporting whether it did; an existing directory is
// fine, anything else in its place (a symbolic link too) is not.
func mkdirNew(dir string, mode os.FileMode) (bool, error) {
	err := os.Mkdir(dir, mode)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrExist) {
		if st, serr := os.Lstat(dir); serr == nil && st.IsDir() {
			return false, nil
		}
		return false, errors.New("exists and is not a directory")
	}
	return false, unwrapPath(err)
}

// makeInside makes the jail's directories and device nodes, owned by the
// VMM's user, through directory descriptors opened without following
// symbolic links, never by path: in a jail made ahead of the jailer (which
// Firecracker's allows, and scripts that put the kernel in first rely on),
// whoever had it before may have left root/dev as a link to /etc, and a
// path would lead the jailer out of the jail with it. (Firecracker's jailer
// does this work after chroot, for the same reason.)
func (j *jail) makeInside() error {
	p := j.p
	root, err := unix.Open(p.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("jail directory %s: %w", p.Root, err)
	}
	j.dirs = append(j.dirs, root)
	if err := j.own(root, p.Root); err != nil {
		return err
	}
	fds := map[string]int{".": root}
	for _, d := range jailDirs { // parents first
		fd, err := j.mkdirAt(fds[filepath.Dir(d)], filepath.Base(d), filepath.Join(p.Root, d))
		if err != nil {
			return err
		}
		fds[d] = fd
	}
	devs, err := hostDevices()
	if err != nil {
		return err
	}
	for _, d := range devs {
		dir, name := fds[filepath.Dir(d.path)], filepath.Base(d.path)
		if err := unix.Mknodat(dir, name, unix.S_IFCHR|deviceMode, int(d.rdev)); err != nil {
			return fmt.Errorf("make the device node /%s in the jail: %w", d.path, err)
		}
		j.madeInside = append(j.madeInside, func() { unix.Unlinkat(dir, name, 0) })
		if err := unix.Fchownat(dir, name, int(p.UID), int(p.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("give the device node /%s to the VMM's user: %w", d.path, err)
		}
	}
	return nil
}

// mkdirAt makes (or finds) the directory name in parent and returns it open,
// owned by the VMM's user with jailDirMode; path names it in errors.
func (j *jail) mkdirAt(parent int, name, path string) (int, error) {
	err := unix.Mkdirat(parent, name, jailDirMode)
	if err == nil {
		j.madeInside = append(j.madeInside, func() { unix.Unlinkat(parent, name, unix.AT_REMOVEDIR) })
	} else if !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("jail directory %s: %w", path, err)
	}
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("jail directory %s: exists and is not a directory (%w)", path, err)
	}
	j.dirs = append(j.dirs, fd)
	return fd, j.own(fd, path)
}

// own gives the open directory to the VMM's user with jailDirMode.
func (j *jail) own(fd int, path string) error {
	if err := unix.Fchown(fd, int(j.p.UID), int(j.p.GID)); err != nil {
		return fmt.Errorf("jail directory %s: %w", path, err)
	}
	if err := unix.Fchmod(fd, jailDirMode); err != nil {
		return fmt.Errorf("jail directory %s: %w", path, err)
	}
	return nil
}

// placeExecFile puts the exec file at /<name> in the jail: a hard link,
// which costs nothing, when the file is on the jail's filesystem and the
// VMM's user cannot write it; otherwise a copy, as Firecracker always
// makes, owned by root and never setuid.
func (j *jail) placeExecFile() error {
	dst := filepath.Join(j.p.Root, j.p.ExecName)
	st, err := os.Stat(j.p.ExecPath)
	if err != nil {
		return fmt.Errorf("--exec-file %s: %w", j.p.ExecPath, unwrapPath(err))
	}
	if !writableBy(st, j.p.UID, j.p.GID) {
		if err := os.Link(j.p.ExecPath, dst); err == nil {
			j.made = append(j.made, dst)
			return nil
		}
	}
	src, err := os.Open(j.p.ExecPath)
	if err != nil {
		return fmt.Errorf("--exec-file %s: %w", j.p.ExecPath, unwrapPath(err))
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, execFileMode)
	if err != nil {
		return fmt.Errorf("copy the exec file into the jail: %w", err)
	}
	j.made = append(j.made, dst)
	_, err = io.Copy(out, src)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy the exec file into the jail: %w", err)
	}
	return nil
}

// writableBy reports whether uid or gid could write the file: then the jail
// gets a copy, or the jailed process could change the host's binary.
func writableBy(st os.FileInfo, uid, gid uint32) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	m := st.Mode().Perm()
	return sys.Uid == uid && m&0o200 != 0 || sys.Gid == gid && m&0o020 != 0 || m&0o002 != 0
}

// device is a device node the jail gets.
type device struct {
	path string // inside the jail
	rdev uint64
}

// jailDevices are the nodes the VMM needs (Firecracker's jailer makes the
// same): KVM, the tun clone device for taps, the urandom device, and
// userfaultfd's device (Linux 6.1) where the host has it. Numbers are the
// host's own node's; fixed ones (Documentation/admin-guide/devices.txt)
// stand in for a missing tun or urandom node, whose modules load on open.
var jailDevices = []struct {
	path         string
	major, minor uint32
	need         string // non-empty: the host must have it, and this says why
	dynamic      bool   // a dynamic misc minor: made only where the host has it
}{
	{path: "dev/kvm", major: 10, minor: 232, need: "KVM (modules kvm and kvm_intel or kvm_amd)"},
	{path: "dev/net/tun", major: 10, minor: 200},
	{path: "dev/urandom", major: 1, minor: 9},
	{path: "dev/userfaultfd", dynamic: true},
}

// hostDevices resolves the device nodes to make.
func hostDevices() ([]device, error) {
	var out []device
	for _, d := range jailDevices {
		var st unix.Stat_t
		err := unix.Stat("/"+d.path, &st)
		switch {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR:
			out = append(out, device{d.path, st.Rdev})
		case d.need != "":
			return nil, fmt.Errorf("this host has no /%s: the jailed VMM needs %s", d.path, d.need)
		case !d.dynamic:
			out = append(out, device{d.path, unix.Mkdev(d.major, d.minor)})
		}
	}
	return out, nil
}

// writePIDFile writes the VMM's PID to <root>/<exec name>.pid, where
// Firecracker's jailer puts it.
func writePIDFile(p *plan, pid int) error {
	path := filepath.Join(p.Root, p.ExecName+pidFileSuffix)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, recordMode)
	if err != nil {
		return fmt.Errorf("write the PID file: %w", err)
	}
	_, err = f.WriteString(strconv.Itoa(pid))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// undo removes what build made, newest first.
func (j *jail) undo() {
	for i := len(j.madeInside) - 1; i >= 0; i-- {
		j.madeInside[i]()
	}
	for i := len(j.made) - 1; i >= 0; i-- {
		os.Remove(j.made[i])
	}
	if j.lock != nil {
		j.lock.Close()
	}
}

// remove removes the whole jail and its cgroups, for a failure after build.
func (j *jail) remove() {
	removeJail(j.p.Dir, record{ID: j.p.ID, Root: j.p.Root, Cgroups: j.p.Cgroups.groupDirs()})
}

// runChild starts the child that enters the jail and execs the VMM (in a
// new PID namespace with --new-pid-ns), writes its PID file, hands the
// child to a reaper, and returns once the child has exec'd the VMM or
// failed. The child reports a failure on a pipe that its exec closes.
func (j *jail) runChild(stderr *os.File) error {
	p := j.p
	// The first process of a PID namespace would get SIGHUP when a jailer
	// that leads its session exits (Firecracker PR #5045): it gets a
	// session of its own, as a daemon does.
	sid, _ := unix.Getsid(0)
	p.NewSession = p.Daemon || p.NewPIDNS && sid == os.Getpid()
	cgroupDir, err := p.Cgroups.joinFD()
	if err != nil {
		j.remove()
		return err
	}
	if cgroupDir != nil {
		defer cgroupDir.Close()
		forked := *p.Cgroups
		forked.Forked = true
		p.Cgroups = &forked
	}
	spec, err := json.Marshal(p)
	if err != nil {
		j.remove()
		return err
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		j.remove()
		return err
	}
	defer statusR.Close()
	cmd := &exec.Cmd{Path: selfExe, Args: []string{"ember", "jail", EnterCommand, string(spec)},
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: stderr, ExtraFiles: []*os.File{statusW},
		SysProcAttr: &syscall.SysProcAttr{}}
	if p.NewPIDNS {
		cmd.SysProcAttr.Cloneflags = unix.CLONE_NEWPID
	}
	if cgroupDir != nil { // made in its group: no migration, no grace period
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgroupDir.Fd())
	}
	err = cmd.Start()
	statusW.Close()
	if err != nil {
		j.remove()
		return fmt.Errorf("start the jailed child: %w", err)
	}
	if err := writePIDFile(p, cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		j.remove()
		return err
	}
	if !p.Keep {
		// The child is not reaped before this, so its PID is still its own.
		reports := stderr
		if p.Daemon {
			reports = nil
		}
		if err := startReaper(p.Dir, cmd.Process.Pid, j.lock, reports); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			j.remove()
			return fmt.Errorf("start the jail's reaper: %w", err)
		}
	}
	msg, _ := io.ReadAll(statusR)
	if len(msg) > 0 {
		cmd.Wait()
		j.remove()
		return errors.New(strings.TrimSpace(string(msg)))
	}
	return cmd.Process.Release()
}

// startReaper starts the detached process that waits for the VMM's process
// pid and then removes the jail. The reaper gets a pidfd of pid (so a reused
// PID is never mistaken for the VMM) and shares the jail's lock, holding it
// for as long as it runs; it reports on stderr (nil: /dev/null).
func startReaper(dir string, pid int, lock, stderr *os.File) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	pf := os.NewFile(uintptr(pidfd), "pidfd")
	defer pf.Close()
	cmd := &exec.Cmd{Path: selfExe, Args: []string{"ember", "jail", ReapCommand, dir},
		ExtraFiles:  []*os.File{pf, lock},
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if stderr != nil {
		cmd.Stderr = stderr
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

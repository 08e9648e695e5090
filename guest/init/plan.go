package main

import (
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/guest/initconfig"
)

// Where the root is assembled, in the initramfs.
const (
	layersDir   = "/ember/layers" // layer N at layersDir/N
	emptyLower  = "/ember/empty"  // the lower directory of an image without layers
	writableDir = "/ember/rw"     // the writable drive, or a tmpfs
	upperDir    = writableDir + "/upper"
	workDir     = writableDir + "/work"
	newRoot     = "/ember/root" // the overlay, before it becomes /
)

// Options of the mounts in the new root.
const (
	// ttyGID is the group devpts gives new terminals: "tty" is gid 5 in
	// Debian, Alpine, Fedora and the LSB, and Docker uses the same.
	ttyGID = 5
	// Permission bits of directories created as mount points.
	modeDir    os.FileMode = 0o755
	modeSticky os.FileMode = os.ModeSticky | 0o777 // /tmp, /dev/shm
	modeProc   os.FileMode = 0o555
	// stickyOption is modeSticky as a tmpfs mode= option.
	stickyOption = "mode=1777"
)

type stepKind int

const (
	stepMkdir   stepKind = iota // create path (and parents) if missing; chmod only what was created
	stepMount                   // mount(source, path, fstype, flags, data)
	stepSymlink                 // create path -> source if path does not exist
)

// A step is one operation of the root's assembly. Plans are computed as
// data (and tested as such); mount.go carries them out.
type step struct {
	kind   stepKind
	path   string
	source string // mount source, or symlink target
	fstype string
	flags  uintptr
	data   string
	mode   os.FileMode // for stepMkdir
}

// String renders a step as a mount(8)-like line, for the debug log and
// for tests.
func (s step) String() string {
	switch s.kind {
	case stepMkdir:
		return fmt.Sprintf("mkdir %s %#o", s.path, unixPerm(s.mode))
	case stepSymlink:
		return fmt.Sprintf("symlink %s -> %s", s.path, s.source)
	}
	opts := mountFlagNames(s.flags)
	if s.data != "" {
		opts = append(opts, s.data)
	}
	line := fmt.Sprintf("mount -t %s %s %s", s.fstype, s.source, s.path)
	if len(opts) > 0 {
		line += " -o " + strings.Join(opts, ",")
	}
	return line
}

// unixPerm is mode's permission bits as chmod(1) writes them.
func unixPerm(mode os.FileMode) uint32 {
	p := uint32(mode.Perm())
	if mode&os.ModeSticky != 0 {
		p |= unix.S_ISVTX
	}
	return p
}

// mountFlagNames names the flags the plans use, in a fixed order.
func mountFlagNames(flags uintptr) []string {
	var names []string
	for _, f := range []struct {
		bit  uintptr
		name string
	}{{unix.MS_RDONLY, "ro"}, {unix.MS_NOSUID, "nosuid"}, {unix.MS_NODEV, "nodev"}, {unix.MS_NOEXEC, "noexec"}} {
		if flags&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	return names
}

func mkdir(p string, mode os.FileMode) step { return step{kind: stepMkdir, path: p, mode: mode} }

func mount(source, target, fstype string, flags uintptr, data string) step {
	return step{kind: stepMount, source: source, path: target, fstype: fstype, flags: flags, data: data}
}

// earlyPlan mounts what the init itself needs in the initramfs: device
// nodes, /proc and sysfs (to find the drives).
func earlyPlan() []step {
	return []step{
		mkdir("/dev", modeDir),
		mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"),
		mkdir("/proc", modeProc),
		mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""),
		mkdir("/sys", modeProc),
		mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""),
	}
}

// rootPlan assembles the overlay at newRoot from the config and the drives
// found (serial -> device node).
func rootPlan(cfg *initconfig.Config, drives map[string]string) ([]step, error) {
	dev := func(field string, d initconfig.Drive) (string, error) {
		p, ok := drives[d.Serial]
		if !ok {
			return "", fmt.Errorf("%s: no drive with serial %q", field, d.Serial)
		}
		return p, nil
	}
	var plan []step
	var lowers []string
	for i, l := range cfg.Layers {
		src, err := dev(fmt.Sprintf("layers[%d]", i), l)
		if err != nil {
			return nil, err
		}
		dir := path.Join(layersDir, strconv.Itoa(i))
		plan = append(plan, mkdir(dir, modeDir), mount(src, dir, l.FSType, unix.MS_RDONLY, ""))
		lowers = append(lowers, dir)
	}
	if len(lowers) == 0 {
		plan = append(plan, mkdir(emptyLower, modeDir))
		lowers = []string{emptyLower}
	}
	plan = append(plan, mkdir(writableDir, modeDir))
	if w := cfg.Writable; w != nil {
		src, err := dev("writable", *w)
		if err != nil {
			return nil, err
		}
		plan = append(plan, mount(src, writableDir, w.FSType, 0, ""))
	} else {
		plan = append(plan, mount("tmpfs", writableDir, "tmpfs", 0, "mode=0755"))
	}
	plan = append(plan,
		mkdir(upperDir, modeDir),
		mkdir(workDir, modeDir),
		mkdir(newRoot, modeDir),
		mount("overlay", newRoot, "overlay", 0, overlayOptions(lowers, upperDir, workDir)),
	)
	return plan, nil
}

// overlayOptions is the overlay's mount data. lowers come lowest first, as
// in the config; overlayfs wants the topmost first
// (Documentation/filesystems/overlayfs.rst, "Multiple lower layers").
func overlayOptions(lowers []string, upper, work string) string {
	top := slices.Clone(lowers)
	slices.Reverse(top)
	return "lowerdir=" + strings.Join(top, ":") + ",upperdir=" + upper + ",workdir=" + work
}

// systemPlan mounts the kernel's file systems and the tmpfs directories in
// the new root, once it is /. Mount points the image lacks are created (in
// the upper layer).
func systemPlan(cfg *initconfig.Config) []step {
	shm := stickyOption
	if cfg.ShmSizeMiB > 0 {
		shm += fmt.Sprintf(",size=%dm", cfg.ShmSizeMiB)
	}
	const nosuidNodev = unix.MS_NOSUID | unix.MS_NODEV
	return []step{
		mkdir("/proc", modeProc),
		mount("proc", "/proc", "proc", nosuidNodev|unix.MS_NOEXEC, ""),
		mkdir("/sys", modeProc),
		mount("sysfs", "/sys", "sysfs", nosuidNodev|unix.MS_NOEXEC, ""),
		mkdir("/dev", modeDir),
		mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755"),
		mkdir("/dev/pts", modeDir),
		mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC,
			fmt.Sprintf("newinstance,ptmxmode=0666,mode=0620,gid=%d", ttyGID)),
		mkdir("/dev/shm", modeSticky),
		mount("shm", "/dev/shm", "tmpfs", nosuidNodev, shm),
		mkdir("/run", modeDir),
		mount("tmpfs", "/run", "tmpfs", nosuidNodev, "mode=0755"),
		mkdir("/tmp", modeSticky),
		mount("tmpfs", "/tmp", "tmpfs", nosuidNodev, stickyOption),
		// What a container's /dev has besides the device nodes.
		{kind: stepSymlink, path: "/dev/fd", source: "/proc/self/fd"},
		{kind: stepSymlink, path: "/dev/stdin", source: "/proc/self/fd/0"},
		{kind: stepSymlink, path: "/dev/stdout", source: "/proc/self/fd/1"},
		{kind: stepSymlink, path: "/dev/stderr", source: "/proc/self/fd/2"},
	}
}

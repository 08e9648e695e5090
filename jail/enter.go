package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// statusFD is the descriptor on which the child that enters the jail
// reports a failure (its first ExtraFile); its exec closes it.
const statusFD = 3

// devNull is opened before the jail hides the host's /dev.
const devNull = "/dev/null"

// Enter is the jailer's child in --new-pid-ns and --daemonize modes
// (`ember jail __enter PLAN`): it enters the jail the plan describes and
// execs the VMM. It returns only on failure, after writing the error to the
// status pipe, where the parent jailer reads and reports it.
func Enter(spec string) error {
	unix.CloseOnExec(statusFD)
	status := os.NewFile(statusFD, "status")
	var p plan
	err := json.Unmarshal([]byte(spec), &p)
	if err == nil {
		_, err = enter(&p)
	}
	fmt.Fprintln(status, err)
	return err
}

// enter turns the calling process into the jailed VMM: it places itself in
// the cgroups, pivots into the jail in a new mount namespace, joins the
// network namespace, sets the resource limits, drops every privilege and
// execs the VMM. It returns only on failure; jailed says whether the
// process had already pivoted into the jail (then the jail's paths are out
// of its reach and the reaper, or `ember jail sweep`, must remove it).
//
// Mount and network namespaces, the root, credentials, capabilities and
// no_new_privs belong to a thread, not to a Go process: everything here
// runs on one locked OS thread, and its execve carries that thread's state
// into the new program, which replaces every other thread. The thread is
// never unlocked: it execs, or the process exits.
func enter(p *plan) (jailed bool, err error) {
	runtime.LockOSThread()
	// Everything outside the jail is opened before the pivot hides it.
	var netns *os.File
	if p.NetNS != "" {
		if netns, err = openNetNS(p.NetNS); err != nil {
			return false, err
		}
		defer netns.Close()
	}
	cgroups, err := p.Cgroups.openJoin()
	if err != nil {
		return false, err
	}
	var null *os.File
	if p.Daemon {
		if null, err = os.OpenFile(devNull, os.O_RDWR, 0); err != nil {
			closeAll(cgroups)
			return false, err
		}
		defer null.Close()
	}
	if err := pivotInto(p.Root); err != nil {
		closeAll(cgroups)
		return false, err
	}
	// Placed in the cgroups only now: a failure before the pivot leaves the
	// process outside them, so the jailer can still remove them.
	if err := join(cgroups); err != nil {
		return true, err
	}
	if err := setLimits(p); err != nil {
		return true, err
	}
	if netns != nil {
		if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
			return true, fmt.Errorf("--netns %s: join: %w", p.NetNS, err)
		}
	}
	if p.NewSession {
		if _, err := unix.Setsid(); err != nil {
			return true, fmt.Errorf("--daemonize: setsid: %w", err)
		}
	}
	if null != nil {
		for fd := 0; fd <= 2; fd++ {
			if err := unix.Dup3(int(null.Fd()), fd, 0); err != nil {
				return true, fmt.Errorf("--daemonize: stdio to /dev/null: %w", err)
			}
		}
	}
	if err := dropPrivileges(p.UID, p.GID); err != nil {
		return true, err
	}
	err = syscall.Exec(p.Argv[0], p.Argv, []string{})
	return true, fmt.Errorf("exec %s in the jail: %w", p.Argv[0], err)
}

// pivotInto makes root the root of a new mount namespace: mounts made
// slaves (nothing propagates back to the host), the jail bound onto itself
// to be a mount point, pivot_root, and the host's tree detached.
func pivotInto(root string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("new mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make the mounts slaves: %w", err)
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind the jail %s onto itself: %w", root, err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("enter the jail %s: %w", root, err)
	}
	// pivot_root(".", ".") stacks the old root on the new one, where a
	// lazy unmount takes it away (pivot_root(2), "new_root and put_old may
	// be the same directory").
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// setLimits applies the resource limits, soft and hard alike, as
// Firecracker's jailer does. syscall.Setrlimit, not a raw prlimit: Go
// restores its own start-up RLIMIT_NOFILE at exec unless told otherwise
// this way.
func setLimits(p *plan) error {
	nofile := syscall.Rlimit{Cur: p.NoFile, Max: p.NoFile}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nofile); err != nil {
		return fmt.Errorf("--resource-limit %s=%d: %w", limitNoFile, p.NoFile, err)
	}
	if p.FSize != nil {
		fsize := syscall.Rlimit{Cur: *p.FSize, Max: *p.FSize}
		if err := syscall.Setrlimit(unix.RLIMIT_FSIZE, &fsize); err != nil {
			return fmt.Errorf("--resource-limit %s=%d: %w", limitFSize, *p.FSize, err)
		}
	}
	return nil
}

// dropPrivileges leaves the thread with uid and gid, no supplementary
// groups, no capabilities in any set (the bounding set too, so not even an
// exec as root could regain one) and no_new_privs. The credential calls are
// raw and per thread: only this thread's credentials reach the exec.
func dropPrivileges(uid, gid uint32) error {
	for c := 0; ; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) { // past the kernel's last capability
				break
			}
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("--gid %d: setresgid: %w", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("--uid %d: setresuid: %w", uid, e)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData // version 3 takes two 32-bit halves
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("clear capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return nil
}

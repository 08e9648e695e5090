// Package workload starts and supervises the one process a guest runs for
// its user, the way a container's init does: it is PID 1's half of "run a
// command and end with its status".
//
//   - [Start] forks and execs the command in its own session, as the
//     resolved user, in its working directory, with its environment, and
//     with the console as stdin, stdout and stderr (and as its controlling
//     terminal when it is one). A command that cannot be started is a
//     [*StartError] whose Code is what a shell or an OCI runtime would
//     exit with: 127 when it is not found, 126 when it cannot be executed.
//   - [Supervise] forwards the signals PID 1 receives (SIGTERM, SIGINT, ...)
//     to the workload and reaps every child that exits, orphans included:
//     PID 1 inherits every orphan of the machine (a test process gets the
//     same with PR_SET_CHILD_SUBREAPER). It returns the workload's wait
//     status; [ExitCode] turns it into 0-255, 128+N for signal N.
//   - [ReapRemaining] collects what is left once the caller has killed it.
//
// It uses syscall.ForkExec rather than os/exec: os/exec waits for its own
// child only, while PID 1 must wait4(-1) for all of them, and the two would
// race for the workload's exit status.
package workload

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Exit codes for a command that could not be started, as POSIX shells
// (XCU 2.8.2) and OCI runtimes report them.
const (
	ExitNotFound      = 127 // the command does not exist
	ExitNotExecutable = 126 // it exists but cannot be executed
	// exitSignalBase + N is the status of a process killed by signal N
	// (XCU 2.8.2: greater than 128).
	exitSignalBase = 128
)

// reapPoll is how often ReapRemaining looks for exited children.
const reapPoll = 10 * time.Millisecond

// Spec describes the workload.
type Spec struct {
	// Args is the command line; Args[0] without a slash is looked up in
	// the PATH of Env.
	Args []string
	// Env is the complete environment.
	Env []string
	// Dir is the working directory (must exist).
	Dir string
	// UID, GID and Groups are the credentials.
	UID, GID uint32
	Groups   []uint32
	// Console is stdin, stdout and stderr; nil keeps the caller's 0, 1, 2.
	Console *os.File
	// Stdio, if set, are stdin, stdout and stderr (three files; the guest
	// agent gives pipes), in place of Console.
	Stdio []*os.File
	// Ctty makes the workload's stdin the controlling terminal of its new
	// session (it must be a terminal).
	Ctty bool
	// Root, if set, is the directory the workload is chrooted into (a
	// container's root filesystem): Args[0] is looked up there and Dir
	// is inside it.
	Root string
	// Cloneflags are extra clone(2) flags: new namespaces
	// (CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS).
	Cloneflags uintptr
}

// StartError is a command that could not be started.
type StartError struct {
	Path string // what was executed, or Args[0] when it was not found
	// Dir is the working directory, named in the message when the error
	// may be its (a permission error: execve and chdir look alike).
	Dir string
	Err error
	// Code is ExitNotFound or ExitNotExecutable.
	Code int
}

func (e *StartError) Error() string {
	if e.Dir != "" && errors.Is(e.Err, unix.EACCES) {
		return fmt.Sprintf("cannot run %s in %s: %v", e.Path, e.Dir, e.Err)
	}
	return fmt.Sprintf("cannot run %s: %v", e.Path, e.Err)
}
func (e *StartError) Unwrap() error { return e.Err }

// errNotInPath is the message a shell gives for a command it cannot find.
var errNotInPath = errors.New("executable file not found in $PATH")

// Start starts the workload in a new session and returns its pid.
func Start(s Spec) (int, error) {
	if len(s.Args) == 0 || s.Args[0] == "" {
		return 0, &StartError{Path: "(empty command)", Err: fs.ErrNotExist, Code: ExitNotFound}
	}
	path, err := lookPathIn(s.Root, s.Args[0], envValue(s.Env, "PATH"))
	if err != nil {
		return 0, err
	}
	files := []uintptr{0, 1, 2}
	switch {
	case len(s.Stdio) == 3:
		files = []uintptr{s.Stdio[0].Fd(), s.Stdio[1].Fd(), s.Stdio[2].Fd()}
	case len(s.Stdio) != 0:
		return 0, fmt.Errorf("workload: %d stdio files, want 3", len(s.Stdio))
	case s.Console != nil:
		fd := s.Console.Fd()
		files = []uintptr{fd, fd, fd}
	}
	groups := make([]uint32, len(s.Groups))
	copy(groups, s.Groups)
	attr := &syscall.ProcAttr{
		Dir:   s.Dir,
		Env:   s.Env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			Setsid:     true,
			Setctty:    s.Ctty,
			Ctty:       0, // the child's fd 0, the console or terminal
			Credential: &syscall.Credential{Uid: s.UID, Gid: s.GID, Groups: groups},
			Chroot:     s.Root,
			Cloneflags: s.Cloneflags,
		},
	}
	pid, err := syscall.ForkExec(path, s.Args, attr)
	if err != nil {
		return 0, &StartError{Path: path, Dir: s.Dir, Err: err, Code: codeFor(err)}
	}
	return pid, nil
}

// codeFor maps an exec failure to the status a shell reports: "not found"
// for a missing file (or a missing ELF interpreter, which execve reports
// the same way), "cannot execute" for everything else.
func codeFor(err error) int {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, errNotInPath) {
		return ExitNotFound
	}
	return ExitNotExecutable
}

// envValue returns the value of key in env (the last one, as getenv sees
// a list with duplicates), or "".
func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// LookPath finds file as execvp would with PATH set to pathEnv: a name
// with a slash is used as it is; otherwise the first executable regular
// file named file in a PATH directory (an empty entry is "."). A match
// without execute permission is remembered and reported if nothing better
// follows, as a shell does (126 rather than 127).
func LookPath(file, pathEnv string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	var denied string
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		if st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
		if denied == "" {
			denied = p
		}
	}
	if denied != "" {
		return "", &StartError{Path: denied, Err: fs.ErrPermission, Code: ExitNotExecutable}
	}
	return "", &StartError{Path: file, Err: errNotInPath, Code: ExitNotFound}
}

// lookPathIn is LookPath inside root (a chroot: PATH's directories and a
// name with a slash are taken there); the path returned is the one the
// chrooted process executes. Symbolic links are resolved by the kernel at
// exec time, in the chroot; a link that points outside root is followed
// on the host here, so only whether something exists is judged by it.
func lookPathIn(root, file, pathEnv string) (string, error) {
	if root == "" || root == "/" {
		return LookPath(file, pathEnv)
	}
	if strings.Contains(file, "/") {
		return file, nil
	}
	var dirs []string
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		if filepath.IsAbs(dir) {
			dir = filepath.Join(root, dir)
		}
		dirs = append(dirs, dir)
	}
	p, err := LookPath(file, strings.Join(dirs, string(filepath.ListSeparator)))
	if err != nil {
		var se *StartError
		if errors.As(err, &se) && strings.HasPrefix(se.Path, root+"/") {
			se.Path = strings.TrimPrefix(se.Path, root)
		}
		return "", err
	}
	if strings.HasPrefix(p, root+"/") {
		p = strings.TrimPrefix(p, root)
	}
	return p, nil
}

// Supervise runs PID 1's loop until the workload pid has exited: every
// signal from sigs but SIGCHLD is forwarded to pid; every SIGCHLD reaps all
// children that have exited. The caller registers sigs (with SIGCHLD)
// before Start, so no exit is missed. It returns pid's wait status; an
// error only if pid turns out not to be a child (ECHILD before it exited).
func Supervise(pid int, sigs <-chan os.Signal) (unix.WaitStatus, error) {
	for {
		// Reap first: the workload may have exited before the loop began,
		// its SIGCHLD already consumed by an earlier call.
		ws, done, err := reap(pid)
		if err != nil || done {
			return ws, err
		}
		s := <-sigs
		if s == unix.SIGCHLD {
			continue
		}
		if sig, ok := s.(unix.Signal); ok {
			// The workload may be gone already (a zombie not yet reaped
			// or ESRCH): nothing to forward to then.
			_ = unix.Kill(pid, sig)
		}
	}
}

// reap collects every child that has exited, without blocking, and
// reports pid's status once it is among them.
func reap(pid int) (ws unix.WaitStatus, done bool, err error) {
	for {
		var st unix.WaitStatus
		got, err := unix.Wait4(-1, &st, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			if done {
				return ws, true, nil
			}
			return 0, false, fmt.Errorf("waiting for the workload (pid %d): no such child", pid)
		case err != nil:
			return 0, false, fmt.Errorf("wait4: %w", err)
		case got == 0:
			return ws, done, nil
		case got == pid:
			ws, done = st, true
		}
	}
}

// ReapRemaining reaps children until none is left or timeout has passed,
// and reports whether none is left. The init calls it after killing
// everything (kill(-1, SIGKILL)) so that file systems are quiet before
// it syncs.
func ReapRemaining(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		got, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.ECHILD):
			return true
		case errors.Is(err, unix.EINTR), got > 0:
			continue
		case err != nil:
			return false
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(reapPoll)
	}
}

// ExitCode is the status a shell reports for ws: the exit code, or 128+N
// for a process killed by signal N.
func ExitCode(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return exitSignalBase + int(ws.Signal())
	}
	// Stopped or continued: not an end; Supervise never returns these.
	return exitSignalBase + int(ws.StopSignal())
}

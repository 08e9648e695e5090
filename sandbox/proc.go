package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/sandbox/network"
)

// Files of a VM's folder.
const (
	apiSocketName = "api.sock"
	vsockName     = "vsock.sock"
	consoleName   = "console.log"
	emberLogName  = "ember.log"
	// bootTimerMarker is what ember logs when the guest writes the boot
	// timer (vmm: "Guest-boot-time = ...").
	bootTimerMarker = "Guest-boot-time"
	// panicMarker is how Linux starts its panic line
	// (kernel/panic.c: "Kernel panic - not syncing: ...").
	panicMarker = "Kernel panic"
	// pollInterval is how often file and socket waits look again: short,
	// since a restore takes a few milliseconds.
	pollInterval = time.Millisecond
	// statStartTimeField is the start time's field in /proc/PID/stat
	// (proc(5): field 22, starttime, in clock ticks since boot).
	statStartTimeField = 22
)

// vmProc is an ember process this manager started.
type vmProc struct {
	cmd *exec.Cmd
	pid int
}

// startEmber starts `ember --api-sock DIR/api.sock ARGS...` in its own
// session, its stdin /dev/null, stdout (the guest console) and stderr (its
// log) appended to files in dir. It is not tied to this process: it
// survives the manager's death.
func startEmber(ember, dir string, args ...string) (*vmProc, error) {
	return startEmberIn("", ember, dir, args...)
}

// startEmberIn is startEmber with ember born in the network namespace at
// netnsPath (none if empty), where its tap is.
func startEmberIn(netnsPath, ember, dir string, args ...string) (*vmProc, error) {
	console, err := os.OpenFile(filepath.Join(dir, consoleName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer console.Close()
	logf, err := os.OpenFile(filepath.Join(dir, emberLogName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(ember, append([]string{"--api-sock", filepath.Join(dir, apiSocketName)}, args...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = console, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := cmd.Start
	if netnsPath != "" {
		start = func() error { return network.InNamespace(netnsPath, cmd.Start) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", ember, err)
	}
	return &vmProc{cmd: cmd, pid: cmd.Process.Pid}, nil
}

// waitStatus waits for a started ember and returns its exit code or the
// signal that ended it.
func (p *vmProc) waitStatus() (code int, sig int) {
	err := p.cmd.Wait()
	st, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		if err != nil {
			return -1, 0
		}
		return 0, 0
	}
	if st.Signaled() {
		return -1, int(st.Signal())
	}
	return st.ExitStatus(), 0
}

// procStartTime returns the start time of pid (clock ticks since boot)
// and whether it is a live process (not a zombie).
func procStartTime(pid int) (uint64, bool, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// the fields after it start past the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state).
	if len(f) < statStartTimeField-2 {
		return 0, false, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	start, err := strconv.ParseUint(f[statStartTimeField-3], 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return start, f[0] != "Z" && f[0] != "X", nil
}

// sameProcess reports whether pid is alive and is the process that
// started at start.
func sameProcess(pid int, start uint64) bool {
	st, alive, err := procStartTime(pid)
	return err == nil && alive && st == start
}

// waitPidfd waits, through a pidfd, until pid (not necessarily a child)
// has ended. It returns at once if pid is gone.
func waitPidfd(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		return fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(fd)
	for ctx.Err() == nil {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 1000)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll pidfd of %d: %w", pid, err)
		}
		if n > 0 {
			return nil
		}
	}
	return ctx.Err()
}

// waitFileContains waits until the file at path holds text from offset
// from on, or ctx ends.
func waitFileContains(ctx context.Context, path string, from int64, text string) error {
	var (
		buf []byte
		off = from
	)
	for {
		f, err := os.Open(path)
		if err == nil {
			if _, err = f.Seek(off, io.SeekStart); err == nil {
				var more []byte
				more, err = io.ReadAll(f)
				off += int64(len(more))
				buf = append(buf, more...)
			}
			f.Close()
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if bytes.Contains(buf, []byte(text)) {
			return nil
		}
		// Keep only what may hold the start of text.
		if len(buf) > len(text) {
			buf = buf[len(buf)-len(text):]
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(pollInterval):
		}
	}
}

// waitSocket waits until something accepts on the unix socket at path,
// or proc has ended, or ctx ends.
func waitSocket(ctx context.Context, path string, pid int) error {
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		unix.Close(fd)
		if err == nil {
			return nil
		}
		if _, alive, perr := procStartTime(pid); perr != nil || !alive {
			return fmt.Errorf("ember (pid %d) ended before its API socket %s was up", pid, path)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the API socket %s: %w", path, context.Cause(ctx))
		case <-time.After(pollInterval):
		}
	}
}

// lastLine returns the last non-empty line of the file at path (at most
// the last 4 KiB are read).
func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 4096
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		f.Seek(st.Size()-tail, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// findLine returns the first line of the file at path that contains
// marker (the last 1 MiB of it is read).
func findLine(path, marker string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	const tail = 1 << 20
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		f.Seek(st.Size()-tail, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	i := bytes.Index(data, []byte(marker))
	if i < 0 {
		return "", false
	}
	line := data[i:]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	return strings.TrimSpace(string(line)), true
}

package agent

import (
	"bytes"
	"errors"
	"strconv"

	"golang.org/x/sys/unix"
)

// kmsgPath is the kernel log's device (Documentation/ABI/testing/dev-kmsg).
const kmsgPath = "/dev/kmsg"

// maxKmsgRecords bounds how many kernel log records oomKilled reads (the
// ring buffer holds a few thousand at most with the default
// CONFIG_LOG_BUF_SHIFT).
const maxKmsgRecords = 1 << 16

// oomKilled reports whether the kernel log at path says the OOM killer
// killed pid: its line "Out of memory: Killed process PID (comm) ..."
// (mm/oom_kill.c, __oom_kill_process; the memory cgroup's variant reads
// "Memory cgroup out of memory: Killed process PID"). Called only for a
// process SIGKILL ended. Each read of /dev/kmsg returns one record; a
// non-blocking read at the end returns EAGAIN, and a record overwritten
// while reading EPIPE (skipped).
func oomKilled(path string, pid int) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	want := []byte("Killed process " + strconv.Itoa(pid) + " (")
	buf := make([]byte, 8192) // a record is at most 1 KiB of text plus its prefix
	found := false
	for range maxKmsgRecords {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		if bytes.Contains(buf[:n], want) {
			found = true // the last one counts: pids are reused
		}
	}
	return found
}

package agent

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
)

// A container's processes are the guest's processes whose root directory
// is the container's root: its first process is started chrooted there
// (in new namespaces) and every later one too, and children inherit their
// parent's root. /proc/PID/root reads as that path from the agent too,
// the container's mount namespace being a copy of the agent's.

// procDir is where the guest's processes are listed (proc(5)).
const procDir = "/proc"

// Fields of /proc/PID/stat after the command's closing parenthesis
// (proc(5) numbers them from 1 with pid; the state, field 3, is index 0
// here): utime, stime, cutime and cstime, in clock ticks.
const (
	statUTime  = 14 - 3
	statSTime  = 15 - 3
	statCUTime = 16 - 3
	statCSTime = 17 - 3
)

// procUsage is what one process uses now.
type procUsage struct {
	user, system uint64 // ns, with the children it waited for
	mem, anon    uint64 // bytes
}

// readProcUsage reads process dir's stat, and its smaps_rollup (or, in a
// kernel without CONFIG_PROC_PAGE_MONITOR, its statm) (proc(5)); ok is
// false for a process that ended meanwhile or a malformed file.
func readProcUsage(dir string, pageSize uint64) (u procUsage, ok bool) {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return u, false
	}
	// The command may hold spaces and parentheses: the fields start after
	// the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return u, false
	}
	f := bytes.Fields(stat[i+1:])
	if len(f) <= statCSTime {
		return u, false
	}
	var t [4]uint64
	for k, idx := range []int{statUTime, statSTime, statCUTime, statCSTime} {
		if t[k], err = strconv.ParseUint(string(f[idx]), 10, 64); err != nil {
			return u, false
		}
	}
	u.user, u.system = (t[0]+t[2])*tickNanos, (t[1]+t[3])*tickNanos
	rollup, err := os.ReadFile(filepath.Join(dir, "smaps_rollup"))
	if errors.Is(err, fs.ErrNotExist) {
		return readStatm(dir, pageSize, u)
	}
	if err != nil {
		return u, false
	}
	// Pss: the process's share of each page it maps (a page n processes
	// map counts 1/n in each), so that a sum over processes counts every
	// page once. statm's resident count (and Rss in a kernel before 6.2)
	// lags: a thread's page faults are folded into it only every 64.
	var havePss bool
	for _, line := range bytes.Split(rollup, []byte("\n")) {
		k, v, found := bytes.Cut(line, []byte(":"))
		if !found || (string(k) != "Pss" && string(k) != "Anonymous") {
			continue
		}
		n, err := strconv.ParseUint(string(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(" kB"))), 10, 64)
		if err != nil {
			return u, false
		}
		if string(k) == "Pss" {
			u.mem, havePss = n*kiB, true
		} else {
			u.anon = n * kiB
		}
	}
	return u, havePss
}

// kiB is smaps_rollup's unit.
const kiB = 1024

// readStatm fills u's memory from dir's statm: resident pages, less the
// file-backed (shared) ones for anon.
func readStatm(dir string, pageSize uint64, u procUsage) (procUsage, bool) {
	statm, err := os.ReadFile(filepath.Join(dir, "statm"))
	if err != nil {
		return u, false
	}
	m := bytes.Fields(statm)
	if len(m) < 3 {
		return u, false
	}
	resident, err1 := strconv.ParseUint(string(m[1]), 10, 64)
	shared, err2 := strconv.ParseUint(string(m[2]), 10, 64)
	if err1 != nil || err2 != nil {
		return u, false
	}
	u.mem = resident * pageSize
	u.anon = (resident - min(shared, resident)) * pageSize
	return u, true
}

// rootUsage sums what the processes listed in proc (a procfs) whose root
// is root use.
func rootUsage(proc, root string) (proto.ContainerStats, error) {
	var st proto.ContainerStats
	entries, err := os.ReadDir(proc)
	if err != nil {
		return st, err
	}
	pageSize := uint64(os.Getpagesize())
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join(proc, e.Name())
		// A process that ended, or a kernel thread whose root is not
		// the container's, is not one of them.
		if r, err := os.Readlink(filepath.Join(dir, "root")); err != nil || r != root {
			continue
		}
		u, ok := readProcUsage(dir, pageSize)
		if !ok {
			continue
		}
		st.Pids++
		st.UserNanos += u.user
		st.SystemNanos += u.system
		st.MemoryBytes += u.mem
		st.AnonBytes += u.anon
	}
	return st, nil
}

// containerStats answers OpContainerStats.
func (s *Server) containerStats(_ context.Context, req *proto.ContainerRef) (proto.ContainerStats, error) {
	ct := &s.containers
	ct.mu.Lock()
	c := ct.m[req.ID]
	var user, system uint64
	var root string
	if c != nil {
		root, user, system = c.root, c.endedUser, c.endedSystem
	}
	ct.mu.Unlock()
	if c == nil {
		return proto.ContainerStats{}, proto.Errorf(proto.CodeNotFound, "container %q: no such container", req.ID)
	}
	st, err := rootUsage(procDir, root)
	if err != nil {
		return st, err
	}
	st.UserNanos += user
	st.SystemNanos += system
	st.Time = nowUTC()
	return st, nil
}

// containerEnded adds a reaped process's CPU time to its container's.
func (s *Server) containerEnded(id string, ru *unix.Rusage) {
	ct := &s.containers
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if c := ct.m[id]; c != nil {
		c.endedUser += uint64(ru.Utime.Nano())
		c.endedSystem += uint64(ru.Stime.Nano())
	}
}

package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
)

// minCPUWindow is the shortest interval a CPU share is measured over: a
// sample taken sooner after the previous one (or the first) waits for it.
// /proc/stat counts in USER_HZ ticks (100 a second on Linux), so 100 ms
// gives 10 ticks per CPU.
const minCPUWindow = 100 * time.Millisecond

// tickNanos is one clock tick of /proc/stat and /proc/PID/stat in
// nanoseconds: USER_HZ is 100 on Linux (sysconf(_SC_CLK_TCK), proc(5)).
const tickNanos = uint64(time.Second / 100)

// cpuSample is /proc/stat's first line: busy and total ticks, and the
// busy ticks spent in user mode (user, nice) and in the kernel (system,
// irq, softirq).
type cpuSample struct {
	at           time.Time
	busy, total  uint64
	user, system uint64
}

// cpuMeter keeps the previous sample, so that each answer covers the time
// since the one before.
type cpuMeter struct {
	mu   sync.Mutex
	last cpuSample
}

// usedPct returns the CPUs' busy share since the previous call (waiting
// out minCPUWindow when needed), and the sample it ended with.
func (m *cpuMeter) usedPct(ctx context.Context, stat string) (float64, cpuSample, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev := m.last
	if prev.at.IsZero() || time.Since(prev.at) < minCPUWindow {
		s, err := readCPU(stat)
		if err != nil {
			return 0, cpuSample{}, err
		}
		prev = s
		select {
		case <-time.After(minCPUWindow):
		case <-ctx.Done():
			return 0, cpuSample{}, ctx.Err()
		}
	}
	cur, err := readCPU(stat)
	if err != nil {
		return 0, cpuSample{}, err
	}
	m.last = cur
	if cur.total <= prev.total || cur.busy < prev.busy {
		return 0, cur, nil
	}
	return 100 * float64(cur.busy-prev.busy) / float64(cur.total-prev.total), cur, nil
}

// readCPU reads the "cpu" line of /proc/stat (proc(5)): user nice system
// idle iowait irq softirq steal guest guest_nice, in ticks; idle and
// iowait are not busy, guest time is already in user.
func readCPU(stat string) (cpuSample, error) {
	b, err := os.ReadFile(stat)
	if err != nil {
		return cpuSample{}, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return cpuSample{}, fmt.Errorf("%s: no cpu line", stat)
	}
	s := cpuSample{at: time.Now()}
	for i, v := range f[1:min(len(f), 9)] { // up to steal
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cpuSample{}, fmt.Errorf("%s: %q: %w", stat, v, err)
		}
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
		switch i {
		case 0, 1: // user, nice
			s.user += n
		case 2, 5, 6: // system, irq, softirq
			s.system += n
		}
	}
	return s, nil
}

// readMem returns MemTotal and MemTotal less MemAvailable from meminfo,
// in bytes.
func readMem(meminfo string) (total, used uint64, err error) {
	f, err := os.Open(meminfo)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var avail uint64
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "MemTotal" && k != "MemAvailable") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %s: %w", meminfo, k, err)
		}
		if k == "MemTotal" {
			total, haveTotal = n*1024, true
		} else {
			avail, haveAvail = n*1024, true
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if !haveTotal || !haveAvail {
		return 0, 0, fmt.Errorf("%s: no MemTotal or MemAvailable", meminfo)
	}
	return total, total - min(avail, total), nil
}

// metrics answers proto.OpMetrics.
func (s *Server) metrics(ctx context.Context, _ *proto.Empty) (proto.Metrics, error) {
	m := proto.Metrics{CPUs: runtime.NumCPU()}
	pct, cpu, err := s.cpu.usedPct(ctx, "/proc/stat")
	if err != nil {
		return m, fmt.Errorf("cpu: %w", err)
	}
	m.CPUUsedPct, m.CPUUserNanos, m.CPUSystemNanos = pct, cpu.user*tickNanos, cpu.system*tickNanos
	if m.MemTotal, m.MemUsed, err = readMem("/proc/meminfo"); err != nil {
		return m, fmt.Errorf("memory: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.cfg.Root, &st); err != nil {
		return m, fmt.Errorf("statfs %s: %w", s.cfg.Root, err)
	}
	bs := uint64(st.Bsize)
	m.DiskTotal, m.DiskUsed = st.Blocks*bs, (st.Blocks-st.Bfree)*bs
	m.Time = nowUTC()
	return m, nil
}

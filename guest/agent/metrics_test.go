package agent

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestMetrics: a sample has this machine's CPU count, a busy share
// within 0-100, memory and root filesystem figures within their totals;
// a second sample right after covers at least the minimum window.
func TestMetrics(t *testing.T) {
	ta := startAgent(t, nil)
	c := ta.dial(t)
	for i := range 2 {
		m, err := c.Metrics(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if m.CPUs != runtime.NumCPU() || m.CPUUsedPct < 0 || m.CPUUsedPct > 100 ||
			m.MemTotal == 0 || m.MemUsed > m.MemTotal || m.DiskTotal == 0 || m.DiskUsed > m.DiskTotal || m.Time.IsZero() ||
			m.CPUUserNanos+m.CPUSystemNanos == 0 {
			t.Errorf("sample %d: %+v", i, m)
		}
	}
}

// TestReadProcFiles: /proc/stat's busy and total ticks, meminfo's used
// memory, and errors naming the file for what is not theirs.
func TestReadProcFiles(t *testing.T) {
	dir := t.TempDir()
	stat := filepath.Join(dir, "stat")
	os.WriteFile(stat, []byte("cpu  10 1 5 80 4 2 3 0 7 0\ncpu0 10 1 5 80 4 2 3 0 7 0\n"), 0o644)
	s, err := readCPU(stat)
	if err != nil || s.busy != 21 || s.total != 105 || s.user != 11 || s.system != 10 {
		t.Errorf("readCPU: %+v %v, want busy 21 of 105, user 11, system 10", s, err)
	}
	os.WriteFile(stat, []byte("intr 1 2 3\n"), 0o644)
	if _, err := readCPU(stat); err == nil {
		t.Error("readCPU of a file without a cpu line: no error")
	}
	mem := filepath.Join(dir, "meminfo")
	os.WriteFile(mem, []byte("MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     400 kB\n"), 0o644)
	total, used, err := readMem(mem)
	if err != nil || total != 1000*1024 || used != 600*1024 {
		t.Errorf("readMem: %d %d %v", total, used, err)
	}
	os.WriteFile(mem, []byte("MemTotal: 1000 kB\n"), 0o644)
	if _, _, err := readMem(mem); err == nil {
		t.Error("readMem without MemAvailable: no error")
	}
}

package x86

import (
	"strings"
	"testing"
)

func TestCheckCmdline(t *testing.T) {
	if err := CheckCmdline(strings.Repeat("a", 2047), 2048); err != nil {
		t.Errorf("2047 bytes + NUL in 2048: %v", err)
	}
	err := CheckCmdline(strings.Repeat("a", 2048), 2048)
	if err == nil || !strings.Contains(err.Error(), "2048 bytes") || !strings.Contains(err.Error(), "2049") || !strings.Contains(err.Error(), "limit of 2048") {
		t.Errorf("2048 bytes: err = %v, want the length and the limit", err)
	}
	if err := CheckCmdline("console=ttyS0", 14); err != nil {
		t.Errorf("exact fit: %v", err)
	}
	if err := CheckCmdline("console=ttyS0", 13); err == nil {
		t.Error("one byte over a smaller bzImage limit accepted")
	}
	if err := CheckCmdline("a\x00b", 2048); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("embedded NUL: err = %v", err)
	}
	if err := CheckCmdline("", 1); err != nil {
		t.Errorf("empty: %v", err)
	}
}

func TestWriteCmdline(t *testing.T) {
	mem := testGuest(1 << 20)
	copy(read(t, mem, CmdlineAddr, 32), strings.Repeat("\xff", 32))
	if err := WriteCmdline(mem, CmdlineAddr, "console=ttyS0 reboot=k"); err != nil {
		t.Fatal(err)
	}
	if got := string(read(t, mem, CmdlineAddr, 23)); got != "console=ttyS0 reboot=k\x00" {
		t.Errorf("cmdline in memory %q", got)
	}
	if err := WriteCmdline(mem, CmdlineAddr, strings.Repeat("x", 2048)); err == nil {
		t.Error("oversized cmdline written")
	}
	if err := WriteCmdline(mem, 1<<20-4, "abcd"); err == nil {
		t.Error("cmdline written past the end of memory")
	}
}

package x86

import (
	"fmt"
	"strings"

	"github.com/embervm/ember/memory"
)

// CheckCmdline checks that the command line s, with its terminating NUL,
// fits in limit bytes (CmdlineMaxSize, Linux's COMMAND_LINE_SIZE, or a
// bzImage's smaller cmdline_size+1) and contains no NUL.
func CheckCmdline(s string, limit int) error {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return fmt.Errorf("kernel command line contains a NUL byte at offset %d", i)
	}
	if len(s)+1 > limit {
		return fmt.Errorf("kernel command line of %d bytes (%d with its NUL) exceeds the limit of %d bytes including the NUL", len(s), len(s)+1, limit)
	}
	return nil
}

// WriteCmdline writes s and a terminating NUL at addr, after checking it
// against CmdlineMaxSize.
func WriteCmdline(mem *memory.Guest, addr uint64, s string) error {
	if err := CheckCmdline(s, CmdlineMaxSize); err != nil {
		return err
	}
	b := make([]byte, len(s)+1)
	copy(b, s)
	if _, err := mem.WriteAt(b, int64(addr)); err != nil {
		return fmt.Errorf("write kernel command line at %#x: %w", addr, err)
	}
	return nil
}

package x86

import (
	"encoding/binary"
	"testing"

	"github.com/embervm/ember/memory"
)

// testGuest returns size bytes of plain-slice guest memory at address 0.
func testGuest(size uint64) *memory.Guest {
	return memory.FromRegions([]memory.Region{{GuestAddr: 0, Host: make([]byte, size)}})
}

// newGuest maps real guest memory (MAP_NORESERVE, so large sizes are cheap).
func newGuest(t *testing.T, size uint64) *memory.Guest {
	t.Helper()
	g, err := memory.New(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func read(t *testing.T, mem *memory.Guest, addr, n uint64) []byte {
	t.Helper()
	b, err := mem.Slice(addr, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func u16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func u32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func u64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

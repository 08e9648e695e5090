package snapshot

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// sendMapping connects to sock and sends body with the given descriptors,
// as a VMM hands its userfaultfd to the page-fault handler.
func sendMapping(t *testing.T, sock string, body []byte, fds ...int) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.(*net.UnixConn).WriteMsgUnix(body, unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
}

// TestAcceptUffdRejectsBadMappings: the handler refuses a mapping message
// whose regions would make it copy from outside the memory file (sums that
// overflow, unaligned or empty regions, overlaps) or that carries more than
// the one descriptor, instead of accepting it and panicking on the first
// fault. A good message is accepted.
func TestAcceptUffdRejectsBadMappings(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "vm.mem")
	if err := os.WriteFile(mem, make([]byte, 4*PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "uffd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Any descriptor stands in for the userfaultfd: AcceptUffd only
	// receives it.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	enc := func(maps ...UffdMapping) []byte {
		b, err := json.Marshal(maps)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	region := func(base, size, off uint64) UffdMapping {
		return UffdMapping{BaseHostVirtAddr: base, Size: size, Offset: off, PageSize: PageSize}
	}
	const base = 0x7f00_0000_0000
	for _, c := range []struct {
		name string
		body []byte
		fds  []int
		want string
	}{
		{"offset overflows", enc(region(base, 2*PageSize, 1<<64-PageSize)), nil, "offset"},
		{"size overflows the address", enc(region(1<<64-PageSize, 2*PageSize, 0)), nil, "host address"},
		{"unaligned size", enc(region(base, 100, 0)), nil, "size"},
		{"unaligned offset", enc(region(base, PageSize, 1)), nil, "offset"},
		{"zero size", enc(region(base, 0, 0)), nil, "size"},
		{"huge page size", enc(UffdMapping{BaseHostVirtAddr: base, Size: PageSize, PageSize: 2 << 20}), nil, "page size"},
		{"no regions", []byte("[]"), nil, "regions"},
		{"overlap", enc(region(base, 2*PageSize, 0), region(base+PageSize, PageSize, 2*PageSize)), nil, "overlap"},
		{"not JSON", []byte("{"), nil, "unexpected end"},
		{"two descriptors", enc(region(base, PageSize, 0)), []int{p[0], p[1]}, "one file descriptor"},
		{"longer than the file", enc(region(base, 8*PageSize, 0)), nil, "shorter"},
	} {
		fds := c.fds
		if fds == nil {
			fds = []int{p[0]}
		}
		sendMapping(t, sock, c.body, fds...)
		h, err := AcceptUffd(ln, mem)
		if err == nil {
			h.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
	}
	sendMapping(t, sock, enc(region(base, 2*PageSize, 0), region(base+4*PageSize, 2*PageSize, 2*PageSize)), p[0])
	h, err := AcceptUffd(ln, mem)
	if err != nil {
		t.Fatalf("a good message: %v", err)
	}
	h.Close()
}

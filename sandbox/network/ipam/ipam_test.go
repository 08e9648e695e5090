package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestAllocateDistinctAndExhaust(t *testing.T) {
	a, err := New(netip.MustParsePrefix("10.9.0.0/28"), 30, &MemStore{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Size() != 4 {
		t.Fatalf("size %d, want 4", a.Size())
	}
	seen := map[netip.Prefix]bool{}
	for i := 0; i < 4; i++ {
		p, err := a.Allocate(fmt.Sprint("sb", i))
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] || p.Bits() != 30 || !a.Range().Contains(p.Addr()) {
			t.Fatalf("block %v: duplicate or outside the range", p)
		}
		seen[p] = true
	}
	if _, err := a.Allocate("sb4"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("fifth allocation: %v, want ErrExhausted", err)
	}
	// The same owner gets its block back.
	p0, _ := a.Lookup("sb0")
	if p, err := a.Allocate("sb0"); err != nil || p != p0 {
		t.Fatalf("re-allocate sb0: %v %v, want %v", p, err, p0)
	}
	if err := a.Release("sb1"); err != nil {
		t.Fatal(err)
	}
	p, err := a.Allocate("sb5")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup("sb1"); ok {
		t.Fatal("sb1 still has a lease")
	}
	if n := len(a.Leases()); n != 4 {
		t.Fatalf("%d leases, want 4 (%v)", n, p)
	}
}

func TestNextFit(t *testing.T) {
	a, _ := New(netip.MustParsePrefix("10.9.0.0/24"), 30, &MemStore{})
	p1, _ := a.Allocate("a")
	a.Release("a")
	p2, _ := a.Allocate("b")
	if p1 == p2 {
		t.Fatalf("a released block %v was handed out again at once", p1)
	}
}

func TestFileStoreRecover(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.json")
	cidr := netip.MustParsePrefix("10.9.0.0/24")
	a, err := New(cidr, 30, NewFileStore(path))
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Prefix
	for _, o := range []string{"x", "y", "z"} {
		p, err := a.Allocate(o)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	a.Release("y")

	// A restarted allocator keeps x and z and never hands them out again.
	b, err := New(cidr, 30, NewFileStore(path))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := b.Lookup("x"); !ok || p != got[0] {
		t.Fatalf("x after restart: %v %v, want %v", p, ok, got[0])
	}
	if _, ok := b.Lookup("y"); ok {
		t.Fatal("released y came back")
	}
	for i := 0; i < b.Size()-2; i++ {
		p, err := b.Allocate(fmt.Sprint("n", i))
		if err != nil {
			t.Fatal(err)
		}
		if p == got[0] || p == got[2] {
			t.Fatalf("%v handed out twice across a restart", p)
		}
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		cidr string
		bits int
	}{{"10.9.0.1/24", 30}, {"10.9.0.0/24", 16}, {"10.9.0.0/24", 33}, {"fd00::/64", 126}} {
		if _, err := New(netip.MustParsePrefix(tc.cidr), tc.bits, &MemStore{}); err == nil {
			t.Errorf("New(%s, /%d) accepted", tc.cidr, tc.bits)
		}
	}
	// A persisted lease outside the range or doubled is refused.
	path := filepath.Join(t.TempDir(), "l.json")
	os.WriteFile(path, []byte(`[{"owner":"a","prefix":"10.9.0.4/30"},{"owner":"b","prefix":"10.9.0.4/30"}]`), 0o600)
	if _, err := New(netip.MustParsePrefix("10.9.0.0/24"), 30, NewFileStore(path)); err == nil {
		t.Error("a block held twice was accepted")
	}
	os.WriteFile(path, []byte(`[{"owner":"a","prefix":"10.8.0.4/30"}]`), 0o600)
	if _, err := New(netip.MustParsePrefix("10.9.0.0/24"), 30, NewFileStore(path)); err == nil {
		t.Error("a block outside the range was accepted")
	}
}

type failStore struct{ MemStore }

func (*failStore) Put(Lease) error { return errors.New("disk full") }

func TestStoreFailureAllocatesNothing(t *testing.T) {
	a, _ := New(netip.MustParsePrefix("10.9.0.0/24"), 30, &failStore{})
	if _, err := a.Allocate("a"); err == nil {
		t.Fatal("allocation succeeded without persisting")
	}
	if len(a.Leases()) != 0 {
		t.Fatal("a lease that was not persisted is held")
	}
}

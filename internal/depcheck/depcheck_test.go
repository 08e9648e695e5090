package depcheck

import (
	"slices"
	"testing"
)

func TestIsHeavy(t *testing.T) {
	for path, want := range map[string]bool{
		Module + "/sandbox":                     true,
		Module + "/sandbox/network":             true,
		Module + "/sandbox/api":                 true,
		Module + "/image/boot":                  true,
		"go.etcd.io/bbolt/internal/common":      true,
		"github.com/google/nftables/expr":       true,
		Module + "/sandbox/wire":                false,
		Module + "/sandbox/client":              false,
		Module + "/sandbox/network/egress":      false,
		Module + "/imagex":                      false,
		Module + "/vmm":                         false,
		"github.com/google/go-containerregistr": false,
	} {
		if got := IsHeavy(path); got != want {
			t.Errorf("IsHeavy(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestChain(t *testing.T) {
	g := map[string][]string{
		"a": {"b", "c"},
		"b": {"d"},
		"c": {"d", "e"},
		"d": {"e"},
		"e": nil,
	}
	if got, want := Chain(g, "a", "e"), []string{"a", "c", "e"}; !slices.Equal(got, want) {
		t.Errorf("Chain a->e = %v, want %v", got, want)
	}
	if got := Chain(g, "b", "c"); got != nil {
		t.Errorf("Chain b->c = %v, want none", got)
	}
	got := Forbidden(g, "a", func(p string) bool { return p == "d" || p == "e" })
	if len(got) != 2 || !slices.Equal(got[0], []string{"a", "b", "d"}) || !slices.Equal(got[1], []string{"a", "c", "e"}) {
		t.Errorf("Forbidden d, e = %v", got)
	}
	// d is linked through b, and also past it through c: both are named.
	got = Forbidden(g, "a", func(p string) bool { return p == "b" || p == "d" })
	if len(got) != 2 || !slices.Equal(got[0], []string{"a", "b"}) || !slices.Equal(got[1], []string{"a", "c", "d"}) {
		t.Errorf("Forbidden b, d = %v", got)
	}
	// e is linked through c, and also past it through b and d: named with
	// the chain that avoids c.
	got = Forbidden(g, "a", func(p string) bool { return p == "c" || p == "e" })
	if len(got) != 2 || !slices.Equal(got[0], []string{"a", "c"}) || !slices.Equal(got[1], []string{"a", "b", "d", "e"}) {
		t.Errorf("Forbidden c, e = %v", got)
	}
}

// TestGraphCatches: the check sees a real heavy import; package sandbox
// links bbolt.
func TestGraphCatches(t *testing.T) {
	root, g, err := Graph("../../sandbox", ".")
	if err != nil {
		t.Fatal(err)
	}
	if root != Module+"/sandbox" {
		t.Fatalf("root %q", root)
	}
	c := Chain(g, root, "go.etcd.io/bbolt")
	if len(c) < 2 || c[0] != root {
		t.Fatalf("package sandbox's graph has no chain to bbolt: %v", c)
	}
}

// TestForbiddenOnlyThrough: a package linked only through a forbidden one
// is left out.
func TestForbiddenOnlyThrough(t *testing.T) {
	g := map[string][]string{"a": {"b"}, "b": {"c"}, "c": nil}
	got := Forbidden(g, "a", func(p string) bool { return p == "b" || p == "c" })
	if len(got) != 1 || !slices.Equal(got[0], []string{"a", "b"}) {
		t.Errorf("Forbidden = %v", got)
	}
}

// Package depcheck lets a test assert what a package links: it asks the go
// command (`go list -deps`) for the package's import graph and fails the
// test on every forbidden package, with the chain of imports that brings
// it in. The ember binary is started once per microVM, so each package it
// links costs every VM start-up time and resident memory; emberd's client
// and the ember CLI share the binary and must link only the API's leaf
// packages (sandbox/wire, sandbox/network/egress), not the manager.
package depcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Module is this repository's module path (go.mod).
const Module = "github.com/embervm/ember"

// heavy lists what the VMM binary and emberd's client must not link, as
// import-path prefixes (a prefix matches the path itself and the packages
// under it).
func heavy() []string {
	return []string{
		// emberd's manager's server, its E2B gateway and metrics, and the
		// network's address management.
		Module + "/sandbox/api",
		Module + "/sandbox/e2b",
		Module + "/sandbox/metrics",
		Module + "/sandbox/network/ipam",
		// The image store and its boot preparation.
		Module + "/image",
		// What those link: the manager's database, the image store's
		// registry client, the network's netlink and nftables.
		"go.etcd.io/bbolt",
		"github.com/google/go-containerregistry",
		"github.com/vishvananda/netlink",
		"github.com/vishvananda/netns",
		"github.com/mdlayher/netlink",
		"github.com/google/nftables",
	}
}

// heavyExact lists packages forbidden by their exact path only: packages
// under them include the leaves that are allowed (sandbox/wire,
// sandbox/client, sandbox/network/egress).
func heavyExact() []string {
	return []string{
		Module + "/sandbox",
		Module + "/sandbox/network",
	}
}

// IsHeavy reports whether the ember binary and emberd's client must not
// link the package path: emberd's manager (package sandbox), its network
// (sandbox/network), the image store, or what they link.
func IsHeavy(path string) bool {
	for _, p := range heavyExact() {
		if path == p {
			return true
		}
	}
	for _, p := range heavy() {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

// pkg is the part of `go list -json` output read here.
type pkg struct {
	ImportPath string
	Imports    []string
}

// Graph returns the import graph of pattern's package and every package it
// links (not its tests), from `go list -deps` run in dir, and the root's
// import path.
func Graph(dir, pattern string) (root string, graph map[string][]string, err error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", nil, fmt.Errorf("depcheck: the go command: %w", err)
	}
	cmd := exec.Command(gobin, "list", "-deps", "-json=ImportPath,Imports", pattern)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", nil, fmt.Errorf("depcheck: go list -deps %s: %w: %s", pattern, err, strings.TrimSpace(stderr.String()))
	}
	graph = map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", nil, fmt.Errorf("depcheck: go list output: %w", err)
		}
		graph[p.ImportPath] = p.Imports
		// -deps lists a package after everything it imports: the last is
		// the root.
		root = p.ImportPath
	}
	if root == "" {
		return "", nil, fmt.Errorf("depcheck: go list -deps %s listed no package", pattern)
	}
	return root, graph, nil
}

// Chain returns the shortest chain of imports from root to target in
// graph, or nil if root does not link target.
func Chain(graph map[string][]string, root, target string) []string {
	return chain(graph, root, target, func(string) bool { return false })
}

// chain is Chain through no package that avoid matches (but target).
func chain(graph map[string][]string, root, target string, avoid func(string) bool) []string {
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == target {
			var c []string
			for q := p; q != ""; q = prev[q] {
				c = append(c, q)
			}
			slices.Reverse(c)
			return c
		}
		if p != root && avoid(p) {
			continue
		}
		for _, q := range graph[p] {
			if _, seen := prev[q]; !seen {
				prev[q] = p
				queue = append(queue, q)
			}
		}
	}
	return nil
}

// Forbidden returns, for each package linked by root that forbidden
// matches, the shortest chain of imports that brings it in; a package
// linked only through another forbidden package is left out (removing
// that one removes it).
func Forbidden(graph map[string][]string, root string, forbidden func(string) bool) [][]string {
	var chains [][]string
	for _, p := range slices.Sorted(maps.Keys(graph)) {
		if !forbidden(p) {
			continue
		}
		if c := chain(graph, root, p, forbidden); c != nil {
			chains = append(chains, c)
		}
	}
	return chains
}

// NoHeavy fails t if the package in dir (pattern ".") links a package that
// IsHeavy matches, naming each one with the imports that bring it in.
func NoHeavy(t testing.TB, dir string) {
	t.Helper()
	root, graph, err := Graph(dir, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range Forbidden(graph, root, IsHeavy) {
		t.Errorf("%s links %s, which it must not (imported through %s)", root, c[len(c)-1], strings.Join(c, " -> "))
	}
}

// standard reports whether path is the standard library's: its first
// element has no dot (the go command's own rule for std paths).
func standard(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

// Leaf fails t if the package in dir links anything but the standard
// library and the packages allowed (the leaves it builds on), naming each
// one with the imports that bring it in.
func Leaf(t testing.TB, dir string, allowed ...string) {
	t.Helper()
	root, graph, err := Graph(dir, ".")
	if err != nil {
		t.Fatal(err)
	}
	outside := func(p string) bool { return p != root && !standard(p) && !slices.Contains(allowed, p) }
	for _, c := range Forbidden(graph, root, outside) {
		t.Errorf("%s links %s, but a leaf package links only the standard library and %v (imported through %s)",
			root, c[len(c)-1], allowed, strings.Join(c, " -> "))
	}
}

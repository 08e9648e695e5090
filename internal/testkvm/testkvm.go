// Package testkvm is the one place tests decide what to do without a usable
// /dev/kvm. A test that needs KVM calls Need first. On a machine without
// KVM it is skipped, and then:
//
//   - under make test (EMBER_KVM_LAB_LIST set), the test is written to that
//     list, and make runs the listed tests again inside the lab, whose
//     /dev/kvm is real: the suite boots its VMs whatever the host has;
//   - otherwise, with the environment variable CI set, it fails instead: a
//     CI run whose KVM tests all skipped would be green without having
//     booted a single VM.
//
// It opens /dev/kvm itself rather than through package kvm, so that package
// kvm's own tests can use it without an import cycle.
package testkvm

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// Device is the KVM device node.
const Device = "/dev/kvm"

// ciEnv is the environment variable CI systems set (CI=true); when it is
// set, a missing KVM is a failure, not a skip.
const ciEnv = "CI"

// LabListEnv names the file Need lists skipped tests in, one per line as
// the test's package directory, a tab and its top-level test name.
const LabListEnv = "EMBER_KVM_LAB_LIST"

// Need skips t (listing it for the lab, or failing it under CI; see the
// package comment) if /dev/kvm cannot be opened for reading and writing.
func Need(t testing.TB) {
	t.Helper()
	need(t, Device)
}

// need is Need for the device node at path.
func need(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return
	}
	if list := os.Getenv(LabListEnv); list != "" {
		if lerr := addToList(list, t.Name()); lerr != nil {
			t.Fatalf("no usable %s (%v), and listing the test for the lab failed: %v", path, err, lerr)
		}
		t.Skipf("no usable %s (%v): listed to run in the lab", path, err)
	}
	if os.Getenv(ciEnv) != "" {
		t.Fatalf("no usable %s (%v), and %s is set: a CI run must boot its VMs, not skip them", path, err, ciEnv)
	}
	t.Skipf("no usable %s: %v", path, err)
}

// addToList appends the working directory (go test runs a test binary in
// its package's directory) and the top-level test of name to the list.
// One short O_APPEND write is atomic, so parallel test binaries can share
// the list.
func addToList(list, name string) error {
	dir, err := os.Getwd()
	if err != nil {
		return err
	}
	top, _, _ := strings.Cut(name, "/")
	f, err := os.OpenFile(list, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s\t%s\n", dir, top)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Package testkvm is the one place tests decide what to do without a usable
// /dev/kvm. A test that needs KVM calls Need first: on a machine without
// KVM it is skipped, unless the environment variable CI is set, in which
// case it fails. A CI run whose KVM tests all skipped would be green
// without having booted a single VM, so CI must have KVM or go red.
//
// It opens /dev/kvm itself rather than through package kvm, so that package
// kvm's own tests can use it without an import cycle.
package testkvm

import (
	"os"
	"testing"
)

// Device is the KVM device node.
const Device = "/dev/kvm"

// ciEnv is the environment variable CI systems set (CI=true); when it is
// set, a missing KVM is a failure, not a skip.
const ciEnv = "CI"

// Need skips t, or fails it when CI is set, if /dev/kvm cannot be opened
// for reading and writing.
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
	if os.Getenv(ciEnv) != "" {
		t.Fatalf("no usable %s (%v), and %s is set: a CI run must boot its VMs, not skip them", path, err, ciEnv)
	}
	t.Skipf("no usable %s: %v", path, err)
}

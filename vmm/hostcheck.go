package vmm

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"strings"
)

// Paths read by the host check, relative to the root of the host's file
// system (fs.FS paths).
const (
	cpuinfoPath  = "proc/cpuinfo"
	pvmModuleDir = "sys/module/kvm_pvm"
)

// ErrEmulatedKVM reports a host whose /dev/kvm would emulate a Linux guest's
// kernel code instruction by instruction instead of running it.
var ErrEmulatedKVM = errors.New("this host's KVM cannot run a Linux guest at native speed")

// HostProblem returns a one-line description of why this host's KVM cannot
// run ordinary guests natively, or "" when it can. Two signs: the CPU lacks
// the vmx/svm flag (no hardware virtualization), or the Pagetable-based
// Virtual Machine hypervisor (kvm_pvm) is loaded, which runs only
// PVM-enabled guest kernels natively and emulates everything else.
func HostProblem() string { return HostProblemFS(os.DirFS("/")) }

// HostProblemFS is HostProblem on the host whose root file system is root
// (ember doctor's checks, and their tests with a fake /proc and /sys).
func HostProblemFS(root fs.FS) string {
	_, pvmErr := fs.Stat(root, pvmModuleDir)
	pvm := pvmErr == nil
	hw := cpuHasVirtFlag(root)
	switch {
	case pvm && !hw:
		return "/dev/kvm is PVM-backed nested KVM (kvm_pvm loaded, no vmx/svm CPU flag)"
	case pvm:
		return "/dev/kvm is PVM-backed (kvm_pvm loaded)"
	case !hw:
		return "the CPU has no vmx/svm flag, so KVM has no hardware virtualization"
	}
	return ""
}

func cpuHasVirtFlag(root fs.FS) bool {
	b, err := fs.ReadFile(root, cpuinfoPath)
	if err != nil {
		return true // cannot tell: do not block
	}
	s := bufio.NewScanner(bytes.NewReader(b))
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return true
}

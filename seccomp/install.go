package seccomp

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe" // also for go:linkname

	"golang.org/x/sys/unix"
)

// seccomp(2) operation and flag (include/uapi/linux/seccomp.h).
const (
	setModeFilter = 1 // SECCOMP_SET_MODE_FILTER
	flagTSync     = unix.SECCOMP_FILTER_FLAG_TSYNC
)

// Confinement is a compiled policy and where it is in its installation:
// Start (or Arm) before anything else, ConfineProcess when the guest is
// about to run, ConfineVCPUThread on each vCPU thread. It satisfies
// vmm.Confiner.
type Confinement struct {
	bootPolicy *Filter // compiled by Start
	vmm, vcpu  Program
	pid        int

	mu      sync.Mutex
	armed   bool
	running bool // the vmm filter is installed
}

// iscgo is set by runtime/cgo: the binary links the C library (Go's
// runtime exports it for such checks).
//
//go:linkname iscgo runtime.iscgo
var iscgo bool

// ErrCgo: the filters are built for a static binary.
var ErrCgo = errors.New("seccomp: this binary links the C library (built with cgo), which opens files lazily with every signal blocked (malloc reads /sys/devices/system/cpu/online when a thread first needs an arena), so a filter cannot refuse opens and report them; build it with CGO_ENABLED=0, as make build does")

// New compiles p for this process (conditions on "pid" take its pid). It
// refuses a binary linked with the C library (ErrCgo).
func New(p *Policy) (*Confinement, error) {
	if iscgo {
		return nil, ErrCgo
	}
	pid := os.Getpid()
	c := &Confinement{bootPolicy: p.Boot, pid: pid}
	var err error
	if c.vmm, err = Compile(&p.VMM, pid, dataVMM); err != nil {
		return nil, fmt.Errorf("seccomp: %s filter: %w", NameVMM, err)
	}
	if c.vcpu, err = Compile(&p.VCPU, pid, dataVCPU); err != nil {
		return nil, fmt.Errorf("seccomp: %s filter: %w", NameVCPU, err)
	}
	return c, nil
}

// Arm installs the SIGSYS reporter without a filter: ConfineProcess
// then installs the first. For ember run, whose VM is built from trusted
// flags before anything untrusted runs (as Firecracker installs its vmm
// filter just before the guest runs): the boot filter would only cost its
// installation and a layer on every later system call. From then on a
// refused system call calls report (which should log the Violation as one
// line) and ends the process with ExitCode.
func (c *Confinement) Arm(report func(Violation)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.armed {
		return errors.New("seccomp: already started")
	}
	preload()
	if err := arm(report); err != nil {
		return err
	}
	c.armed = true
	return nil
}

// Start arms the reporter (see Arm) and installs the first process-wide
// filter: boot, or vmm if the policy has no boot filter. Call it once,
// before the API accepts a request and before anything runs guest code.
func (c *Confinement) Start(report func(Violation)) error {
	if err := c.Arm(report); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bootPolicy == nil {
		if err := install(c.vmm, true); err != nil {
			return err
		}
		c.running = true
		return nil
	}
	boot, err := Compile(c.bootPolicy, c.pid, dataBoot)
	if err != nil {
		return fmt.Errorf("seccomp: %s filter: %w", NameBoot, err)
	}
	return install(boot, true)
}

// ConfineProcess installs the vmm filter on every thread (on top of the
// boot filter, if Start installed it) before the guest first runs. Later
// calls do nothing.
func (c *Confinement) ConfineProcess() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.armed {
		return errors.New("seccomp: ConfineProcess before Start or Arm")
	}
	if c.running {
		return nil
	}
	if err := install(c.vmm, true); err != nil {
		return err
	}
	c.running = true
	return nil
}

// ConfineVCPUThread installs the vcpu filter on the calling thread. The
// caller has locked its goroutine to the thread (runtime.LockOSThread)
// and must never unlock it: the thread then ends with the goroutine
// instead of going back to the scheduler to run other goroutines under the
// vCPU filter.
func (c *Confinement) ConfineVCPUThread() error {
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	if !running {
		return errors.New("seccomp: ConfineVCPUThread before ConfineProcess")
	}
	return install(c.vcpu, false)
}

// install loads prog on the calling thread or, with tsync, on every thread
// of the process. no_new_privs is set first, as seccomp requires of a
// process without CAP_SYS_ADMIN (and as Firecracker does); TSYNC sets it on
// every thread.
func install(prog Program, tsync bool) error {
	if len(prog) == 0 {
		return errors.New("seccomp: empty filter")
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("seccomp: prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	var flags uintptr
	if tsync {
		flags = flagTSync
	}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, setModeFilter, flags, uintptr(unsafe.Pointer(&fprog)))
	switch {
	case e != 0:
		return fmt.Errorf("seccomp: install filter: %w", e)
	case r != 0:
		// TSYNC names a thread that could not take the filter: one
		// already running a filter of its own (a vCPU thread).
		return fmt.Errorf("seccomp: thread %d cannot take the process-wide filter", r)
	}
	return nil
}

// preload does, before the first filter, what the Go runtime and standard
// library would otherwise do lazily with system calls the filters refuse:
// the time package reads /etc/localtime on the first use of the local
// time zone (a log line's time stamp).
func preload() {
	_ = time.Local.String()
}

package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/embervm/ember/mmds"
	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio/balloon"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
)

// Limits and defaults of the machine configuration (Firecracker's).
const (
	MinVCPUs       = 1
	MaxVCPUs       = 32
	DefaultVCPUs   = 1
	DefaultMemMiB  = 128
	MinMemMiB      = 1
	MaxMemMiB      = 1 << 20 // 1 TiB: beyond what the x86 layout below 1 TiB can hold
	DefaultCmdline = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd"
)

// Boot protocols for ELF kernels.
const (
	BootAuto    = ""        // PVH if the ELF has a PVH entry note, else the 64-bit Linux entry
	BootLinux64 = "linux64" // the 64-bit Linux boot protocol (zero page, long mode)
	BootPVH     = "pvh"     // the Xen PVH entry (hvm_start_info, 32-bit protected mode)
)

// Config describes a machine. It is what the CLI flags (and later the API and
// the config file) fill in.
type Config struct {
	KernelPath string
	InitrdPath string
	Cmdline    string
	VCPUs      int
	MemMiB     int
	BootTimer  bool
	// PIT adds the in-kernel i8254 PIT (KVM_CREATE_PIT2, as Firecracker
	// does). Off by default, as in Cloud Hypervisor: a Linux guest with
	// kvm-clock and the TSC-deadline LAPIC timer never uses it, and on hosts
	// with slow SRCU grace periods creating and destroying it costs several
	// of them (about 10-15 ms of exec-to-exit measured on the PVM hosts). A
	// guest that calibrates or ticks with the PIT needs it.
	PIT bool

	// Drives are the virtio-blk drives; the root drive is attached first.
	Drives []DriveConfig
	// NoVirtioCmdline announces the virtio-mmio devices in ACPI only, not
	// also with virtio_mmio.device= words on the kernel command line.
	NoVirtioCmdline bool
	// Balloon, if set, adds a virtio-balloon device.
	Balloon *balloon.Config
	// Nets are the virtio-net interfaces, each on a host tap.
	Nets []vnet.Config
	// Vsock, if set, adds a virtio-vsock device bridged to host unix sockets.
	Vsock *vsock.Config
	// RNG, if set, adds a virtio-rng entropy device.
	RNG *rng.Config
	// MMDS, if set, answers the guest's metadata requests on the
	// interfaces it names (Normalized: every field filled). Snapshots
	// keep it.
	MMDS *mmds.Config
	// MMDSStore is the MMDS data store: the process's, shared by the VM
	// it builds (nil: an empty one of the default limit). It is not
	// configuration: snapshots do not keep it, clones share it.
	MMDSStore *mmds.Store
	// InstanceID is the microVM's id (--id): the MMDS binds its V2
	// tokens to it.
	InstanceID string
	// BootProtocol selects how an ELF kernel is entered (BootAuto, BootLinux64, BootPVH).
	BootProtocol string

	// SMT presents the vCPUs as pairs of hyperthreads (Firecracker's smt;
	// VCPUs must then be 1 or even).
	SMT bool
	// TrackDirtyPages turns on KVM's dirty log for diff snapshots.
	TrackDirtyPages bool
	// HugePages is HugePagesNone (default) or HugePagesTransparent.
	HugePages string
	// CPU, if set, modifies the CPUID and MSRs the vCPUs see (PUT /cpu-config).
	CPU *CPUConfig
	// SerialOutPath, if set, receives the guest's serial output instead of
	// Console (PUT /serial).
	SerialOutPath string
	// SerialOutRateLimit caps what reaches SerialOutPath (PUT /serial's
	// rate_limiter, as a bandwidth bucket); output beyond it is dropped.
	// Nil means the default cap (see serialOutBurst); a bucket of size 0
	// means no cap.
	SerialOutRateLimit *ratelimit.Config

	// Console receives the guest's serial output; nil discards it. It is
	// written from a goroutine of its own through a bounded buffer: when
	// it does not keep up, output is dropped (uart.missed_write_count).
	Console io.Writer
	// ConsoleIn, if set, is read and fed to the guest's serial port.
	ConsoleIn io.Reader

	// Logger receives Ember's own messages; nil uses slog.Default().
	Logger *slog.Logger
	// StartTime is when the process started, for the boot timer; zero means now.
	StartTime time.Time
	// AllowEmulatedKVM skips the host check that refuses to boot a Linux
	// kernel on a KVM that would emulate it (see CheckHost).
	AllowEmulatedKVM bool
	// Confine, if set, confines the process before the guest's first
	// instruction (package seccomp's filters).
	Confine Confiner

	// Complete, if set, is called once, by New, after the kernel is
	// loaded and before anything that reads the initrd, the drives or the
	// command line: it fills in what was being prepared while the kernel
	// loaded (`ember run --image`: an image's initrd and drives, made by
	// another process). Its error ends New; the configuration it leaves is
	// validated again.
	Complete func(*Config) error
}

// Confiner confines the threads that run a guest. Run calls
// ConfineProcess once before any vCPU starts, then each vCPU thread,
// locked to its goroutine for good, calls ConfineVCPUThread before its
// first KVM_RUN.
type Confiner interface {
	ConfineProcess() error
	ConfineVCPUThread() error
}

// Huge page modes of the guest memory (Firecracker's huge_pages).
const (
	HugePagesNone        = "None"
	HugePagesTransparent = "Transparent"
)

// CPUConfig is a custom CPU template (Firecracker's PUT /cpu-config),
// already parsed: every modifier sets the bits of Mask to those of Value.
type CPUConfig struct {
	// KVMCapabilities are KVM capability numbers to require ("121") or to
	// ignore ("!121").
	KVMCapabilities []string
	CPUID           []CPUIDModifier
	MSRs            []MSRModifier
}

// CPUIDModifier changes registers of one CPUID leaf and subleaf.
type CPUIDModifier struct {
	Leaf, Subleaf uint32
	// Flags are KVM's kvm_cpuid_entry2 flags (1 = the subleaf matters).
	Flags     uint32
	Registers []RegisterModifier
}

// RegisterModifier sets Mask's bits of one CPUID register (eax, ebx, ecx,
// edx) to Value's.
type RegisterModifier struct {
	Register    string
	Mask, Value uint32
}

// MSRModifier sets Mask's bits of the MSR at Addr to Value's.
type MSRModifier struct {
	Addr        uint32
	Mask, Value uint64
}

// ErrInvalidConfig marks configuration errors: the user's input is wrong.
var ErrInvalidConfig = errors.New("invalid configuration")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// Validate checks the parts of the configuration that need no files.
func (c *Config) Validate() error {
	switch {
	case c.KernelPath == "":
		return invalid("no kernel given")
	case c.VCPUs < MinVCPUs || c.VCPUs > MaxVCPUs:
		return invalid("vcpu count %d: must be between %d and %d", c.VCPUs, MinVCPUs, MaxVCPUs)
	case c.MemMiB < MinMemMiB || c.MemMiB > MaxMemMiB:
		return invalid("memory size %d MiB: must be between %d and %d MiB", c.MemMiB, MinMemMiB, MaxMemMiB)
	}
	if err := validateDrives(c.Drives); err != nil {
		return err
	}
	if c.SMT && c.VCPUs > 1 && c.VCPUs%2 != 0 {
		return invalid("vcpu count %d: with smt it must be 1 or even", c.VCPUs)
	}
	switch c.HugePages {
	case "", HugePagesNone, HugePagesTransparent:
	default:
		return invalid("huge_pages %q: want %q or %q", c.HugePages, HugePagesNone, HugePagesTransparent)
	}
	if c.CPU != nil {
		for _, m := range c.CPU.CPUID {
			for _, r := range m.Registers {
				switch r.Register {
				case "eax", "ebx", "ecx", "edx":
				default:
					return invalid("cpuid modifier of leaf %#x: register %q: want eax, ebx, ecx or edx", m.Leaf, r.Register)
				}
			}
		}
	}
	if c.SerialOutRateLimit != nil {
		if err := c.SerialOutRateLimit.Validate(); err != nil {
			return invalid("serial: %v", err)
		}
	}
	if c.MMDS != nil {
		if err := c.checkMMDS(); err != nil {
			return err
		}
	}
	switch c.BootProtocol {
	case BootAuto, BootLinux64, BootPVH:
	default:
		return invalid("boot protocol %q: must be %q or %q", c.BootProtocol, BootLinux64, BootPVH)
	}
	return nil
}

// checkMMDS checks the MMDS configuration against the interfaces.
func (c *Config) checkMMDS() error {
	m := c.MMDS.Clone()
	if err := m.Normalize(); err != nil {
		return invalid("mmds-config: %v", err)
	}
	ids := make([]string, len(c.Nets))
	for i, n := range c.Nets {
		ids[i] = n.IfaceID
	}
	if err := m.CheckInterfaces(ids); err != nil {
		return invalid("mmds-config: %v", err)
	}
	return nil
}

// clone copies c deeply enough that editing the copy's slices and device
// configurations leaves c as it was.
func (c Config) clone() Config {
	n := c
	n.Drives = slices.Clone(c.Drives)
	n.Nets = slices.Clone(c.Nets)
	if c.Balloon != nil {
		b := *c.Balloon
		n.Balloon = &b
	}
	if c.Vsock != nil {
		v := *c.Vsock
		n.Vsock = &v
	}
	if c.RNG != nil {
		r := *c.RNG
		n.RNG = &r
	}
	n.MMDS = c.MMDS.Clone()
	if c.SerialOutRateLimit != nil {
		l := *c.SerialOutRateLimit
		n.SerialOutRateLimit = &l
	}
	if c.CPU != nil {
		cpu := *c.CPU
		cpu.KVMCapabilities = slices.Clone(c.CPU.KVMCapabilities)
		cpu.CPUID = slices.Clone(c.CPU.CPUID)
		cpu.MSRs = slices.Clone(c.CPU.MSRs)
		n.CPU = &cpu
	}
	return n
}

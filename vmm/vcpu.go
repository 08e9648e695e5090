package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/x86"
)

// kickSignal interrupts a vCPU thread's KVM_RUN. The Go runtime already
// handles SIGURG (it uses it for preemption) and tolerates spurious ones, so
// sending it needs no handler of ours; KVM_RUN returns EINTR on any signal.
const kickSignal = unix.SIGURG

type vcpu struct {
	vm  *VM
	id  int
	fd  *kvm.VCPU
	tid atomic.Int32 // OS thread id once the loop runs; 0 before
}

func hostAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func (v *VM) createVCPUs() error {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	for i := 0; i < v.cfg.VCPUs; i++ {
		fd, err := v.vm.CreateVCPU(i)
		if err != nil {
			return err
		}
		c := &vcpu{vm: v, id: i, fd: fd}
		v.cpus = append(v.cpus, c)
		if err := c.configure(supported); err != nil {
			return fmt.Errorf("configure vCPU %d: %w", i, err)
		}
	}
	return nil
}

// cpuidBits converts a template's CPUID modifiers for the x86 package.
func cpuidBits(mods []CPUIDModifier) []x86.CPUIDBits {
	var out []x86.CPUIDBits
	for _, m := range mods {
		for _, r := range m.Registers {
			out = append(out, x86.CPUIDBits{Leaf: m.Leaf, Subleaf: m.Subleaf, Flags: m.Flags,
				Register: cpuidRegister(r.Register), Mask: r.Mask, Value: r.Value})
		}
	}
	return out
}

// cpuidRegister maps a template register name (checked by Validate) to
// its register.
func cpuidRegister(name string) x86.CPUIDRegister {
	switch name {
	case "ebx":
		return x86.EBX
	case "ecx":
		return x86.ECX
	case "edx":
		return x86.EDX
	}
	return x86.EAX
}

// msrBits converts a template's MSR modifiers for the x86 package.
func msrBits(mods []MSRModifier) []x86.MSRBits {
	out := make([]x86.MSRBits, len(mods))
	for i, m := range mods {
		out[i] = x86.MSRBits{Index: m.Addr, Mask: m.Mask, Value: m.Value}
	}
	return out
}

// configure sets a vCPU's CPUID, MSRs, LAPIC and boot registers.
func (c *vcpu) configure(supported []kvm.CPUIDEntry) error {
	v := c.vm
	cpuid := x86.NormalizeCPUID(supported, c.id, v.cfg.VCPUs, v.cfg.SMT)
	msrs := x86.BootMSRs()
	if t := v.cfg.CPU; t != nil {
		cpuid = x86.ApplyCPUIDTemplate(cpuid, cpuidBits(t.CPUID))
		msrs = x86.ApplyMSRTemplate(msrs, msrBits(t.MSRs))
	}
	if err := c.fd.SetCPUID2(cpuid); err != nil {
		return fmt.Errorf("set CPUID (with the CPU template, if any): %w", err)
	}
	if n, err := c.fd.SetMSRs(msrs); err != nil {
		return err
	} else if n != len(msrs) {
		return fmt.Errorf("KVM accepted %d of %d boot MSRs (rejected MSR %#x)", n, len(msrs), msrs[n].Index)
	}
	lapic, err := c.fd.GetLAPIC()
	if err != nil {
		return err
	}
	x86.SetLAPICLINT(&lapic)
	if err := c.fd.SetLAPIC(&lapic); err != nil {
		return err
	}
	fpu := x86.BootFPU()
	if err := c.fd.SetFPU(&fpu); err != nil {
		return err
	}
	sregs, err := c.fd.GetSregs()
	if err != nil {
		return err
	}
	var regs kvm.Regs
	if v.pvh {
		err = x86.SetupProtectedMode(v.mem, &sregs)
		regs = x86.PVHBootRegs(v.kernel.PVHEntry)
	} else {
		err = x86.SetupLongMode(v.mem, &sregs)
		regs = x86.LinuxBootRegs(v.kernel.Entry)
	}
	if err != nil {
		return err
	}
	if err := c.fd.SetSregs(&sregs); err != nil {
		return err
	}
	return c.fd.SetRegs(&regs)
}

// kick makes the vCPU leave KVM_RUN soon: immediate_exit stops the next entry,
// the signal interrupts the current one.
func (c *vcpu) kick() {
	c.fd.SetImmediateExit(true)
	if tid := c.tid.Load(); tid != 0 {
		_ = unix.Tgkill(unix.Getpid(), int(tid), kickSignal)
	}
}

// loop runs the vCPU on its own locked OS thread until the VM stops. The exit
// path (port I/O and MMIO dispatch) does not allocate. The thread is never
// unlocked: it ends with the loop's goroutine rather than go back to the
// scheduler carrying the vCPU's seccomp filter.
func (c *vcpu) loop() {
	runtime.LockOSThread()
	v := c.vm
	if v.cfg.Confine != nil {
		if err := v.cfg.Confine.ConfineVCPUThread(); err != nil {
			v.setFate(Fate{Kind: FateInternalError, Err: fmt.Errorf("vCPU %d: %w", c.id, err)})
			return
		}
	}
	c.tid.Store(int32(unix.Gettid()))
	for !v.stopping.Load() {
		if r := v.pauseReq.Load(); r != nil {
			c.park(r)
			continue
		}
		if err := c.fd.Run(); err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			v.setFate(Fate{Kind: FateInternalError, Err: fmt.Errorf("vCPU %d: KVM_RUN: %w", c.id, err)})
			return
		}
		if !c.handleExit() {
			return
		}
	}
}

// handleExit handles one exit; it returns false when the vCPU must stop.
func (c *vcpu) handleExit() bool {
	v := c.vm
	switch reason := c.fd.ExitReason(); reason {
	case kvm.ExitIO:
		dir, size, port, count, data := c.fd.IO()
		for i := uint32(0); i < count && int(size)*int(i+1) <= len(data); i++ {
			d := data[int(size)*int(i) : int(size)*int(i+1)]
			if dir == kvm.IODirectionOut {
				v.pio.Write(uint64(port), d)
			} else {
				v.pio.Read(uint64(port), d)
			}
		}
	case kvm.ExitMMIO:
		addr, data, write := c.fd.MMIO()
		if write {
			v.mmio.Write(addr, data)
		} else {
			v.mmio.Read(addr, data)
		}
	case kvm.ExitIntr:
		// A signal interrupted the guest; the loop re-checks for a stop.
	case kvm.ExitHLT:
		v.setFate(Fate{Kind: FatePoweroff})
		return false
	case kvm.ExitShutdown:
		v.setFate(Fate{Kind: FateShutdown, Err: fmt.Errorf("vCPU %d: guest shut down (triple fault)\n%s", c.id, c.dump())})
		return false
	case kvm.ExitSystemEvent:
		typ, _ := c.fd.SystemEvent()
		switch typ {
		case kvm.SystemEventReset:
			v.setFate(Fate{Kind: FateReset})
		case kvm.SystemEventShutdown:
			v.setFate(Fate{Kind: FatePoweroff})
		default:
			v.setFate(Fate{Kind: FateShutdown, Err: fmt.Errorf("vCPU %d: guest system event %d (crash)", c.id, typ)})
		}
		return false
	case kvm.ExitInternalError:
		sub, data := c.fd.InternalError()
		hint := ""
		if sub == 1 {
			hint = " (emulation failure"
			if p := HostProblem(); p != "" {
				hint += "; " + p
			}
			hint += ")"
		}
		v.setFate(Fate{Kind: FateInternalError, Err: fmt.Errorf("vCPU %d: KVM internal error, suberror %d%s, data %#x\n%s", c.id, sub, hint, data, c.dump())})
		return false
	case kvm.ExitFailEntry:
		r, cpu := c.fd.FailEntry()
		v.setFate(Fate{Kind: FateInternalError, Err: fmt.Errorf("vCPU %d: KVM entry failed, hardware reason %#x on CPU %d\n%s", c.id, r, cpu, c.dump())})
		return false
	default:
		v.setFate(Fate{Kind: FateInternalError, Err: fmt.Errorf("vCPU %d: unexpected KVM exit reason %d\n%s", c.id, reason, c.dump())})
		return false
	}
	return true
}

// dump formats the vCPU's registers for an error report.
func (c *vcpu) dump() string {
	r, err := c.fd.GetRegs()
	if err != nil {
		return fmt.Sprintf("  (registers unavailable: %v)", err)
	}
	s, err := c.fd.GetSregs()
	if err != nil {
		return fmt.Sprintf("  (special registers unavailable: %v)", err)
	}
	return fmt.Sprintf("  rip=%#016x rsp=%#016x rflags=%#x\n"+
		"  rax=%#016x rbx=%#016x rcx=%#016x rdx=%#016x\n"+
		"  rsi=%#016x rdi=%#016x rbp=%#016x\n"+
		"  cr0=%#x cr2=%#x cr3=%#x cr4=%#x efer=%#x\n"+
		"  cs=%#x (base %#x, l=%d, db=%d) ss=%#x",
		r.RIP, r.RSP, r.RFLAGS, r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RBP,
		s.CR0, s.CR2, s.CR3, s.CR4, s.EFER, s.CS.Selector, s.CS.Base, s.CS.L, s.CS.DB, s.SS.Selector)
}

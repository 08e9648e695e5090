package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/acpi"
	"github.com/embervm/ember/devices"
	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/loader"
	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/virtio/balloon"
	"github.com/embervm/ember/virtio/blk"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
	"github.com/embervm/ember/x86"
)

const (
	// linuxKernelMinSize: a loaded image at least this large is taken to be
	// a Linux kernel by the host check (the tiny test guests are a few KiB).
	linuxKernelMinSize = 1 << 20

	// consoleFlushTimeout bounds how long Run waits, once the guest has
	// stopped, for its last console output to reach the host: ample for a
	// reader that is merely slow, and a stalled one does not hold the
	// process's exit.
	consoleFlushTimeout = 2 * time.Second
)

// The default cap on serial_out_path output, used when no rate_limiter is
// configured (Firecracker's PUT /serial has one): a one-time burst of 1 MiB,
// more than a verbose boot log, then 64 KiB per second. A guest writing
// faster loses the excess (counted in uart.missed_write_count), so a
// hostile guest fills the host's disk no faster than 64 KiB/s.
const (
	serialOutBurst    = 1 << 20  // bytes
	serialOutRate     = 64 << 10 // bytes per serialOutRefillMs
	serialOutRefillMs = 1000
)

// defaultSerialOutLimit is the default cap as a rate limiter configuration.
func defaultSerialOutLimit() ratelimit.Config {
	return ratelimit.Config{Bandwidth: &ratelimit.TokenBucketConfig{Size: serialOutRate,
		OneTimeBurst: serialOutBurst, RefillTime: serialOutRefillMs}}
}

// FateKind says how a guest's run ended.
type FateKind int

// Fates of a run.
const (
	FateReset         FateKind = iota // guest reset (reboot with reboot=k): a normal end
	FatePoweroff                      // guest asked KVM to power off
	FateShutdown                      // triple fault or KVM shutdown exit
	FateInternalError                 // KVM internal error, entry failure or unexpected exit
	FateStopped                       // stopped from the host (signal, API)
)

func (k FateKind) String() string {
	return [...]string{"reset", "poweroff", "shutdown (triple fault)", "internal error", "stopped"}[k]
}

// Fate is how a run ended. Err explains a FateShutdown or FateInternalError.
type Fate struct {
	Kind FateKind
	Err  error
	// ExitStatus is the last status (0-255) the guest wrote to the
	// exit-status register (devices.ExitStatus) before the run ended;
	// HasExitStatus says whether it wrote one. An image's init writes its
	// workload's status there just before it resets the machine.
	ExitStatus    int
	HasExitStatus bool
}

// VM is a built machine.
type VM struct {
	cfg  Config
	log  *slog.Logger
	sys  *kvm.System
	vm   *kvm.VM
	mem  *memory.Guest
	cpus []*vcpu
	// tracker records device writes to guest memory with TrackDirtyPages.
	tracker *writeTracker
	// unsaved holds, per memory slot, the pages dirtied since the last
	// snapshot that KVM and the tracker have already handed over (a
	// snapshot read them, then failed); nil when there are none. Guarded
	// by pauseMu. See takeDirty.
	unsaved [][]uint64
	// uffd is the userfaultfd of a Uffd restore, or -1 (0 in a VM built by
	// New, which never sets it: only values > 0 are closed).
	uffd int

	pio       *devices.Bus
	mmio      *devices.Bus
	serial    *devices.Serial
	console   *devices.ConsoleOutput // the serial port's host side: stdout or serialOut
	serialOut *os.File               // the serial_out_path file, if any
	i8042     *devices.I8042
	bootTimer *devices.BootTimer
	exitStat  devices.ExitStatus
	virtio    []*virtioDev
	vmgenid   *vmgenid
	balloon   *balloon.Device
	vsock     *vsock.Device
	rng       *rng.Device
	drives    map[string]*blk.Device
	nets      map[string]*vnet.Device
	mmds      *vmMMDS // nil without MMDS
	// devCmdline announces the devices on the kernel command line.
	devCmdline []string

	kernel *loader.Kernel
	pvh    bool // enter the kernel through PVH rather than the 64-bit Linux entry

	fateOnce sync.Once
	fate     chan Fate
	stopping atomic.Bool
	stopped  chan struct{} // closed with the first fate
	closed   bool
	// loops counts the vCPU loops Run started; Close waits for them.
	loops sync.WaitGroup

	// Pause and resume (pause.go).
	pauseMu  sync.Mutex
	pauseReq atomic.Pointer[pauseRound] // non-nil while the vCPUs must park
	paused   bool
	// pauseTimeout is how long Pause waits for the vCPUs (pauseTimeout,
	// shortened by tests).
	pauseTimeout time.Duration
}

// irqLine pulses a GSI on the in-kernel irqchip: the devices' view of an interrupt.
type irqLine struct {
	vm  *kvm.VM
	gsi uint32
}

func (l irqLine) Trigger() error {
	if err := l.vm.IRQLine(l.gsi, 1); err != nil {
		return err
	}
	return l.vm.IRQLine(l.gsi, 0)
}

// New builds the machine described by cfg. Nothing runs until Run. On error
// everything made so far is released.
func New(cfg Config) (_ *VM, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	v := &VM{cfg: cfg, log: cfg.Logger, fate: make(chan Fate, 1), stopped: make(chan struct{}), pauseTimeout: pauseTimeout}
	if v.log == nil {
		v.log = slog.Default()
	}
	if v.cfg.StartTime.IsZero() {
		v.cfg.StartTime = time.Now()
	}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()

	// The phases' times, logged at debug level: where a slow start goes.
	var phases []any
	mark := func(name string, t0 time.Time) {
		phases = append(phases, name+"_ms", float64(time.Since(t0).Microseconds())/1000)
	}
	t := time.Now()
	if v.mem, err = memory.New(uint64(cfg.MemMiB) << 20); err != nil {
		return nil, err
	}
	if v.vmgenid, err = newVMGenID(); err != nil {
		return nil, err
	}
	if cfg.HugePages == HugePagesTransparent {
		if err := v.mem.AdviseHugePages(); err != nil {
			return nil, err
		}
	}
	if err := v.openKVM(); err != nil {
		return nil, err
	}
	if err := v.checkCapabilities(); err != nil {
		return nil, err
	}
	mark("memory_kvm", t)
	t = time.Now()
	if err := v.loadKernel(); err != nil {
		return nil, err
	}
	mark("kernel", t)
	if cfg.Complete != nil {
		t = time.Now()
		if err := v.complete(); err != nil {
			return nil, err
		}
		mark("complete_wait", t)
	}
	t = time.Now()
	if err := v.setupDevices(); err != nil {
		return nil, err
	}
	if err := v.bindDoorbells(); err != nil {
		return nil, err
	}
	if err := v.createIRQChip(); err != nil {
		return nil, err
	}
	if err := v.bindInterrupts(); err != nil {
		return nil, err
	}
	mark("devices", t)
	t = time.Now()
	if err := v.loadBootData(); err != nil {
		return nil, err
	}
	mark("boot_data", t)
	t = time.Now()
	if err := v.createVCPUs(); err != nil {
		return nil, err
	}
	mark("vcpus", t)
	mark("since_process_start", v.cfg.StartTime)
	v.log.Debug("VM built", phases...)
	return v, nil
}

// complete runs the configuration's Complete hook and validates what it
// made. The kernel it was loaded for stays: Complete may not change it.
func (v *VM) complete() error {
	kernel := v.cfg.KernelPath
	if err := v.cfg.Complete(&v.cfg); err != nil {
		return err
	}
	v.cfg.Complete = nil
	if v.cfg.KernelPath != kernel {
		return invalid("the kernel changed from %s to %s after it was loaded", kernel, v.cfg.KernelPath)
	}
	return v.cfg.Validate()
}

// loadKernel loads the kernel into guest memory, picks its entry and
// refuses a Linux kernel where KVM would only emulate it.
func (v *VM) loadKernel() error {
	var err error
	if v.kernel, err = loader.Load(v.mem, v.cfg.KernelPath); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if v.pvh, err = v.usePVH(); err != nil {
		return err
	}
	if !v.cfg.AllowEmulatedKVM && v.kernel.End-v.kernel.Start >= linuxKernelMinSize {
		if p := HostProblem(); p != "" {
			return fmt.Errorf("%w: %s; a Linux kernel's code would be emulated instruction by instruction for minutes. Boot it in the lab instead: ember-lab run -- ember run --kernel %s ...", ErrEmulatedKVM, p, v.cfg.KernelPath)
		}
	}
	return nil
}

// checkCapabilities enforces a CPU template's kvm_capabilities: "N" must be
// offered by the host's KVM; "!N" is a capability the template lets go.
func (v *VM) checkCapabilities() error {
	if v.cfg.CPU == nil {
		return nil
	}
	for _, c := range v.cfg.CPU.KVMCapabilities {
		if strings.HasPrefix(c, "!") {
			continue
		}
		n, err := strconv.Atoi(c)
		if err != nil {
			return invalid("kvm_capabilities: %q is not a capability number", c)
		}
		if got, err := v.sys.CheckExtension(n); err != nil || got == 0 {
			return invalid("kvm_capabilities: this host's KVM lacks capability %d", n)
		}
	}
	return nil
}

// The order of the KVM set-up matters on these hosts. Registering a memory
// slot waits for an SRCU grace period of the VM, and KVM_CREATE_IRQCHIP
// leaves grace-period work pending for about 15 ms: a slot registered
// after it waited about 7 ms, one registered before it about 0.1 ms
// (measured; ioeventfds and irqfds took microseconds either way). So the
// slots come first (the doorbells too, which costs nothing), the irqchip
// after them, and nothing on the way to the first KVM_RUN waits for a
// grace period (exec to a tiny guest running: 1.6 ms, was 7.7). The
// pending work is waited for when the VM is destroyed, if that happens
// within its 15 ms (see deleteMemorySlots).

// openKVM opens /dev/kvm, creates the VM and registers its memory slots.
// On a restore the slots cover the mapped memory file; pages load on the
// guest's faults.
func (v *VM) openKVM() error {
	var err error
	if v.sys, err = kvm.Open(); err != nil {
		return err
	}
	if v.vm, err = v.sys.CreateVM(); err != nil {
		return err
	}
	if err := v.setupMemory(); err != nil {
		return err
	}
	if err := v.vm.SetTSSAddr(x86.TSSAddr); err != nil {
		return err
	}
	return v.vm.SetIdentityMapAddr(x86.IdentityMapAddr)
}

// createIRQChip creates the in-kernel interrupt controllers (and the PIT
// if configured), after the slots and doorbells (see openKVM).
func (v *VM) createIRQChip() error {
	if err := v.vm.CreateIRQChip(); err != nil {
		return err
	}
	if !v.cfg.PIT {
		return nil
	}
	return v.vm.CreatePIT2(kvm.PITConfig{Flags: kvm.PITSpeakerDummy})
}

func (v *VM) setupMemory() error {
	for i, r := range v.mem.Regions() {
		var flags uint32
		if v.cfg.TrackDirtyPages {
			flags |= kvm.MemLogDirtyPages
		}
		err := v.vm.SetUserMemoryRegion(kvm.UserspaceMemoryRegion{
			Slot:          uint32(i),
			Flags:         flags,
			GuestPhysAddr: r.GuestAddr,
			MemorySize:    r.Size(),
			UserspaceAddr: uint64(hostAddr(r.Host)),
		})
		if err != nil {
			return fmt.Errorf("register guest memory region %d: %w", i, err)
		}
	}
	return nil
}

// deleteMemorySlots removes the memory slots before the VM is destroyed.
// Destroying a VM waits for the SRCU work its irqchip left pending (see
// openKVM), one structure after the other: 15 ms for a VM a few ms old.
// Deleting the slots first waits for it once, about 7 ms, after which the
// destruction takes 0.1 ms; for an older VM the deletion costs 0.2 ms.
// Errors do not matter: the VM goes next.
func (v *VM) deleteMemorySlots() {
	if v.mem == nil {
		return
	}
	for i, r := range v.mem.Regions() {
		_ = v.vm.SetUserMemoryRegion(kvm.UserspaceMemoryRegion{Slot: uint32(i), GuestPhysAddr: r.GuestAddr, UserspaceAddr: uint64(hostAddr(r.Host))})
	}
}

// usePVH decides the entry protocol of the loaded kernel.
func (v *VM) usePVH() (bool, error) {
	k := v.kernel
	switch v.cfg.BootProtocol {
	case BootPVH:
		if !k.HasPVH {
			return false, invalid("kernel %s has no PVH entry note; boot it without --boot-protocol=pvh", v.cfg.KernelPath)
		}
		return true, nil
	case BootLinux64:
		if k.Format != loader.FormatELF && k.Format != loader.FormatBzImage {
			return false, invalid("kernel %s cannot be entered through the 64-bit Linux protocol", v.cfg.KernelPath)
		}
		return false, nil
	}
	return k.Format == loader.FormatELF && k.HasPVH, nil
}

func (v *VM) loadBootData() error {
	cmdline := strings.Join(append([]string{v.cfg.Cmdline}, v.devCmdline...), " ")
	if err := x86.CheckCmdline(cmdline, int(v.kernel.CmdlineMax)); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := x86.WriteCmdline(v.mem, x86.CmdlineAddr, cmdline); err != nil {
		return err
	}
	var initrdAddr, initrdSize uint64
	if v.cfg.InitrdPath != "" {
		var err error
		if initrdAddr, initrdSize, err = v.loadInitrd(); err != nil {
			return err
		}
	}
	e820 := x86.E820Map(v.mem)
	if err := x86.WriteMPTable(v.mem, v.cfg.VCPUs); err != nil {
		return err
	}
	rsdp, err := v.writeACPI()
	if err != nil {
		return err
	}
	if v.pvh {
		return x86.WritePVHStartInfo(v.mem, x86.PVHConfig{
			CmdlineAddr: x86.CmdlineAddr,
			InitrdAddr:  initrdAddr,
			InitrdSize:  initrdSize,
			E820:        e820,
			RSDPAddr:    rsdp,
		})
	}
	return x86.WriteZeroPage(v.mem, x86.ZeroPageConfig{
		SetupHeader: v.kernel.SetupHeader,
		CmdlineAddr: x86.CmdlineAddr,
		CmdlineSize: uint64(len(cmdline)) + 1, // with its NUL
		InitrdAddr:  initrdAddr,
		InitrdSize:  initrdSize,
		E820:        e820,
		RSDPAddr:    rsdp,
	})
}

// writeACPI writes the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT describing
// the vCPUs, COM1, the i8042, the virtio-mmio devices and the VM generation
// ID) at x86.RSDPAddr, and the generation ID, and returns the RSDP's
// address.
func (v *VM) writeACPI() (uint64, error) {
	cfg := acpi.Config{CPUs: v.cfg.VCPUs, Serial: true, I8042: true}
	for _, d := range v.virtio {
		cfg.VirtioMMIO = append(cfg.VirtioMMIO, acpi.MMIODevice{Addr: d.addr, Size: x86.VirtioMMIOSize, IRQ: d.gsi})
	}
	if v.vmgenid != nil {
		cfg.VMGenID = &acpi.VMGenID{Addr: v.vmgenid.addr, GSI: v.vmgenid.gsi}
		if err := v.vmgenid.write(v.mem); err != nil {
			return 0, err
		}
	}
	tables, err := acpi.Build(cfg, x86.RSDPAddr, x86.VMGenIDAddr-x86.RSDPAddr)
	if err != nil {
		return 0, err
	}
	if _, err := v.mem.WriteAt(tables, x86.RSDPAddr); err != nil {
		return 0, fmt.Errorf("writing ACPI tables: %w", err)
	}
	return x86.RSDPAddr, nil
}

func (v *VM) loadInitrd() (addr, size uint64, err error) {
	f, err := os.Open(v.cfg.InitrdPath)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: initrd: %w", ErrInvalidConfig, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("initrd %s: %w", v.cfg.InitrdPath, err)
	}
	if !st.Mode().IsRegular() || st.Size() == 0 {
		return 0, 0, invalid("initrd %s: not a non-empty regular file", v.cfg.InitrdPath)
	}
	size = uint64(st.Size())
	addr, err = x86.InitrdAddr(v.mem, size, v.kernel.End, v.kernel.InitrdAddrMax)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: initrd %s: %w", ErrInvalidConfig, v.cfg.InitrdPath, err)
	}
	dst, err := v.mem.Slice(addr, size)
	if err != nil {
		return 0, 0, fmt.Errorf("initrd %s: %w", v.cfg.InitrdPath, err)
	}
	v.mem.AdviseHugeRange(addr, size)
	if _, err := io.ReadFull(f, dst); err != nil {
		return 0, 0, fmt.Errorf("read initrd %s: %w", v.cfg.InitrdPath, err)
	}
	return addr, size, nil
}

func (v *VM) setupDevices() error {
	v.pio = &devices.Bus{}
	v.mmio = &devices.Bus{}
	out := v.cfg.Console
	if out == nil {
		out = io.Discard
	}
	var lim *ratelimit.Limiter
	if v.cfg.SerialOutPath != "" {
		cfg := defaultSerialOutLimit()
		if v.cfg.SerialOutRateLimit != nil {
			cfg = *v.cfg.SerialOutRateLimit
		}
		var err error
		if lim, err = ratelimit.New(cfg); err != nil {
			return fmt.Errorf("%w: serial rate_limiter: %w", ErrInvalidConfig, err)
		}
		f, err := os.OpenFile(v.cfg.SerialOutPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o600)
		if err != nil {
			lim.Close()
			return fmt.Errorf("%w: serial_out_path: %w", ErrInvalidConfig, err)
		}
		v.serialOut, out = f, f
	}
	// The vCPU writes the serial port's output into the console's buffer,
	// never to the host writer: a stalled reader must not stall the guest.
	v.console = devices.NewConsoleOutput(out, devices.ConsoleBufferSize, lim, v.log)
	v.serial = devices.NewSerial(v.console, irqLine{v.vm, devices.COM1IRQ}, v.log)
	if err := v.pio.Insert(v.serial, devices.COM1Base, devices.COM1Size); err != nil {
		return err
	}
	v.i8042 = devices.NewI8042(irqLine{v.vm, devices.I8042IRQ}, func() { v.setFate(Fate{Kind: FateReset}) }, v.log)
	if err := v.i8042.Attach(v.pio); err != nil {
		return err
	}
	if v.cfg.BootTimer {
		v.bootTimer = devices.NewBootTimer(v.cfg.StartTime, v.log)
		if err := v.mmio.Insert(v.bootTimer, devices.BootTimerBase, devices.BootTimerSize); err != nil {
			return err
		}
	}
	// Always there: an unannounced page no guest touches unless it means
	// to report an exit status.
	if err := v.mmio.Insert(&v.exitStat, devices.ExitStatusBase, devices.ExitStatusSize); err != nil {
		return err
	}
	var err error
	v.devCmdline, err = v.setupVirtio()
	return err
}

// SendCtrlAltDel injects Ctrl+Alt+Del through the i8042 (the API's
// SendCtrlAltDel action).
func (v *VM) SendCtrlAltDel() error { return v.i8042.SendCtrlAltDel() }

// Balloon is the balloon device, or nil.
func (v *VM) Balloon() *balloon.Device { return v.balloon }

// Memory is the guest's RAM.
func (v *VM) Memory() *memory.Guest { return v.mem }

// BootTimer is the boot-timer device, or nil when it is not attached.
func (v *VM) BootTimer() *devices.BootTimer { return v.bootTimer }

// setFate records the first fate and kicks the vCPUs out of the guest.
func (v *VM) setFate(f Fate) {
	v.fateOnce.Do(func() {
		v.fate <- f
		v.stopping.Store(true)
		close(v.stopped)
		for _, c := range v.cpus {
			c.kick()
		}
	})
}

// Stop ends the run from the host side (a signal, the API); Run returns FateStopped.
func (v *VM) Stop() { v.setFate(Fate{Kind: FateStopped}) }

// Run confines the process (Config.Confine), starts the vCPUs and the
// console input, and returns when the guest's fate is known. All vCPU
// threads have left KVM_RUN when it returns.
func (v *VM) Run() Fate {
	if v.cfg.Confine != nil {
		if err := v.cfg.Confine.ConfineProcess(); err != nil {
			v.setFate(Fate{Kind: FateInternalError, Err: err})
			return <-v.fate
		}
	}
	if v.bootTimer != nil {
		v.bootTimer.MarkGuestStart()
	}
	v.log.Debug("vCPUs starting", "since_process_start_ms", float64(time.Since(v.cfg.StartTime).Microseconds())/1000)
	v.loops.Add(len(v.cpus))
	for _, c := range v.cpus {
		go func() {
			defer v.loops.Done()
			c.loop()
		}()
	}
	stopInput := v.startConsoleInput()
	defer stopInput()
	f := <-v.fate
	v.loops.Wait()
	if !v.console.Flush(consoleFlushTimeout) {
		v.log.Warn("console output not all written: its reader is stalled", "timeout", consoleFlushTimeout)
	}
	f.ExitStatus, f.HasExitStatus = v.exitStat.Status()
	if f.Kind == FateStopped {
		// Where a guest that had to be stopped was: the first clue to a hang.
		for _, c := range v.cpus {
			v.log.Info("vCPU state at stop", "vcpu", c.id, "regs", c.dump())
		}
	}
	v.logNetLosses()
	v.log.Debug("guest ended", "fate", f.Kind,
		"unhandled_pio_reads", v.pio.Unhandled.Reads.Load(), "unhandled_pio_writes", v.pio.Unhandled.Writes.Load(),
		"unhandled_mmio_reads", v.mmio.Unhandled.Reads.Load(), "unhandled_mmio_writes", v.mmio.Unhandled.Writes.Load())
	return f
}

// logNetLosses warns, at the end of a run, about every network interface
// that dropped frames or failed tap reads or writes: lost frames are
// otherwise visible only in the metrics.
func (v *VM) logNetLosses() {
	for _, id := range slices.Sorted(maps.Keys(v.nets)) {
		m := &v.nets[id].Metrics
		rx, tx := m.RxDrops.Load(), m.TxDrops.Load()
		bad, rerr, werr := m.BadChains.Load(), m.TapReadErrors.Load(), m.TapWriteErrors.Load()
		if rx+tx+bad+rerr+werr > 0 {
			v.log.Warn("network interface lost frames", "iface", id, "rx_drops", rx, "tx_drops", tx,
				"bad_chains", bad, "tap_read_errors", rerr, "tap_write_errors", werr,
				"rx_packets", m.RxPackets.Load(), "tx_packets", m.TxPackets.Load())
		}
	}
}

// fdReader is a console input with a file descriptor (an *os.File, or a
// reader over one), which can be polled.
type fdReader interface {
	io.Reader
	Fd() uintptr
}

// startConsoleInput starts copying ConsoleIn to the guest's UART, if set,
// and returns the function that ends the copy; Run calls it on return so
// the copy does not outlive the run. An input with a file descriptor is
// read only once poll says it is readable, with an eventfd beside it that
// the returned function signals: no read is left blocked, and the function
// returns once the goroutine has ended. Another reader cannot be
// interrupted: its goroutine ends when its pending Read returns.
func (v *VM) startConsoleInput() (stop func()) {
	r := v.cfg.ConsoleIn
	if r == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	fr, ok := r.(fdReader)
	wake := -1
	if ok {
		var err error
		if wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			v.log.Warn("console input: no eventfd; its reader may outlive the run", "err", err)
			ok = false
		}
	}
	if !ok {
		go v.feedConsole(ctx, r, func() bool { return ctx.Err() == nil })
		return cancel
	}
	fds := []unix.PollFd{{Fd: int32(fr.Fd()), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
	readable := func() bool {
		for {
			fds[0].Revents, fds[1].Revents = 0, 0
			_, err := unix.Poll(fds, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				v.log.Warn("console input: poll failed; input stops", "err", err)
				return false
			}
			// Input, or a hang-up or error on it, which Read reports (EOF
			// or the error) and which ends the copy; or the wake-up.
			return fds[1].Revents == 0
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		v.feedConsole(ctx, r, readable)
	}()
	return func() {
		cancel()
		var one [8]byte
		one[0] = 1 // eventfd counter += 1
		unix.Write(wake, one[:])
		<-done
		unix.Close(wake)
	}
}

// feedConsole copies host input to the guest's UART, waiting for the guest
// to drain its receive FIFO instead of dropping bytes, as long as ready
// (called before each read) says to go on.
func (v *VM) feedConsole(ctx context.Context, r io.Reader, ready func() bool) {
	buf := make([]byte, 256)
	for ready() && ctx.Err() == nil {
		n, err := r.Read(buf)
		if n > 0 && v.serial.Feed(ctx, buf[:n]) != nil {
			return
		}
		if err != nil {
			return
		}
	}
}

// Close releases everything the VM holds. It is safe on a partly built VM;
// a VM still running is stopped first, and its vCPU threads are waited for
// (their kvm_run pages are unmapped below).
func (v *VM) Close() error {
	if v.closed {
		return nil
	}
	v.closed = true
	if len(v.cpus) > 0 {
		v.Stop()
		v.loops.Wait()
	}
	var errs []error
	for _, c := range v.cpus {
		errs = append(errs, c.fd.Close())
	}
	v.closeMMDS()
	errs = append(errs, v.closeVirtio())
	if v.console != nil {
		v.console.Close()
	}
	if v.serialOut != nil {
		errs = append(errs, v.serialOut.Close())
	}
	if v.vm != nil {
		v.deleteMemorySlots()
		errs = append(errs, v.vm.Close())
	}
	if v.sys != nil {
		errs = append(errs, v.sys.Close())
	}
	if v.mem != nil {
		errs = append(errs, v.mem.Close())
	}
	if v.uffd > 0 {
		errs = append(errs, unix.Close(v.uffd))
	}
	return errors.Join(errs...)
}

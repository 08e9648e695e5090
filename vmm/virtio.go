package vmm

import (
	"fmt"
	"strings"

	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/virtio"
	"github.com/embervm/ember/virtio/balloon"
	"github.com/embervm/ember/virtio/blk"
	vnet "github.com/embervm/ember/virtio/net"
	"github.com/embervm/ember/virtio/rng"
	"github.com/embervm/ember/virtio/vsock"
	"github.com/embervm/ember/x86"
)

// virtio-mmio placement on x86 (Firecracker's, firecracker-facts.md section
// 3): 4 KiB windows from x86.VirtioMMIOBase, one legacy GSI each from 5 up.
const (
	firstVirtioGSI = 5
	lastVirtioGSI  = 23 // the IOAPIC's 24 pins
	// MaxVirtioDevices is how many virtio-mmio devices fit the GSIs.
	MaxVirtioDevices = lastVirtioGSI - firstVirtioGSI + 1
)

// virtioDev is one attached virtio-mmio device.
type virtioDev struct {
	name      string
	transport *virtio.MMIO
	addr      uint64
	gsi       uint32
	close     func() error
}

// DriveConfig is one virtio-blk drive of the machine.
type DriveConfig struct {
	blk.Config
	// Root makes this drive the root file system (root=/dev/vda on the
	// kernel command line); it is attached first.
	Root bool
	// PartUUID, with Root, boots from root=PARTUUID=... instead of /dev/vda.
	PartUUID string
}

// validateDrives checks the drive list (the parts that need no files).
func validateDrives(drives []DriveConfig) error {
	seen := map[string]bool{}
	roots := 0
	for i, d := range drives {
		switch {
		case d.ID == "":
			return invalid("drive %d: no drive_id", i)
		case seen[d.ID]:
			return invalid("drive %s: drive_id used twice", d.ID)
		case d.Path == "":
			return invalid("drive %s: no path_on_host", d.ID)
		}
		seen[d.ID] = true
		if d.Root {
			roots++
		}
	}
	if roots > 1 {
		return invalid("%d drives are marked root; at most one may be", roots)
	}
	return nil
}

// setupVirtio creates the virtio devices in Firecracker's attach order
// (balloon, block with the root first, net, vsock, rng), puts them on the MMIO bus and
// returns the kernel command-line words that announce them.
func (v *VM) setupVirtio() (cmdline []string, err error) {
	if v.cfg.Balloon != nil {
		dev, err := balloon.New(*v.cfg.Balloon, v.mem, v.log.With("device", "balloon"))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if err := v.attachVirtio("balloon", dev, dev.Close); err != nil {
			dev.Close()
			return nil, err
		}
		dev.SetConfigNotifier(v.virtio[len(v.virtio)-1].transport.ConfigChanged)
		v.balloon = dev
	}
	drives := make([]DriveConfig, 0, len(v.cfg.Drives))
	for _, d := range v.cfg.Drives {
		if d.Root {
			drives = append([]DriveConfig{d}, drives...)
		} else {
			drives = append(drives, d)
		}
	}
	for _, d := range drives {
		dev, err := blk.New(d.Config, v.log.With("drive", d.ID))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if err := v.attachVirtio("block "+d.ID, dev, dev.Close); err != nil {
			dev.Close()
			return nil, err
		}
		dev.SetConfigNotifier(v.virtio[len(v.virtio)-1].transport.ConfigChanged)
		if v.drives == nil {
			v.drives = map[string]*blk.Device{}
		}
		v.drives[d.ID] = dev
		if d.Root {
			mode := "rw"
			if d.ReadOnly {
				mode = "ro"
			}
			root := "root=/dev/vda"
			if d.PartUUID != "" {
				root = "root=PARTUUID=" + d.PartUUID
			}
			cmdline = append(cmdline, root, mode)
		}
	}
	for i, n := range v.cfg.Nets {
		if n.IfaceID == "" {
			n.IfaceID = fmt.Sprintf("net%d", i)
		}
		dev, err := vnet.New(n, v.log.With("iface", n.IfaceID))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if err := v.attachVirtio("net "+n.IfaceID, dev, dev.Close); err != nil {
			dev.Close()
			return nil, err
		}
		if v.nets == nil {
			v.nets = map[string]*vnet.Device{}
		}
		v.nets[n.IfaceID] = dev
	}
	if err := v.setupMMDS(); err != nil {
		return nil, err
	}
	if v.cfg.Vsock != nil {
		dev, err := vsock.New(*v.cfg.Vsock, v.log.With("device", "vsock"))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if err := v.attachVirtio("vsock", dev, dev.Close); err != nil {
			dev.Close()
			return nil, err
		}
		v.vsock = dev
	}
	if v.cfg.RNG != nil {
		dev, err := rng.New(*v.cfg.RNG, v.log)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if err := v.attachVirtio("rng", dev, dev.Close); err != nil {
			dev.Close()
			return nil, err
		}
		v.rng = dev
	}
	for _, d := range v.virtio {
		if v.cfg.NoVirtioCmdline {
			break
		}
		cmdline = append(cmdline, fmt.Sprintf("virtio_mmio.device=4K@%#x:%d", d.addr, d.gsi))
	}
	return cmdline, nil
}

func (v *VM) attachVirtio(name string, dev virtio.Device, closeDev func() error) error {
	i := len(v.virtio)
	if i >= MaxVirtioDevices {
		return invalid("too many virtio devices: at most %d", MaxVirtioDevices)
	}
	var mem virtio.Memory = v.mem
	if v.cfg.TrackDirtyPages {
		if v.tracker == nil {
			v.tracker = newWriteTracker(v.mem)
		}
		mem = v.tracker
	}
	t, err := virtio.NewMMIO(dev, mem, v.log.With("device", name))
	if err != nil {
		return err
	}
	addr := uint64(x86.VirtioMMIOBase + i*x86.VirtioMMIOSize)
	if err := v.mmio.Insert(t, addr, x86.VirtioMMIOSize); err != nil {
		t.Close()
		return err
	}
	v.virtio = append(v.virtio, &virtioDev{name: name, transport: t, addr: addr, gsi: uint32(firstVirtioGSI + i),
		close: func() error { t.Close(); return closeDev() }})
	return nil
}

// bindDoorbells binds each queue's notify register to its eventfd
// (ioeventfd), before the irqchip exists (see openKVM).
func (v *VM) bindDoorbells() error {
	for _, d := range v.virtio {
		for q, e := range d.transport.NotifyFDs() {
			err := v.vm.IOEventFD(kvm.IOEventFDConfig{
				Addr: d.addr + virtio.RegQueueNotify, Len: 4, FD: int32(e.FD()),
				Datamatch: uint64(q), Flags: kvm.IOEventFDFlagDatamatch,
			})
			if err != nil {
				return fmt.Errorf("%s queue %d: %w", d.name, q, err)
			}
		}
	}
	return nil
}

// bindInterrupts binds each device's interrupt eventfd to its GSI (irqfd),
// which needs the irqchip.
func (v *VM) bindInterrupts() error {
	for _, d := range v.virtio {
		if err := v.vm.IRQFD(kvm.IRQFDConfig{FD: uint32(d.transport.IRQ().FD().FD()), GSI: d.gsi}); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	return nil
}

// closeVirtio stops every device and closes its files.
func (v *VM) closeVirtio() error {
	var errs []string
	for _, d := range v.virtio {
		if err := d.close(); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", d.name, err))
		}
	}
	v.virtio = nil
	if errs != nil {
		return fmt.Errorf("closing virtio devices: %s", strings.Join(errs, "; "))
	}
	return nil
}

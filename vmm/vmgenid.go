package vmm

import (
	"crypto/rand"
	"encoding/json"
	"fmt"

	"github.com/embervm/ember/acpi"
	"github.com/embervm/ember/kvm"
	"github.com/embervm/ember/memory"
	"github.com/embervm/ember/x86"
)

// The VM generation ID (Microsoft's "Virtual Machine Generation ID" spec, as
// Linux's drivers/virt/vmgenid.c, QEMU and Firecracker use it): 16 random
// bytes in guest memory, described in the DSDT (acpi.VMGenID). Every VM
// gets one at boot; a snapshot load writes a fresh one before the VM runs
// and raises the GED's interrupt, whose _EVT method notifies the device:
// the guest driver reads the new ID and reseeds its RNG
// (add_vmfork_randomness), so clones of one snapshot diverge.

// vmgenidGSI is the GED's interrupt: GSI 3, the ISA line of the COM2 that
// Ember does not have. The virtio-mmio devices keep all of 5-23.
const vmgenidGSI = 3

// sectionVMGenID names the generation ID's section in the state file. A
// snapshot without it (taken before Ember had the device) is restored
// without touching guest memory.
const sectionVMGenID = "vmgenid"

type vmgenid struct {
	addr uint64
	gsi  uint32
	id   [acpi.VMGenIDSize]byte
}

// vmgenidState is the saved device: where the guest finds the ID, and the
// ID at snapshot time (for information: a restore writes a new one).
type vmgenidState struct {
	Addr uint64 `json:"addr"`
	GSI  uint32 `json:"gsi"`
	ID   []byte `json:"id"`
}

// newVMGenID returns the device at Ember's address with a random ID.
func newVMGenID() (*vmgenid, error) {
	g := &vmgenid{addr: x86.VMGenIDAddr, gsi: vmgenidGSI}
	if err := g.regenerate(); err != nil {
		return nil, err
	}
	return g, nil
}

// regenerate picks a new random ID (not yet written).
func (g *vmgenid) regenerate() error {
	if _, err := rand.Read(g.id[:]); err != nil {
		return fmt.Errorf("VM generation ID: %w", err)
	}
	return nil
}

// write stores the ID in guest memory.
func (g *vmgenid) write(mem *memory.Guest) error {
	if _, err := mem.WriteAt(g.id[:], int64(g.addr)); err != nil {
		return fmt.Errorf("writing the VM generation ID at %#x: %w", g.addr, err)
	}
	return nil
}

// notify pulses the GED's GSI: the guest runs _EVT, which notifies VGEN.
func (g *vmgenid) notify(vm *kvm.VM) error {
	return irqLine{vm, g.gsi}.Trigger()
}

func (g *vmgenid) saveState() vmgenidState {
	return vmgenidState{Addr: g.addr, GSI: g.gsi, ID: append([]byte(nil), g.id[:]...)}
}

// restoreVMGenID reads the saved device, if the snapshot has one, and gives
// it a fresh ID, written to guest memory (and, with dirty-page tracking,
// recorded for the next Diff snapshot). The notification waits until the
// vCPUs' local APICs are restored (KVM_SET_LAPIC would drop it).
func (v *VM) restoreVMGenID(secs map[string][]byte) error {
	b, ok := secs[sectionVMGenID]
	if !ok {
		return nil
	}
	var s vmgenidState
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("VM generation ID state: %w", err)
	}
	if s.Addr%8 != 0 || !acpi.VMGenIDGSIOK(s.GSI) {
		return fmt.Errorf("VM generation ID state: address %#x, GSI %d", s.Addr, s.GSI)
	}
	if _, err := v.mem.Slice(s.Addr, acpi.VMGenIDSize); err != nil {
		return fmt.Errorf("VM generation ID state: address %#x: %w", s.Addr, err)
	}
	g := &vmgenid{addr: s.Addr, gsi: s.GSI}
	copy(g.id[:], s.ID)
	old := g.id
	for g.id == old {
		if err := g.regenerate(); err != nil {
			return err
		}
	}
	if err := g.write(v.mem); err != nil {
		return err
	}
	if v.cfg.TrackDirtyPages {
		if v.tracker == nil {
			v.tracker = newWriteTracker(v.mem)
		}
		v.tracker.MarkDirty(g.addr, acpi.VMGenIDSize)
	}
	v.vmgenid = g
	return nil
}

// VMGenID returns the VM generation ID currently in guest memory, and
// whether the VM has the device.
func (v *VM) VMGenID() ([acpi.VMGenIDSize]byte, bool) {
	var id [acpi.VMGenIDSize]byte
	if v.vmgenid == nil {
		return id, false
	}
	_, err := v.mem.ReadAt(id[:], int64(v.vmgenid.addr))
	return id, err == nil
}

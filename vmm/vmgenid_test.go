package vmm

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/embervm/ember/acpi"
	"github.com/embervm/ember/guest/tiny"
	"github.com/embervm/ember/internal/testkvm"
	"github.com/embervm/ember/snapshot"
	"github.com/embervm/ember/x86"
)

// dsdtOf finds the DSDT in guest memory: RSDP -> XSDT -> FADT -> X_DSDT.
func dsdtOf(t *testing.T, v *VM) []byte {
	t.Helper()
	read := func(addr, n uint64) []byte {
		b, err := v.Memory().Slice(addr, n)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	le := binary.LittleEndian
	rsdp := read(x86.RSDPAddr, 36)
	if string(rsdp[:8]) != "RSD PTR " {
		t.Fatalf("no RSDP at %#x", x86.RSDPAddr)
	}
	xsdt := read(le.Uint64(rsdp[24:]), 36+8)
	fadt := read(le.Uint64(xsdt[36:]), 148)
	if string(fadt[:4]) != "FACP" {
		t.Fatalf("XSDT's first table is %q", fadt[:4])
	}
	hdr := read(le.Uint64(fadt[140:]), 36)
	return read(le.Uint64(fadt[140:]), uint64(le.Uint32(hdr[4:])))
}

// TestVMGenID: a VM's DSDT has the generation ID device, whose ADDR is
// where a random ID lies in guest memory; a snapshot restore writes a new
// ID (different from the saved one, and from another restore's), which a
// Diff snapshot of the restored VM includes.
func TestVMGenID(t *testing.T) {
	testkvm.Need(t)
	cfg, _ := tinyConfig(t, tiny.Counter())
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	boot, ok := a.VMGenID()
	if !ok || boot == [acpi.VMGenIDSize]byte{} {
		t.Fatalf("boot VMGenID %x (present %v), want random bytes", boot, ok)
	}
	dsdt := dsdtOf(t, a)
	addr := []byte{0x08, 'A', 'D', 'D', 'R', 0x12, 0x08, 0x02, 0x0c} // Name (ADDR, Package (2) { DWord low, ...
	addr = binary.LittleEndian.AppendUint32(addr, x86.VMGenIDAddr)
	addr = append(addr, 0x00) // ... Zero })
	if !bytes.Contains(dsdt, addr) || !bytes.Contains(dsdt, []byte("VM_Gen_Counter")) || !bytes.Contains(dsdt, []byte("ACPI0013")) {
		t.Fatalf("DSDT lacks VGEN with ADDR %#x or the GED:\n% x", x86.VMGenIDAddr, dsdt)
	}

	done := runAsync(a)
	dir, snap, mem := snapshotAt(t, a, 10)
	a.Stop()
	<-done
	f, err := os.ReadFile(mem)
	if err != nil {
		t.Fatal(err)
	}
	if saved := f[x86.VMGenIDAddr : x86.VMGenIDAddr+acpi.VMGenIDSize]; !bytes.Equal(saved, boot[:]) {
		t.Fatalf("memory file holds VMGenID %x, want the boot one %x", saved, boot)
	}

	base, _ := tinyConfig(t, tiny.Image())
	var ids [][acpi.VMGenIDSize]byte
	for i := range 2 {
		b, _, err := LoadSnapshot(base, SnapshotLoad{SnapshotPath: snap, MemFilePath: mem, TrackDirtyPages: true})
		if err != nil {
			t.Fatal(err)
		}
		id, ok := b.VMGenID()
		if !ok || id == boot {
			t.Errorf("restore %d: VMGenID %x (present %v), want one other than the saved %x", i, id, ok, boot)
		}
		for _, o := range ids {
			if id == o {
				t.Errorf("restore %d: VMGenID %x, the same as an earlier restore's", i, id)
			}
		}
		ids = append(ids, id)
		// The new ID is host-written: the next Diff must still carry it.
		dsnap, dmem := filepath.Join(dir, "d.snap"), filepath.Join(dir, "d.mem")
		err = b.CreateSnapshot(SnapshotCreate{SnapshotPath: dsnap, MemFilePath: dmem, Type: SnapshotDiff})
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
		d, err := os.ReadFile(dmem)
		if err != nil {
			t.Fatal(err)
		}
		if got := d[x86.VMGenIDAddr : x86.VMGenIDAddr+acpi.VMGenIDSize]; !bytes.Equal(got, id[:]) {
			t.Errorf("restore %d: Diff snapshot holds VMGenID %x, want %x", i, got, id)
		}
		st, err := snapshot.Read(dsnap)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, dev := range st.Header.Devices {
			found = found || dev.Kind == "vmgenid"
		}
		if !found {
			t.Errorf("restore %d: snapshot header devices %v lack the vmgenid", i, st.Header.Devices)
		}
	}
}

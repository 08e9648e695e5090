package acpi_test

import (
	"encoding/binary"
	"testing"

	"github.com/embervm/ember/acpi"
	"github.com/embervm/ember/x86"
)

// TestX86Layout checks the tables against the x86 package's layout, the
// way Ember uses them: at x86.RSDPAddr, within the BIOS area below
// x86.HighMemStart, with the APICs where x86 puts them and as many vCPUs
// as the MP table supports.
func TestX86Layout(t *testing.T) {
	const limit = 0x20000
	if x86.RSDPAddr+limit > x86.HighMemStart {
		t.Fatalf("RSDPAddr %#x + %#x runs past %#x", x86.RSDPAddr, limit, x86.HighMemStart)
	}
	var devs []acpi.MMIODevice
	for i := range 19 {
		devs = append(devs, acpi.MMIODevice{
			Addr: x86.VirtioMMIOBase + uint64(i)*x86.VirtioMMIOSize,
			Size: x86.VirtioMMIOSize,
			IRQ:  5 + uint32(i),
		})
	}
	cfg := acpi.Config{CPUs: x86.MaxVCPUs, Serial: true, I8042: true, VirtioMMIO: devs}
	blob, err := acpi.Build(cfg, x86.RSDPAddr, limit)
	if err != nil {
		t.Fatal(err)
	}
	if end := devs[len(devs)-1].Addr + x86.VirtioMMIOSize; end > x86.MMIODevicesEnd {
		t.Errorf("devices end at %#x, past %#x", end, x86.MMIODevicesEnd)
	}
	le := binary.LittleEndian
	xsdt := le.Uint64(blob[24:]) - x86.RSDPAddr
	madt := blob[le.Uint64(blob[xsdt+44:])-x86.RSDPAddr:]
	if string(madt[:4]) != "APIC" {
		t.Fatalf("XSDT entry 1 is %q, want APIC", madt[:4])
	}
	if got := le.Uint32(madt[36:]); got != x86.LAPICAddr {
		t.Errorf("MADT local APIC address %#x, want x86.LAPICAddr %#x", got, uint32(x86.LAPICAddr))
	}
	ioapic := madt[44+8*x86.MaxVCPUs:]
	if ioapic[0] != 1 || le.Uint32(ioapic[4:]) != x86.IOAPICAddr {
		t.Errorf("MADT I/O APIC entry % x, want address x86.IOAPICAddr %#x", ioapic[:12], uint32(x86.IOAPICAddr))
	}
	cfg.CPUs = x86.MaxVCPUs + 1
	if _, err := acpi.Build(cfg, x86.RSDPAddr, limit); err == nil {
		t.Errorf("Build with %d vCPUs (x86.MaxVCPUs+1) succeeded", cfg.CPUs)
	}
}

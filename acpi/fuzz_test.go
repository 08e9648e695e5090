package acpi

import (
	"bytes"
	"testing"
)

// FuzzBuild builds tables for cpus vCPUs and ndev virtio-mmio devices with
// GSIs irq, irq+1, ... (4 KiB windows from 0xc0001000), with or without
// COM1 and the i8042. Build must never panic, must succeed exactly when the
// config is valid, and then every table must checksum to zero and be
// reachable from the RSDP.
func FuzzBuild(f *testing.F) {
	f.Add(1, uint8(0), uint8(5), false, false)
	f.Add(2, uint8(3), uint8(5), true, true)
	f.Add(32, uint8(19), uint8(5), true, true)
	f.Add(32, uint8(20), uint8(5), true, true)
	f.Add(4, uint8(1), uint8(23), false, true)
	f.Add(4, uint8(2), uint8(23), true, false)
	f.Add(0, uint8(1), uint8(4), false, false)
	f.Add(33, uint8(255), uint8(255), true, true)
	f.Add(-1, uint8(1), uint8(0), true, true)
	f.Fuzz(func(t *testing.T, cpus int, ndev, irq uint8, serial, i8042 bool) {
		cfg := Config{CPUs: cpus, Serial: serial, I8042: i8042}
		for i := range int(ndev) {
			cfg.VirtioMMIO = append(cfg.VirtioMMIO, MMIODevice{
				Addr: 0xc0001000 + 0x1000*uint64(i),
				Size: 0x1000,
				IRQ:  uint32(irq) + uint32(i),
			})
		}
		valid := cpus >= 1 && cpus <= 32 &&
			(ndev == 0 || irq >= 5 && int(irq)+int(ndev)-1 <= 23)

		blob, err := Build(cfg, testBase, testLimit)
		if (err == nil) != valid {
			t.Fatalf("Build(%d CPUs, %d devices from IRQ %d): err %v, config valid %v", cpus, ndev, irq, err, valid)
		}
		if err != nil {
			return
		}
		ts, err := parseTables(blob, testBase)
		if err != nil {
			t.Fatalf("Build(%d CPUs, %d devices from IRQ %d): %v", cpus, ndev, irq, err)
		}
		if len(ts.tables) != 4 {
			t.Fatalf("found %d tables from the RSDP, want 4", len(ts.tables))
		}
		for sig, tab := range ts.tables {
			if sum8(tab) != 0 {
				t.Errorf("%s does not checksum to 0", sig)
			}
		}
		if sum8(ts.rsdp[:20]) != 0 || sum8(ts.rsdp) != 0 {
			t.Errorf("RSDP checksums % x", ts.rsdp)
		}
		if got, want := len(ts.tables["APIC"]), 44+8*cpus+12+10; got != want {
			t.Errorf("MADT is %d bytes, want %d", got, want)
		}
		if n := bytes.Count(ts.tables["DSDT"], []byte("LNRO0005")); n != int(ndev) {
			t.Errorf("DSDT has %d virtio devices, want %d", n, ndev)
		}
		if got := bytes.Contains(ts.tables["DSDT"], []byte("COM1")); got != serial {
			t.Errorf("DSDT has COM1 %v, want %v", got, serial)
		}
		if got := ts.tables["FACP"][109]&(1<<1) != 0; got != i8042 {
			t.Errorf("FADT 8042 flag %v, want %v", got, i8042)
		}
	})
}

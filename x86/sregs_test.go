package x86

import (
	"testing"

	"github.com/embervm/ember/kvm"
)

func TestGDTEntryEncoding(t *testing.T) {
	for _, c := range []struct {
		flags       uint16
		base, limit uint32
		want        uint64
	}{
		{0, 0, 0, 0},
		{0xa09b, 0, 0xfffff, 0x00af9b000000ffff},
		{0xc093, 0, 0xfffff, 0x00cf93000000ffff},
		{0x808b, 0, 0xfffff, 0x008f8b000000ffff},
		{0xc09b, 0, 0xfffff, 0x00cf9b000000ffff},
		{0x008b, 0, 0x67, 0x00008b0000000067},
		{0xc093, 0x12345678, 0xabcde, 0x12ca93345678bcde},
	} {
		if got := gdtEntry(c.flags, c.base, c.limit); got != c.want {
			t.Errorf("gdtEntry(%#x, %#x, %#x) = %#016x, want %#016x", c.flags, c.base, c.limit, got, c.want)
		}
	}
	s := segmentFromGDT(0x12ca93345678bcde, 2)
	want := kvm.Segment{Base: 0x12345678, Limit: 0xabcdefff, Selector: 0x10, Type: 3, Present: 1, DB: 1, S: 1, G: 1}
	if s != want {
		t.Errorf("segmentFromGDT = %+v, want %+v", s, want)
	}
	if s := segmentFromGDT(0, 0); s.Unusable != 1 {
		t.Errorf("null descriptor usable: %+v", s)
	}
}

func TestSetupLongMode(t *testing.T) {
	mem := testGuest(2 << 20)
	sregs := kvm.Sregs{CR0: 0x60000010, APICBase: 0xfee00900, CR8: 3}
	if err := SetupLongMode(mem, &sregs); err != nil {
		t.Fatal(err)
	}
	gdt := read(t, mem, 0x500, 32)
	for i, want := range []uint64{0, 0x00af9b000000ffff, 0x00cf93000000ffff, 0x008f8b000000ffff} {
		if got := u64(gdt, 8*i); got != want {
			t.Errorf("GDT[%d] = %#016x, want %#016x", i, got, want)
		}
	}
	if u64(read(t, mem, 0x520, 8), 0) != 0 {
		t.Error("IDT not empty")
	}
	pml4 := read(t, mem, 0x9000, 4096)
	pdpt := read(t, mem, 0xa000, 4096)
	pd := read(t, mem, 0xb000, 4096)
	if u64(pml4, 0) != 0xa003 || u64(pdpt, 0) != 0xb003 {
		t.Errorf("PML4[0] = %#x, PDPT[0] = %#x", u64(pml4, 0), u64(pdpt, 0))
	}
	for i := 1; i < 512; i++ {
		if u64(pml4, 8*i) != 0 || u64(pdpt, 8*i) != 0 {
			t.Fatalf("PML4/PDPT entry %d not empty", i)
		}
	}
	for i := range 512 {
		if got, want := u64(pd, 8*i), uint64(i)<<21|0x83; got != want {
			t.Fatalf("PD[%d] = %#x, want %#x", i, got, want)
		}
	}
	if u64(pd, 511*8) != 0x3fe00083 {
		t.Errorf("last PD entry %#x does not map the end of the first 1 GiB", u64(pd, 511*8))
	}

	cs := kvm.Segment{Limit: 0xffffffff, Selector: 0x8, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	ds := kvm.Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	tr := kvm.Segment{Limit: 0xffffffff, Selector: 0x18, Type: 0xb, Present: 1, G: 1}
	if sregs.CS != cs {
		t.Errorf("CS = %+v, want %+v", sregs.CS, cs)
	}
	for name, s := range map[string]kvm.Segment{"DS": sregs.DS, "ES": sregs.ES, "FS": sregs.FS, "GS": sregs.GS, "SS": sregs.SS} {
		if s != ds {
			t.Errorf("%s = %+v, want %+v", name, s, ds)
		}
	}
	if sregs.TR != tr {
		t.Errorf("TR = %+v, want %+v", sregs.TR, tr)
	}
	if sregs.GDT.Base != 0x500 || sregs.GDT.Limit != 31 || sregs.IDT.Base != 0x520 || sregs.IDT.Limit != 7 {
		t.Errorf("GDTR %+v IDTR %+v", sregs.GDT, sregs.IDT)
	}
	if sregs.CR0 != 0x80000011 || sregs.CR3 != 0x9000 || sregs.CR4 != 0x20 || sregs.EFER != 0x500 {
		t.Errorf("CR0 %#x CR3 %#x CR4 %#x EFER %#x", sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER)
	}
	if sregs.APICBase != 0xfee00900 || sregs.CR8 != 3 {
		t.Error("unrelated sregs fields changed")
	}
}

func TestSetupProtectedMode(t *testing.T) {
	mem := testGuest(2 << 20)
	sregs := kvm.Sregs{CR0: 0x60000010, CR4: 0x20, EFER: 0x500, CR3: 0x1234}
	if err := SetupProtectedMode(mem, &sregs); err != nil {
		t.Fatal(err)
	}
	gdt := read(t, mem, 0x500, 32)
	for i, want := range []uint64{0, 0x00cf9b000000ffff, 0x00cf93000000ffff, 0x00008b0000000067} {
		if got := u64(gdt, 8*i); got != want {
			t.Errorf("GDT[%d] = %#016x, want %#016x", i, got, want)
		}
	}
	cs := kvm.Segment{Limit: 0xffffffff, Selector: 0x8, Type: 0xb, Present: 1, S: 1, DB: 1, G: 1}
	ds := kvm.Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	tr := kvm.Segment{Limit: 0x67, Selector: 0x18, Type: 0xb, Present: 1}
	if sregs.CS != cs || sregs.DS != ds || sregs.ES != ds || sregs.FS != ds || sregs.GS != ds || sregs.SS != ds || sregs.TR != tr {
		t.Errorf("segments CS %+v DS %+v TR %+v", sregs.CS, sregs.DS, sregs.TR)
	}
	if sregs.CR0 != 0x11 || sregs.CR3 != 0 || sregs.CR4 != 0 || sregs.EFER != 0 {
		t.Errorf("CR0 %#x CR3 %#x CR4 %#x EFER %#x", sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER)
	}
	// No page tables for PVH.
	for _, b := range read(t, mem, 0x9000, 3*4096) {
		if b != 0 {
			t.Fatal("page tables written for protected mode")
		}
	}
}

func TestSetupModeMemoryErrors(t *testing.T) {
	var s kvm.Sregs
	if err := SetupLongMode(testGuest(0xa000), &s); err == nil {
		t.Error("long mode set up without room for the page tables")
	}
	if err := SetupProtectedMode(testGuest(0x400), &s); err == nil {
		t.Error("protected mode set up without room for the GDT")
	}
}

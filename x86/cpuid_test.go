package x86

import (
	"encoding/binary"
	"reflect"
	"slices"
	"testing"

	"github.com/embervm/ember/kvm"
)

// vendorRegs splits a 12-byte vendor string into EBX, EDX, ECX.
func vendorRegs(v string) (ebx, edx, ecx uint32) {
	b := []byte(v)
	return binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
}

func leaf(fn, idx uint32, eax, ebx, ecx, edx uint32) kvm.CPUIDEntry {
	return kvm.CPUIDEntry{Function: fn, Index: idx, EAX: eax, EBX: ebx, ECX: ecx, EDX: edx}
}

func subleaf(fn, idx uint32, eax, ebx, ecx, edx uint32) kvm.CPUIDEntry {
	e := leaf(fn, idx, eax, ebx, ecx, edx)
	e.Flags = kvm.CPUIDFlagSignificantIndex
	return e
}

// kvmLeaves are KVM's paravirt leaves: signature "KVMKVMKVM\0\0\0" in
// EBX, ECX, EDX, and features.
func kvmLeaves() []kvm.CPUIDEntry {
	return []kvm.CPUIDEntry{
		leaf(0x40000000, 0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d),
		leaf(0x40000001, 0, 0x01007afb, 0, 0, 0),
	}
}

func intelSupported() []kvm.CPUIDEntry {
	b, d, c := vendorRegs("GenuineIntel")
	l := []kvm.CPUIDEntry{
		leaf(0x0, 0, 0x1f, b, c, d),
		// Host values: APIC ID 0x2a, 16 logical, CLFLUSH 8, brand 0x5;
		// HTT set; ECX without hypervisor or TSC-deadline.
		leaf(0x1, 0, 0x000906ea, 0x2a100805, 0x7ffafbff, 0xbfebfbff),
		subleaf(0x4, 0, 0x1c004121, 0x01c0003f, 0x3f, 0),   // L1d, sharing 1, cores 7
		subleaf(0x4, 1, 0x1c004122, 0x01c0003f, 0x3f, 0),   // L1i
		subleaf(0x4, 2, 0x1c004143, 0x01c0003f, 0x3ff, 0),  // L2
		subleaf(0x4, 3, 0x1c03c163, 0x03c0003f, 0x3fff, 6), // L3, sharing 15
		subleaf(0x4, 4, 0, 0, 0, 0),
		leaf(0x6, 0, 0x4, 0, 0x9, 0),
		subleaf(0x7, 0, 1, 0x029c6fbf, 0x40000024, 0xbc000400),
		subleaf(0x7, 1, 0, 0, 0x20, 0),
		leaf(0xa, 0, 0x07300404, 0, 0, 0x603),
		subleaf(0xb, 0, 1, 2, 0x100, 0x2a),
		subleaf(0xb, 1, 4, 16, 0x201, 0x2a),
		subleaf(0xb, 2, 0, 0, 0x2, 0x2a),
		subleaf(0x1f, 0, 1, 2, 0x100, 0x2a),
		subleaf(0x1f, 1, 4, 16, 0x201, 0x2a),
		subleaf(0x1f, 2, 5, 32, 0x502, 0x2a), // die level
		subleaf(0x1f, 3, 0, 0, 0x3, 0x2a),
	}
	l = append(l, kvmLeaves()...)
	return append(l,
		leaf(0x80000000, 0, 0x80000008, 0, 0, 0),
		leaf(0x80000008, 0, 0x3027, 0, 0, 0),
	)
}

func amdSupported() []kvm.CPUIDEntry {
	b, d, c := vendorRegs("AuthenticAMD")
	l := []kvm.CPUIDEntry{
		leaf(0x0, 0, 0x10, b, c, d),
		leaf(0x1, 0, 0x00a20f12, 0x0d100800, 0x7ef8320b, 0x178bfbff),
		leaf(0x6, 0, 0x4, 0, 0x1, 0),
		subleaf(0x7, 0, 0, 0x219c97a9, 0x0040068c, 0x10),
		subleaf(0xb, 0, 1, 2, 0x100, 0x0d),
		subleaf(0xb, 1, 7, 16, 0x201, 0x0d),
		subleaf(0xb, 2, 0, 0, 0x2, 0x0d),
	}
	l = append(l, kvmLeaves()...)
	return append(l,
		leaf(0x80000000, 0, 0x80000021, 0, 0, 0),
		leaf(0x80000001, 0, 0x00a20f12, 0, 0x75c237ff, 0x2fd3fbff),
		leaf(0x80000008, 0, 0x3030, 0x111ef657, 0x0001700f, 0),
		leaf(0x8000001e, 0, 0x0d, 0x0106, 0x0300, 0),
	)
}

func find(t *testing.T, l []kvm.CPUIDEntry, fn, idx uint32) kvm.CPUIDEntry {
	t.Helper()
	for _, e := range l {
		if e.Function == fn && e.Index == idx {
			return e
		}
	}
	t.Fatalf("leaf %#x.%d missing", fn, idx)
	return kvm.CPUIDEntry{}
}

func subleaves(l []kvm.CPUIDEntry, fn uint32) []kvm.CPUIDEntry {
	var out []kvm.CPUIDEntry
	for _, e := range l {
		if e.Function == fn {
			out = append(out, e)
		}
	}
	return out
}

// topoCases are (vCPU index, vCPU count) pairs.
func topoCases() []struct{ id, n int } {
	return []struct{ id, n int }{{0, 1}, {0, 2}, {1, 2}, {3, 4}, {5, 6}, {31, 32}}
}

func TestNormalizeCPUIDIntel(t *testing.T) {
	for _, c := range topoCases() {
		in := intelSupported()
		orig := slices.Clone(in)
		out := NormalizeCPUID(in, c.id, c.n, false)
		if !reflect.DeepEqual(in, orig) {
			t.Fatalf("vcpu %d/%d: input mutated", c.id, c.n)
		}
		id, n := uint32(c.id), uint32(c.n)
		pow2 := map[uint32]uint32{1: 1, 2: 2, 4: 4, 6: 8, 32: 32}[n]
		shift := map[uint32]uint32{1: 0, 2: 1, 4: 2, 6: 3, 32: 5}[n]

		l1 := find(t, out, 1, 0)
		if want := id<<24 | pow2<<16 | 8<<8 | 0x05; l1.EBX != want {
			t.Errorf("vcpu %d/%d: leaf 1 EBX = %#x, want %#x", c.id, c.n, l1.EBX, want)
		}
		if want := uint32(0x7ffafbff) | 1<<24 | 1<<31; l1.ECX != want {
			t.Errorf("leaf 1 ECX = %#x, want %#x", l1.ECX, want)
		}
		if htt := l1.EDX&(1<<28) != 0; htt != (n > 1) {
			t.Errorf("vcpu %d/%d: HTT = %v", c.id, c.n, htt)
		}
		if l1.EDX|1<<28 != 0xbfebfbff|1<<28 {
			t.Errorf("leaf 1 EDX bits other than HTT changed: %#x", l1.EDX)
		}

		for i, wantShare := range []uint32{0, 0, 0, n - 1} {
			l4 := find(t, out, 4, uint32(i))
			in4 := find(t, in, 4, uint32(i))
			if got := l4.EAX >> 26; got != n-1 {
				t.Errorf("vcpu %d/%d: leaf 4.%d cores-per-package field %d, want %d", c.id, c.n, i, got, n-1)
			}
			if got := (l4.EAX >> 14) & 0xfff; got != wantShare {
				t.Errorf("vcpu %d/%d: leaf 4.%d sharing field %d, want %d", c.id, c.n, i, got, wantShare)
			}
			if l4.EAX&0x3fff != in4.EAX&0x3fff || l4.EBX != in4.EBX || l4.ECX != in4.ECX || l4.EDX != in4.EDX {
				t.Errorf("leaf 4.%d: other fields changed: %+v", i, l4)
			}
		}
		if l4 := find(t, out, 4, 4); l4.EAX != 0 {
			t.Errorf("leaf 4.4 (no cache) changed: %+v", l4)
		}

		if l6 := find(t, out, 6, 0); l6.EAX != 0x4 || l6.ECX != 0x1 {
			t.Errorf("leaf 6 = %+v, want turbo and EPB cleared", l6)
		}
		if l7 := find(t, out, 7, 0); l7.ECX != 0x40000004 || l7.EBX != 0x029c6fbf {
			t.Errorf("leaf 7.0 = %+v, want only WAITPKG cleared", l7)
		}
		if l71 := find(t, out, 7, 1); l71 != find(t, in, 7, 1) {
			t.Errorf("leaf 7.1 changed: %+v", l71)
		}
		if la := find(t, out, 0xa, 0); la.EAX|la.EBX|la.ECX|la.EDX != 0 {
			t.Errorf("leaf 0xa = %+v, want zero", la)
		}
		for _, fn := range []uint32{0xb, 0x1f} {
			checkTopology(t, subleaves(out, fn), fn, id, n, shift)
		}
		for _, fn := range []uint32{0, 0x40000000, 0x40000001, 0x80000000, 0x80000008} {
			if got, want := find(t, out, fn, 0), find(t, in, fn, 0); got != want {
				t.Errorf("leaf %#x changed: %+v, want %+v", fn, got, want)
			}
		}
		if len(out) != len(in)-1 { // 0x1f loses its die level
			t.Errorf("%d entries out of %d", len(out), len(in))
		}
	}
}

func checkTopology(t *testing.T, got []kvm.CPUIDEntry, fn, id, n, shift uint32) {
	t.Helper()
	f := uint32(kvm.CPUIDFlagSignificantIndex)
	want := []kvm.CPUIDEntry{
		{Function: fn, Index: 0, Flags: f, EAX: 0, EBX: 1, ECX: 1 << 8, EDX: id},
		{Function: fn, Index: 1, Flags: f, EAX: shift, EBX: n, ECX: 2<<8 | 1, EDX: id},
		{Function: fn, Index: 2, Flags: f, EAX: 0, EBX: 0, ECX: 2, EDX: id},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("vcpu %d/%d: leaf %#x = %+v, want %+v", id, n, fn, got, want)
	}
}

func TestNormalizeCPUIDAMD(t *testing.T) {
	for _, c := range topoCases() {
		in := amdSupported()
		orig := slices.Clone(in)
		out := NormalizeCPUID(in, c.id, c.n, false)
		if !reflect.DeepEqual(in, orig) {
			t.Fatalf("vcpu %d/%d: input mutated", c.id, c.n)
		}
		id, n := uint32(c.id), uint32(c.n)
		shift := map[uint32]uint32{1: 0, 2: 1, 4: 2, 6: 3, 32: 5}[n]

		if l1 := find(t, out, 1, 0); l1.EBX>>24 != id || l1.ECX&(1<<31|1<<24) != 1<<31|1<<24 {
			t.Errorf("vcpu %d/%d: leaf 1 = %+v", c.id, c.n, l1)
		}
		l8 := find(t, out, 0x80000008, 0)
		if want := uint32(0x00010000) | shift<<12 | (n - 1); l8.ECX != want {
			t.Errorf("vcpu %d/%d: leaf 0x80000008 ECX = %#x, want %#x", c.id, c.n, l8.ECX, want)
		}
		if l8.EAX != 0x3030 || l8.EBX != 0x111ef657 {
			t.Errorf("leaf 0x80000008 EAX/EBX changed: %+v", l8)
		}
		if le := find(t, out, 0x8000001e, 0); le.EAX != id || le.EBX != id || le.ECX != 0 || le.EDX != 0 {
			t.Errorf("vcpu %d/%d: leaf 0x8000001e = %+v", c.id, c.n, le)
		}
		checkTopology(t, subleaves(out, 0xb), 0xb, id, n, shift)
		for _, fn := range []uint32{0x40000000, 0x40000001, 0x80000001} {
			if got, want := find(t, out, fn, 0), find(t, in, fn, 0); got != want {
				t.Errorf("leaf %#x changed: %+v, want %+v", fn, got, want)
			}
		}
	}
}

func TestNormalizeCPUIDKeepsKVMSignature(t *testing.T) {
	out := NormalizeCPUID(intelSupported(), 0, 1, false)
	sig := find(t, out, 0x40000000, 0)
	var b [12]byte
	binary.LittleEndian.PutUint32(b[0:], sig.EBX)
	binary.LittleEndian.PutUint32(b[4:], sig.ECX)
	binary.LittleEndian.PutUint32(b[8:], sig.EDX)
	if string(b[:]) != "KVMKVMKVM\x00\x00\x00" {
		t.Errorf("KVM signature %q", b)
	}
}

func TestNormalizeCPUIDVendorSpecific(t *testing.T) {
	// Intel's 0x80000008 ECX (reserved) and AMD's leaf 4 are left alone.
	in := intelSupported()
	if got := find(t, NormalizeCPUID(in, 1, 2, false), 0x80000008, 0); got.ECX != 0 {
		t.Errorf("Intel leaf 0x80000008 ECX = %#x", got.ECX)
	}
	amd := append(amdSupported(), subleaf(4, 0, 0x121, 0, 0, 0))
	if got := find(t, NormalizeCPUID(amd, 1, 2, false), 4, 0); got.EAX != 0x121 {
		t.Errorf("AMD leaf 4 EAX = %#x", got.EAX)
	}
	// No topology leaf is invented when KVM reports none.
	var noTopo []kvm.CPUIDEntry
	for _, e := range intelSupported() {
		if e.Function != 0xb && e.Function != 0x1f {
			noTopo = append(noTopo, e)
		}
	}
	if out := NormalizeCPUID(noTopo, 0, 2, false); len(subleaves(out, 0xb))+len(subleaves(out, 0x1f)) != 0 {
		t.Error("topology leaves added")
	}
}

// TestNormalizeCPUIDSMT: with smt, vCPUs pair up as the two threads of a
// core in the topology leaves and AMD's compute-unit leaf.
func TestNormalizeCPUIDSMT(t *testing.T) {
	out := NormalizeCPUID(intelSupported(), 3, 4, true)
	if smt := find(t, out, 0xb, 0); smt.EBX != 2 || smt.EAX != 1 {
		t.Errorf("leaf 0xb SMT level: EAX %d EBX %d, want shift 1 and 2 threads", smt.EAX, smt.EBX)
	}
	if core := find(t, out, 0xb, 1); core.EBX != 4 || core.EAX != 2 {
		t.Errorf("leaf 0xb core level: EAX %d EBX %d, want shift 2 and 4 logical CPUs", core.EAX, core.EBX)
	}
	amd := NormalizeCPUID(amdSupported(), 3, 4, true)
	if e := find(t, amd, 0x8000001e, 0); e.EBX != 1|1<<8 {
		t.Errorf("AMD 0x8000001e EBX %#x, want core 1 with 2 threads", e.EBX)
	}
}

package tiny

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"testing"
)

func TestImagesArePVHELF(t *testing.T) {
	for name, img := range map[string][]byte{"Image": Image(), "Counter": Counter(), "Idle": Idle(), "Spin": Spin(), "TripleFault": TripleFault()} {
		t.Run(name, func(t *testing.T) { checkPVHELF(t, img) })
	}
}

func checkPVHELF(t *testing.T, img []byte) {
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Fatalf("class %v machine %v type %v", f.Class, f.Machine, f.Type)
	}
	var sawLoad, sawNote bool
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			sawLoad = true
			if p.Paddr != LoadAddr || f.Entry < p.Paddr || f.Entry >= p.Paddr+p.Filesz {
				t.Errorf("load segment %#x+%#x does not hold entry %#x", p.Paddr, p.Filesz, f.Entry)
			}
		case elf.PT_NOTE:
			sawNote = true
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			if string(b[12:15]) != "Xen" || binary.LittleEndian.Uint32(b[8:]) != xenPhys32Entry {
				t.Errorf("note = % x", b)
			}
			if got := binary.LittleEndian.Uint32(b[16:]); uint64(got) != f.Entry {
				t.Errorf("PVH entry %#x, ELF entry %#x", got, f.Entry)
			}
		}
	}
	if !sawLoad || !sawNote {
		t.Fatalf("load %v note %v", sawLoad, sawNote)
	}
}

func TestExitStatusGuestStoresToTheRegister(t *testing.T) {
	f, err := elf.NewFile(bytes.NewReader(ExitStatus(0x01020304)))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0xc7, 0x05}
	want = binary.LittleEndian.AppendUint32(want, ExitStatusAddr)
	want = binary.LittleEndian.AppendUint32(want, 0x01020304)
	code := make([]byte, len(want))
	if _, err := f.Progs[0].ReadAt(code, int64(f.Entry-LoadAddr)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(code, want) {
		t.Errorf("code % x, want % x", code, want)
	}
}

package devices

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func TestExitStatus(t *testing.T) {
	var e ExitStatus
	var b Bus
	if err := b.Insert(&e, ExitStatusBase, ExitStatusSize); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.Status(); ok {
		t.Fatal("a fresh register says it was written")
	}
	b.Write(ExitStatusBase, le32(0))
	if s, ok := e.Status(); !ok || s != 0 {
		t.Fatalf("after writing 0: %d, %v", s, ok)
	}
	// The last write wins.
	for _, v := range []uint32{3, 137, 255, 42} {
		b.Write(ExitStatusBase, le32(v))
	}
	if s, ok := e.Status(); !ok || s != 42 {
		t.Fatalf("after writing 42 last: %d, %v", s, ok)
	}
	data := []byte{1, 2, 3, 4}
	b.Read(ExitStatusBase, data)
	if !bytes.Equal(data, make([]byte, 4)) {
		t.Errorf("read %x, want zeros", data)
	}
}

// A hostile guest's writes of the wrong value, width or offset change
// nothing.
func TestExitStatusIgnoresBadWrites(t *testing.T) {
	var e ExitStatus
	var b Bus
	if err := b.Insert(&e, ExitStatusBase, ExitStatusSize); err != nil {
		t.Fatal(err)
	}
	bad := func() {
		b.Write(ExitStatusBase, le32(256))
		b.Write(ExitStatusBase, le32(0xffff_ffff))
		b.Write(ExitStatusBase, le32(exitStatusWritten|1))
		b.Write(ExitStatusBase, []byte{7})
		b.Write(ExitStatusBase, []byte{7, 0})
		b.Write(ExitStatusBase, []byte{7, 0, 0, 0, 0, 0, 0, 0})
		b.Write(ExitStatusBase+4, le32(7))
		b.Write(ExitStatusBase+ExitStatusSize-1, []byte{7})
		b.Write(ExitStatusBase+2, le32(7)) // straddles the register
	}
	bad()
	if s, ok := e.Status(); ok {
		t.Fatalf("bad writes recorded %d", s)
	}
	b.Write(ExitStatusBase, le32(9))
	bad()
	if s, ok := e.Status(); !ok || s != 9 {
		t.Fatalf("bad writes changed the status: %d, %v", s, ok)
	}
}

// FuzzExitStatus: whatever the guest writes, the register holds the last
// valid status or none, never a value above 255.
func FuzzExitStatus(f *testing.F) {
	f.Add([]byte{0, 4, 42, 0, 0, 0, 1, 4, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var e ExitStatus
		want, wrote := 0, false
		for len(ops) >= 2 {
			off, width := uint64(ops[0]%8), []int{1, 2, 4, 8}[ops[1]%4]
			ops = ops[2:]
			if len(ops) < width {
				break
			}
			data := append([]byte(nil), ops[:width]...)
			ops = ops[width:]
			e.Write(off, data)
			if off == 0 && width == 4 {
				if v := binary.LittleEndian.Uint32(data); v <= MaxExitStatus {
					want, wrote = int(v), true
				}
			}
		}
		if s, ok := e.Status(); ok != wrote || s != want || s > MaxExitStatus {
			t.Fatalf("status %d, %v; want %d, %v", s, ok, want, wrote)
		}
	})
}

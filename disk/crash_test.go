package disk

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// crashChildEnv, when set, makes TestCrashChild the writer that
// TestKillNine kills: "OVERLAY,BASE".
const crashChildEnv = "EMBER_DISK_CRASH_CHILD"

// Layout of the crash test's writes, in 4 KiB clusters.
const (
	crashClusters  = 200  // clusters written in each phase
	crashWriteOff  = 1024 // phase 2 writes this far into a cluster...
	crashWriteSize = 2048 // ...this many bytes (copy-up of an unwritten cluster)
)

func crashFlushed(i int) []byte { return bytes.Repeat([]byte{byte(0xa0 + i%16)}, 4096) }
func crashLater(i int) []byte   { return bytes.Repeat([]byte{byte(0xb0 + i%16)}, crashWriteSize) }

// TestCrashChild is the process TestKillNine kills: it writes whole
// clusters 3i and flushes ("flushed"), then writes part of clusters 3i+1
// without a flush ("written") and waits to be killed.
func TestCrashChild(t *testing.T) {
	spec := os.Getenv(crashChildEnv)
	if spec == "" {
		t.Skip("the child of TestKillNine")
	}
	parts := strings.Split(spec, ",")
	s, err := OpenCOW(Options{Path: parts[0], BasePath: parts[1]})
	if err != nil {
		t.Fatal(err)
	}
	for i := range crashClusters {
		if err := s.WriteVec([][]byte{crashFlushed(i)}, int64(3*i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("flushed")
	for i := range crashClusters {
		if err := s.WriteVec([][]byte{crashLater(i)}, int64(3*i+1)*4096+crashWriteOff); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("written")
	select {}
}

// TestKillNine: a writer killed with SIGKILL right after its writes
// returned. Reopened in the same boot, the overlay has every write, the
// flushed and the unflushed. A copy of the killed overlay whose volatile
// map is made to look written in another boot (what a host crash and
// reboot leaves) has every flushed write, and reads each unflushed one as
// the base: no map bit it believes points at a cluster without its data.
func TestKillNine(t *testing.T) {
	base := makeBase(t, 4<<20)
	orig, _ := os.ReadFile(base)
	s, path := newOverlay(t, base, CreateOptions{})
	s.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path+","+base)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if sc.Text() == "written" {
			break
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if len(lines) == 0 || lines[len(lines)-1] != "written" {
		t.Fatalf("the child said %q", lines)
	}

	rebooted := path + ".rebooted"
	b, _ := os.ReadFile(path)
	h, err := decodeHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	copy(b[h.VolatileOffset:], "another boot....")
	if err := os.WriteFile(rebooted, b, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name      string
		path      string
		unflushed bool // the unflushed writes are there
	}{{"same boot", path, true}, {"after a reboot", rebooted, false}} {
		s, err := OpenCOW(Options{Path: tc.path, BasePath: base})
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, s)
		s.Close()
		for c := range int64(len(orig) / 4096) {
			have, want := got[c*4096:(c+1)*4096], orig[c*4096:(c+1)*4096]
			i := int(c / 3)
			switch {
			case c%3 == 0 && i < crashClusters:
				if !bytes.Equal(have, crashFlushed(i)) {
					t.Fatalf("%s: cluster %d: a flushed write was lost", tc.name, c)
				}
			case c%3 == 1 && i < crashClusters && tc.unflushed:
				written := bytes.Clone(want)
				copy(written[crashWriteOff:], crashLater(i))
				if !bytes.Equal(have, written) {
					t.Fatalf("%s: cluster %d: a completed write was lost to kill -9", tc.name, c)
				}
			default:
				if !bytes.Equal(have, want) {
					t.Fatalf("%s: cluster %d does not read as the base", tc.name, c)
				}
			}
		}
	}
	// The same-boot open was writable: it made the killed writer's
	// clusters durable, so they now survive a reboot too.
	b, _ = os.ReadFile(path)
	copy(b[h.VolatileOffset:], "another boot....")
	os.WriteFile(rebooted, b, 0o600)
	s, err = OpenCOW(Options{Path: rebooted, BasePath: base, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := s.Allocated(); n != 2*crashClusters {
		t.Fatalf("after a writable reopen and a reboot %d clusters are in the overlay, want %d", n, 2*crashClusters)
	}
}

// TestMapOrder: a write that allocates puts its bits in the volatile map
// as it returns, and in the durable map only at Flush.
func TestMapOrder(t *testing.T) {
	base := makeBase(t, 1<<20)
	s, path := newOverlay(t, base, CreateOptions{})
	defer s.Close()
	const cluster = 5
	bit := func(at int64) bool {
		b := make([]byte, 1)
		f, _ := os.Open(path)
		defer f.Close()
		f.ReadAt(b, at+cluster/8)
		return b[0]&(1<<(cluster%8)) != 0
	}
	if err := s.WriteVec([][]byte{make([]byte, 4096)}, cluster*4096); err != nil {
		t.Fatal(err)
	}
	if !bit(s.h.volatileMap()) || bit(s.h.MapOffset) {
		t.Fatalf("after the write: volatile bit %v, durable bit %v; want true, false", bit(s.h.volatileMap()), bit(s.h.MapOffset))
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bit(s.h.MapOffset) {
		t.Fatal("after Flush the durable map lacks the bit")
	}
}

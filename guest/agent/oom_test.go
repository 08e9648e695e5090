package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// A file of kernel log records stands in for /dev/kmsg: read(2) of a
// regular file returns more than one record at once, which oomKilled's
// search copes with as well.
func TestOOMKilled(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "kmsg")
	log := "6,1,100,-;eth0: link up\n" +
		"3,2,200,-;Out of memory: Killed process 1234 (python3) total-vm:1000kB, anon-rss:900kB\n"
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if !oomKilled(p, 1234) {
		t.Error("pid 1234's OOM kill not found")
	}
	if oomKilled(p, 123) || oomKilled(p, 12345) {
		t.Error("another pid matched")
	}
	if oomKilled(filepath.Join(dir, "none"), 1234) {
		t.Error("a missing log matched")
	}
}

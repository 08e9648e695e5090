package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The reaper's descriptors (the ExtraFiles startReaper passes).
const (
	reapPidFD  = 3 // a pidfd of the VMM's process
	reapLockFD = 4 // the jail directory, flock'd: "in use" until the reaper exits
)

// Reap is the jail's reaper (`ember jail __reap DIR`): it waits for the
// VMM's process to end, says on out if the kernel's OOM killer ended it,
// and removes the jail and its cgroups.
func Reap(dir string, out io.Writer) error {
	lock := os.NewFile(reapLockFD, "lock")
	defer lock.Close()
	fds := []unix.PollFd{{Fd: reapPidFD, Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for the VM of %s: %w", dir, err)
		}
	}
	rec, err := readRecord(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the jailer failed and removed the jail itself
	}
	if err != nil {
		return err
	}
	if reason := exitReason(rec); reason != "" {
		fmt.Fprintf(out, "ember jail: VM %s: %s\n", rec.ID, reason)
	}
	return removeJail(dir, rec)
}

// exitReason says why the VM ended when its process could not: killed by
// the kernel for reaching its cgroup's memory limit.
func exitReason(rec record) string {
	for _, dir := range rec.Cgroups {
		if n := oomKills(dir); n > 0 {
			return fmt.Sprintf("killed by the kernel's OOM killer: the VM reached its cgroup's memory limit (%s: %s %d)",
				dir, oomKillKey, n)
		}
	}
	return ""
}

func readRecord(dir string) (record, error) {
	var rec record
	data, err := os.ReadFile(filepath.Join(dir, recordName))
	if err != nil {
		return rec, fmt.Errorf("jail %s: %w", dir, unwrapPath(err))
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, fmt.Errorf("jail %s: bad %s: %w", dir, recordName, err)
	}
	return rec, nil
}

// removeJail removes a jail whose VM has ended: its cgroups, then its
// directory. It never follows a mount out of the jail: a jail with
// anything mounted inside (a drive bound in from the host, say) is left
// for its owner, and the error says so.
func removeJail(dir string, rec record) error {
	var errs []string
	for _, cg := range rec.Cgroups {
		if err := removeCgroup(cg); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if err := removeTree(dir); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// removeTree removes dir unless a mount point lies inside it.
func removeTree(dir string) error {
	mounts, err := readMounts(mountInfoPath)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			return fmt.Errorf("jail %s not removed: %s is a mount point inside it", dir, m.Point)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove the jail %s: %w", dir, err)
	}
	return nil
}

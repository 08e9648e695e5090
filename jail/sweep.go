package jail

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sweep removes the jails under base whose VM has ended but whose jail was
// never removed: the reaper was killed, or the host went down, before it
// was done. A jail is left alone while it is in use: locked (being built,
// or watched by its reaper), with a process whose root it is, or with a
// process in one of its cgroups. Jails made with --keep-jail are kept
// unless kept is true. Jails without Ember's record (Firecracker's own)
// are not touched. Each jail removed or left in use gets a line on out.
func Sweep(base string, kept bool, out io.Writer) error {
	if base == "" {
		base = DefaultChrootBaseDir
	}
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		if err == nil {
			return fmt.Errorf("--chroot-base-dir %s is not a directory", base)
		}
		return fmt.Errorf("--chroot-base-dir %s: %w", base, unwrapPath(err))
	}
	recs, err := filepath.Glob(filepath.Join(base, "*", "*", recordName))
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		dir := filepath.Dir(r)
		removed, why, err := sweepOne(dir, kept)
		switch {
		case err != nil:
			errs = append(errs, err)
		case removed:
			fmt.Fprintf(out, "removed %s\n", dir)
		case why != "":
			fmt.Fprintf(out, "left %s: %s\n", dir, why)
		}
	}
	return errors.Join(errs...)
}

// sweepOne removes one jail if nothing uses it, or says why not.
func sweepOne(dir string, kept bool) (removed bool, why string, err error) {
	lock, err := os.Open(dir)
	if err != nil {
		return false, "", nil // gone meanwhile
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false, "in use (being made, or its reaper waits for the VM)", nil
	}
	rec, err := readRecord(dir)
	if err != nil {
		return false, "", nil // removed meanwhile
	}
	if rec.Keep && !kept {
		return false, "kept (--keep-jail); `ember jail sweep --kept` removes it", nil
	}
	if pid := processRootedIn(rec.Root); pid > 0 {
		return false, fmt.Sprintf("in use: process %d runs in it", pid), nil
	}
	for _, cg := range rec.Cgroups {
		if populated(cg) {
			return false, fmt.Sprintf("in use: its cgroup %s has processes", cg), nil
		}
	}
	if err := removeJail(dir, rec); err != nil {
		return false, "", err
	}
	return true, "", nil
}

// processRootedIn returns a process whose root directory is root, or 0.
func processRootedIn(root string) int {
	var want syscall.Stat_t
	if syscall.Stat(root, &want) != nil {
		return 0
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "root"), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			return pid
		}
	}
	return 0
}

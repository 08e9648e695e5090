package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// execute carries out a plan under root ("/" in the guest; a test's
// directory otherwise), telling debug each step first. It stops at the
// first failure, naming the step.
func execute(root string, plan []step, debug func(string)) error {
	for _, s := range plan {
		debug(s.String())
		if err := s.do(root); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

func (s step) do(root string) error {
	p := filepath.Join(root, s.path)
	switch s.kind {
	case stepMkdir:
		return mkdirMissing(p, s.mode)
	case stepSymlink:
		err := os.Symlink(s.source, p)
		if errors.Is(err, fs.ErrExist) {
			return nil // the image or an earlier boot has it
		}
		return err
	case stepMount:
		return unix.Mount(s.source, p, s.fstype, s.flags, s.data)
	}
	return fmt.Errorf("unknown step kind %d", s.kind)
}

// mkdirMissing creates p and its missing parents with mode (chmod'ed, so
// the umask does not strip a sticky bit). What exists is left as it is: a
// writable drive's upper/ from an earlier boot, an image's /tmp, or a
// symlink the image has at the mount point (followed by the mount, in the
// image's own root).
func mkdirMissing(p string, mode os.FileMode) error {
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if parent := filepath.Dir(p); parent != p {
		if err := mkdirMissing(parent, modeDir); err != nil {
			return err
		}
	}
	if err := os.Mkdir(p, mode.Perm()); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // a dangling symlink: the mount will say so
		}
		return err
	}
	return os.Chmod(p, mode)
}

// switchRoot makes dir the root, as switch_root(8) does: move its mount
// onto / and chroot into it. The initramfs stays underneath, unreachable;
// its mounts (the layers, the writable drive) stay in use by the overlay.
func switchRoot(dir string) error {
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("switch root: chdir %s: %w", dir, err)
	}
	if err := unix.Mount(dir, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move %s to /: %w", dir, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: chdir /: %w", err)
	}
	return nil
}

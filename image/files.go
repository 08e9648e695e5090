package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// fileLock is a held flock(2) lock; the kernel drops it when the process
// dies, so a crash never leaves the store locked.
type fileLock struct{ f *os.File }

// errLocked is tryLockFile's answer when someone else holds the lock.
var errLocked = errors.New("locked")

// lockFile takes a flock lock on path (created if needed): shared when
// shared is set, exclusive otherwise. flock locks belong to the open file,
// so two Stores in one process exclude each other as two processes do.
func lockFile(path string, shared bool) (*fileLock, error) {
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	return flockFile(path, how)
}

// tryLockFile takes an exclusive lock on path if no one holds one, and
// returns errLocked otherwise.
func tryLockFile(path string) (*fileLock, error) {
	l, err := flockFile(path, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return nil, errLocked
	}
	return l, err
}

func flockFile(path string, how int) (*fileLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if errors.Is(err, unix.EROFS) && how&unix.LOCK_SH != 0 {
		// A store on a read-only filesystem (shared read-only into a VM
		// or the lab) cannot change: its readers need no lock.
		return &fileLock{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return &fileLock{f}, nil
}

func (l *fileLock) unlock() {
	if l.f == nil {
		return // a read-only store's (see flockFile)
	}
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
}

// commitFile makes the finished temporary file tmp (already closed) the
// file path: it syncs tmp, renames it over path and syncs the directory, so
// after a crash path is either absent or whole.
func commitFile(tmp, path string) error {
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// writeFileAtomic writes data to path through a temporary file in tmpDir
// (on the same filesystem) and commitFile.
func writeFileAtomic(tmpDir, path string, data []byte) error {
	f, err := os.CreateTemp(tmpDir, filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = commitFile(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

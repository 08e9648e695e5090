package initrd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/embervm/ember/guest/initconfig"
)

// The init binary: its name, the name of its run-only build (no sandbox
// agent: smaller, for VMs that run one workload), and the variable that
// overrides where either is.
const (
	InitName    = "ember-init"
	RunInitName = "ember-init-run"
	InitEnv     = "EMBER_INIT"
)

// Layout of the image initramfs.
const (
	// initPath is where Linux looks for the program to run as PID 1 in an
	// initramfs (rdinit= default, init/main.c).
	initPath = "init"
	// configMode keeps the config (whose Env may hold secrets) to root.
	configMode = 0o600
	// initramfsFormat is hashed into the cache key: bump it when the
	// archive's layout changes.
	initramfsFormat = "ember-image-initramfs-3"
	// cacheKeyLen is the number of hex digits of the content hash in a
	// cached file's name.
	cacheKeyLen = 16
)

// FindInit returns the ember-init binary to put in image VMs: $EMBER_INIT
// if set, else ember-init in the directory of the running executable.
func FindInit() (string, error) {
	if p := os.Getenv(InitEnv); p != "" {
		if err := checkRegular(p); err != nil {
			return "", fmt.Errorf("$%s: %w", InitEnv, err)
		}
		return p, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding %s: %w", InitName, err)
	}
	p := filepath.Join(filepath.Dir(exe), InitName)
	if err := checkRegular(p); err != nil {
		return "", fmt.Errorf("%w (it is built beside ember by make build; $%s names another)", err, InitEnv)
	}
	return p, nil
}

// FindRunInit returns the init for a VM that runs a workload and serves
// no agent: $EMBER_INIT if set, else ember-init-run beside the running
// executable, else what FindInit finds (the full build runs workloads
// too).
func FindRunInit() (string, error) {
	if os.Getenv(InitEnv) == "" {
		if exe, err := os.Executable(); err == nil {
			p := filepath.Join(filepath.Dir(exe), RunInitName)
			if checkRegular(p) == nil {
				return p, nil
			}
		}
	}
	return FindInit()
}

func checkRegular(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", p)
	}
	return nil
}

// BuildInitramfs returns the path of the initramfs holding initBinary as
// /init (and the /ember directory the config goes to), zstd-compressed
// (WriteZstd). Every byte of it is copied into each VM's memory and read
// there once by the guest kernel, so a smaller archive is a faster boot
// wherever a guest's first touch of a page is dear (nested virtualization:
// in the lab, the boot to the workload took a median 0.6 s less than with
// the plain 2.5 MB archive, 9 paired boots), and zstd's decompression is
// fast (gzip's inflate, tried before, made the guest slower). It is
// built under cacheDir the first time, named for the hash of the binary, and
// reused after; a new binary gets a new file. Concurrent builders are safe:
// each writes a temporary file and renames it into place.
//
// Hashing the binary at every VM start costs more than the rest of an
// image VM's preparation on a slow host (0.3 s of 0.5 s in the lab), so a
// symlink named for the binary's path, size and modification time points
// at the archive: a binary rebuilt or replaced changes its time or size
// and is hashed again. The link is only an index: where it cannot be made
// (a read-only cache) the content hash is the answer, as before.
func BuildInitramfs(cacheDir, initBinary string) (string, error) {
	idx, idxErr := statIndex(cacheDir, initBinary)
	if idxErr == nil {
		if target, err := os.Readlink(idx); err == nil && target == filepath.Base(target) {
			p := filepath.Join(cacheDir, target)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	bin, err := os.ReadFile(initBinary)
	if err != nil {
		return "", fmt.Errorf("reading the init binary: %w", err)
	}
	h := sha256.New()
	io.WriteString(h, initramfsFormat+"\n")
	h.Write(bin)
	key := hex.EncodeToString(h.Sum(nil))[:cacheKeyLen]
	out := filepath.Join(cacheDir, "initramfs-"+key+".cpio.zst")
	if _, err := os.Stat(out); err == nil {
		if idxErr == nil {
			linkAtomic(filepath.Base(out), idx)
		}
		return out, nil
	}
	var buf bytes.Buffer
	err = WriteZstd(&buf, []Entry{
		{Name: initPath, Mode: ModeExec, Data: bin},
		{Name: strings.TrimPrefix(filepath.Dir(initconfig.Path), "/"), Dir: true, Mode: ModeDir},
	})
	if err != nil {
		return "", fmt.Errorf("building the initramfs: %w", err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("creating the initramfs cache: %w", err)
	}
	if err := writeAtomic(out, buf.Bytes()); err != nil {
		return "", err
	}
	if idxErr == nil {
		linkAtomic(filepath.Base(out), idx)
	}
	return out, nil
}

// statIndex is the name of the index link of initBinary in cacheDir: a
// hash of the format, the binary's absolute path, size and modification
// time (nanoseconds).
func statIndex(cacheDir, initBinary string) (string, error) {
	abs, err := filepath.Abs(initBinary)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%d\n%d\n", initramfsFormat, abs, st.Size(), st.ModTime().UnixNano())
	return filepath.Join(cacheDir, "init-"+hex.EncodeToString(h.Sum(nil))[:cacheKeyLen]), nil
}

// linkAtomic points the symlink link at target (a name in the same
// folder) through a temporary name and a rename; failures are ignored:
// the link only saves a hash.
func linkAtomic(target, link string) {
	tmp := fmt.Sprintf("%s.tmp-%d", link, os.Getpid())
	os.Remove(tmp)
	if os.Symlink(target, tmp) != nil {
		return
	}
	if os.Rename(tmp, link) != nil {
		os.Remove(tmp)
	}
}

// writeAtomic writes data to path through a temporary file and a rename,
// so a reader never sees a partial file.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("creating a temporary file for %s: %w", path, err)
	}
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		if err := os.Chmod(tmp.Name(), ModeFile); err != nil {
			werr = err
		}
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, werr)
	}
	return nil
}

// ConfigArchive returns the uncompressed archive holding cfg as
// /ember/config.json.
func ConfigArchive(cfg *initconfig.Config) ([]byte, error) {
	data, err := cfg.Marshal()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	name := strings.TrimPrefix(initconfig.Path, "/")
	err = WriteUncompressed(&buf, []Entry{
		// The directory is in the cached archive too; the kernel creates
		// a file only in an existing directory, so it is repeated here
		// (a second mkdir of it is harmless).
		{Name: filepath.Dir(name), Dir: true, Mode: ModeDir},
		{Name: name, Mode: configMode, Data: data},
	})
	if err != nil {
		return nil, fmt.Errorf("building the config archive: %w", err)
	}
	return buf.Bytes(), nil
}

// AppendConfig writes to dst (created, mode 0600: the config may hold
// secrets) the initrd of one VM: the initramfs built by BuildInitramfs,
// zero-padded to a multiple of 4 bytes, then cfg's archive. On error dst
// is removed.
func AppendConfig(dst, initramfs string, cfg *initconfig.Config) (err error) {
	archive, err := ConfigArchive(cfg)
	if err != nil {
		return err
	}
	src, err := os.Open(initramfs)
	if err != nil {
		return fmt.Errorf("opening the initramfs: %w", err)
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, configMode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("initrd %s: already exists", dst)
		}
		return fmt.Errorf("creating the initrd: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("writing the initrd %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	n, err := io.Copy(out, src)
	if err != nil {
		return fmt.Errorf("copying the initramfs to %s: %w", dst, err)
	}
	// The kernel takes the next archive's header only at a 4-byte-aligned
	// offset of the initrd; zeros before it are skipped.
	pad := make([]byte, (newcAlign-n%newcAlign)%newcAlign)
	if _, err := out.Write(append(pad, archive...)); err != nil {
		return fmt.Errorf("writing the initrd %s: %w", dst, err)
	}
	return nil
}

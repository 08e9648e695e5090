package shim

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/api/types"
	"golang.org/x/sys/unix"
)

// layerKeyVersion is hashed first into every layer key: a change in what
// the key covers, or in how a layer image is built, changes it, so old
// cache entries are never taken for new ones.
const layerKeyVersion = "ember-shim-layer-v1"

// mkfsErofs is erofs-utils' image builder (Debian package erofs-utils), as
// the image store uses it (image/erofs.go).
const mkfsErofs = "mkfs.erofs"

// layerExt is a cached layer image's extension.
const layerExt = ".erofs"

// rootfsLayers returns the directories whose stack is the container's
// root filesystem, lowest first, from containerd's rootfs mounts:
//   - none: the spec's root.path (relative to the bundle) is the root
//     (`ctr run --rootfs`, or a runtime that mounted it itself);
//   - one "bind"/"rbind" mount: its source (a snapshotter's view of a
//     single layer);
//   - one "overlay" mount: its lowerdirs (overlayfs lists the top first)
//     and, when it holds anything, its upperdir on top (a fresh
//     container's is empty; what the guest writes goes to its own
//     writable drive, never back to the host).
//
// Anything else (several mounts, a block device from the devmapper
// snapshotter) is refused with an error that names it.
func rootfsLayers(mounts []*types.Mount, bundle, rootPath string) ([]string, error) {
	if len(mounts) == 0 {
		if rootPath == "" {
			return nil, errors.New("rootfs: no mounts and no root.path in the spec")
		}
		if !filepath.IsAbs(rootPath) {
			rootPath = filepath.Join(bundle, rootPath)
		}
		return []string{rootPath}, nil
	}
	if len(mounts) > 1 {
		return nil, fmt.Errorf("rootfs: %d mounts: the shim takes one (an overlay or a bind mount of a snapshot)", len(mounts))
	}
	m := mounts[0]
	switch m.Type {
	case "bind", "rbind":
		if m.Source == "" || !filepath.IsAbs(m.Source) {
			return nil, fmt.Errorf("rootfs: bind mount source %q: want an absolute path", m.Source)
		}
		return []string{m.Source}, nil
	case "overlay":
		o, err := parseOverlayOptions(m.Options)
		if err != nil {
			return nil, fmt.Errorf("rootfs: %w", err)
		}
		layers := slices.Clone(o.lower)
		slices.Reverse(layers)
		if o.upper != "" {
			empty, err := emptyDir(o.upper)
			if err != nil {
				return nil, fmt.Errorf("rootfs: upperdir: %w", err)
			}
			if !empty {
				layers = append(layers, o.upper)
			}
		}
		return layers, nil
	default:
		return nil, fmt.Errorf("rootfs: mount type %q (source %q): the shim takes overlay or bind mounts of a directory snapshotter", m.Type, m.Source)
	}
}

// overlayOptions are the parts of an overlay mount's options that matter.
type overlayOptions struct {
	lower       []string // as overlayfs lists them: the top first
	upper, work string
}

// parseOverlayOptions reads lowerdir=, upperdir= and workdir= from an
// overlay mount's options (Documentation/filesystems/overlayfs.rst);
// other options (index=off, userxattr, ...) do not change what the layers
// hold. Paths must be absolute; a ':' inside a path is escaped as "\:".
func parseOverlayOptions(opts []string) (overlayOptions, error) {
	var o overlayOptions
	for _, opt := range opts {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "lowerdir":
			if o.lower != nil {
				return o, errors.New("overlay: lowerdir given twice")
			}
			o.lower = splitLowerdir(v)
			for _, d := range o.lower {
				if !filepath.IsAbs(d) {
					return o, fmt.Errorf("overlay: lowerdir %q: want absolute paths", d)
				}
			}
		case "upperdir", "workdir":
			if !filepath.IsAbs(v) {
				return o, fmt.Errorf("overlay: %s %q: want an absolute path", k, v)
			}
			if k == "upperdir" {
				o.upper = v
			} else {
				o.work = v
			}
		}
	}
	if len(o.lower) == 0 {
		return o, errors.New("overlay: no lowerdir")
	}
	return o, nil
}

// splitLowerdir splits lowerdir's value at unescaped ':'.
func splitLowerdir(v string) []string {
	var (
		out []string
		cur strings.Builder
	)
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && i+1 < len(v) && v[i+1] == ':':
			cur.WriteByte(':')
			i++
		case v[i] == ':':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(v[i])
		}
	}
	return append(out, cur.String())
}

func emptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return false, err
}

// layerCache keeps one read-only EROFS image per layer content in dir,
// shared by every VM on the host.
type layerCache struct {
	dir string
}

// image returns the cached layer image of the directory src, building it
// first if the cache has none for src's content.
//
// The key is a SHA-256 over a walk of src (not following symbolic links,
// in lexical order): each entry's path relative to src, type and mode,
// owner, size, modification time to the nanosecond, device number,
// link target and extended attributes (overlayfs' opaque markers and file
// capabilities among them). File contents are not read: a snapshotter's
// committed layers never change, and any write to a file changes its
// size or modification time, so the walk of a 100 MB layer costs
// milliseconds instead of reading it. The source path is not in the key:
// two snapshots with the same content (the same image unpacked by two
// snapshotters, or in two namespaces) share one image.
func (c layerCache) image(ctx context.Context, src string) (string, error) {
	key, err := layerKey(src)
	if err != nil {
		return "", fmt.Errorf("layer %s: %w", src, err)
	}
	path := filepath.Join(c.dir, key+layerExt)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(c.dir, ".build-*")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	uuid := key[0:8] + "-" + key[8:12] + "-" + key[12:16] + "-" + key[16:20] + "-" + key[20:32]
	out, err := exec.CommandContext(ctx, mkfsErofs, "--quiet", "-U", uuid, tmp.Name(), src).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 2048 {
			msg = msg[:2048] + "..."
		}
		return "", fmt.Errorf("layer %s: %s (package erofs-utils): %v: %s", src, mkfsErofs, err, msg)
	}
	// RENAME_NOREPLACE: an image another shim put in place first stays
	// (VMs may have it open).
	if err := unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("layer %s: %w", src, err)
	}
	return path, nil
}

// layerKey is the cache key of the directory src (see layerCache.image).
func layerKey(src string) (string, error) {
	st, err := os.Lstat(src)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", errors.New("not a directory")
	}
	h := sha256.New()
	h.Write([]byte(layerKeyVersion + "\n"))
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		return hashEntry(h, p, rel)
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashEntry adds one entry's metadata to h, each field length-prefixed so
// that no two listings hash alike.
func hashEntry(h hash.Hash, path, rel string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return err
	}
	field := func(b []byte) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	num := func(v uint64) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], v)
		h.Write(n[:])
	}
	field([]byte(rel))
	num(uint64(st.Mode))
	num(uint64(st.Uid))
	num(uint64(st.Gid))
	num(uint64(st.Size))
	num(uint64(st.Mtim.Sec))
	num(uint64(st.Mtim.Nsec))
	num(st.Rdev)
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		field([]byte(target))
	}
	names, err := listXattrs(path)
	if err != nil {
		return err
	}
	num(uint64(len(names)))
	for _, name := range names {
		v, err := getXattr(path, name)
		if err != nil {
			return err
		}
		field([]byte(name))
		field(v)
	}
	return nil
}

// listXattrs returns the names of path's extended attributes, sorted.
func listXattrs(path string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr %s: %w", path, err)
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		slices.Sort(names)
		return names, nil
	}
}

func getXattr(path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENODATA) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", path, name, err)
		}
		return buf[:n], nil
	}
}

package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// OCI whiteout names (image-spec layer.md, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	// whiteoutMetaPrefix marks AUFS bookkeeping entries (".wh..wh.plnk" and
	// the like); like Docker and containerd, the extractor skips them.
	whiteoutMetaPrefix = ".wh..wh."
	// whiteoutOpaque in a directory hides everything the lower layers have
	// in that directory.
	whiteoutOpaque = ".wh..wh..opq"
)

// overlayfs' own markers (Documentation/filesystems/overlayfs.rst): a
// whiteout is a character device with device number 0/0, an opaque
// directory carries the xattr trusted.overlay.opaque = "y".
const (
	overlayOpaqueXattr = "trusted.overlay.opaque"
	overlayOpaqueValue = "y"
	// overlayXattrPrefix is overlayfs' own namespace. A layer may not set
	// these itself: redirects and metacopy markers are the mount's business,
	// not the image author's.
	overlayXattrPrefix = "trusted.overlay."
)

// paxXattrPrefix introduces an extended attribute in a PAX header record
// (the convention of GNU and star tar, which Go's archive/tar follows).
const paxXattrPrefix = "SCHILY.xattr."

// rootDirMode is the mode of a layer's root, and of parent directories a
// layer names without listing them, as Docker and containerd create them.
const rootDirMode = 0o755

// whiteouts says what the extractor does with OCI whiteout entries.
type whiteouts int

const (
	// whiteoutsToOverlay turns them into overlayfs' markers, so the layer
	// can sit above other layers in an overlay mount.
	whiteoutsToOverlay whiteouts = iota
	// whiteoutsSkip ignores them: the flattener has already applied them
	// as deletions.
	whiteoutsSkip
)

// unpackLayer extracts the layer tar r into the directory root, which the
// caller has made (and which is usually empty). Nothing is written outside
// root: entry names are cleaned and may not climb out with "..", every
// parent directory is opened with openat2(RESOLVE_BENEATH|
// RESOLVE_NO_SYMLINKS), so a symbolic link in the layer (absolute or not)
// is never followed, and hard links may only name files of this layer.
// Owners, modes (setuid bits included), device nodes, times and extended
// attributes are kept as the layer says, which needs root.
func unpackLayer(root string, r io.Reader, mode whiteouts) error {
	x, err := newExtractor(root)
	if err != nil {
		return err
	}
	defer x.close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading layer tar: %w", err)
		}
		if err := x.entry(hdr, tr, mode); err != nil {
			return err
		}
	}
	return x.finish()
}

// applyWhiteouts deletes from root what the whiteout entries of the layer
// tar r hide: the first of the flattener's two passes over a layer, before
// unpackLayer with whiteoutsSkip adds the layer's own files. (A whiteout
// only hides what the layers below have, never entries of its own layer,
// so deleting first and adding second is the spec's order.)
func applyWhiteouts(root string, r io.Reader) error {
	x, err := newExtractor(root)
	if err != nil {
		return err
	}
	defer x.close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading layer tar: %w", err)
		}
		rel, err := cleanEntryName(hdr.Name)
		if err != nil {
			return err
		}
		dir, base := path.Split(rel)
		if !strings.HasPrefix(base, whiteoutPrefix) {
			continue
		}
		parent, err := x.openDir(dir, false)
		if errors.Is(err, errNotThere) {
			continue // nothing below to hide
		}
		if err != nil {
			return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
		switch {
		case base == whiteoutOpaque:
			err = removeChildren(parent)
		case strings.HasPrefix(base, whiteoutMetaPrefix):
		default:
			target := strings.TrimPrefix(base, whiteoutPrefix)
			if err = checkWhiteoutTarget(hdr.Name, target); err == nil {
				err = removeAt(parent, target)
			}
		}
		unix.Close(parent)
		if err != nil {
			return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
}

// errSymlinkInPath marks a parent path that goes through a symbolic link.
var errSymlinkInPath = errors.New("symbolic link in the path")

// errNotThere is openDir's answer, when asked not to create, for a missing
// directory.
var errNotThere = errors.New("no such directory in the layer")

// extractor holds the open root of one extraction and the directory times
// to set once every entry is in (adding a child changes its directory's
// modification time).
type extractor struct {
	rootPath string
	root     int
	dirTimes []dirTime
}

type dirTime struct {
	rel   string
	times [2]unix.Timespec
}

func newExtractor(root string) (*extractor, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening staging directory %s: %w", root, err)
	}
	return &extractor{rootPath: root, root: fd}, nil
}

func (x *extractor) close() { unix.Close(x.root) }

// finish sets the saved directory times. The order does not matter:
// setting a directory's times does not touch its parent's.
func (x *extractor) finish() error {
	for _, d := range x.dirTimes {
		dir, base := path.Split(d.rel)
		if base == "" {
			dir, base = "", "."
		}
		parent, err := x.openDir(dir, false)
		if err != nil {
			continue // a later entry replaced a parent with a non-directory
		}
		var st unix.Stat_t
		if err = unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = unix.UtimesNanoAt(parent, base, d.times[:], unix.AT_SYMLINK_NOFOLLOW)
		} else {
			err = nil // replaced by a non-directory, whose times are set
		}
		unix.Close(parent)
		if err != nil {
			return fmt.Errorf("setting times of %q: %w", d.rel, err)
		}
	}
	return nil
}

// cleanEntryName turns a tar entry name into a path relative to the layer
// root ("" for the root itself). A leading "/" or "./" is dropped, as every
// layer tool does; a name that climbs above the root is refused.
func cleanEntryName(name string) (string, error) {
	if name == "" {
		return "", errors.New("layer entry with an empty name")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("layer entry %q: name holds a NUL byte", name)
	}
	c := path.Clean(name)
	c = strings.TrimPrefix(c, "/")
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("layer entry %q escapes the layer root", name)
	}
	if c == "." || c == "" {
		return "", nil
	}
	return c, nil
}

// checkWhiteoutTarget refuses whiteouts that name nothing a directory can
// hold.
func checkWhiteoutTarget(entry, target string) error {
	if target == "" || target == "." || target == ".." {
		return fmt.Errorf("layer entry %q: whiteout of %q", entry, target)
	}
	return nil
}

// openDir opens the directory dir (relative to the root, "" or ending in
// "/"), creating missing components with rootDirMode when create is set.
// A component that is a symbolic link or not a directory is an error.
func (x *extractor) openDir(dir string, create bool) (int, error) {
	fd, err := unix.Dup(x.root)
	if err != nil {
		return -1, err
	}
	for _, comp := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
		if comp == "" {
			continue
		}
		if create {
			if err := unix.Mkdirat(fd, comp, rootDirMode); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return -1, fmt.Errorf("creating directory %q: %w", comp, err)
			}
		}
		next, err := unix.Openat2(fd, comp, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil && (errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR)) {
			var st unix.Stat_t
			if unix.Fstatat(fd, comp, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = errSymlinkInPath
			}
		}
		unix.Close(fd)
		switch {
		case err == nil:
			fd = next
		case errors.Is(err, errSymlinkInPath):
			return -1, fmt.Errorf("path %q goes through a symbolic link", dir)
		case errors.Is(err, unix.ENOTDIR):
			return -1, fmt.Errorf("path %q goes through a non-directory", dir)
		case errors.Is(err, unix.ENOENT) && !create:
			return -1, errNotThere
		default:
			return -1, fmt.Errorf("opening %q: %w", dir, err)
		}
	}
	return fd, nil
}

// entry extracts one tar entry.
func (x *extractor) entry(hdr *tar.Header, body io.Reader, mode whiteouts) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // archive-wide PAX defaults; Go's reader already applies them
	}
	rel, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("layer entry %q: the root is not a directory", hdr.Name)
		}
		return x.setMeta(x.root, -1, "", "", hdr, true)
	}
	dir, base := path.Split(rel)
	if strings.HasPrefix(base, whiteoutPrefix) {
		if mode == whiteoutsSkip {
			return nil
		}
		return x.whiteout(hdr, dir, base)
	}
	parent, err := x.openDir(dir, true)
	if err != nil {
		return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
	}
	defer unix.Close(parent)
	if err := x.create(parent, rel, base, hdr, body); err != nil {
		return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
	}
	return nil
}

// whiteout turns an OCI whiteout entry into overlayfs' marker.
func (x *extractor) whiteout(hdr *tar.Header, dir, base string) error {
	if strings.HasPrefix(base, whiteoutMetaPrefix) && base != whiteoutOpaque {
		return nil
	}
	parent, err := x.openDir(dir, true)
	if err != nil {
		return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
	}
	defer unix.Close(parent)
	if base == whiteoutOpaque {
		if err := unix.Fsetxattr(parent, overlayOpaqueXattr, []byte(overlayOpaqueValue), 0); err != nil {
			return fmt.Errorf("layer entry %q: marking the directory opaque: %w", hdr.Name, err)
		}
		return nil
	}
	target := strings.TrimPrefix(base, whiteoutPrefix)
	if err := checkWhiteoutTarget(hdr.Name, target); err != nil {
		return err
	}
	if err := removeAt(parent, target); err != nil {
		return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
	}
	if err := unix.Mknodat(parent, target, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("layer entry %q: making the whiteout: %w", hdr.Name, err)
	}
	return nil
}

// create makes the entry base in the directory parent. Whatever a previous
// entry of the same name made is replaced, except that a directory over a
// directory only takes the new metadata (tar semantics).
func (x *extractor) create(parent int, rel, base string, hdr *tar.Header, body io.Reader) error {
	perm := uint32(hdr.Mode) & 0o7777
	if hdr.Typeflag == tar.TypeDir {
		var st unix.Stat_t
		if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := removeAt(parent, base); err != nil {
				return err
			}
			if err := unix.Mkdirat(parent, base, 0o700); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
		fd, err := unix.Openat(parent, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening the directory: %w", err)
		}
		defer unix.Close(fd)
		return x.setMeta(fd, parent, base, rel, hdr, true)
	}

	if hdr.Typeflag == tar.TypeLink {
		return x.hardlink(parent, rel, base, hdr)
	}
	if err := removeAt(parent, base); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("creating the file: %w", err)
		}
		f := os.NewFile(uintptr(fd), base)
		defer f.Close()
		// io.Copy uses the tar reader's WriteTo, which seeks over the holes
		// of a sparse entry instead of writing zeros.
		if _, err := io.Copy(f, body); err != nil {
			return fmt.Errorf("writing the file: %w", err)
		}
		return x.setMeta(fd, parent, base, rel, hdr, false)
	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return errors.New("symbolic link with an empty target")
		}
		// The target is stored as it is and never followed here: in the
		// guest it resolves inside the image's root.
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		return x.setMetaAt(parent, base, hdr, true)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > maxDevPart || hdr.Devminor > maxDevPart {
			return fmt.Errorf("device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(parent, base, kind|perm, int(dev)); err != nil {
			return fmt.Errorf("mknod: %w", err)
		}
		return x.setMetaAt(parent, base, hdr, false)
	}
	return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
}

// maxDevPart bounds a device major or minor number to unix.Mkdev's 32-bit
// arguments; mknod then refuses (EINVAL) what the kernel's 12-bit major
// and 20-bit minor cannot hold.
const maxDevPart = 1<<32 - 1

// hardlink links base to the file of this layer that hdr.Linkname names.
func (x *extractor) hardlink(parent int, rel, base string, hdr *tar.Header) error {
	target, err := cleanEntryName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hard link target: %w", err)
	}
	if target == "" {
		return errors.New("hard link to the layer root")
	}
	if target == rel {
		return nil // a link to itself: nothing to do
	}
	tdir, tbase := path.Split(target)
	tparent, err := x.openDir(tdir, false)
	if err != nil {
		if errors.Is(err, errNotThere) {
			return fmt.Errorf("hard link target %q is not in this layer", hdr.Linkname)
		}
		return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
	}
	defer unix.Close(tparent)
	var st unix.Stat_t
	if err := unix.Fstatat(tparent, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("hard link target %q is not in this layer", hdr.Linkname)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("hard link to the directory %q", hdr.Linkname)
	}
	if err := removeAt(parent, base); err != nil {
		return err
	}
	// Flags 0: link the target itself, even when it is a symbolic link.
	if err := unix.Linkat(tparent, tbase, parent, base, 0); err != nil {
		return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
	}
	return nil
}

// setMeta sets owner, mode, extended attributes and times on the open file
// or directory fd, named base in the directory parent (parent -1: fd is the
// root), in that order: chown clears setuid bits and file capabilities, so
// it comes first. Directory times wait for finish.
func (x *extractor) setMeta(fd, parent int, base, rel string, hdr *tar.Header, isDir bool) error {
	uid, gid, err := owner(hdr)
	if err != nil {
		return err
	}
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode)&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	for name, value := range layerXattrs(hdr) {
		if err := unix.Fsetxattr(fd, name, []byte(value), 0); err != nil {
			return fmt.Errorf("setting xattr %s: %w", name, err)
		}
	}
	times := tarTimes(hdr)
	if isDir {
		x.dirTimes = append(x.dirTimes, dirTime{rel: rel, times: times})
		return nil
	}
	if err := unix.UtimesNanoAt(parent, base, times[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// setMetaAt is setMeta for entries that cannot be opened (symbolic links,
// devices, fifos): everything goes by name in parent, without following.
func (x *extractor) setMetaAt(parent int, base string, hdr *tar.Header, isLink bool) error {
	uid, gid, err := owner(hdr)
	if err != nil {
		return err
	}
	if err := unix.Fchownat(parent, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if !isLink { // a symbolic link's mode means nothing on Linux
		if err := unix.Fchmodat(parent, base, uint32(hdr.Mode)&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	// Set by path through the parent's descriptor: the kernel resolves the
	// magic link to the directory already opened beneath the root, and
	// lsetxattr does not follow the last component.
	p := fmt.Sprintf("/proc/self/fd/%d/%s", parent, base)
	for name, value := range layerXattrs(hdr) {
		if strings.HasPrefix(name, "user.") {
			continue // Linux allows user.* only on files and directories
		}
		if err := unix.Lsetxattr(p, name, []byte(value), 0); err != nil {
			return fmt.Errorf("setting xattr %s: %w", name, err)
		}
	}
	times := tarTimes(hdr)
	if err := unix.UtimesNanoAt(parent, base, times[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// maxID is the largest uid or gid Linux has ((uid_t)-1 means "unchanged").
const maxID = 1<<32 - 2

func owner(hdr *tar.Header) (int, int, error) {
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > maxID || hdr.Gid > maxID {
		return 0, 0, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	return hdr.Uid, hdr.Gid, nil
}

// layerXattrs returns the extended attributes the entry carries that an
// image may set: user.*, security.* (file capabilities, SELinux labels),
// trusted.* except overlayfs' own, and POSIX ACLs.
func layerXattrs(hdr *tar.Header) map[string]string {
	var out map[string]string
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattrPrefix)
		if !ok || !allowedXattr(name) {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = v
	}
	return out
}

func allowedXattr(name string) bool {
	switch {
	case strings.HasPrefix(name, overlayXattrPrefix):
		return false
	case strings.HasPrefix(name, "user."), strings.HasPrefix(name, "security."), strings.HasPrefix(name, "trusted."):
		return true
	case name == "system.posix_acl_access", name == "system.posix_acl_default":
		return true
	}
	return false
}

func tarTimes(hdr *tar.Header) [2]unix.Timespec {
	mt := unix.NsecToTimespec(hdr.ModTime.UnixNano())
	at := mt
	if !hdr.AccessTime.IsZero() {
		at = unix.NsecToTimespec(hdr.AccessTime.UnixNano())
	}
	return [2]unix.Timespec{at, mt}
}

// removeAt removes name from the directory dirfd, recursively if it is a
// directory, never following a symbolic link. A missing name is no error.
func removeAt(dirfd int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat %q: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(dirfd, name, 0); err != nil {
			return fmt.Errorf("removing %q: %w", name, err)
		}
		return nil
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %q: %w", name, err)
	}
	err = removeChildren(fd)
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("removing %q: %w", name, err)
	}
	return nil
}

// removeChildren empties the open directory dirfd.
func removeChildren(dirfd int) error {
	// Read the names through a duplicate: os.File takes ownership of it.
	dup, err := unix.Dup(dirfd)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(dup), "dir")
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("listing a directory: %w", err)
	}
	for _, n := range names {
		if err := removeAt(dirfd, n); err != nil {
			return err
		}
	}
	return nil
}

package agent

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
)

// read sends a file, or a directory as a tar, after an Entry describing it.
func (s *Server) read(st *mux.Stream) error {
	req, err := decode[proto.ReadRequest](st)
	if err != nil {
		return err
	}
	p, err := s.absPath(req.Path, req.User)
	if err != nil {
		return err
	}
	n := names{root: s.cfg.Root}
	if req.Format == proto.FormatTar {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if err := st.SendMsg(n.entry(p, fi)); err != nil {
			return err
		}
		bw := bufio.NewWriterSize(streamWriter{st}, proto.MaxData)
		if err := writeTar(st.Context(), p, bw); err != nil {
			return err
		}
		return bw.Flush()
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return proto.Errorf(proto.CodeInvalid, "%s is a directory: read it with format %q", p, proto.FormatTar)
	}
	if !fi.Mode().IsRegular() {
		return proto.Errorf(proto.CodeInvalid, "%s is not a regular file", p)
	}
	if err := st.SendMsg(n.entry(p, fi)); err != nil {
		return err
	}
	buf := make([]byte, proto.MaxData)
	for {
		k, err := f.Read(buf)
		if k > 0 {
			if werr := st.Write(proto.ChanBody, buf[:k]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// streamWriter writes Data frames on ChanBody.
type streamWriter struct{ st *mux.Stream }

func (w streamWriter) Write(p []byte) (int, error) {
	if err := w.st.Write(proto.ChanBody, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// streamReader reads the client's Data on ChanBody until its Close; a
// stream that ends without the Close is an error, never a short file.
type streamReader struct {
	st   *mux.Stream
	rest []byte
	err  error
}

func (r *streamReader) Read(p []byte) (int, error) {
	for len(r.rest) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		it, err := r.st.Recv(r.st.Context())
		switch {
		case err != nil:
			r.err = fmt.Errorf("upload ended before its end: %w", err)
		case it.Kind == mux.KindData && it.Channel == proto.ChanBody:
			r.rest = it.Payload
		case it.Kind == mux.KindClose && it.Channel == proto.ChanBody:
			r.err = io.EOF
		}
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

// write receives a file, or a tar to unpack, and answers its Entry.
func (s *Server) write(st *mux.Stream) error {
	req, err := decode[proto.WriteRequest](st)
	if err != nil {
		return err
	}
	p, err := s.absPath(req.Path, req.User)
	if err != nil {
		return err
	}
	owner, err := s.owner(req.User)
	if err != nil {
		return err
	}
	body := &streamReader{st: st}
	if req.Format == proto.FormatTar {
		if err := mkdirAll(p, defaultDirMode, owner); err != nil {
			return err
		}
		if err := extractTar(st.Context(), body, p, owner); err != nil {
			return err
		}
		// The upload ends with the client's Close: what follows the tar's
		// end marker (tar writers pad) is read and dropped.
		if _, err := io.Copy(io.Discard, body); err != nil {
			return err
		}
	} else {
		mode := fs.FileMode(req.Mode)
		if mode == 0 {
			mode = defaultFileMode
		}
		if err := writeFileAtomic(p, body, mode, owner); err != nil {
			return err
		}
	}
	e, err := s.lstatEntry(p)
	if err != nil {
		return err
	}
	return st.SendMsg(e)
}

// writeFileAtomic writes r to a temporary file beside p and renames it
// over p once complete and synced, so that p is never half-written.
func writeFileAtomic(p string, r io.Reader, mode fs.FileMode, owner *ownerIDs) error {
	dir := filepath.Dir(p)
	if err := mkdirAll(dir, defaultDirMode, owner); err != nil {
		return err
	}
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return proto.Errorf(proto.CodeInvalid, "%s is a directory: write into it with format %q", p, proto.FormatTar)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(p)+".ember-upload-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		return err
	}
	if owner != nil {
		if err := tmp.Chown(owner.uid, owner.gid); err != nil {
			return err
		}
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	ok = true
	return nil
}

// writeTar writes root (a directory's contents, or one file) as a tar:
// names relative to root, symbolic links as links, sockets skipped (tar
// has no type for them). A file that changes size while it is read fails
// the archive rather than corrupting it.
func writeTar(ctx context.Context, root string, w io.Writer) error {
	tw := tar.NewWriter(w)
	rootInfo, err := os.Lstat(root)
	if err != nil {
		return err
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		name := filepath.Base(p)
		if rootInfo.IsDir() {
			if p == root {
				return nil
			}
			name, _ = filepath.Rel(root, p)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = filepath.ToSlash(name)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("%s changed while it was read: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// extractTar unpacks a tar into dir. Entries are checked before anything
// is made: a name must stay inside dir (relative, no ".."), and no
// directory on its way may be a symbolic link, so an archive cannot write
// outside dir through a link it made itself. Existing files are replaced,
// existing directories merged. With owner set everything belongs to it;
// otherwise to the owners in the archive. Directory times are set last,
// once their contents are in.
func extractTar(ctx context.Context, r io.Reader, dir string, owner *ownerIDs) error {
	tr := tar.NewReader(r)
	type dirTimes struct {
		path string
		hdr  *tar.Header
	}
	var dirs []dirTimes
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the tar: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue // the directory itself
		}
		target := filepath.Join(dir, name)
		if err := noLinkOnTheWay(dir, name); err != nil {
			return err
		}
		if err := mkdirAll(filepath.Dir(target), defaultDirMode, owner); err != nil {
			return err
		}
		mode := hdr.FileInfo().Mode()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if fi, err := os.Lstat(target); err != nil || !fi.IsDir() {
				if err == nil {
					os.Remove(target)
				}
				if err := os.Mkdir(target, defaultDirMode); err != nil {
					return err
				}
			}
			dirs = append(dirs, dirTimes{target, hdr})
		case tar.TypeReg, tar.TypeRegA:
			if err := replaceable(target); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, defaultFileMode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := replaceable(target); err != nil {
				return err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			old, err := entryName(hdr.Linkname)
			if err == nil {
				err = noLinkOnTheWay(dir, old)
			}
			if err != nil {
				return fmt.Errorf("hard link %s: %w", name, err)
			}
			if err := replaceable(target); err != nil {
				return err
			}
			if err := os.Link(filepath.Join(dir, old), target); err != nil {
				return err
			}
			continue // shares the linked file's owner, mode and times
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if err := replaceable(target); err != nil {
				return err
			}
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
			if err := unix.Mknod(target, kind|uint32(mode.Perm()), int(dev)); err != nil {
				return fmt.Errorf("mknod %s: %w", name, err)
			}
		default:
			continue // PAX and GNU extension records are consumed by tar.Reader
		}
		uid, gid := hdr.Uid, hdr.Gid
		if owner != nil {
			uid, gid = owner.uid, owner.gid
		}
		if err := os.Lchown(target, uid, gid); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeSymlink {
			// After the chown, which clears setuid and setgid.
			if err := os.Chmod(target, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				return err
			}
		}
		if hdr.Typeflag != tar.TypeDir {
			if err := setTimes(target, hdr); err != nil {
				return err
			}
		}
	}
	for _, d := range slices.Backward(dirs) {
		if err := setTimes(d.path, d.hdr); err != nil {
			return err
		}
	}
	return nil
}

// entryName checks and cleans a tar entry's name (or a hard link's
// target): relative, without "..".
func entryName(name string) (string, error) {
	clean := filepath.Clean(filepath.FromSlash(name))
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", proto.Errorf(proto.CodeInvalid, "tar entry %q leaves the target directory", name)
	}
	return clean, nil
}

// noLinkOnTheWay checks that no directory between dir and dir/name is a
// symbolic link.
func noLinkOnTheWay(dir, name string) error {
	p := dir
	parts := strings.Split(filepath.Dir(name), string(filepath.Separator))
	for _, part := range parts {
		if part == "." {
			continue
		}
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // made as a directory below
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return proto.Errorf(proto.CodeInvalid, "tar entry %q goes through the symbolic link %s", name, p)
		}
	}
	return nil
}

// replaceable removes what is at p, unless it is a directory.
func replaceable(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return proto.Errorf(proto.CodeExists, "%s is a directory; the tar has a file there", p)
	}
	return os.Remove(p)
}

// setTimes sets p's access and modification times from hdr, without
// following a symbolic link.
func setTimes(p string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting the times of %s: %w", p, err)
	}
	return nil
}

// copyFile copies one non-directory (a file or a symbolic link) to dst,
// keeping its mode, owner and times.
func copyFile(src, dst string, fi fs.FileInfo) error {
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		link, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(link, dst); err != nil {
			return err
		}
	case fi.Mode().IsRegular():
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
			return err
		}
	default:
		return proto.Errorf(proto.CodeInvalid, "%s: cannot move a special file across file systems", src)
	}
	if st != nil {
		if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		if err := os.Chmod(dst, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
	}
	return setTimes(dst, &tar.Header{ModTime: fi.ModTime()})
}

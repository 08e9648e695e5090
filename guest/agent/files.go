package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/embervm/ember/agent/mux"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/guest/ociuser"
)

// Modes of what the agent creates when the request names none.
const (
	defaultDirMode  = 0o755
	defaultFileMode = 0o644
)

// listBatchBytes is roughly how much of a listing goes in one message:
// well under proto.MaxMessage even with long names.
const listBatchBytes = 32 << 10

// entryEstimate is a listing entry's encoded size beyond its name and
// path (the JSON keys and numbers), for batching.
const entryEstimate = 256

// identity resolves a request's user to its identity (for relative paths
// and ownership).
func (s *Server) identity(user string) (ociuser.Identity, error) {
	if user == "" {
		user = s.cfg.User
	}
	id, err := ociuser.Resolve(s.cfg.Root, user)
	if err != nil {
		return id, proto.Errorf(proto.CodeInvalid, "user %q: %v", user, err)
	}
	return id, nil
}

// absPath makes a request's path absolute: relative paths are in the
// user's home.
func (s *Server) absPath(p, user string) (string, error) {
	if filepath.IsAbs(p) {
		return filepath.Clean(p), nil
	}
	id, err := s.identity(user)
	if err != nil {
		return "", err
	}
	return filepath.Join(id.Home, p), nil
}

// names maps uids and gids to names from the guest's /etc/passwd and
// /etc/group, read once per request when first needed.
type names struct {
	root   string
	loaded bool
	users  map[uint32]string
	groups map[uint32]string
}

func (n *names) load() {
	if n.loaded {
		return
	}
	n.loaded = true
	n.users = readIDNames(filepath.Join(n.root, ociuser.PasswdPath))
	n.groups = readIDNames(filepath.Join(n.root, ociuser.GroupPath))
}

// readIDNames reads "name:x:id:..." lines (passwd and group alike).
func readIDNames(p string) map[uint32]string {
	m := map[uint32]string{}
	f, err := os.Open(p)
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), ":", 4)
		if len(fields) < 3 {
			continue
		}
		id, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			continue
		}
		if _, dup := m[uint32(id)]; !dup {
			m[uint32(id)] = fields[0]
		}
	}
	return m
}

// entry describes path p from its Lstat.
func (n *names) entry(p string, fi fs.FileInfo) proto.Entry {
	e := proto.Entry{
		Name: fi.Name(), Path: p, Size: fi.Size(),
		Mode: unixMode(fi.Mode()), Permissions: fi.Mode().String(), ModTime: fi.ModTime().UTC(),
	}
	switch {
	case fi.Mode().IsRegular():
		e.Type = proto.TypeFile
	case fi.IsDir():
		e.Type = proto.TypeDir
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = proto.TypeSymlink
		e.SymlinkTarget, _ = os.Readlink(p)
	default:
		e.Type = proto.TypeOther
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = st.Uid, st.Gid
		n.load()
		e.Owner, e.Group = n.users[st.Uid], n.groups[st.Gid]
	}
	return e
}

// unixMode is the permission, setuid, setgid and sticky bits of m.
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= syscall.S_ISVTX
	}
	return u
}

// lstatEntry describes one path.
func (s *Server) lstatEntry(p string) (proto.Entry, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return proto.Entry{}, err
	}
	n := names{root: s.cfg.Root}
	return n.entry(p, fi), nil
}

func (s *Server) stat(_ context.Context, req *proto.PathRequest) (proto.Entry, error) {
	p, err := s.absPath(req.Path, req.User)
	if err != nil {
		return proto.Entry{}, err
	}
	return s.lstatEntry(p)
}

// dirPath is path (for user) made absolute, refused unless a directory.
func (s *Server) dirPath(path, user string) (string, error) {
	dir, err := s.absPath(path, user)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", proto.Errorf(proto.CodeInvalid, "path: %s is not a directory", dir)
	}
	return dir, nil
}

// list sends a directory's entries, Depth levels deep, in batches.
func (s *Server) list(st *mux.Stream) error {
	req, err := decode[proto.ListRequest](st)
	if err != nil {
		return err
	}
	root, err := s.dirPath(req.Path, req.User)
	if err != nil {
		return err
	}
	depth := max(req.Depth, 1)
	n := names{root: s.cfg.Root}
	var batch proto.ListBatch
	size := 0
	flush := func() error {
		if len(batch.Entries) == 0 {
			return nil
		}
		err := st.SendMsg(batch)
		batch.Entries, size = batch.Entries[:0], 0
		return err
	}
	var walk func(dir string, level int) error
	walk = func(dir string, level int) error {
		des, err := os.ReadDir(dir)
		if err != nil {
			if dir == root {
				return err
			}
			return nil // a subdirectory that went away or is unreadable
		}
		for _, de := range des {
			if err := st.Context().Err(); err != nil {
				return context.Cause(st.Context())
			}
			p := filepath.Join(dir, de.Name())
			fi, err := de.Info()
			if err != nil {
				continue // removed meanwhile
			}
			e := n.entry(p, fi)
			batch.Entries = append(batch.Entries, e)
			size += len(e.Name) + len(e.Path) + len(e.SymlinkTarget) + entryEstimate
			if size >= listBatchBytes {
				if err := flush(); err != nil {
					return err
				}
			}
			if de.IsDir() && level < depth {
				if err := walk(p, level+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(root, 1); err != nil {
		return err
	}
	return flush()
}

// mkdir makes a directory and its missing parents, owned by the user when
// one is named; it fails with CodeExists if the directory is there.
func (s *Server) mkdir(_ context.Context, req *proto.MkdirRequest) (proto.Entry, error) {
	p, err := s.absPath(req.Path, req.User)
	if err != nil {
		return proto.Entry{}, err
	}
	if fi, err := os.Lstat(p); err == nil {
		if fi.IsDir() {
			return proto.Entry{}, proto.Errorf(proto.CodeExists, "%s: directory exists", p)
		}
		return proto.Entry{}, proto.Errorf(proto.CodeExists, "%s: exists and is not a directory", p)
	}
	mode := fs.FileMode(req.Mode)
	if mode == 0 {
		mode = defaultDirMode
	}
	owner, err := s.owner(req.User)
	if err != nil {
		return proto.Entry{}, err
	}
	if err := mkdirAll(p, mode, owner); err != nil {
		return proto.Entry{}, err
	}
	return s.lstatEntry(p)
}

// ownerIDs is who owns what the agent creates; nil: root, as the agent.
type ownerIDs struct{ uid, gid int }

// owner returns the owner for a request's user, nil when none is named.
func (s *Server) owner(user string) (*ownerIDs, error) {
	if user == "" {
		return nil, nil
	}
	id, err := s.identity(user)
	if err != nil {
		return nil, err
	}
	return &ownerIDs{int(id.UID), int(id.GID)}, nil
}

// mkdirAll is os.MkdirAll that gives each directory it makes to owner
// and the exact mode (not masked by the umask).
func mkdirAll(p string, mode fs.FileMode, owner *ownerIDs) error {
	fi, err := os.Stat(p)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: p, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if parent := filepath.Dir(p); parent != p {
		if err := mkdirAll(parent, defaultDirMode, owner); err != nil {
			return err
		}
	}
	if err := os.Mkdir(p, mode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // made meanwhile
		}
		return err
	}
	if err := os.Chmod(p, mode); err != nil {
		return err
	}
	if owner != nil {
		return os.Lchown(p, owner.uid, owner.gid)
	}
	return nil
}

// move renames a path; across file systems (or overlayfs layers, which
// refuse to rename a lower directory) it copies and removes.
func (s *Server) move(ctx context.Context, req *proto.MoveRequest) (proto.Entry, error) {
	src, err := s.absPath(req.Source, req.User)
	if err != nil {
		return proto.Entry{}, err
	}
	dst, err := s.absPath(req.Destination, req.User)
	if err != nil {
		return proto.Entry{}, err
	}
	if _, err := os.Lstat(src); err != nil {
		return proto.Entry{}, err
	}
	err = os.Rename(src, dst)
	if errors.Is(err, syscall.EXDEV) {
		err = copyAcross(ctx, src, dst)
	}
	if err != nil {
		return proto.Entry{}, err
	}
	return s.lstatEntry(dst)
}

// copyAcross moves src to dst by copying (as a tar stream through a pipe,
// with the same code as downloads and uploads) and removing src.
func copyAcross(ctx context.Context, src, dst string) error {
	if _, err := os.Lstat(dst); err == nil {
		return proto.Errorf(proto.CodeExists, "%s exists, and %s is on another file system (no atomic replace)", dst, src)
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		if err := copyFile(src, dst, fi); err != nil {
			return err
		}
		return os.Remove(src)
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := writeTar(ctx, src, pw)
		pw.CloseWithError(err)
		errc <- err
	}()
	err = extractTar(ctx, pr, dst, nil)
	pr.Close()
	if werr := <-errc; err == nil {
		err = werr
	}
	if err != nil {
		os.RemoveAll(dst)
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return os.RemoveAll(src)
}

// remove removes a path and everything under it.
func (s *Server) remove(_ context.Context, req *proto.PathRequest) (proto.Empty, error) {
	p, err := s.absPath(req.Path, req.User)
	if err != nil {
		return proto.Empty{}, err
	}
	if _, err := os.Lstat(p); err != nil {
		return proto.Empty{}, err
	}
	if p == "/" {
		return proto.Empty{}, proto.Errorf(proto.CodeInvalid, "path: refusing to remove /")
	}
	return proto.Empty{}, os.RemoveAll(p)
}

func nowUTC() time.Time { return time.Now().UTC() }

// Package ociuser resolves the User of an OCI image config ("name", "uid",
// "name:group", "uid:gid", or empty for root) against the image's own
// /etc/passwd and /etc/group, with the semantics container runtimes give it
// (runc's libcontainer/user.GetExecUser, which Docker and containerd use):
//
//   - The user part: a name must be in /etc/passwd; a number is looked up
//     there too but need not be (an unknown uid runs with gid 0 and HOME
//     "/"); an empty part means uid 0.
//   - A user found in /etc/passwd brings its primary gid and home.
//   - The group part, if given, replaces the primary gid: a name must be in
//     /etc/group, a number need not be. No supplementary groups then.
//   - Without a group part, the supplementary groups are every group of
//     /etc/group that lists the user's name as a member.
//   - A missing /etc/passwd or /etc/group is no error (a "scratch" image
//     has neither); names then cannot be resolved.
//
// The guest init uses it after switching to the image's root; the sandbox
// agent will use it for the processes it starts. It reads only the two
// files and never calls the C library's NSS.
package ociuser

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/embervm/ember/guest/initconfig"
)

// Files, relative to the root given to Resolve.
const (
	PasswdPath = "etc/passwd"
	GroupPath  = "etc/group"
)

// defaultHome is HOME for a user /etc/passwd does not know (runc's default).
const defaultHome = "/"

// maxLineLen bounds one line of /etc/passwd or /etc/group; a longer line
// (an image is outside input) is an error rather than unbounded memory.
const maxLineLen = 64 << 10

// Identity is who a process runs as.
type Identity struct {
	UID, GID uint32
	// Groups are the supplementary group ids, in /etc/group order.
	Groups []uint32
	// Home is the user's home directory from /etc/passwd, or "/".
	Home string
	// Name is the user's name in /etc/passwd, or "" when it has none.
	Name string
}

// Resolve resolves spec against root's etc/passwd and etc/group.
func Resolve(root, spec string) (Identity, error) {
	passwd, err := openOptional(filepath.Join(root, PasswdPath))
	if err != nil {
		return Identity{}, err
	}
	if passwd != nil {
		defer passwd.Close()
	}
	group, err := openOptional(filepath.Join(root, GroupPath))
	if err != nil {
		return Identity{}, err
	}
	if group != nil {
		defer group.Close()
	}
	return ResolveFrom(spec, readerOrNil(passwd), readerOrNil(group))
}

// openOptional opens path, or returns nil if it does not exist.
func openOptional(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("user lookup: %w", err)
	}
	return f, nil
}

// readerOrNil keeps a nil *os.File from becoming a non-nil io.Reader.
func readerOrNil(f *os.File) io.Reader {
	if f == nil {
		return nil
	}
	return f
}

// ResolveFrom resolves spec against the contents of /etc/passwd and
// /etc/group; a nil reader stands for a missing file.
func ResolveFrom(spec string, passwd, group io.Reader) (Identity, error) {
	userPart, groupPart, err := initconfig.ParseUser(spec)
	if err != nil {
		return Identity{}, fmt.Errorf("user %q: %w", spec, err)
	}
	id := Identity{Home: defaultHome}

	var want func(passwdEntry) bool
	switch {
	case userPart == "":
		want = func(e passwdEntry) bool { return e.uid == 0 }
	case initconfig.IsNumericID(userPart):
		uid, _ := initconfig.ParseID(userPart) // checked by ParseUser
		id.UID = uid
		want = func(e passwdEntry) bool { return e.uid == uid }
	default:
		want = func(e passwdEntry) bool { return e.name == userPart }
	}
	u, found, err := findPasswd(passwd, want)
	if err != nil {
		return Identity{}, err
	}
	switch {
	case found:
		id.UID, id.GID, id.Home, id.Name = u.uid, u.gid, u.home, u.name
		if id.Home == "" {
			id.Home = defaultHome
		}
	case userPart != "" && !initconfig.IsNumericID(userPart):
		return Identity{}, fmt.Errorf("user %q: no such user in /%s", userPart, PasswdPath)
	}

	switch {
	case groupPart != "":
		if initconfig.IsNumericID(groupPart) {
			id.GID, _ = initconfig.ParseID(groupPart)
			return id, nil
		}
		g, found, err := findGroups(group, func(e groupEntry) bool { return e.name == groupPart }, true)
		if err != nil {
			return Identity{}, err
		}
		if !found {
			return Identity{}, fmt.Errorf("group %q: no such group in /%s", groupPart, GroupPath)
		}
		id.GID = g[0].gid
	case id.Name != "":
		member := func(e groupEntry) bool {
			for _, m := range e.members {
				if m == id.Name {
					return true
				}
			}
			return false
		}
		gs, _, err := findGroups(group, member, false)
		if err != nil {
			return Identity{}, err
		}
		for _, g := range gs {
			id.Groups = append(id.Groups, g.gid)
		}
	}
	return id, nil
}

type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// findPasswd returns the first /etc/passwd entry (name:pw:uid:gid:gecos:
// home:shell) that want accepts. Blank, comment and malformed lines are
// skipped, as the C library skips them.
func findPasswd(r io.Reader, want func(passwdEntry) bool) (passwdEntry, bool, error) {
	var found passwdEntry
	ok := false
	err := scanLines(r, PasswdPath, func(f []string) bool {
		if len(f) < 4 {
			return true
		}
		uid, okU := initconfig.ParseID(f[2])
		gid, okG := initconfig.ParseID(f[3])
		if !okU || !okG {
			return true
		}
		e := passwdEntry{name: f[0], uid: uid, gid: gid}
		if len(f) > 5 {
			e.home = f[5]
		}
		if want(e) {
			found, ok = e, true
			return false
		}
		return true
	})
	return found, ok, err
}

// findGroups returns the /etc/group entries (name:pw:gid:member,...) that
// want accepts; only the first when first is set.
func findGroups(r io.Reader, want func(groupEntry) bool, first bool) ([]groupEntry, bool, error) {
	var out []groupEntry
	err := scanLines(r, GroupPath, func(f []string) bool {
		if len(f) < 3 {
			return true
		}
		gid, ok := initconfig.ParseID(f[2])
		if !ok {
			return true
		}
		e := groupEntry{name: f[0], gid: gid}
		if len(f) > 3 && f[3] != "" {
			e.members = strings.Split(f[3], ",")
		}
		if want(e) {
			out = append(out, e)
			return !first
		}
		return true
	})
	return out, len(out) > 0, err
}

// scanLines calls each with the colon-separated fields of every line of r
// that is not blank or a comment, until each returns false. A nil r is an
// empty file.
func scanLines(r io.Reader, name string, each func([]string) bool) error {
	if r == nil {
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLineLen)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue // blank, comment, NIS compat entry
		}
		if !each(strings.Split(line, ":")) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading /%s: %w", name, err)
	}
	return nil
}

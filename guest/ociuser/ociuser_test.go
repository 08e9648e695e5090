package ociuser

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const passwd = `root:x:0:0:root:/root:/bin/sh
# a comment

daemon:x:2:2:daemon:/sbin:/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
nohome:x:1001:1001::
bad:x:notanumber:1:::
+nisuser
`

const group = `root:x:0:root
bin:x:1:root,bin,daemon
daemon:x:2:root,bin,daemon
staff:x:50:app
app:x:1000:
wheel:x:10:root,app
`

// root writes a fake image root with the given files (nil: absent).
func root(t *testing.T, passwdText, groupText *string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]*string{PasswdPath: passwdText, GroupPath: groupText} {
		if text != nil {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(*text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func ptr(s string) *string { return &s }

func TestResolve(t *testing.T) {
	dir := root(t, ptr(passwd), ptr(group))
	for _, tc := range []struct {
		spec string
		want Identity
	}{
		// Root: found by uid 0, with the groups listing "root".
		{"", Identity{UID: 0, GID: 0, Groups: []uint32{0, 1, 2, 10}, Home: "/root", Name: "root"}},
		{"app", Identity{UID: 1000, GID: 1000, Groups: []uint32{50, 10}, Home: "/home/app", Name: "app"}},
		{"1000", Identity{UID: 1000, GID: 1000, Groups: []uint32{50, 10}, Home: "/home/app", Name: "app"}},
		// An explicit group replaces the primary gid and drops the
		// supplementary groups.
		{"app:staff", Identity{UID: 1000, GID: 50, Home: "/home/app", Name: "app"}},
		{"app:4242", Identity{UID: 1000, GID: 4242, Home: "/home/app", Name: "app"}},
		{"1000:wheel", Identity{UID: 1000, GID: 10, Home: "/home/app", Name: "app"}},
		// Unknown numeric ids are taken as they are.
		{"4242", Identity{UID: 4242, GID: 0, Home: "/"}},
		{"4242:4343", Identity{UID: 4242, GID: 4343, Home: "/"}},
		{"4242:staff", Identity{UID: 4242, GID: 50, Home: "/"}},
		// An empty home becomes "/".
		{"nohome", Identity{UID: 1001, GID: 1001, Home: "/", Name: "nohome"}},
	} {
		got, err := Resolve(dir, tc.spec)
		if err != nil {
			t.Errorf("Resolve(%q): %v", tc.spec, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%q) = %+v, want %+v", tc.spec, got, tc.want)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	dir := root(t, ptr(passwd), ptr(group))
	for spec, want := range map[string]string{
		"nobody":      `user "nobody": no such user in /etc/passwd`,
		"bad":         `user "bad": no such user`, // its uid does not parse: skipped
		"app:nogroup": `group "nogroup": no such group in /etc/group`,
		"app:":        `user "app:": group empty`,
		"nisuser":     `user "nisuser": no such user`,
	} {
		_, err := Resolve(dir, spec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Resolve(%q) = %v, want an error containing %q", spec, err, want)
		}
	}
}

// A scratch image has no /etc/passwd or /etc/group: ids work, names do not.
func TestResolveWithoutFiles(t *testing.T) {
	dir := root(t, nil, nil)
	for spec, want := range map[string]Identity{
		"":          {Home: "/"},
		"1000":      {UID: 1000, Home: "/"},
		"1000:1000": {UID: 1000, GID: 1000, Home: "/"},
	} {
		got, err := Resolve(dir, spec)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Resolve(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	if _, err := Resolve(dir, "app"); err == nil {
		t.Error("a name resolved without /etc/passwd")
	}
	if _, err := Resolve(dir, "0:wheel"); err == nil {
		t.Error("a group name resolved without /etc/group")
	}
}

func TestResolveLongLine(t *testing.T) {
	dir := root(t, ptr("x:x:1:1:"+strings.Repeat("g", maxLineLen)+":/:/bin/sh\n"), ptr(""))
	if _, err := Resolve(dir, "x"); err == nil || !strings.Contains(err.Error(), "reading /etc/passwd") {
		t.Errorf("long line: %v", err)
	}
}

// FuzzResolve: no passwd or group content makes the resolver panic.
func FuzzResolve(f *testing.F) {
	f.Add("app", passwd, group)
	f.Add("1000:staff", passwd, group)
	f.Add("", "::::", ":::,,")
	f.Fuzz(func(t *testing.T, spec, p, g string) {
		id, err := ResolveFrom(spec, strings.NewReader(p), strings.NewReader(g))
		if err == nil && id.Home == "" {
			t.Errorf("empty home for %q", spec)
		}
	})
}

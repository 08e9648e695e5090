package image

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCleanEntryName(t *testing.T) {
	for _, c := range []struct {
		in, want string
		bad      bool
	}{
		{in: "a/b", want: "a/b"},
		{in: "./a/b/", want: "a/b"},
		{in: "/etc/passwd", want: "etc/passwd"},
		{in: "a/../b", want: "b"},
		{in: ".", want: ""},
		{in: "./", want: ""},
		{in: "/", want: ""},
		{in: "..", bad: true},
		{in: "../a", bad: true},
		{in: "a/../../b", bad: true},
		{in: "/../a", want: "a"}, // "/.." is "/": a leading slash cannot climb
		{in: "", bad: true},
		{in: "a\x00b", bad: true},
	} {
		got, err := cleanEntryName(c.in)
		if c.bad != (err != nil) || got != c.want {
			t.Errorf("cleanEntryName(%q) = %q, %v", c.in, got, err)
		}
	}
}

func unpackDir(t *testing.T, mode whiteouts, layer []byte) (string, error) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, rootDirMode); err != nil {
		t.Fatal(err)
	}
	return root, unpackLayer(root, bytes.NewReader(layer), mode)
}

// TestUnpackOverlayMarkers: OCI whiteouts become overlayfs' markers.
func TestUnpackOverlayMarkers(t *testing.T) {
	needRoot(t)
	root, err := unpackDir(t, whiteoutsToOverlay, topLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(root, "etc/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("etc/gone is not a 0:0 character device: mode %o rdev %d %v", st.Mode, st.Rdev, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(root, "opt"), overlayOpaqueXattr, buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("opt has no %s=y: %v", overlayOpaqueXattr, err)
	}
	for _, p := range []string{"etc/.wh.gone", "opt/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s was extracted as a file", p)
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "opt/new")); err != nil || string(b) != "n" {
		t.Errorf("opt/new = %q, %v", b, err)
	}
}

// TestUnpackRefusesOverlayXattrs: a layer cannot set overlayfs' own
// xattrs (redirects, metacopy) itself.
func TestUnpackRefusesOverlayXattrs(t *testing.T) {
	needRoot(t)
	d := dirE("d/")
	d.Xattrs = map[string]string{"trusted.overlay.redirect": "/etc", "trusted.overlay.opaque": "y", "trusted.other": "kept"}
	root, err := unpackDir(t, whiteoutsToOverlay, layerTar(t, d))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	for _, x := range []string{"trusted.overlay.redirect", "trusted.overlay.opaque"} {
		if _, err := unix.Lgetxattr(filepath.Join(root, "d"), x, buf); err == nil {
			t.Errorf("the layer set %s", x)
		}
	}
	if n, err := unix.Lgetxattr(filepath.Join(root, "d"), "trusted.other", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("trusted.other = %q, %v", buf[:max(n, 0)], err)
	}
}

// TestUnpackReplaces: a later entry replaces an earlier one of the same
// name, whatever their types; a directory over a directory keeps its
// children.
func TestUnpackReplaces(t *testing.T) {
	needRoot(t)
	root, err := unpackDir(t, whiteoutsToOverlay, layerTar(t,
		fileE("x", "file"), dirE("x/"), fileE("x/child", "c"), dirE("x/"),
		dirE("y/"), fileE("y/z", "z"), fileE("y", "now a file"),
		symlinkE("l", "/nowhere"), fileE("l", "not a link"),
	))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "x/child")); err != nil || string(b) != "c" {
		t.Errorf("x/child = %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "y")); err != nil || string(b) != "now a file" {
		t.Errorf("y = %q, %v", b, err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "l")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("l: %v %v", fi, err)
	}
}

// TestApplyWhiteouts: the flattener's first pass deletes what a layer's
// whiteouts hide and nothing else.
func TestApplyWhiteouts(t *testing.T) {
	needRoot(t)
	root, err := unpackDir(t, whiteoutsSkip, baseLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := applyWhiteouts(root, bytes.NewReader(layerTar(t,
		fileE("etc/.wh.gone", ""), fileE("opt/.wh..wh..opq", ""), fileE("nothere/.wh.x", ""), fileE(".wh..wh.plnk", ""),
	))); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/gone")); err == nil {
		t.Error("etc/gone survived its whiteout")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "opt")); len(ents) != 0 {
		t.Errorf("opaque opt still has %v", ents)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/hostname")); err != nil {
		t.Errorf("etc/hostname: %v", err)
	}
	err = applyWhiteouts(root, bytes.NewReader(layerTar(t, symlinkE("bin/sh2", "/"), fileE("bin/sh/.wh.x", ""))))
	if err == nil {
		t.Error("a whiteout through a symbolic link was applied")
	}
}

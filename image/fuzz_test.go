package image

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

// fuzzOutside is a fixed folder outside every staging directory, so the
// fuzzer can learn to aim symbolic links at it.
var fuzzOutside = filepath.Join(os.TempDir(), "ember-fuzz-outside")

// FuzzUnpackLayer feeds arbitrary bytes to the tar → layer path (both
// extraction modes and the flattener's whiteout pass) and checks that
// nothing is ever written outside the staging directory: its sibling and
// fuzzOutside stay as they were. Errors are expected; escapes are not.
// An execution takes milliseconds (real files), so bound the minimization
// of new inputs, or it takes the whole run:
//
//	go test -run '^$' -fuzz FuzzUnpackLayer -fuzztime 30s -fuzzminimizetime 50x ./image
func FuzzUnpackLayer(f *testing.F) {
	needRoot(f)
	if err := os.MkdirAll(fuzzOutside, 0o755); err != nil {
		f.Fatal(err)
	}
	for _, seed := range [][]byte{
		baseLayer(f),
		topLayer(f),
		layerTar(f, fileE("../sibling/pwned", "x")),
		layerTar(f, symlinkE("evil", fuzzOutside), fileE("evil/pwned", "x")),
		layerTar(f, symlinkE("up", "../sibling"), fileE("up/pwned", "x"), fileE("up/.wh.keep", "")),
		layerTar(f, dirE("d/"), symlinkE("d/l", "../../sibling"), hardlinkE("h", "d/l/keep")),
		layerTar(f, hardlinkE("h", "../sibling/keep"), hardlinkE("h2", "/sibling/keep")),
		layerTar(f, symlinkE("o", fuzzOutside), fileE("o/.wh..wh..opq", ""), fileE("o/.wh.x", "")),
		layerTar(f, fileE("/abs", "a"), dirE("x/"), fileE("x/../../y", "y")),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		stage := filepath.Join(outer, "stage")
		sibling := filepath.Join(outer, "sibling")
		for _, d := range []string{stage, sibling} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(sibling, "keep"), []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := outsideStage(t, outer)

		_ = unpackLayer(stage, bytes.NewReader(data), whiteoutsToOverlay)
		_ = applyWhiteouts(stage, bytes.NewReader(data))
		_ = unpackLayer(stage, bytes.NewReader(data), whiteoutsSkip)

		if fi, err := os.Lstat(stage); err != nil || !fi.IsDir() {
			t.Fatalf("the staging directory itself changed: %v %v", fi, err)
		}
		if after := outsideStage(t, outer); !reflect.DeepEqual(before, after) {
			t.Fatalf("wrote outside the staging directory:\nbefore %v\nafter  %v", before, after)
		}
		if ents, _ := os.ReadDir(fuzzOutside); len(ents) != 0 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			sort.Strings(names)
			t.Fatalf("wrote into %s: %v", fuzzOutside, names)
		}
	})
}

// outsideStage describes everything under outer but the staging
// directory (whose files may be fifos, or sparse and huge).
func outsideStage(t *testing.T, outer string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(outer, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(outer, p)
		if rel == "stage" {
			return filepath.SkipDir
		}
		desc := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(b)
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The Ember home folder holds the image store in StoreDir.
const (
	// HomeEnv names the environment variable that moves Ember's home.
	HomeEnv = "EMBER_HOME"
	// DefaultHome is Ember's home when HomeEnv is unset (FHS: variable
	// state of a program lives under /var/lib).
	DefaultHome = "/var/lib/ember"
	// StoreDir is the store's folder inside the home.
	StoreDir = "images"
)

// The store's layout under Home/StoreDir. Everything named by a digest is
// immutable once renamed into place.
const (
	blobsDir  = "blobs/sha256"  // manifests, configs and layer blobs, as fetched
	layersDir = "layers/sha256" // one EROFS image per layer, by diff ID
	mergedDir = "merged/sha256" // flattened lowest layers, by mergeKey
	indexDir  = "index/sha256"  // one image record per image, by config digest
	tmpDir    = "tmp"           // work in progress; emptied by a collection
	locksDir  = "locks"         // per-layer build locks
	refsFile  = "refs.json"     // names → image IDs
	lockName  = "lock"          // the store lock: shared to add, exclusive to delete
	refsLock  = "refs.lock"     // serialises read-modify-write of refsFile

	layerExt  = ".erofs"
	recordExt = ".json"
)

// ErrNotFound is returned (wrapped) when no image has the given name or ID.
var ErrNotFound = errors.New("no such image")

// Store is an image store in one Ember home folder. Its methods may run
// concurrently, in one process or many.
type Store struct {
	root string
	log  *slog.Logger
}

// Image is an image in the store.
type Image struct {
	// ID is the digest of the image's config, "sha256:<hex>", as Docker
	// and containerd name images.
	ID string `json:"id"`
	// Names are the references that point at the image (e.g.
	// "index.docker.io/library/busybox:latest"); none for an image known
	// only by its ID.
	Names []string `json:"names,omitempty"`
	// Manifest is the digest of the image manifest as stored.
	Manifest     string    `json:"manifest"`
	OS           string    `json:"os"`
	Architecture string    `json:"architecture"`
	Imported     time.Time `json:"imported"`
	// Layers are the image's layers, lowest first.
	Layers []Layer `json:"layers"`
	// Config is what the guest needs to start the image's program.
	Config Config `json:"config"`
}

// Layer is one layer of an image.
type Layer struct {
	// Digest, MediaType and Size describe the blob as fetched (often
	// gzip-compressed).
	Digest    string `json:"digest"`
	MediaType string `json:"media_type"`
	Size      int64  `json:"size"`
	// DiffID is the digest of the uncompressed layer tar, which names the
	// layer's filesystem image.
	DiffID string `json:"diff_id"`
	// Path is the layer's read-only EROFS image and FSSize its size
	// (filled in on reading).
	Path   string `json:"path,omitempty"`
	FSSize int64  `json:"fs_size,omitempty"`
}

// Config is the part of the OCI image config (image-spec config.md,
// "config") that starts the image's program in the guest.
type Config struct {
	// Env holds "NAME=value" entries.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the program's working directory ("" means "/").
	WorkingDir string `json:"working_dir,omitempty"`
	// User is "user", "uid", "user:group", "uid:gid" (and mixes), resolved
	// in the image's /etc/passwd and /etc/group; "" means root.
	User string `json:"user,omitempty"`
	// Entrypoint and Cmd make the program's argv: Entrypoint followed by
	// Cmd, where arguments given at run time replace Cmd.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// Home returns Ember's home folder: $EMBER_HOME, or DefaultHome.
func Home() string {
	if h := os.Getenv(HomeEnv); h != "" {
		return h
	}
	return DefaultHome
}

// Open opens (creating if needed) the image store in the home folder home.
func Open(home string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{root: filepath.Join(home, StoreDir), log: log}
	for _, d := range []string{blobsDir, layersDir, mergedDir, indexDir, tmpDir, locksDir} {
		if err := os.MkdirAll(s.path(d), 0o755); err != nil {
			return nil, fmt.Errorf("opening image store: %w", err)
		}
	}
	return s, nil
}

// Root returns the store's folder.
func (s *Store) Root() string { return s.root }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.root}, elem...)...)
}

func (s *Store) blobPath(h v1.Hash) string   { return s.path(blobsDir, h.Hex) }
func (s *Store) layerPath(h v1.Hash) string  { return s.path(layersDir, h.Hex+layerExt) }
func (s *Store) recordPath(h v1.Hash) string { return s.path(indexDir, h.Hex+recordExt) }

// lock takes the store lock: shared for work that adds (imports, merged
// layers), exclusive for work that deletes (rm and its collection).
func (s *Store) lock(shared bool) (*fileLock, error) {
	return lockFile(s.path(lockName), shared)
}

// List returns every image in the store, newest first.
func (s *Store) List() ([]*Image, error) {
	ents, err := os.ReadDir(s.path(indexDir))
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, e := range ents {
		hex, ok := strings.CutSuffix(e.Name(), recordExt)
		if !ok || !isHex64(hex) {
			continue
		}
		img, err := s.readRecord(v1.Hash{Algorithm: "sha256", Hex: hex}, refs)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Imported.Equal(out[j].Imported) {
			return out[i].Imported.After(out[j].Imported)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Inspect returns the image that ref names: a name ("busybox",
// "registry:5000/app:v1"), an ID ("sha256:<hex>") or an unambiguous prefix
// of an ID's hex digits.
func (s *Store) Inspect(ref string) (*Image, error) {
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	id, _, err := s.resolve(ref, refs)
	if err != nil {
		return nil, err
	}
	return s.readRecord(id, refs)
}

// minIDPrefix is the shortest ID prefix Inspect and Remove accept, so a
// short word is taken for a name, not a digest.
const minIDPrefix = 4

// resolve finds the image ref names; byName says it was found by name.
func (s *Store) resolve(ref string, refs map[string]string) (v1.Hash, bool, error) {
	if n, err := normalizeName(ref); err == nil {
		if id, ok := refs[n]; ok {
			h, err := v1.NewHash(id)
			return h, true, err
		}
	}
	prefix := strings.TrimPrefix(ref, "sha256:")
	if len(prefix) >= minIDPrefix && len(prefix) <= 64 && strings.Trim(prefix, "0123456789abcdef") == "" {
		ents, err := os.ReadDir(s.path(indexDir))
		if err != nil {
			return v1.Hash{}, false, err
		}
		var found []string
		for _, e := range ents {
			hex, ok := strings.CutSuffix(e.Name(), recordExt)
			if ok && isHex64(hex) && strings.HasPrefix(hex, prefix) {
				found = append(found, hex)
			}
		}
		switch len(found) {
		case 1:
			return v1.Hash{Algorithm: "sha256", Hex: found[0]}, false, nil
		case 0:
		default:
			return v1.Hash{}, false, fmt.Errorf("image ID prefix %q is ambiguous: it matches %d images", ref, len(found))
		}
	}
	return v1.Hash{}, false, fmt.Errorf("image %q: %w", ref, ErrNotFound)
}

// normalizeName turns a reference into the full form names are kept in:
// "busybox" → "index.docker.io/library/busybox:latest".
func normalizeName(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", err
	}
	return r.Name(), nil
}

func isHex64(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// readRecord reads the image record of id and fills in its names and layer
// paths.
func (s *Store) readRecord(id v1.Hash, refs map[string]string) (*Image, error) {
	b, err := os.ReadFile(s.recordPath(id))
	if err != nil {
		return nil, err
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("image record %s: %w", id, err)
	}
	for n, target := range refs {
		if target == img.ID {
			img.Names = append(img.Names, n)
		}
	}
	sort.Strings(img.Names)
	for i := range img.Layers {
		h, err := v1.NewHash(img.Layers[i].DiffID)
		if err != nil {
			return nil, fmt.Errorf("image record %s: layer %d: %w", id, i, err)
		}
		img.Layers[i].Path = s.layerPath(h)
		if fi, err := os.Stat(img.Layers[i].Path); err == nil {
			img.Layers[i].FSSize = fi.Size()
		}
	}
	return &img, nil
}

// writeRecord stores img's record (without names and paths): the commit
// point of an import.
func (s *Store) writeRecord(id v1.Hash, img *Image) error {
	rec := *img
	rec.Names = nil
	rec.Layers = append([]Layer(nil), img.Layers...)
	for i := range rec.Layers {
		rec.Layers[i].Path, rec.Layers[i].FSSize = "", 0
	}
	b, err := json.MarshalIndent(&rec, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(s.path(tmpDir), s.recordPath(id), append(b, '\n'))
}

// readRefs reads the name index; a missing file is an empty index.
func (s *Store) readRefs() (map[string]string, error) {
	b, err := os.ReadFile(s.path(refsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading image names: %w", err)
	}
	refs := map[string]string{}
	if err := json.Unmarshal(b, &refs); err != nil {
		return nil, fmt.Errorf("reading image names %s: %w", s.path(refsFile), err)
	}
	return refs, nil
}

// updateRefs applies change to the name index under its lock and writes
// it back atomically.
func (s *Store) updateRefs(change func(map[string]string)) error {
	l, err := lockFile(s.path(refsLock), false)
	if err != nil {
		return err
	}
	defer l.unlock()
	refs, err := s.readRefs()
	if err != nil {
		return err
	}
	change(refs)
	b, err := json.MarshalIndent(refs, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(s.path(tmpDir), s.path(refsFile), append(b, '\n'))
}

// RemoveResult says what Remove did.
type RemoveResult struct {
	// Untagged are the names removed.
	Untagged []string
	// Deleted are the IDs of the images removed.
	Deleted []string
	// Freed is the number of bytes of blobs and layer images deleted
	// because no remaining image uses them.
	Freed int64
}

// Remove removes what ref names. A name is removed from its image, and the
// image goes with its last name; an ID removes the image and all its
// names. Then blobs and layer images no remaining image uses are deleted.
// It waits for imports in progress (the store lock), so it never deletes
// what an import is about to reference.
func (s *Store) Remove(ref string) (*RemoveResult, error) {
	l, err := s.lock(false)
	if err != nil {
		return nil, err
	}
	defer l.unlock()
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	id, byName, err := s.resolve(ref, refs)
	if err != nil {
		return nil, err
	}
	res := &RemoveResult{}
	untagName := ""
	if byName {
		untagName, _ = normalizeName(ref)
	}
	remaining := 0
	err = s.updateRefs(func(m map[string]string) {
		for n, target := range m {
			if target != id.String() {
				continue
			}
			if !byName || n == untagName {
				delete(m, n)
				res.Untagged = append(res.Untagged, n)
			} else {
				remaining++
			}
		}
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(res.Untagged)
	if remaining == 0 {
		if err := os.Remove(s.recordPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing image %s: %w", id, err)
		}
		res.Deleted = append(res.Deleted, id.String())
		if err := syncDir(s.path(indexDir)); err != nil {
			return nil, err
		}
	}
	freed, err := s.collect()
	res.Freed = freed
	return res, err
}

// Prune deletes what no image uses: blobs and layer images left by removed
// images or by imports that failed or crashed, and temporary files. It
// waits for imports in progress. It returns the bytes freed.
func (s *Store) Prune() (int64, error) {
	l, err := s.lock(false)
	if err != nil {
		return 0, err
	}
	defer l.unlock()
	return s.collect()
}

// collect deletes blobs, layer images and merged layer images that no
// image record references, and everything under tmp and locks. The caller
// holds the store lock exclusively: no import is running.
func (s *Store) collect() (int64, error) {
	imgs, err := s.List()
	if err != nil {
		return 0, err
	}
	keepBlobs := map[string]bool{}
	keepLayers := map[string]bool{}
	keepMerged := map[string]bool{}
	for _, img := range imgs {
		for _, d := range []string{img.ID, img.Manifest} {
			keepBlobs[strings.TrimPrefix(d, "sha256:")] = true
		}
		var diffIDs []string
		for _, l := range img.Layers {
			keepBlobs[strings.TrimPrefix(l.Digest, "sha256:")] = true
			keepLayers[strings.TrimPrefix(l.DiffID, "sha256:")+layerExt] = true
			diffIDs = append(diffIDs, l.DiffID)
		}
		for n := 2; n <= len(diffIDs); n++ {
			keepMerged[mergeKey(diffIDs[:n]).Hex+layerExt] = true
		}
	}
	var freed int64
	sweep := func(dir string, keep map[string]bool) error {
		ents, err := os.ReadDir(s.path(dir))
		if err != nil {
			return err
		}
		for _, e := range ents {
			if keep[e.Name()] {
				continue
			}
			p := s.path(dir, e.Name())
			freed += diskUsage(p)
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			s.log.Debug("image store: deleted", "path", p)
		}
		return nil
	}
	for _, d := range []struct {
		dir  string
		keep map[string]bool
	}{{blobsDir, keepBlobs}, {layersDir, keepLayers}, {mergedDir, keepMerged}, {tmpDir, nil}, {locksDir, nil}} {
		if err := sweep(d.dir, d.keep); err != nil {
			return freed, fmt.Errorf("collecting unused image data: %w", err)
		}
	}
	// Names whose image record is gone (a crash between the two writes of
	// an import's end cannot do this, but a hand-edited store can).
	ids := map[string]bool{}
	for _, img := range imgs {
		ids[img.ID] = true
	}
	err = s.updateRefs(func(m map[string]string) {
		for n, id := range m {
			if !ids[id] {
				delete(m, n)
			}
		}
	})
	return freed, err
}

// diskUsage returns the bytes the files under p take (apparent sizes).
func diskUsage(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

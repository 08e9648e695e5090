package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ImportOptions tune Import and Pull.
type ImportOptions struct {
	// Name is the name to give the image. When empty, the image keeps the
	// names its source carries (a docker save tarball's RepoTags, an OCI
	// layout's ref.name annotation when it is a full reference, the pulled
	// reference).
	Name string
	// Progress, when set, is told how each layer goes.
	Progress ProgressFunc
}

// PullOptions tune Pull.
type PullOptions struct {
	ImportOptions
	// Insecure allows plain HTTP to the registry (loopback and private
	// addresses use HTTP anyway, as go-containerregistry decides).
	Insecure bool
}

// source is one image to add, whatever it came from.
type source struct {
	// what says where the image came from, for error messages.
	what string
	// manifest and config are the raw manifest and config.
	manifest, config []byte
	// manifestDigest, when set, is the digest the manifest was asked for.
	manifestDigest v1.Hash
	// openLayer opens the blob of the manifest's layer i.
	openLayer func(i int, d v1.Descriptor) (io.ReadCloser, error)
	// names are the names the source carries.
	names []string
}

// Import adds the image at path: an OCI image layout folder
// (image-spec image-layout.md) or a `docker save` tarball.
func (s *Store) Import(ctx context.Context, path string, opts ImportOptions) (*Image, error) {
	if err := s.canImport(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	var src *source
	var done func()
	if fi.IsDir() {
		src, err = layoutSource(path, opts.Name)
	} else {
		src, done, err = dockerSaveSource(path, opts.Name)
	}
	if err != nil {
		return nil, err
	}
	if done != nil {
		defer done()
	}
	return s.add(ctx, src, opts)
}

// Pull fetches ref from its registry with go-containerregistry's remote
// package, choosing the linux/GOARCH image of a multi-platform index, and
// adds it. Credentials come from the Docker config ($DOCKER_CONFIG), as the
// docker and crane commands find them.
func (s *Store) Pull(ctx context.Context, ref string, opts PullOptions) (*Image, error) {
	if err := s.canImport(); err != nil {
		return nil, err
	}
	var nopts []name.Option
	if opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("pull %q: %w", ref, err)
	}
	img, err := remote.Image(r,
		remote.WithContext(ctx),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r.Name(), err)
	}
	src, err := imageSource(r.Name(), img, v1.Hash{})
	if err != nil {
		return nil, err
	}
	src.names = []string{r.Name()}
	return s.add(ctx, src, opts.ImportOptions)
}

// imageSource reads an image through go-containerregistry's v1.Image (an
// OCI layout's or a registry's).
func imageSource(what string, img v1.Image, want v1.Hash) (*source, error) {
	m, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("%s: reading the manifest: %w", what, err)
	}
	c, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%s: reading the config: %w", what, err)
	}
	return &source{
		what:           what,
		manifest:       m,
		config:         c,
		manifestDigest: want,
		openLayer: func(_ int, d v1.Descriptor) (io.ReadCloser, error) {
			l, err := img.LayerByDigest(d.Digest)
			if err != nil {
				return nil, err
			}
			return l.Compressed()
		},
	}, nil
}

// canImport checks, before anything is fetched, what converting layers
// needs: root (layer files keep their owners, modes and device nodes) and
// mkfs.erofs.
func (s *Store) canImport() error {
	if os.Geteuid() != 0 {
		return errors.New("importing images needs root: layer files keep their owners, setuid bits and device nodes")
	}
	if _, err := exec.LookPath(mkfsErofs); err != nil {
		return fmt.Errorf("%s not found (Debian package erofs-utils): %w", mkfsErofs, err)
	}
	return nil
}

// layerMediaTypes are the layer blob types an image may use (image-spec
// media-types.md and Docker's image manifest v2.2). Compression is sniffed
// from the bytes, so the distinction is not relied on.
var layerMediaTypes = map[types.MediaType]bool{
	types.OCILayer:                       true,
	types.OCILayerZStd:                   true,
	types.OCIUncompressedLayer:           true,
	types.OCIRestrictedLayer:             true,
	types.OCIUncompressedRestrictedLayer: true,
	types.DockerLayer:                    true,
	types.DockerForeignLayer:             true,
	types.DockerUncompressedLayer:        true,
}

// add stores src's blobs, converts its layers and then, as the commit
// point, writes its record and names. Until then nothing of it is visible;
// blobs and layer images already renamed into place are content-addressed,
// so a crash leaves only unreferenced files that the next collection
// deletes.
func (s *Store) add(ctx context.Context, src *source, opts ImportOptions) (*Image, error) {
	manifestDigest := sha256Hash(src.manifest)
	if src.manifestDigest != (v1.Hash{}) && src.manifestDigest != manifestDigest {
		return nil, fmt.Errorf("%s: manifest digest is %s, want %s", src.what, manifestDigest, src.manifestDigest)
	}
	m, err := v1.ParseManifest(bytes.NewReader(src.manifest))
	if err != nil {
		return nil, fmt.Errorf("%s: bad manifest: %w", src.what, err)
	}
	configDigest := sha256Hash(src.config)
	if m.Config.Digest != configDigest {
		return nil, fmt.Errorf("%s: config digest is %s, the manifest says %s", src.what, configDigest, m.Config.Digest)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(src.config))
	if err != nil {
		return nil, fmt.Errorf("%s: bad image config: %w", src.what, err)
	}
	if err := checkImage(m, cf); err != nil {
		return nil, fmt.Errorf("%s: %w", src.what, err)
	}
	names := src.names
	if opts.Name != "" {
		n, err := normalizeName(opts.Name)
		if err != nil {
			return nil, fmt.Errorf("image name %q: %w", opts.Name, err)
		}
		names = []string{n}
	}

	l, err := s.lock(true)
	if err != nil {
		return nil, err
	}
	img, err := s.addLocked(ctx, src, m, cf, configDigest, manifestDigest, names, opts.Progress)
	l.unlock()
	if err != nil {
		s.cleanUpAfterFailure()
		return nil, err
	}
	return img, nil
}

// addLocked is add's work under the shared store lock.
func (s *Store) addLocked(ctx context.Context, src *source, m *v1.Manifest, cf *v1.ConfigFile,
	configDigest, manifestDigest v1.Hash, names []string, progress ProgressFunc) (*Image, error) {
	img := &Image{
		ID:           configDigest.String(),
		Manifest:     manifestDigest.String(),
		OS:           cf.OS,
		Architecture: cf.Architecture,
		Imported:     time.Now().UTC(),
		Config: Config{
			Env:        cf.Config.Env,
			WorkingDir: cf.Config.WorkingDir,
			User:       cf.Config.User,
			Entrypoint: cf.Config.Entrypoint,
			Cmd:        cf.Config.Cmd,
		},
	}
	for i, d := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		job := layerJob{
			index: i, count: len(m.Layers), desc: d, diffID: cf.RootFS.DiffIDs[i],
			open:     func() (io.ReadCloser, error) { return src.openLayer(i, d) },
			progress: progress,
		}
		if err := s.ensureLayer(ctx, job); err != nil {
			return nil, fmt.Errorf("%s: layer %d (%s): %w", src.what, i+1, d.Digest, err)
		}
		img.Layers = append(img.Layers, Layer{
			Digest: d.Digest.String(), MediaType: string(d.MediaType), Size: d.Size,
			DiffID: job.diffID.String(),
		})
	}
	for _, b := range []struct {
		h    v1.Hash
		data []byte
	}{{configDigest, src.config}, {manifestDigest, src.manifest}} {
		if !exists(s.blobPath(b.h)) {
			if err := writeFileAtomic(s.path(tmpDir), s.blobPath(b.h), b.data); err != nil {
				return nil, err
			}
		}
	}
	if err := s.writeRecord(configDigest, img); err != nil {
		return nil, err
	}
	if len(names) > 0 {
		err := s.updateRefs(func(refs map[string]string) {
			for _, n := range names {
				refs[n] = img.ID
			}
		})
		if err != nil {
			return nil, err
		}
	}
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	return s.readRecord(configDigest, refs)
}

// cleanUpAfterFailure deletes what a failed import left in the store
// (layers it had finished, temporary files) when no other import is
// running; otherwise the next collection (rm, prune) does.
func (s *Store) cleanUpAfterFailure() {
	l, err := tryLockFile(s.path(lockName))
	if err != nil {
		return
	}
	defer l.unlock()
	if _, err := s.collect(); err != nil {
		s.log.Warn("image store: cleaning up after a failed import", "err", err)
	}
}

// checkImage checks what the store relies on in a manifest and config: a
// Linux image for this host's architecture, sha256 digests throughout,
// layer types it can unpack, and one diff ID per layer.
func checkImage(m *v1.Manifest, cf *v1.ConfigFile) error {
	if cf.OS != "linux" {
		return fmt.Errorf("image is for OS %q, not linux", cf.OS)
	}
	if cf.Architecture != runtime.GOARCH {
		return fmt.Errorf("image is for architecture %q, this host runs %q", cf.Architecture, runtime.GOARCH)
	}
	if len(m.Layers) == 0 {
		return errors.New("image has no layers")
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("manifest lists %d layers but the config has %d diff IDs", len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	if m.Config.Digest.Algorithm != "sha256" {
		return fmt.Errorf("config digest %s: only sha256 is supported", m.Config.Digest)
	}
	for i, d := range m.Layers {
		if !layerMediaTypes[d.MediaType] {
			return fmt.Errorf("layer %d: unsupported media type %q", i+1, d.MediaType)
		}
		if d.Digest.Algorithm != "sha256" || cf.RootFS.DiffIDs[i].Algorithm != "sha256" {
			return fmt.Errorf("layer %d: only sha256 digests are supported", i+1)
		}
		if d.Size < 0 {
			return fmt.Errorf("layer %d: negative size %d", i+1, d.Size)
		}
	}
	return nil
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// RootfsConfig is the config of an image imported from a root filesystem
// tarball: the OCI default PATH and a shell, as `docker import` leaves a
// user to override at run time.
var RootfsConfig = v1.Config{
	Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	Cmd: []string{"/bin/sh"},
}

// ImportRootfs adds a root filesystem tarball (mmdebstrap's or debootstrap's
// output, `docker export`'s) as an image of one uncompressed layer with
// RootfsConfig, as `docker import` does. opts.Name names it.
func (s *Store) ImportRootfs(ctx context.Context, path string, opts ImportOptions) (*Image, error) {
	if err := s.canImport(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCIUncompressedLayer))
	if err != nil {
		return nil, fmt.Errorf("import --rootfs %s: %w", path, err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return nil, fmt.Errorf("import --rootfs %s: %w", path, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("import --rootfs %s: %w", path, err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", runtime.GOARCH, RootfsConfig
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("import --rootfs %s: %w", path, err)
	}
	src, err := imageSource(path, img, v1.Hash{})
	if err != nil {
		return nil, err
	}
	return s.add(ctx, src, opts)
}

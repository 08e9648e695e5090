package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// dockerManifestName is the index of a `docker save` tarball (Docker's
// image/spec/v1.2.md: a JSON list of {Config, RepoTags, Layers}).
const dockerManifestName = "manifest.json"

// Bounds on what a docker save tarball may make the importer hold in
// memory or chase.
const (
	// maxSmallMember bounds manifest.json and the image config.
	maxSmallMember = 16 << 20
	// maxLinkHops bounds chains of links inside the tarball (docker save
	// links a layer it already wrote instead of writing it twice).
	maxLinkHops = 8
)

// tarMember is where one member of an uncompressed tarball lies.
type tarMember struct {
	typeflag byte
	offset   int64
	size     int64
	linkname string
}

// dockerSaveSource reads the image of the docker save tarball at p: the
// only one, or the one whose RepoTags include want. It indexes the tarball
// in one pass and then reads members in place. Layers stay as they are in
// the tarball (docker save writes them uncompressed); the manifest, which
// a docker save tarball does not carry, is made from them, so the stored
// image has one like any other. done closes the file.
func dockerSaveSource(p, want string) (src *source, done func(), err error) {
	what := "docker save tarball " + p
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, fmt.Errorf("import: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	members, err := indexTar(f)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	open := func(name string) (*io.SectionReader, error) { return openMember(f, members, name) }
	readSmall := func(name string) ([]byte, error) {
		r, err := open(name)
		if err != nil {
			return nil, err
		}
		if r.Size() > maxSmallMember {
			return nil, fmt.Errorf("%s is %d bytes, more than %d", name, r.Size(), maxSmallMember)
		}
		return io.ReadAll(r)
	}

	mb, err := readSmall(dockerManifestName)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: not a docker save tarball: %w", what, err)
	}
	var dm tarball.Manifest
	if err := json.Unmarshal(mb, &dm); err != nil {
		return nil, nil, fmt.Errorf("%s: bad %s: %w", what, dockerManifestName, err)
	}
	desc, err := pickDockerImage(dm, want)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	config, err := readSmall(desc.Config)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: image config: %w", what, err)
	}
	configDigest := sha256Hash(config)
	// Docker names the config by its digest ("<hex>.json", or
	// "blobs/sha256/<hex>" since Docker 25): a name that disagrees with the
	// content means the content changed.
	if base := strings.TrimSuffix(path.Base(desc.Config), ".json"); isHex64(base) && base != configDigest.Hex {
		return nil, nil, fmt.Errorf("%s: config %s has digest %s", what, desc.Config, configDigest)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(config))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: bad image config: %w", what, err)
	}
	if len(cf.RootFS.DiffIDs) != len(desc.Layers) {
		return nil, nil, fmt.Errorf("%s: %s lists %d layers but the config has %d diff IDs", what, dockerManifestName, len(desc.Layers), len(cf.RootFS.DiffIDs))
	}

	// Describe each layer as it lies in the tarball. An uncompressed one
	// (what docker save writes) has its diff ID as digest; a compressed one
	// is hashed here, a local read.
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(config)), Digest: configDigest},
	}
	for i, name := range desc.Layers {
		r, err := open(name)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: layer %d: %w", what, i+1, err)
		}
		d := v1.Descriptor{Size: r.Size()}
		switch sniffCompression(r) {
		case compressionNone:
			d.MediaType, d.Digest = types.OCIUncompressedLayer, cf.RootFS.DiffIDs[i]
		case compressionGzip:
			d.MediaType = types.OCILayer
		case compressionZstd:
			d.MediaType = types.OCILayerZStd
		}
		if d.MediaType != types.OCIUncompressedLayer {
			if d.Digest, _, err = v1.SHA256(io.NewSectionReader(r, 0, r.Size())); err != nil {
				return nil, nil, fmt.Errorf("%s: layer %d: %w", what, i+1, err)
			}
		}
		m.Layers = append(m.Layers, d)
	}
	manifest, err := json.Marshal(&m)
	if err != nil {
		return nil, nil, err
	}
	src = &source{
		what:     what,
		manifest: manifest,
		config:   config,
		openLayer: func(i int, _ v1.Descriptor) (io.ReadCloser, error) {
			r, err := open(desc.Layers[i])
			if err != nil {
				return nil, err
			}
			return io.NopCloser(r), nil
		},
	}
	for _, t := range desc.RepoTags {
		n, err := normalizeName(t)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: RepoTags: %w", what, err)
		}
		src.names = append(src.names, n)
	}
	return src, func() { f.Close() }, nil
}

// pickDockerImage chooses the image of a docker save manifest.
func pickDockerImage(dm tarball.Manifest, want string) (*tarball.Descriptor, error) {
	if len(dm) == 0 {
		return nil, fmt.Errorf("%s lists no image", dockerManifestName)
	}
	if len(dm) == 1 {
		return &dm[0], nil
	}
	var tags []string
	nw, _ := normalizeName(want)
	for i := range dm {
		for _, t := range dm[i].RepoTags {
			if nt, err := normalizeName(t); want != "" && err == nil && nt == nw {
				return &dm[i], nil
			}
			tags = append(tags, t)
		}
	}
	sort.Strings(tags)
	return nil, fmt.Errorf("it holds %d images (tags %s): give the one to import as NAME", len(dm), strings.Join(tags, ", "))
}

// indexTar reads every header of the tarball f once, seeking over member
// data, and notes where each member lies. A tarball cut short fails here.
func indexTar(f *os.File) (map[string]tarMember, error) {
	members := map[string]tarMember{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return members, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading the tarball: %w (truncated, or not a tar file)", err)
		}
		// Go's tar reader reads headers straight from f, so f's offset
		// is now the start of the member's data.
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		members[path.Clean(hdr.Name)] = tarMember{typeflag: hdr.Typeflag, offset: off, size: hdr.Size, linkname: hdr.Linkname}
	}
}

// openMember opens the regular member name, following links inside the
// tarball.
func openMember(f *os.File, members map[string]tarMember, name string) (*io.SectionReader, error) {
	n := path.Clean(name)
	for hop := 0; hop <= maxLinkHops; hop++ {
		m, ok := members[n]
		if !ok {
			return nil, fmt.Errorf("%s is not in the tarball", name)
		}
		switch m.typeflag {
		case tar.TypeReg:
			return io.NewSectionReader(f, m.offset, m.size), nil
		case tar.TypeSymlink:
			n = path.Clean(path.Join(path.Dir(n), m.linkname))
		case tar.TypeLink:
			n = path.Clean(m.linkname)
		default:
			return nil, fmt.Errorf("%s is not a regular file in the tarball", name)
		}
	}
	return nil, fmt.Errorf("%s: more than %d links", name, maxLinkHops)
}

// compression is how a layer blob is compressed.
type compression int

const (
	compressionNone compression = iota
	compressionGzip
	compressionZstd
)

// Magic numbers: gzip (RFC 1952 §2.3.1), zstd frames (RFC 8878 §3.1.1).
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// sniffCompression looks at the first bytes of r.
func sniffCompression(r io.ReaderAt) compression {
	var b [4]byte
	n, _ := r.ReadAt(b[:], 0)
	return compressionOf(b[:n])
}

func compressionOf(b []byte) compression {
	switch {
	case len(b) >= len(gzipMagic) && string(b[:len(gzipMagic)]) == string(gzipMagic):
		return compressionGzip
	case len(b) >= len(zstdMagic) && string(b[:len(zstdMagic)]) == string(zstdMagic):
		return compressionZstd
	}
	return compressionNone
}

// peekCompression sniffs the stream br without consuming it.
func peekCompression(br *bufio.Reader) compression {
	b, err := br.Peek(len(zstdMagic))
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return compressionNone
	}
	return compressionOf(b)
}

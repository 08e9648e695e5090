package image

import (
	"fmt"
	"runtime"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// refNameAnnotation names an image in an OCI layout's index (image-spec
// annotations.md): a tag such as "latest" or a full reference.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// maxIndexDepth bounds how deep image indexes may nest in a layout (a
// multi-platform image is an index inside index.json: depth 2).
const maxIndexDepth = 4

// layoutCandidate is one linux/GOARCH image found in a layout.
type layoutCandidate struct {
	refName string
	digest  v1.Hash
	index   v1.ImageIndex // the index whose manifest lists it
}

// layoutSource reads the image of the OCI image layout in dir: the only
// linux/GOARCH image, or the one whose ref.name annotation matches want.
func layoutSource(dir, want string) (*source, error) {
	what := "OCI layout " + dir
	lp, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: not an OCI image layout (no index.json): %w", what, err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	var cands []layoutCandidate
	if err := findImages(idx, "", 1, &cands); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	c, err := pickCandidate(cands, want)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	img, err := c.index.Image(c.digest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	src, err := imageSource(what, img, c.digest)
	if err != nil {
		return nil, err
	}
	// A bare tag ("latest") says nothing about the repository, so only a
	// full reference becomes a name.
	if strings.ContainsAny(c.refName, "/:@") {
		if n, err := normalizeName(c.refName); err == nil {
			src.names = []string{n}
		}
	}
	return src, nil
}

// findImages collects the images of idx (and of the indexes it lists) that
// run here: linux/GOARCH, or with no platform said.
func findImages(idx v1.ImageIndex, refName string, depth int, out *[]layoutCandidate) error {
	if depth > maxIndexDepth {
		return fmt.Errorf("image indexes nested deeper than %d", maxIndexDepth)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, d := range im.Manifests {
		rn := refName
		if a := d.Annotations[refNameAnnotation]; a != "" {
			rn = a
		}
		switch d.MediaType {
		case types.OCIManifestSchema1, types.DockerManifestSchema2:
			if d.Platform == nil || (d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH) {
				*out = append(*out, layoutCandidate{refName: rn, digest: d.Digest, index: idx})
			}
		case types.OCIImageIndex, types.DockerManifestList:
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return err
			}
			raw, err := child.RawManifest()
			if err != nil {
				return err
			}
			if got := sha256Hash(raw); got != d.Digest {
				return fmt.Errorf("image index %s: content digest is %s", d.Digest, got)
			}
			if err := findImages(child, rn, depth+1, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// pickCandidate chooses the image to import.
func pickCandidate(cands []layoutCandidate, want string) (layoutCandidate, error) {
	if len(cands) == 0 {
		return layoutCandidate{}, fmt.Errorf("no linux/%s image in it", runtime.GOARCH)
	}
	if len(cands) == 1 {
		return cands[0], nil
	}
	var names []string
	for _, c := range cands {
		if want != "" && refMatches(c.refName, want) {
			return c, nil
		}
		names = append(names, fmt.Sprintf("%q", c.refName))
	}
	sort.Strings(names)
	return layoutCandidate{}, fmt.Errorf("it holds %d linux/%s images (ref names %s): give the one to import as NAME",
		len(cands), runtime.GOARCH, strings.Join(names, ", "))
}

// refMatches says whether the layout's ref name refName is the name want:
// equal, equal once normalized, or want's tag when refName is a bare tag.
func refMatches(refName, want string) bool {
	if refName == "" {
		return false
	}
	if refName == want {
		return true
	}
	nw, err := normalizeName(want)
	if err != nil {
		return false
	}
	if nr, err := normalizeName(refName); err == nil && nr == nw {
		return true
	}
	return strings.HasSuffix(nw, ":"+refName)
}

package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// mergeKeyDomain separates merge keys from every other digest; the version
// changes if the way merged images are built changes.
const mergeKeyDomain = "ember merged layers v1\n"

// LayerImages returns the read-only filesystem images a VM of img gets as
// drives, lowest layer first, at most maxDrives of them. When the image
// has more layers than that, its lowest layers are flattened into one
// merged image (made once, kept in the store under a key derived from
// their diff IDs, and shared by every image with the same lowest layers),
// so that merged + the rest = maxDrives drives. The VMM's virtio-mmio
// slots are few and fixed, hence the parameter.
func (s *Store) LayerImages(ctx context.Context, img *Image, maxDrives int) ([]string, error) {
	if maxDrives < 1 {
		return nil, fmt.Errorf("image %s: at least one read-only drive is needed, got %d", img.ID, maxDrives)
	}
	if len(img.Layers) == 0 {
		return nil, fmt.Errorf("image %s has no layers", img.ID)
	}
	n := mergeCount(len(img.Layers), maxDrives)
	var out []string
	if n > 0 {
		p, err := s.mergedImage(ctx, img.Layers[:n])
		if err != nil {
			return nil, fmt.Errorf("image %s: flattening its lowest %d layers: %w", img.ID, n, err)
		}
		out = append(out, p)
	}
	for _, l := range img.Layers[n:] {
		h, err := v1.NewHash(l.DiffID)
		if err != nil {
			return nil, err
		}
		p := s.layerPath(h)
		if !exists(p) {
			return nil, fmt.Errorf("image %s: layer image %s is missing", img.ID, p)
		}
		out = append(out, p)
	}
	return out, nil
}

// mergeCount returns how many of the lowest layers to flatten so that
// layers fit in maxDrives: 0 when they already fit, else at least 2.
func mergeCount(layers, maxDrives int) int {
	if layers <= maxDrives {
		return 0
	}
	return layers - maxDrives + 1
}

// mergeKey names the merged image of the layers with these diff IDs,
// lowest first.
func mergeKey(diffIDs []string) v1.Hash {
	h := sha256.New()
	io.WriteString(h, mergeKeyDomain)
	for _, d := range diffIDs {
		io.WriteString(h, d+"\n")
	}
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// mergedImage returns the merged image of layers (the lowest of an image),
// building it from their stored blobs if needed: each layer's whiteouts
// are applied as deletions, then its files added. Nothing lies below the
// lowest layer, so the result needs no whiteouts of its own.
func (s *Store) mergedImage(ctx context.Context, layers []Layer) (string, error) {
	var diffIDs []string
	for _, l := range layers {
		diffIDs = append(diffIDs, l.DiffID)
	}
	key := mergeKey(diffIDs)
	out := s.path(mergedDir, key.Hex+layerExt)
	if exists(out) {
		return out, nil
	}
	// Shared store lock: a collection must not delete the blobs read here.
	sl, err := s.lock(true)
	if err != nil {
		return "", err
	}
	defer sl.unlock()
	kl, err := lockFile(s.path(locksDir, "merged-"+key.Hex), false)
	if err != nil {
		return "", err
	}
	defer kl.unlock()
	if exists(out) {
		return out, nil
	}
	work, err := os.MkdirTemp(s.path(tmpDir), "merged-"+key.Hex[:12]+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	stage := filepath.Join(work, "root")
	if err := os.Mkdir(stage, rootDirMode); err != nil {
		return "", err
	}
	for i, l := range layers {
		h, err := v1.NewHash(l.Digest)
		if err != nil {
			return "", err
		}
		pass := func(apply func(io.Reader) error) error {
			f, err := os.Open(s.blobPath(h))
			if err != nil {
				return err
			}
			defer f.Close()
			tr, closeTar, err := decompress(ctxReader{ctx, f}, io.Discard)
			if err != nil {
				return err
			}
			defer closeTar()
			return apply(tr)
		}
		err = pass(func(r io.Reader) error { return applyWhiteouts(stage, r) })
		if err == nil {
			err = pass(func(r io.Reader) error { return unpackLayer(stage, r, whiteoutsSkip) })
		}
		if err != nil {
			return "", fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
		}
	}
	tmp := filepath.Join(work, "merged"+layerExt)
	if err := buildErofs(ctx, stage, tmp, key); err != nil {
		return "", err
	}
	if err := commitFile(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}

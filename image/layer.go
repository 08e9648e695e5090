package image

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// zstdMaxWindow bounds the memory a zstd layer may make the decoder take.
// RFC 8878 §3.1.1.1.2 lets a frame ask for any window; zstd's own tool
// needs --long (128 MiB) before it writes more than 8 MiB.
const zstdMaxWindow = 128 << 20

// layerJob is one layer of an image being added.
type layerJob struct {
	index, count int
	desc         v1.Descriptor
	diffID       v1.Hash
	open         func() (io.ReadCloser, error)
	progress     ProgressFunc
}

// ensureLayer makes sure the store has the layer's blob (by digest) and
// its filesystem image (by diff ID). The blob is read once: it is written
// to a temporary file, hashed, decompressed, hashed again and unpacked as
// it streams; the digests are checked before anything is renamed into
// place. A per-diff-ID lock keeps two imports of the same layer from
// building it twice.
func (s *Store) ensureLayer(ctx context.Context, job layerJob) error {
	blobPath, fsPath := s.blobPath(job.desc.Digest), s.layerPath(job.diffID)
	report := job.reporter()
	if exists(blobPath) && exists(fsPath) {
		report(PhasePresent, job.desc.Size)
		return nil
	}
	kl, err := lockFile(s.path(locksDir, "layer-"+job.diffID.Hex), false)
	if err != nil {
		return err
	}
	defer kl.unlock()
	haveBlob, haveFS := exists(blobPath), exists(fsPath)
	if haveBlob && haveFS {
		report(PhasePresent, job.desc.Size)
		return nil
	}

	work, err := os.MkdirTemp(s.path(tmpDir), "layer-"+job.diffID.Hex[:12]+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	var rc io.ReadCloser
	if haveBlob {
		rc, err = os.Open(blobPath)
	} else {
		rc, err = job.open()
	}
	if err != nil {
		return fmt.Errorf("opening the blob: %w", err)
	}
	defer rc.Close()

	// raw: the blob as stored, at most one byte more than the manifest
	// says (so a longer blob is caught without reading it all).
	counted := &countingReader{r: io.LimitReader(ctxReader{ctx, rc}, job.desc.Size+1), report: report}
	digester := sha256.New()
	raw := io.TeeReader(counted, digester)
	var blobTmp *os.File
	if !haveBlob {
		if blobTmp, err = os.Create(filepath.Join(work, "blob")); err != nil {
			return err
		}
		defer blobTmp.Close()
		raw = io.TeeReader(raw, blobTmp)
	}
	differ := sha256.New()
	stage := filepath.Join(work, "root")
	streamErr := func() error {
		tarStream, closeTar, err := decompress(raw, differ)
		if err != nil {
			return err
		}
		defer closeTar()
		if !haveFS {
			if err := os.Mkdir(stage, rootDirMode); err != nil {
				return err
			}
			if err := unpackLayer(stage, tarStream, whiteoutsToOverlay); err != nil {
				return err
			}
		}
		// The diff ID covers the whole tar stream, end-of-archive blocks
		// and padding included.
		if _, err := io.Copy(io.Discard, tarStream); err != nil {
			return fmt.Errorf("reading the layer: %w", err)
		}
		return nil
	}()
	// Read the blob to its end whatever happened, so that a corrupt blob
	// is reported as one (by its digest), not as whatever the corruption
	// did to the decompressor or the tar reader.
	if _, err := io.Copy(io.Discard, raw); err != nil {
		if streamErr != nil {
			return streamErr
		}
		return fmt.Errorf("reading the blob: %w", err)
	}
	if err := checkBlob(job, counted.n, hashOf(digester)); err != nil {
		return err
	}
	if streamErr != nil {
		return streamErr
	}
	if got := hashOf(differ); got != job.diffID {
		return fmt.Errorf("uncompressed layer has digest %s, the config's diff ID is %s", got, job.diffID)
	}

	if !haveFS {
		report(PhaseBuild, counted.n)
		out := filepath.Join(work, "layer"+layerExt)
		if err := buildErofs(ctx, stage, out, job.diffID); err != nil {
			return err
		}
		if err := commitFile(out, fsPath); err != nil {
			return err
		}
	}
	if !haveBlob {
		if err := blobTmp.Close(); err != nil {
			return err
		}
		if err := os.Chmod(blobTmp.Name(), 0o644); err != nil {
			return err
		}
		if err := commitFile(blobTmp.Name(), blobPath); err != nil {
			return err
		}
	}
	report(PhaseDone, counted.n)
	return nil
}

// checkBlob compares the size and digest of the blob read with what the
// manifest says.
func checkBlob(job layerJob, size int64, digest v1.Hash) error {
	switch {
	case size > job.desc.Size:
		return fmt.Errorf("blob is longer than the %d bytes the manifest says", job.desc.Size)
	case size < job.desc.Size:
		return fmt.Errorf("blob is %d bytes, the manifest says %d (truncated?)", size, job.desc.Size)
	case digest != job.desc.Digest && job.desc.Digest == job.diffID:
		// An uncompressed blob: its digest is the diff ID.
		return fmt.Errorf("layer content has digest %s, the config's diff ID is %s", digest, job.diffID)
	case digest != job.desc.Digest:
		return fmt.Errorf("blob content has digest %s, the manifest says %s", digest, job.desc.Digest)
	}
	return nil
}

// decompress returns the tar stream inside raw, sniffing gzip and zstd,
// with every byte of it also written to sum.
func decompress(raw io.Reader, sum io.Writer) (io.Reader, func(), error) {
	br := bufio.NewReader(raw)
	switch peekCompression(br) {
	case compressionGzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("reading the gzip layer: %w", err)
		}
		return io.TeeReader(zr, sum), func() { zr.Close() }, nil
	case compressionZstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return nil, nil, fmt.Errorf("reading the zstd layer: %w", err)
		}
		return io.TeeReader(zr, sum), zr.Close, nil
	}
	return io.TeeReader(br, sum), func() {}, nil
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// countingReader counts bytes and reports progress every progressStep.
type countingReader struct {
	r      io.Reader
	n      int64
	last   int64
	report func(Phase, int64)
}

// progressStep is how many bytes pass between two progress reports.
const progressStep = 256 << 10

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n-c.last >= progressStep {
		c.last = c.n
		c.report(PhaseFetch, c.n)
	}
	return n, err
}

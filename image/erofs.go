package image

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// mkfsErofs is erofs-utils' image builder (Debian package erofs-utils,
// 1.5 in Debian 12).
const mkfsErofs = "mkfs.erofs"

// maxToolOutput bounds how much of a failing tool's output goes into an
// error message.
const maxToolOutput = 2048

// buildErofs makes the read-only EROFS image out from the directory src.
// Options: none that change the data. mkfs.erofs 1.5 keeps owners, modes,
// device numbers, nanosecond modification times and every extended
// attribute (trusted.overlay.opaque included); files are stored
// uncompressed (see doc.go for the sizes measured), with small tails
// packed inline. The UUID comes from the key (the diff ID, or the merge
// key), so two builds of one layer differ only in their build time.
func buildErofs(ctx context.Context, src, out string, key v1.Hash) error {
	cmd := exec.CommandContext(ctx, mkfsErofs, "--quiet", "-U", uuidOf(key), out, src)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(output.String())
		if len(msg) > maxToolOutput {
			msg = msg[:maxToolOutput] + "..."
		}
		return fmt.Errorf("%s: %w: %s", mkfsErofs, err, msg)
	}
	return nil
}

// uuidOf formats the first 16 bytes of h as a UUID string.
func uuidOf(h v1.Hash) string {
	x := h.Hex
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

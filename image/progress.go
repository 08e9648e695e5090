package image

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Phase is the stage a layer is at.
type Phase int

const (
	// PhaseFetch: the blob is being read (and unpacked as it streams).
	PhaseFetch Phase = iota
	// PhaseBuild: the layer's filesystem image is being built.
	PhaseBuild
	// PhaseDone: the layer is stored.
	PhaseDone
	// PhasePresent: the store already had the layer; nothing was read.
	PhasePresent
)

// Progress is one report about one layer.
type Progress struct {
	// Layer counts from 1 to Layers.
	Layer, Layers int
	Digest        string
	Phase         Phase
	// Done is the number of blob bytes read so far, of Total.
	Done, Total int64
}

// ProgressFunc receives progress reports, from the goroutine that called
// Import or Pull.
type ProgressFunc func(Progress)

// reporter returns the function the layer code reports through.
func (j layerJob) reporter() func(Phase, int64) {
	return func(ph Phase, done int64) {
		if j.progress == nil {
			return
		}
		j.progress(Progress{
			Layer: j.index + 1, Layers: j.count, Digest: j.desc.Digest.String(),
			Phase: ph, Done: done, Total: j.desc.Size,
		})
	}
}

// TerminalProgress returns a ProgressFunc that draws one line per layer
// on w, a terminal: bytes read of the layer's size, rewritten in place
// with a carriage return, and ended when the layer is stored.
func TerminalProgress(w io.Writer) ProgressFunc {
	return func(p Progress) {
		short := p.Digest
		if len(short) > len("sha256:")+12 {
			short = short[:len("sha256:")+12]
		}
		head := fmt.Sprintf("\r\033[Klayer %d/%d %s", p.Layer, p.Layers, short)
		switch p.Phase {
		case PhaseFetch:
			fmt.Fprintf(w, "%s  %s / %s", head, formatBytes(p.Done), formatBytes(p.Total))
		case PhaseBuild:
			fmt.Fprintf(w, "%s  %s  building the filesystem image", head, formatBytes(p.Done))
		case PhaseDone:
			fmt.Fprintf(w, "%s  %s  done\n", head, formatBytes(p.Done))
		case PhasePresent:
			fmt.Fprintf(w, "%s  %s  already stored\n", head, formatBytes(p.Total))
		}
	}
}

// formatBytes writes n in binary units (KiB, MiB, ...) with one decimal.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// WriteAdded prints what an import or pull added: the image ID and names.
func WriteAdded(w io.Writer, img *Image) {
	fmt.Fprintln(w, img.ID)
	for _, n := range img.Names {
		fmt.Fprintln(w, n)
	}
}

// WriteRemoved prints what Remove did, one line per name and image, then
// the bytes freed.
func WriteRemoved(w io.Writer, res *RemoveResult) {
	for _, n := range res.Untagged {
		fmt.Fprintln(w, "untagged", n)
	}
	for _, id := range res.Deleted {
		fmt.Fprintln(w, "deleted", id)
	}
	if res.Freed > 0 {
		fmt.Fprintln(w, "freed", formatBytes(res.Freed))
	}
}

// idShort is how many hex digits of an ID the table shows (as Docker).
const idShort = 12

// WriteTable prints images as a table: ID, layers, size of their layer
// images, import time and names.
func WriteTable(w io.Writer, imgs []*Image) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tLAYERS\tSIZE\tIMPORTED\tNAMES")
	for _, img := range imgs {
		var size int64
		for _, l := range img.Layers {
			size += l.FSSize
		}
		names := strings.Join(img.Names, ",")
		if names == "" {
			names = "<none>"
		}
		id := strings.TrimPrefix(img.ID, "sha256:")
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", id[:min(idShort, len(id))], len(img.Layers), formatBytes(size),
			img.Imported.Local().Format(time.DateTime), names)
	}
	return tw.Flush()
}

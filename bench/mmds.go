package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/embervm/ember/guest/tiny"
)

// mmdsBenchDocBytes is the size of the metadata document the MMDS figure
// is taken with: a few KiB, as an EC2-style instance document with user
// data is.
const mmdsBenchDocBytes = 8 << 10

// MMDSResult is the peak RSS of the tiny guest with a network interface,
// without and with an MMDS on it (and an mmdsBenchDocBytes store): the
// difference is what configuring the MMDS costs a VM whose guest does not
// use it (a guest that does adds its connections' bounded buffers).
type MMDSResult struct {
	WithoutMiB, WithMiB float64
	Runs                int
}

// ExtraMiB is the MMDS's extra peak RSS.
func (r MMDSResult) ExtraMiB() float64 { return r.WithMiB - r.WithoutMiB }

// TinyMMDS boots the tiny guest runs times in ember's Firecracker mode
// (--no-api --config-file, no seccomp) with a network interface on a tap
// ember creates, alternately without and with an MMDS, and returns the
// medians. It needs root (the tap). measurer measures each run
// (RunToExitRSS).
func TinyMMDS(ctx context.Context, ember, measurer string, runs int, progress io.Writer) (MMDSResult, error) {
	dir, err := os.MkdirTemp("", "ember-bench-mmds-")
	if err != nil {
		return MMDSResult{}, err
	}
	defer os.RemoveAll(dir)
	img, err := WriteTemp(dir, "tiny-*.elf", tiny.Image())
	if err != nil {
		return MMDSResult{}, err
	}
	meta, err := json.Marshal(map[string]any{"latest": map[string]any{
		"meta-data": map[string]string{"instance-id": "i-0123456789abcdef0", "local-ipv4": "10.0.0.2"},
		"user-data": strings.Repeat("#cloud-config\n", mmdsBenchDocBytes/14),
	}})
	if err != nil {
		return MMDSResult{}, err
	}
	metaPath, err := WriteTemp(dir, "meta-*.json", meta)
	if err != nil {
		return MMDSResult{}, err
	}
	tap := fmt.Sprintf("embmb%d", os.Getpid()%100000)
	config := func(withMMDS bool) (string, error) {
		c := map[string]any{
			"boot-source":        map[string]any{"kernel_image_path": img},
			"drives":             []any{},
			"machine-config":     map[string]any{"vcpu_count": 1, "mem_size_mib": guestMemMiB},
			"network-interfaces": []any{map[string]any{"iface_id": "eth0", "host_dev_name": tap}},
		}
		if withMMDS {
			c["mmds-config"] = map[string]any{"network_interfaces": []string{"eth0"}, "version": "V2"}
		}
		b, err := json.Marshal(c)
		if err != nil {
			return "", err
		}
		return WriteTemp(dir, "vm-*.json", b)
	}
	without, err := config(false)
	if err != nil {
		return MMDSResult{}, err
	}
	with, err := config(true)
	if err != nil {
		return MMDSResult{}, err
	}
	var wo, wi []float64
	for i := 0; i < runs; i++ {
		s, _, err := RunToExitRSS(ctx, measurer, []string{ember, "--no-api", "--config-file", without, "--no-seccomp"}, 0)
		if err != nil {
			return MMDSResult{}, fmt.Errorf("tiny guest with a network interface: %w", err)
		}
		wo = append(wo, mib(s.PeakRSS))
		if s, _, err = RunToExitRSS(ctx, measurer, []string{ember, "--no-api", "--config-file", with, "--metadata", metaPath, "--no-seccomp"}, 0); err != nil {
			return MMDSResult{}, fmt.Errorf("tiny guest with an MMDS: %w", err)
		}
		wi = append(wi, mib(s.PeakRSS))
		fmt.Fprintf(progress, "mmds run %d: without %.2f MiB, with %.2f MiB\n", i+1, wo[i], wi[i])
	}
	return MMDSResult{WithoutMiB: Median(wo), WithMiB: Median(wi), Runs: runs}, nil
}

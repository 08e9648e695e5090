package api

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/embervm/ember/ratelimit"
	"github.com/embervm/ember/seccomp"
	"github.com/embervm/ember/virtio/blk"
	"github.com/embervm/ember/vmm"
	"github.com/embervm/ember/x86"
)

// Translation of the pre-boot models into edits of the pending vmm.Config.
//
// Each xChange function validates its model in two steps, the way
// Firecracker does: what the model alone decides (ranges, enums, files that
// must open) is checked at once and returns an error; what depends on the
// rest of the configuration (unique ids, one root drive, balloon against
// memory) is checked by the returned change, which Backend.Configure runs
// on the pending configuration, all or nothing. The server and the config
// file share these functions.

// change is one validated edit of the pending configuration.
type change func(*vmm.Config) error

const (
	// maxBootArgs is the kernel command line's limit, without its NUL.
	maxBootArgs = x86.CmdlineMaxSize - 1
	// fieldRateLimiter is the JSON name of a drive's or entropy
	// device's limiter.
	fieldRateLimiter = "rate_limiter"
)

// isStaticTemplate reports whether t is one of Firecracker's deprecated
// static CPU templates, which Ember does not implement.
func isStaticTemplate(t string) bool {
	switch t {
	case "C3", "T2", "T2S", "T2CL", "T2A", "V1N1":
		return true
	}
	return false
}

// withDefaults fills what a base configuration may leave zero with
// Firecracker's defaults (1 vCPU, 128 MiB, no huge pages).
func withDefaults(c *vmm.Config) {
	if c.VCPUs == 0 {
		c.VCPUs = vmm.DefaultVCPUs
	}
	if c.MemMiB == 0 {
		c.MemMiB = vmm.DefaultMemMiB
	}
	if c.HugePages == "" {
		c.HugePages = vmm.HugePagesNone
	}
}

// machineConfigChange validates PUT (put) or PATCH /machine-config.
func machineConfigChange(m MachineConfiguration, put bool) (change, error) {
	if put {
		switch {
		case m.VCPUCount == nil:
			return nil, bodyError{errors.New(`missing field "vcpu_count"`)}
		case m.MemSizeMiB == nil:
			return nil, bodyError{errors.New(`missing field "mem_size_mib"`)}
		}
	} else if m == (MachineConfiguration{}) {
		return nil, fmt.Errorf(fmtEmptyBody, "PATCH")
	}
	if m.HugePages != nil {
		switch *m.HugePages {
		case HugePagesNone, HugePagesTransparent:
		case HugePages2M:
			return nil, notSupported("huge_pages %q (hugetlbfs) is not implemented by Ember; use %q or %q",
				HugePages2M, HugePagesNone, HugePagesTransparent)
		default:
			return nil, fmt.Errorf("huge_pages %q: want %q, %q or %q", *m.HugePages, HugePagesNone, HugePagesTransparent, HugePages2M)
		}
	}
	if t := m.CPUTemplate; t != nil && *t != CPUTemplateNone {
		if isStaticTemplate(*t) {
			return nil, notSupported("static CPU template %q is not implemented by Ember; use PUT /cpu-config", *t)
		}
		return nil, fmt.Errorf("cpu_template %q: want %q (static templates are deprecated)", *t, CPUTemplateNone)
	}
	return func(c *vmm.Config) error {
		withDefaults(c)
		next := *c
		if put {
			next.SMT, next.TrackDirtyPages, next.HugePages = false, false, vmm.HugePagesNone
		}
		setIf(&next.VCPUs, m.VCPUCount)
		setIf(&next.MemMiB, m.MemSizeMiB)
		setIf(&next.SMT, m.SMT)
		setIf(&next.TrackDirtyPages, m.TrackDirtyPages)
		setIf(&next.HugePages, m.HugePages)
		if next.VCPUs < vmm.MinVCPUs || next.VCPUs > vmm.MaxVCPUs || (next.SMT && next.VCPUs > 1 && next.VCPUs%2 == 1) {
			return fmt.Errorf("vcpu_count %d: the number of vCPUs must be %d to %d, and 1 or an even number if SMT is enabled",
				next.VCPUs, vmm.MinVCPUs, vmm.MaxVCPUs)
		}
		if next.MemMiB < vmm.MinMemMiB || next.MemMiB > vmm.MaxMemMiB {
			return fmt.Errorf("mem_size_mib %d: the memory size must be %d to %d MiB", next.MemMiB, vmm.MinMemMiB, vmm.MaxMemMiB)
		}
		if next.Balloon != nil && int64(next.Balloon.AmountMiB) > int64(next.MemMiB) {
			return fmt.Errorf("mem_size_mib %d: the memory size is smaller than the balloon's target size (amount_mib %d)",
				next.MemMiB, next.Balloon.AmountMiB)
		}
		*c = next
		return nil
	}, nil
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// machineConfigOf is GET /machine-config's answer.
func machineConfigOf(c vmm.Config) MachineConfiguration {
	withDefaults(&c)
	return MachineConfiguration{VCPUCount: &c.VCPUs, MemSizeMiB: &c.MemMiB, SMT: &c.SMT,
		TrackDirtyPages: &c.TrackDirtyPages, HugePages: &c.HugePages}
}

// bootSourceChange validates PUT /boot-source. Like Firecracker, it opens
// the kernel and the initrd now, so a wrong path fails here and not at
// InstanceStart.
func bootSourceChange(b BootSource) (change, error) {
	if err := checkReadable("kernel_image_path", b.KernelImagePath); err != nil {
		return nil, err
	}
	initrd := ""
	if b.InitrdPath != nil {
		initrd = *b.InitrdPath
		if err := checkReadable("initrd_path", initrd); err != nil {
			return nil, err
		}
	}
	cmdline := vmm.DefaultCmdline
	if b.BootArgs != nil {
		cmdline = *b.BootArgs
	}
	if len(cmdline) > maxBootArgs {
		return nil, fmt.Errorf("boot_args: %d bytes, more than the kernel command line's %d", len(cmdline), maxBootArgs)
	}
	return func(c *vmm.Config) error {
		c.KernelPath, c.InitrdPath, c.Cmdline = b.KernelImagePath, initrd, cmdline
		return nil
	}, nil
}

// checkReadable opens path for reading and closes it: it must be a file
// Ember can read (not a directory).
func checkReadable(field, path string) error {
	return checkOpen(field, path, os.O_RDONLY)
}

// checkOpen opens path with flag and closes it; path must not be a
// directory. It may run after boot (PATCH /drives), so it marks the open
// as one the running VM's seccomp filter allows.
func checkOpen(field, path string, flag int) error {
	if path == "" {
		return fmt.Errorf("%s: the path is empty", field)
	}
	f, err := os.OpenFile(path, flag|seccomp.OpenAfterBoot, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if st.IsDir() {
		return fmt.Errorf("%s: %s is a directory", field, path)
	}
	return nil
}

// driveChange validates PUT /drives/{id}: a new drive, or a replacement for
// the drive with the same id.
func driveChange(d Drive) (change, error) {
	if err := checkID(d.DriveID); err != nil {
		return nil, fmt.Errorf("drive_id %q: %w", d.DriveID, err)
	}
	if d.Socket != "" {
		return nil, notSupported("drive %q: vhost-user-blk drives (socket) are not implemented by Ember", d.DriveID)
	}
	if d.PathOnHost == "" {
		return nil, bodyError{errors.New(`missing field "path_on_host"`)}
	}
	cache := d.CacheType
	switch cache {
	case "":
		cache = blk.CacheUnsafe
	case CacheTypeUnsafe, CacheTypeWriteback:
	default:
		return nil, fmt.Errorf("drive %q: cache_type %q: want %q or %q", d.DriveID, cache, CacheTypeUnsafe, CacheTypeWriteback)
	}
	switch d.IOEngine {
	case "", IOEngineSync:
	case IOEngineAsync:
		// Accepted for compatibility but served by Ember's one engine,
		// which is synchronous I/O on the device's worker: the guest sees
		// the same virtio-blk device either way, only host-side
		// concurrency differs (Firecracker's Async is io_uring).
	default:
		return nil, fmt.Errorf("drive %q: io_engine %q: want %q or %q", d.DriveID, d.IOEngine, IOEngineSync, IOEngineAsync)
	}
	limit, err := rateLimit(fieldRateLimiter, d.RateLimiter)
	if err != nil {
		return nil, fmt.Errorf("drive %q: %w", d.DriveID, err)
	}
	flag := os.O_RDWR
	if d.IsReadOnly {
		flag = os.O_RDONLY
	}
	if err := checkOpen("path_on_host", d.PathOnHost, flag); err != nil {
		return nil, fmt.Errorf("drive %q: %w", d.DriveID, err)
	}
	if d.EmberBasePath != "" {
		if err := checkOpen("ember_base_path", d.EmberBasePath, os.O_RDONLY); err != nil {
			return nil, fmt.Errorf("drive %q: %w", d.DriveID, err)
		}
	}
	dc := vmm.DriveConfig{
		Config: blk.Config{ID: d.DriveID, Path: d.PathOnHost, ReadOnly: d.IsReadOnly, CacheType: cache, RateLimit: limit,
			BasePath: d.EmberBasePath},
		Root: d.IsRootDevice, PartUUID: d.PartUUID,
	}
	return func(c *vmm.Config) error {
		i := slices.IndexFunc(c.Drives, func(o vmm.DriveConfig) bool { return o.ID == dc.ID })
		if dc.Root {
			for _, o := range c.Drives {
				if o.Root && o.ID != dc.ID {
					return fmt.Errorf("drive %q: a root block device already exists (drive %q)", dc.ID, o.ID)
				}
			}
		}
		if i >= 0 {
			c.Drives[i] = dc
			return nil
		}
		if err := checkDeviceRoom(c); err != nil {
			return fmt.Errorf("drive %q: %w", dc.ID, err)
		}
		c.Drives = append(c.Drives, dc)
		return nil
	}, nil
}

// checkDeviceRoom fails if c has no room for one more virtio device.
func checkDeviceRoom(c *vmm.Config) error {
	n := len(c.Drives) + len(c.Nets)
	for _, present := range []bool{c.Balloon != nil, c.Vsock != nil, c.RNG != nil} {
		if present {
			n++
		}
	}
	if n >= vmm.MaxVirtioDevices {
		return fmt.Errorf("too many devices: Ember attaches at most %d virtio devices", vmm.MaxVirtioDevices)
	}
	return nil
}

// rateLimit converts and validates an optional rate limiter; field names it
// in errors.
func rateLimit(field string, r *RateLimiter) (*ratelimit.Config, error) {
	if r == nil {
		return nil, nil
	}
	c := &ratelimit.Config{Bandwidth: r.Bandwidth.toVMM(), Ops: r.Ops.toVMM()}
	if err := c.Validate(); err != nil {
		if field == fieldRateLimiter { // Validate's errors start with it
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return c, nil
}

func (b *TokenBucket) toVMM() *ratelimit.TokenBucketConfig {
	if b == nil {
		return nil
	}
	out := &ratelimit.TokenBucketConfig{Size: b.Size, RefillTime: b.RefillTime}
	if b.OneTimeBurst != nil {
		out.OneTimeBurst = *b.OneTimeBurst
	}
	return out
}

// rateLimiterOf converts a VMM rate limiter back to the API's form.
func rateLimiterOf(c *ratelimit.Config) *RateLimiter {
	if c == nil {
		return nil
	}
	return &RateLimiter{Bandwidth: tokenBucketOf(c.Bandwidth), Ops: tokenBucketOf(c.Ops)}
}

func tokenBucketOf(b *ratelimit.TokenBucketConfig) *TokenBucket {
	if b == nil {
		return nil
	}
	out := &TokenBucket{Size: b.Size, RefillTime: b.RefillTime}
	if b.OneTimeBurst != 0 {
		burst := b.OneTimeBurst
		out.OneTimeBurst = &burst
	}
	return out
}

package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/embervm/ember/vmm"
)

// Config-file keys, in the order ApplyConfigFile applies them
// (Firecracker's VmResources::from_json).
const (
	keyLogger        = "logger"
	keyMetrics       = "metrics"
	keyMachineConfig = "machine-config"
	keyCPUConfig     = "cpu-config"
	keyBootSource    = "boot-source"
	keyDrives        = "drives"
	keyNets          = "network-interfaces"
	keyVsock         = "vsock"
	keyBalloon       = "balloon"
	keyMMDSConfig    = "mmds-config"
	keyEntropy       = "entropy"
	keyPmem          = "pmem"
	keyMemHotplug    = "memory-hotplug"
	// keyEmberImage ("ember-image", image.go) is Ember's; its changes
	// follow the drives'.
)

// ToFullConfig is GET /vm/config's answer for configuration c (the logger
// and metrics, which are not the VMM's, are left null).
func ToFullConfig(c vmm.Config) FullVmConfiguration {
	mc := machineConfigOf(c)
	out := FullVmConfiguration{
		MachineConfig:     &mc,
		Drives:            []Drive{},
		NetworkInterfaces: []NetworkInterface{},
		Pmem:              json.RawMessage("[]"),
	}
	if c.KernelPath != "" {
		cmdline := c.Cmdline
		out.BootSource = &BootSource{KernelImagePath: c.KernelPath, BootArgs: &cmdline}
		if c.InitrdPath != "" {
			initrd := c.InitrdPath
			out.BootSource.InitrdPath = &initrd
		}
	}
	for _, d := range c.Drives {
		cache := d.CacheType
		if cache == "" {
			cache = CacheTypeUnsafe
		}
		out.Drives = append(out.Drives, Drive{DriveID: d.ID, PartUUID: d.PartUUID, IsRootDevice: d.Root,
			CacheType: cache, IsReadOnly: d.ReadOnly, PathOnHost: d.Path,
			RateLimiter: rateLimiterOf(d.RateLimit), IOEngine: IOEngineSync, EmberBasePath: d.BasePath})
	}
	for _, n := range c.Nets {
		ni := NetworkInterface{IfaceID: n.IfaceID, HostDevName: n.HostDevName, GuestMAC: n.GuestMAC,
			RxRateLimiter: rateLimiterOf(n.RxRateLimit), TxRateLimiter: rateLimiterOf(n.TxRateLimit)}
		if n.MTU != 0 {
			mtu := n.MTU
			ni.MTU = &mtu
		}
		out.NetworkInterfaces = append(out.NetworkInterfaces, ni)
	}
	if c.CPU != nil {
		out.CPUConfig = &CPUConfigSource{Template: cpuConfigOf(c.CPU)}
	}
	if c.Balloon != nil {
		b := balloonOf(c.Balloon)
		out.Balloon = &b
	}
	if c.Vsock != nil {
		out.Vsock = &Vsock{GuestCID: c.Vsock.GuestCID, UDSPath: c.Vsock.UDSPath}
	}
	if c.RNG != nil {
		out.Entropy = &EntropyDevice{RateLimiter: rateLimiterOf(c.RNG.RateLimit)}
	}
	out.MMDSConfig = mmdsConfigOf(c.MMDS)
	return out
}

// ApplyConfigFile applies a Firecracker --config-file to b's pending
// configuration, with the API's validation, in Firecracker's order; the
// VMM's part is applied all or nothing. It has no logger or metrics hooks,
// so a file with a "logger" or "metrics" section is refused: use
// Server.ApplyConfigFile for those. Errors name the key at fault.
func ApplyConfigFile(b vmm.Backend, data []byte) error {
	return New(b, Options{}).ApplyConfigFile(data)
}

// ApplyConfigFile applies a Firecracker --config-file: "logger" and
// "metrics" through the Options hooks (which counts as their one
// configuration), then the VMM's configuration, all or nothing, in
// Firecracker's order: machine-config, cpu-config, boot-source, drives,
// network-interfaces, vsock, balloon, mmds-config, entropy. Errors name the key at
// fault, as in `config file: "drives"[1]: ...`.
func (s *Server) ApplyConfigFile(data []byte) error {
	var f FullVmConfiguration
	if err := decodeStrict(data, &f); err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	if err := s.applyConfigFile(&f); err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	return nil
}

func (s *Server) applyConfigFile(f *FullVmConfiguration) error {
	if f.EmberImage == nil {
		switch {
		case f.BootSource == nil:
			return fmt.Errorf("missing field %q", keyBootSource)
		case f.Drives == nil:
			return fmt.Errorf("missing field %q", keyDrives)
		}
	}
	if s.b.State() != vmm.StateNotStarted {
		return errPostBoot
	}
	unsupported := []struct {
		key string
		raw json.RawMessage
	}{{keyPmem, f.Pmem}, {keyMemHotplug, f.MemoryHotplug}}
	for _, u := range unsupported {
		if !isEmptyJSON(u.raw) {
			return fmt.Errorf("%q: %w", u.key, notSupported("%s is not implemented by Ember yet", u.key))
		}
	}
	if f.EmberImage != nil {
		if err := s.checkConfigFileImage(f); err != nil {
			return err
		}
	}
	changes, err := configFileChanges(f)
	if err != nil {
		return err
	}
	if f.EmberImage == nil {
		if err := s.applyConfigChanges(f, changes); err != nil {
			return err
		}
		s.setBootArgsSet(f.BootSource != nil && f.BootSource.BootArgs != nil)
		return nil
	}
	return s.applyConfigFileImage(f, changes)
}

// applyConfigFileImage prepares the file's "ember-image", last, once the
// rest is known to be valid, fills in its change and applies the file. The
// image's files are removed if the file cannot be applied.
func (s *Server) applyConfigFileImage(f *FullVmConfiguration, changes []keyedChange) (err error) {
	if err := s.beginImage(); err != nil {
		return fmt.Errorf("%q: %w", keyEmberImage, err)
	}
	var applied *PreparedImage
	defer func() { s.endImage(applied) }()
	p, discard, err := s.prepareImage(*f.EmberImage)
	if err != nil {
		return fmt.Errorf("%q: %w", keyEmberImage, err)
	}
	defer func() {
		if err != nil {
			discard()
		}
	}()
	if f.BootSource == nil && p.Kernel == "" {
		return fmt.Errorf("%q: no guest kernel: give %q, or install ember-vmlinux beside ember-image, or set $EMBER_KERNEL", keyEmberImage, keyBootSource)
	}
	keepBootArgs := f.BootSource != nil && f.BootSource.BootArgs != nil
	ch, err := imageChange(p, keepBootArgs)
	if err != nil {
		return fmt.Errorf("%q: %w", keyEmberImage, err)
	}
	i := slices.IndexFunc(changes, func(c keyedChange) bool { return c.key == quote(keyEmberImage) })
	changes[i].apply = ch
	if err := s.applyConfigChanges(f, changes); err != nil {
		return err
	}
	s.setBootArgsSet(keepBootArgs)
	applied = &p
	return nil
}

func (s *Server) setBootArgsSet(set bool) {
	s.mu.Lock()
	s.bootArgsSet = set
	s.mu.Unlock()
}

// applyConfigChanges configures the logger and metrics, then applies the
// VMM's changes all or nothing.
func (s *Server) applyConfigChanges(f *FullVmConfiguration, changes []keyedChange) error {
	if f.Logger != nil {
		if err := s.configureLogger(*f.Logger); err != nil {
			return fmt.Errorf("%q: %w", keyLogger, err)
		}
	}
	if f.Metrics != nil {
		if err := s.configureMetrics(*f.Metrics); err != nil {
			return fmt.Errorf("%q: %w", keyMetrics, err)
		}
	}
	return s.b.Configure(func(c *vmm.Config) error {
		for _, ch := range changes {
			if err := ch.apply(c); err != nil {
				return fmt.Errorf("%s: %w", ch.key, err)
			}
		}
		return nil
	})
}

// checkConfigFileImage checks an "ember-image" against the rest of the
// file before anything is prepared: the image brings the initrd and the
// root filesystem, and its drives' IDs.
func (s *Server) checkConfigFileImage(f *FullVmConfiguration) error {
	if err := s.checkImageBlock(*f.EmberImage); err != nil {
		return fmt.Errorf("%q: %w", keyEmberImage, err)
	}
	if f.BootSource != nil && f.BootSource.InitrdPath != nil {
		return fmt.Errorf("%q: %w (%q gives one)", keyBootSource, errImageInitrd, keyEmberImage)
	}
	for i, d := range f.Drives {
		if err := imageDriveConflict(d.DriveID, d.IsRootDevice); err != nil {
			return fmt.Errorf("%q[%d]: %w (beside %q)", keyDrives, i, err, keyEmberImage)
		}
	}
	return nil
}

// keyedChange is a change from one config-file key.
type keyedChange struct {
	key   string
	apply change
}

// configFileChanges validates every VMM section of f, in Firecracker's
// order.
func configFileChanges(f *FullVmConfiguration) ([]keyedChange, error) {
	var out []keyedChange
	add := func(key string, ch change, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", key, unwrapBody(err))
		}
		out = append(out, keyedChange{key, ch})
		return nil
	}
	if m := f.MachineConfig; m != nil {
		ch, err := machineConfigChange(*m, true)
		if err := add(quote(keyMachineConfig), ch, err); err != nil {
			return nil, err
		}
	}
	if f.CPUConfig != nil {
		ch, err := cpuConfigSourceChange(*f.CPUConfig)
		if err := add(quote(keyCPUConfig), ch, err); err != nil {
			return nil, err
		}
	}
	if f.BootSource != nil {
		ch, err := bootSourceChange(*f.BootSource)
		if err := add(quote(keyBootSource), ch, err); err != nil {
			return nil, err
		}
	}
	for i, d := range f.Drives {
		ch, err := driveChange(d)
		if err := add(fmt.Sprintf("%q[%d]", keyDrives, i), ch, err); err != nil {
			return nil, err
		}
	}
	if f.EmberImage != nil {
		// The image's drives follow the user's; the change is filled in
		// once the image is prepared (applyConfigFileImage).
		out = append(out, keyedChange{key: quote(keyEmberImage)})
	}
	for i, n := range f.NetworkInterfaces {
		ch, err := netChange(n)
		if err := add(fmt.Sprintf("%q[%d]", keyNets, i), ch, err); err != nil {
			return nil, err
		}
	}
	if f.Vsock != nil {
		ch, err := vsockChange(*f.Vsock)
		if err := add(quote(keyVsock), ch, err); err != nil {
			return nil, err
		}
	}
	if f.Balloon != nil {
		ch, err := balloonChange(*f.Balloon)
		if err := add(quote(keyBalloon), ch, err); err != nil {
			return nil, err
		}
	}
	if f.MMDSConfig != nil {
		ch, err := mmdsConfigChange(*f.MMDSConfig)
		if err := add(quote(keyMMDSConfig), ch, err); err != nil {
			return nil, err
		}
	}
	if f.Entropy != nil {
		ch, err := entropyChange(*f.Entropy)
		if err := add(quote(keyEntropy), ch, err); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// cpuConfigSourceChange reads a template file (Firecracker's form) or takes
// the inline template.
func cpuConfigSourceChange(src CPUConfigSource) (change, error) {
	t := src.Template
	if t == nil {
		data, err := os.ReadFile(src.Path)
		if err != nil {
			return nil, fmt.Errorf("reading the CPU template: %w", err)
		}
		t = new(CpuConfig)
		if err := decodeStrict(data, t); err != nil {
			return nil, fmt.Errorf("CPU template %s: %w", src.Path, err)
		}
	}
	return cpuConfigChange(*t)
}

func quote(key string) string { return fmt.Sprintf("%q", key) }

// unwrapBody drops the HTTP wording of body errors: a config file is not a
// request.
func unwrapBody(err error) error {
	var be bodyError
	if errors.As(err, &be) {
		return be.err
	}
	return err
}

// isEmptyJSON reports whether an unsupported section is absent, null or
// empty ([] or {}).
func isEmptyJSON(raw json.RawMessage) bool {
	if len(bytes.TrimSpace(raw)) == 0 {
		return true
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return false
	}
	switch v := v.(type) {
	case nil:
		return true
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

package api

import (
	"errors"
	"fmt"

	"github.com/embervm/ember/api/imageblock"
	"github.com/embervm/ember/vmm"
)

// The Ember image block, an Ember extension: PUT /ember/image, or a config
// file's "ember-image" key, boots an image of Ember's store. The server
// validates the block, hands it to the Options.PrepareImage hook (ember
// runs `ember-image prepare --json`: this package links no image code),
// and applies the answer as if the initrd and the drives had been given
// through PUT /boot-source and PUT /drives: the layers and the writable
// drive are appended after the drives already configured, and the initrd
// is the image's. The boot source's kernel and boot_args, when given, win;
// otherwise the image's kernel and command line are used.

// EmberImage is the body of PUT /ember/image and the config file's
// "ember-image".
type EmberImage = imageblock.Block

// PreparedImage is what Options.PrepareImage answers for an EmberImage.
type PreparedImage = imageblock.Prepared

// Key and route of the image block. Firecracker's config-file keys are
// its routes' names with dashes ("/mmds/config" is "mmds-config"); Ember's
// extensions are prefixed with "ember" (ember_base_path,
// ember_drive_overrides), so that no future Firecracker key can clash.
const (
	keyEmberImage   = "ember-image"
	routeEmberImage = "/ember/image"
)

// errImageInitrd and errImageRoot name what an image VM cannot also have.
var (
	errImageInitrd = errors.New("initrd_path: the initrd is the ember image's (ember-init and its configuration): drop initrd_path, or the image")
	errImageRoot   = errors.New("is_root_device: the root filesystem is the ember image's (its layers and writable drive): drop is_root_device, or the image")
)

// imageDriveConflict checks drive d against an image VM's: the image's
// drive IDs are taken, and no other drive may be the root device.
func imageDriveConflict(id string, root bool) error {
	if imageblock.IsImageDriveID(id) {
		return fmt.Errorf("drive %q: the ember image's drives are %s, %s, ... and %s: give this drive another drive_id",
			id, imageblock.LayerID(0), imageblock.LayerID(1), imageblock.WritableID)
	}
	if root {
		return fmt.Errorf("drive %q: %w", id, errImageRoot)
	}
	return nil
}

// imageConflicts checks a configuration the image is to be added to.
func imageConflicts(c *vmm.Config) error {
	if c.InitrdPath != "" {
		return fmt.Errorf("boot-source: %w", errImageInitrd)
	}
	for _, d := range c.Drives {
		if err := imageDriveConflict(d.ID, d.Root); err != nil {
			return err
		}
	}
	return nil
}

// imageChange validates an answer of PrepareImage (its files must open, as
// PUT /drives' do) and returns the change that adds it to the
// configuration. keepBootArgs says the boot source's boot_args were given
// and win over the image's.
func imageChange(p PreparedImage, keepBootArgs bool) (change, error) {
	if err := checkReadable("initrd", p.Initrd); err != nil {
		return nil, err
	}
	if len(p.BootArgs) > maxBootArgs {
		return nil, fmt.Errorf("boot_args: %d bytes, more than the kernel command line's %d", len(p.BootArgs), maxBootArgs)
	}
	if len(p.Drives) == 0 {
		return nil, errors.New("the image has no drives")
	}
	drives := make([]change, 0, len(p.Drives))
	for _, d := range p.Drives {
		ch, err := driveChange(Drive{DriveID: d.ID, PathOnHost: d.Path, IsReadOnly: d.ReadOnly, EmberBasePath: d.Base})
		if err != nil {
			return nil, unwrapBody(err)
		}
		drives = append(drives, ch)
	}
	return func(c *vmm.Config) error {
		if err := imageConflicts(c); err != nil {
			return err
		}
		for _, ch := range drives {
			if err := ch(c); err != nil {
				return err
			}
		}
		c.InitrdPath = p.Initrd
		if c.KernelPath == "" {
			c.KernelPath = p.Kernel
		}
		if !keepBootArgs && p.BootArgs != "" {
			c.Cmdline = p.BootArgs
		}
		return nil
	}, nil
}

// checkImageBlock validates a block and that the process can prepare one.
func (s *Server) checkImageBlock(b EmberImage) error {
	if err := b.Validate(); err != nil {
		return err
	}
	if s.opts.PrepareImage == nil {
		return notSupported("this process cannot prepare an ember image (no ember-image helper)")
	}
	return nil
}

// prepareImage runs the PrepareImage hook for b; its errors name the
// image.
func (s *Server) prepareImage(b EmberImage) (PreparedImage, func(), error) {
	p, discard, err := s.opts.PrepareImage(b)
	if err != nil {
		return PreparedImage{}, nil, fmt.Errorf("image %q: %w", b.Ref, err)
	}
	if discard == nil {
		discard = func() {}
	}
	return p, discard, nil
}

// beginImage marks an image block as being applied: there is one per VM.
func (s *Server) beginImage() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.image != nil || s.imageBusy {
		return fmt.Errorf("an ember image is already configured (%s is accepted once)", routeEmberImage)
	}
	s.imageBusy = true
	return nil
}

// endImage records the outcome of beginImage: p, or nil after a failure.
func (s *Server) endImage(p *PreparedImage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.imageBusy = false
	s.image = p
}

// hasImage reports whether an image block has been applied.
func (s *Server) hasImage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.image != nil
}

// putEmberImage is PUT /ember/image (pre-boot).
func (s *Server) putEmberImage(c *call) (any, error) {
	b, err := decodeModel[EmberImage](c.body)
	if err != nil {
		return nil, err
	}
	if err := s.notStarted(); err != nil {
		return nil, err
	}
	if err := s.checkImageBlock(b); err != nil {
		return nil, err
	}
	if err := s.beginImage(); err != nil {
		return nil, err
	}
	var applied *PreparedImage
	defer func() { s.endImage(applied) }()
	cfg := s.b.Config()
	if err := imageConflicts(&cfg); err != nil {
		return nil, err
	}
	p, discard, err := s.prepareImage(b)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	keep := s.bootArgsSet
	s.mu.Unlock()
	ch, err := imageChange(p, keep)
	if err == nil {
		err = s.b.Configure(ch)
	}
	if err != nil {
		discard()
		return nil, err
	}
	applied = &p
	return nil, nil
}

// CheckImageConfig says why configuration c cannot have an ember image
// added (an initrd, a root drive, a drive with an image drive's ID); nil
// if it can.
func CheckImageConfig(c *vmm.Config) error { return imageConflicts(c) }

// ApplyImage adds prepared image p to configuration c as the image block
// does, with the same checks (`ember run --image`, which prepares the image
// while the kernel loads): the image's drives after c's, its initrd, its
// kernel if c names none, and its command line unless keepBootArgs.
func ApplyImage(c *vmm.Config, p PreparedImage, keepBootArgs bool) error {
	ch, err := imageChange(p, keepBootArgs)
	if err != nil {
		return err
	}
	return ch(c)
}

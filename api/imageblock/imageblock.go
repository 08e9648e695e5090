// Package imageblock is the Ember image block, an Ember extension of
// Firecracker's API and config file: the body of PUT /ember/image and of a
// --config-file's "ember-image" key, which asks for an image of Ember's
// store (package image) to be booted, and the answer of `ember-image
// prepare --json`, which turns the block into the initrd and drives that
// ember then configures as if they had been given through PUT
// /boot-source and PUT /drives.
//
// It is the JSON contract between the two binaries and depends on nothing:
// the VMM side (package api) must not link the image store, whose
// go-containerregistry would cost every VMM process about 1.6 MiB of RSS
// (see cmd/ember/image.go).
package imageblock

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// The guest kernel of an image VM when none is given: $KernelEnv, else
// KernelFile beside the running binary (make guest copies the minimal
// vmlinux there, beside ember and ember-image), else on PATH.
const (
	KernelEnv  = "EMBER_KERNEL"
	KernelFile = "ember-vmlinux"
)

// DefaultKernel finds the guest kernel of an image VM when none is given.
func DefaultKernel() (string, error) {
	if k := os.Getenv(KernelEnv); k != "" {
		return k, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), KernelFile)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	if p, err := exec.LookPath(KernelFile); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no guest kernel for the image: $%s is unset, and %s is neither beside %s nor on PATH", KernelEnv, KernelFile, filepath.Base(os.Args[0]))
}

// Block is the Ember image block. Its fields are `ember run --image`'s
// flags.
type Block struct {
	// Ref names the image in the store (a name or an ID).
	Ref string `json:"ref" api:"required"`
	// Args, if set, replace the image's Cmd (the Entrypoint stays).
	Args []string `json:"args,omitempty"`
	// Env entries ("NAME=value") are added to the image's.
	Env []string `json:"env,omitempty"`
	// User and WorkingDir, if set, replace the image's.
	User       string `json:"user,omitempty"`
	WorkingDir string `json:"working_dir,omitempty"`
	// Hostname is the guest's host name.
	Hostname string `json:"hostname,omitempty"`
	// Disk, if set, is the writable overlay to use: created if missing,
	// reused if present, never removed. Without it the writable drive is
	// a new overlay that the ember process removes when it exits.
	Disk string `json:"disk,omitempty"`
	// DiskMiB is the writable filesystem's size when it is created
	// (0: the default, 4096).
	DiskMiB int `json:"disk_mib,omitempty"`
}

// MaxDiskMiB bounds disk_mib: 16 TiB, the largest ext4 filesystem of 4 KiB
// blocks without the 64bit feature (2^32 blocks; ext4(5), "64bit"). Far
// above any VM's writable disk, it keeps a typo from asking mkfs.ext4 for
// exabytes.
const MaxDiskMiB = 16 << 20

// Validate checks what the block alone decides; field names are its JSON
// names.
func (b Block) Validate() error {
	if strings.TrimSpace(b.Ref) == "" {
		return errors.New("ref: empty: want an image of the store (a name or an ID, as `ember image ls` lists them)")
	}
	for _, e := range b.Env {
		if name, _, ok := strings.Cut(e, "="); !ok || name == "" {
			return fmt.Errorf("env %q: want NAME=VALUE", e)
		}
	}
	if b.DiskMiB < 0 || b.DiskMiB > MaxDiskMiB {
		return fmt.Errorf("disk_mib %d: want 1 to %d (0 or absent: the default)", b.DiskMiB, MaxDiskMiB)
	}
	return nil
}

// Prepared is what `ember-image prepare --json` answers: the files to boot
// the block's image with.
type Prepared struct {
	// Kernel is the guest kernel ember-image would boot (`ember run
	// --image`'s default: $EMBER_KERNEL, else ember-vmlinux beside
	// ember-image); empty when it found none. A boot source given by the
	// user takes precedence.
	Kernel string `json:"kernel,omitempty"`
	// Initrd holds ember-init and its configuration.
	Initrd string `json:"initrd"`
	// BootArgs is the kernel command line for the image's guest.
	BootArgs string `json:"boot_args,omitempty"`
	// Drives, in the order to attach them: the layers lowest first, then
	// the writable drive.
	Drives []Drive `json:"drives"`
}

// Drive is one virtio-blk drive of the image's VM.
type Drive struct {
	ID       string `json:"id"`
	Path     string `json:"path"`
	Base     string `json:"base,omitempty"` // the overlay's base, for the writable drive
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Drive IDs of an image VM, which the guest's init reads back as each
// drive's serial.
const (
	// WritableID is the writable drive's ID.
	WritableID = "rw"
	// layerPrefix starts each layer drive's ID.
	layerPrefix = "layer"
)

// LayerID is the drive ID of layer i (0 is the lowest).
func LayerID(i int) string { return layerPrefix + strconv.Itoa(i) }

// IsImageDriveID reports whether id is one an image VM's drives use
// (WritableID, or "layer" and a number), which another drive of the same
// VM must not take.
func IsImageDriveID(id string) bool {
	if id == WritableID {
		return true
	}
	n, ok := strings.CutPrefix(id, layerPrefix)
	if !ok || n == "" {
		return false
	}
	for _, r := range n {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// Package boot turns an image of the store (package image) into what an
// Ember VM boots: the image's layers as read-only drives, a writable drive,
// and an initrd holding ember-init (guest/init) and its configuration
// (guest/initconfig). `ember run --image` and the sandbox daemon use it;
// the VMM itself knows nothing of images.
//
// The writable drive is a copy-on-write overlay (package disk) over a
// blank ext4 filesystem of the requested size, made once per size with
// mkfs.ext4 and kept in the store's home: a new VM's disk costs a header
// and a sparse file, and grows by what the guest writes. An overlay given
// by the caller (Options.Disk) is reused when it exists, so a second run
// on it sees the first one's files.
//
// Drive IDs, which the guest reads back as each virtio-blk drive's serial
// (so it never trusts probe order): "layer0" (lowest) … "layerN-1", and
// "rw" for the writable drive.
package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/api/imageblock"
	"github.com/embervm/ember/disk"
	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/image"
	"github.com/embervm/ember/initrd"
)

const (
	// DefaultDiskMiB is the size of the writable drive's filesystem when
	// the caller names none: the guest sees this much, the host stores
	// what is written.
	DefaultDiskMiB = 4096
	// MaxLayerDrives is how many read-only layer drives an image VM gets
	// at most; an image with more layers has its lowest ones flattened
	// (image.Store.LayerImages). The VMM has 19 virtio-mmio slots
	// (vmm.MaxVirtioDevices): this leaves room for the writable drive, a
	// network interface, vsock, a balloon and an entropy device.
	MaxLayerDrives = 14
	// WritableID is the writable drive's ID (and serial in the guest),
	// as the API's image block names it.
	WritableID = imageblock.WritableID
	// Cmdline is the guest kernel's command line: Ember's default
	// (vmm.DefaultCmdline) and quiet, so that the console carries the
	// workload's output only. (The platform does not import the VMM; a
	// test checks the two agree.)
	Cmdline = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet"
	// blankDir holds the blank ext4 bases under Ember's home (beside the
	// store, whose prune removes what it does not know).
	blankDir = "blank"
)

// LayerID is the drive ID of layer i (0 is the lowest).
func LayerID(i int) string { return imageblock.LayerID(i) }

// Options describe one image VM.
type Options struct {
	// Ref names the image in the store (a name or an ID).
	Ref string
	// Args, if set, replace the image's Cmd (the Entrypoint stays), as
	// `docker run IMAGE ARGS...` does.
	Args []string
	// Env entries ("NAME=value") are added to the image's, replacing
	// those of the same name.
	Env []string
	// User and WorkingDir, if set, replace the image's.
	User, WorkingDir string
	// Hostname is the guest's host name (default: none set).
	Hostname string
	// Terminal says the console is a terminal (the workload gets it
	// cooked, as a shell expects).
	Terminal bool
	// Dir receives this VM's files: the initrd and, without Disk, the
	// writable overlay. The caller removes it.
	Dir string
	// Disk, if set, is the writable overlay to use: created if missing,
	// reused (with its files) if present, never removed.
	Disk string
	// DiskMiB is the writable filesystem's size (default DefaultDiskMiB);
	// it matters only when the overlay is created.
	DiskMiB int
	// Init is the ember-init binary (default initrd.FindInit() with Agent,
	// else initrd.FindRunInit()).
	Init string
	// Debug makes ember-init say each step on the console.
	Debug bool
	// Agent makes ember-init serve the sandbox agent (initconfig.ModeAgent)
	// instead of running the image's command: a sandbox template.
	Agent bool
}

// VM is what ember boots for an image.
type VM struct {
	// Initrd is the initrd file (in Options.Dir).
	Initrd string
	// Drives, in the order to attach them: the layers lowest first, then
	// the writable drive.
	Drives []Drive
	// Config is what ember-init was given.
	Config initconfig.Config
}

// Drive is one virtio-blk drive of an image VM.
type Drive struct {
	ID       string
	Path     string
	Base     string // the overlay's base, for the writable drive
	ReadOnly bool
}

// Prepare makes the files of an image VM.
func Prepare(ctx context.Context, store *image.Store, o Options) (*VM, error) {
	img, err := store.Inspect(o.Ref)
	if err != nil {
		return nil, err
	}
	layers, err := store.LayerImages(ctx, img, MaxLayerDrives)
	if err != nil {
		return nil, err
	}
	ic := ImageConfig{Env: img.Config.Env, WorkingDir: img.Config.WorkingDir, User: img.Config.User,
		Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd}
	return PrepareLayers(ctx, filepath.Dir(store.Root()), layers, initconfig.FSErofs, ic, o)
}

// ImageConfig is what an image VM takes from an image's config: the
// defaults of its workload.
type ImageConfig struct {
	Env              []string
	WorkingDir, User string
	Entrypoint, Cmd  []string
}

// PrepareLayers makes the files of a VM whose layers are the read-only
// filesystem images layers (lowest first, of type fsType: initconfig.FSErofs
// or FSExt4) rather than an image of the store: the containerd shim's
// root filesystems. home is Ember's home, where the blank writable bases
// and the initrd cache live (the store's parent folder); o.Ref names the
// image in messages only.
func PrepareLayers(ctx context.Context, home string, layers []string, fsType string, img ImageConfig, o Options) (*VM, error) {
	if len(layers) > MaxLayerDrives {
		return nil, fmt.Errorf("%d layers: a VM takes at most %d layer drives", len(layers), MaxLayerDrives)
	}
	cfg := initconfig.Config{
		Version:    initconfig.Version,
		Mode:       initconfig.ModeRun,
		Hostname:   o.Hostname,
		Env:        initconfig.MergeEnv(img.Env, o.Env),
		WorkingDir: img.WorkingDir,
		User:       img.User,
		Args:       append(append([]string(nil), img.Entrypoint...), img.Cmd...),
		Terminal:   o.Terminal,
		Writable:   &initconfig.Drive{Serial: WritableID, FSType: initconfig.FSExt4},
		Debug:      o.Debug,
	}
	if len(o.Args) > 0 {
		cfg.Args = append(append([]string(nil), img.Entrypoint...), o.Args...)
	}
	if o.User != "" {
		cfg.User = o.User
	}
	if o.WorkingDir != "" {
		cfg.WorkingDir = o.WorkingDir
	}
	if o.Agent {
		cfg.Mode = initconfig.ModeAgent
	}
	if len(cfg.Args) == 0 && !o.Agent {
		return nil, fmt.Errorf("image %s has no Entrypoint or Cmd: give the command to run", o.Ref)
	}
	vm := &VM{}
	for i, l := range layers {
		id := LayerID(i)
		vm.Drives = append(vm.Drives, Drive{ID: id, Path: l, ReadOnly: true})
		cfg.Layers = append(cfg.Layers, initconfig.Drive{Serial: id, FSType: fsType})
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rw, err := writableDrive(home, o)
	if err != nil {
		return nil, fmt.Errorf("the writable drive: %w", err)
	}
	vm.Drives = append(vm.Drives, rw)

	initBin := o.Init
	if initBin == "" {
		find := initrd.FindRunInit
		if o.Agent {
			find = initrd.FindInit
		}
		if initBin, err = find(); err != nil {
			return nil, err
		}
	}
	base, err := initrd.BuildInitramfs(filepath.Join(home, "initrd"), initBin)
	if err != nil {
		return nil, fmt.Errorf("the initramfs cache in %s: %w", filepath.Join(home, "initrd"), err)
	}
	vm.Initrd = filepath.Join(o.Dir, "initrd")
	if err := initrd.AppendConfig(vm.Initrd, base, &cfg); err != nil {
		return nil, err
	}
	vm.Config = cfg
	return vm, nil
}

// writableDrive returns the writable drive: o.Disk if it exists, else a
// new overlay (at o.Disk, or in o.Dir) over the blank base of its size.
func writableDrive(home string, o Options) (Drive, error) {
	path := o.Disk
	if path == "" {
		path = filepath.Join(o.Dir, "rw.cow")
	}
	if _, err := os.Stat(path); err == nil && o.Disk != "" {
		info, err := disk.Inspect(path)
		if err != nil {
			return Drive{}, fmt.Errorf("--disk %s: %w", path, err)
		}
		return Drive{ID: WritableID, Path: path, Base: info.BasePath}, nil
	}
	mib := o.DiskMiB
	if mib == 0 {
		mib = DefaultDiskMiB
	}
	base, err := blankExt4(filepath.Join(home, blankDir), mib)
	if err != nil {
		return Drive{}, err
	}
	if err := disk.CreateOverlay(path, base, disk.CreateOptions{}); err != nil {
		return Drive{}, fmt.Errorf("writable drive: %w", err)
	}
	return Drive{ID: WritableID, Path: path, Base: base}, nil
}

// The directories ember-init's overlay root needs at the top of the
// writable drive (guest/init's upperDir and workDir).
const (
	overlayUpper = "upper"
	overlayWork  = "work"
)

// blankExt4 returns the blank ext4 filesystem of mib MiB kept in dir, made
// with mkfs.ext4 the first time (a sparse file; the inode tables and the
// journal are written out now, so that no guest writes them into its
// overlay). Concurrent callers are safe: each makes a temporary file and
// renames it into place, and a file in place is never rewritten (overlays
// record its identity).
func blankExt4(dir string, mib int) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("ext4-%dmib.img", mib))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".ext4-*")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if err := os.Truncate(tmp.Name(), int64(mib)<<20); err != nil {
		return "", err
	}
	args := []string{"-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", "-L", "ember-rw"}
	// The overlay's upper and work directories are made here, once,
	// rather than by each VM's init on its first boot (a journal commit
	// on the boot's path: 35 ms in the lab). Only as root: mkfs -d copies
	// owners, and the upper directory's owner becomes the owner of the
	// guest's "/".
	if os.Geteuid() == 0 {
		tmpl, err := os.MkdirTemp(dir, ".ext4-tree-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmpl)
		for _, d := range []string{overlayUpper, overlayWork} {
			// Chmod as well: the umask must not narrow what becomes the
			// mode of the guest's "/".
			p := filepath.Join(tmpl, d)
			if err := os.Mkdir(p, 0o755); err != nil {
				return "", err
			}
			if err := os.Chmod(p, 0o755); err != nil {
				return "", err
			}
		}
		args = append(args, "-d", tmpl)
	}
	out, err := exec.Command("mkfs.ext4", append(args, tmp.Name())...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("mkfs.ext4 (package e2fsprogs) for the writable drive: %v: %s", err, out)
	}
	f, err := os.Open(tmp.Name())
	if err != nil {
		return "", err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return "", err
	}
	// RENAME_NOREPLACE: a base another caller put in place first stays.
	if err := unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", err
	}
	return path, nil
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
)

// Containers in the guest (proto.FeatureContainer): the containerd shim's
// pod VM runs each of a pod's containers in its own root filesystem, as
// laid out below.
//
//	RunDir/containers/ID/layers/N   layer drive N, read-only (erofs/ext4)
//	RunDir/containers/ID/rootfs     overlayfs: the layers under upper
//	SCRATCH/containers/ID/upper     what the container writes
//	SCRATCH/containers/ID/work      overlayfs' work directory
//	SCRATCH/volumes/NAME            a volume (a pod's emptyDir), shared
//
// SCRATCH is a directory on a real file system (overlayfs takes no
// overlayfs as upper): in the guest, the VM's writable ext4 drive mounted
// a second time (Storage.Scratch).

// containerDirs: where the layout above starts under RunDir and SCRATCH.
const (
	containersDir = "containers"
	volumesDir    = "volumes"
	// containerKillWait bounds how long container.remove waits for the
	// container's killed processes to be reaped before it unmounts.
	containerKillWait = 5 * time.Second
	// maxSymlinks is how many symbolic links resolving one path in a
	// container may follow (Linux's own limit, MAXSYMLINKS, is 40).
	maxSymlinks = 40
	// volumeDirMode is a new volume directory's mode: 0777 with the
	// sticky bit off, as kubelet makes an emptyDir (any user of any
	// container of the pod writes there).
	volumeDirMode = 0o777
)

// Storage gives containers their file systems.
type Storage interface {
	// MountLayer mounts the layer drive l read-only at target (an
	// existing directory).
	MountLayer(l proto.LayerDrive, target string) error
	// Scratch returns a directory on a file system that overlayfs takes
	// as upper (not overlayfs, not on the host): containers' upper
	// directories and volumes go there.
	Scratch() (string, error)
}

// SystemStorage is the guest's: layer drives found by their virtio-blk
// serial in /sys/block, and the VM's writable drive (serial
// WritableSerial) mounted at RunDir/scratch as the scratch space.
type SystemStorage struct {
	// RunDir is the agent's run directory (DefaultRunDir).
	RunDir string

	once    sync.Once
	scratch string
	err     error
}

// WritableSerial is the serial of the VM's writable ext4 drive (the
// host's image/boot.WritableID; the guest does not import it).
const WritableSerial = "rw"

// Where SystemStorage looks for drives.
const (
	sysBlock = "/sys/block"
	devDir   = "/dev"
)

// findDrive returns the device node of the block device whose serial is
// serial.
func findDrive(serial string) (string, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", fmt.Errorf("listing drives: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysBlock, e.Name(), "serial"))
		if err != nil {
			continue // not a virtio-blk disk
		}
		if strings.TrimSpace(string(b)) == serial {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", proto.Errorf(proto.CodeNotFound, "no drive has serial %q", serial)
}

// MountLayer mounts the drive read-only. The device's buffer cache is
// dropped first (BLKFLSBUF): the host swapped the drive's file
// (PATCH /drives) since the kernel last read it, and pages of the old
// file must not be taken for the new one's.
func (s *SystemStorage) MountLayer(l proto.LayerDrive, target string) error {
	dev, err := findDrive(l.Serial)
	if err != nil {
		return err
	}
	if l.Size > 0 {
		if err := waitCapacity(dev, l.Size); err != nil {
			return err
		}
	}
	if err := flushBuffers(dev); err != nil {
		return err
	}
	if err := unix.Mount(dev, target, l.FSType, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mounting layer drive %s (%s, %s) at %s: %w", l.Serial, dev, l.FSType, target, err)
	}
	return nil
}

// Waiting for a swapped drive's new capacity.
const (
	// capacityWait bounds it: the kernel's config-change work runs at
	// once; an emulated (lab) guest may take a while.
	capacityWait = 10 * time.Second
	capacityPoll = 2 * time.Millisecond
	// sectorSize is the unit of /sys/block/DEV/size (always 512 bytes,
	// whatever the device's logical block size: block/genhd.c).
	sectorSize = 512
)

// waitCapacity waits until the kernel sees dev at size bytes (rounded
// down to whole sectors, as virtio-blk reports it).
func waitCapacity(dev string, size int64) error {
	sysSize := filepath.Join(sysBlock, filepath.Base(dev), "size")
	want := size / sectorSize
	deadline := time.Now().Add(capacityWait)
	for {
		b, err := os.ReadFile(sysSize)
		if err != nil {
			return err
		}
		got, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return fmt.Errorf("%s: %w", sysSize, err)
		}
		if got == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: the kernel sees %d sectors after %v, want %d (the host's new file)", dev, got, capacityWait, want)
		}
		time.Sleep(capacityPoll)
	}
}

func flushBuffers(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("%s: flushing its buffer cache: %w", dev, err)
	}
	return nil
}

// Scratch mounts the writable drive a second time (the init mounted it
// in the initramfs, out of reach after the switch of root); the kernel
// shares the one ext4 superblock between the two mounts.
func (s *SystemStorage) Scratch() (string, error) {
	s.once.Do(func() {
		dir := filepath.Join(s.RunDir, "scratch")
		dev, err := findDrive(WritableSerial)
		if err != nil {
			s.err = fmt.Errorf("the writable drive: %w", err)
			return
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			s.err = err
			return
		}
		if err := unix.Mount(dev, dir, "ext4", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
			s.err = fmt.Errorf("mounting the writable drive %s at %s: %w", dev, dir, err)
			return
		}
		s.scratch = dir
	})
	return s.scratch, s.err
}

// container is one container's file systems.
type container struct {
	id      string
	root    string   // its rootfs
	mounts  []string // what was mounted, in order
	dirs    []string // what to remove at the end
	started bool     // its first process (the one with new namespaces) ran
	// endedUser and endedSystem are the CPU time, in ns, of the processes
	// started in it that have been reaped (containerTable.mu).
	endedUser, endedSystem uint64
}

// containerTable holds the containers.
type containerTable struct {
	mu sync.Mutex
	m  map[string]*container
	// busy holds IDs being created or removed.
	busy map[string]bool
}

func (s *Server) storage() Storage {
	if s.cfg.Storage != nil {
		return s.cfg.Storage
	}
	return s.sysStorage
}

// containerVolume answers OpContainerVolume.
func (s *Server) containerVolume(_ context.Context, req *proto.ContainerVolume) (proto.VolumeInfo, error) {
	scratch, err := s.storage().Scratch()
	if err != nil {
		return proto.VolumeInfo{}, err
	}
	dir := filepath.Join(scratch, volumesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return proto.VolumeInfo{}, err
	}
	p := filepath.Join(dir, req.Name)
	s.containers.mu.Lock()
	defer s.containers.mu.Unlock()
	st, err := os.Lstat(p)
	switch {
	case err == nil:
		want := req.Kind == proto.VolumeFile
		if st.Mode().IsRegular() != want || (!want && !st.IsDir()) {
			return proto.VolumeInfo{}, proto.Errorf(proto.CodeExists, "volume %q exists and is not a %s", req.Name, kindOf(req.Kind))
		}
		return proto.VolumeInfo{Path: p}, nil
	case !errors.Is(err, fs.ErrNotExist):
		return proto.VolumeInfo{}, err
	}
	if req.Kind == proto.VolumeFile {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return proto.VolumeInfo{}, err
		}
		f.Close()
	} else {
		if err := os.Mkdir(p, 0o700); err != nil {
			return proto.VolumeInfo{}, err
		}
		if err := os.Chmod(p, volumeDirMode); err != nil {
			return proto.VolumeInfo{}, err
		}
	}
	return proto.VolumeInfo{Path: p, Created: true}, nil
}

func kindOf(k string) string {
	if k == "" {
		return proto.VolumeDir
	}
	return k
}

// containerCreate answers OpContainerCreate: the layers, the overlay and
// the mounts. A failure undoes what was done.
func (s *Server) containerCreate(_ context.Context, req *proto.ContainerCreate) (proto.ContainerInfo, error) {
	ct := &s.containers
	ct.mu.Lock()
	if ct.m[req.ID] != nil || ct.busy[req.ID] {
		ct.mu.Unlock()
		return proto.ContainerInfo{}, proto.Errorf(proto.CodeExists, "container %q exists", req.ID)
	}
	ct.busy[req.ID] = true
	ct.mu.Unlock()
	defer func() {
		ct.mu.Lock()
		delete(ct.busy, req.ID)
		ct.mu.Unlock()
	}()

	c, err := s.mountContainer(req)
	if err != nil {
		if c != nil {
			s.unmountContainer(c)
		}
		return proto.ContainerInfo{}, err
	}
	ct.mu.Lock()
	ct.m[req.ID] = c
	ct.mu.Unlock()
	s.log.Debug("agent: container created", "id", req.ID, "root", c.root)
	return proto.ContainerInfo{ID: req.ID, Root: c.root}, nil
}

// mountContainer mounts what req describes; on failure the container
// returned (if any) lists what to undo.
func (s *Server) mountContainer(req *proto.ContainerCreate) (*container, error) {
	st := s.storage()
	scratch, err := st.Scratch()
	if err != nil {
		return nil, err
	}
	runDir := filepath.Join(s.cfg.RunDir, containersDir, req.ID)
	dataDir := filepath.Join(scratch, containersDir, req.ID)
	c := &container{id: req.ID, root: filepath.Join(runDir, "rootfs"), dirs: []string{runDir, dataDir}}
	for _, d := range []string{runDir, dataDir} {
		if _, err := os.Lstat(d); err == nil {
			// Left by an agent that ended mid-create: not ours to reuse.
			return nil, proto.Errorf(proto.CodeExists, "container %q: %s exists", req.ID, d)
		}
	}
	upper, work := filepath.Join(dataDir, "upper"), filepath.Join(dataDir, "work")
	for _, d := range []string{c.root, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return c, err
		}
	}
	lower := make([]string, len(req.Layers))
	for i, l := range req.Layers {
		target := filepath.Join(runDir, "layers", fmt.Sprint(i))
		if err := os.MkdirAll(target, 0o755); err != nil {
			return c, err
		}
		if err := st.MountLayer(l, target); err != nil {
			return c, fmt.Errorf("container %s: layer %d: %w", req.ID, i, err)
		}
		c.mounts = append(c.mounts, target)
		lower[len(req.Layers)-1-i] = target // overlayfs lists the top first
	}
	var flags uintptr
	if req.ReadOnlyRoot {
		flags |= unix.MS_RDONLY
	}
	opts := "lowerdir=" + strings.Join(lower, ":") + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", c.root, "overlay", flags, opts); err != nil {
		return c, fmt.Errorf("container %s: mounting its root (overlay %s): %w", req.ID, opts, err)
	}
	c.mounts = append(c.mounts, c.root)
	for i, m := range req.Mounts {
		if err := s.mountOne(c, scratch, m); err != nil {
			return c, fmt.Errorf("container %s: mounts[%d] (%s on %s): %w", req.ID, i, m.Type, m.Destination, err)
		}
	}
	return c, nil
}

// mountOne mounts m in the container.
func (s *Server) mountOne(c *container, scratch string, m proto.ContainerMount) error {
	var src string
	isFile := false
	if m.Type == proto.MountVolume {
		src = filepath.Join(scratch, volumesDir, m.Source)
		st, err := os.Lstat(src)
		if err != nil {
			return fmt.Errorf("volume %q: %w (create it with container.volume first)", m.Source, err)
		}
		isFile = st.Mode().IsRegular()
	}
	target, err := resolveIn(c.root, m.Destination)
	if err != nil {
		return err
	}
	if err := makeTarget(target, isFile); err != nil {
		return err
	}
	const common = unix.MS_NOSUID | unix.MS_NODEV
	var flags uintptr
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	switch m.Type {
	case proto.MountVolume, proto.MountDev:
		if m.Type == proto.MountDev {
			src = filepath.Join(s.cfg.Root, "dev")
		}
		if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		c.mounts = append(c.mounts, target)
		if m.ReadOnly {
			return unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
		return nil
	case proto.MountTmpfs:
		err = unix.Mount("tmpfs", target, "tmpfs", flags|common, m.Data)
	case proto.MountProc:
		err = unix.Mount("proc", target, "proc", flags|common|unix.MS_NOEXEC, "")
	case proto.MountSysfs:
		err = unix.Mount("sysfs", target, "sysfs", flags|common|unix.MS_NOEXEC|unix.MS_RDONLY, "")
	case proto.MountMqueue:
		err = unix.Mount("mqueue", target, "mqueue", flags|common|unix.MS_NOEXEC, "")
	default:
		return proto.Errorf(proto.CodeInvalid, "mount type %q", m.Type)
	}
	if err != nil {
		return err
	}
	c.mounts = append(c.mounts, target)
	return nil
}

// makeTarget makes a mount point: a directory, or an empty file for a
// file's bind mount, with its missing parents.
func makeTarget(target string, file bool) error {
	if _, err := os.Stat(target); err == nil {
		return nil
	}
	if !file {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// resolveIn is the host path of p in the container whose root is root:
// symbolic links are followed as the container would, with root as "/",
// so that no link in an image leads a mount outside its root. What does
// not exist yet is taken as it is.
func resolveIn(root, p string) (string, error) {
	rest := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	cur := "/" // in the container
	links := 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		if name == "" || name == "." {
			continue
		}
		if name == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, name)
		st, err := os.Lstat(filepath.Join(root, next))
		if err != nil || st.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		links++
		if links > maxSymlinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(strings.TrimPrefix(target, "/"), "/"), rest...)
	}
	return filepath.Join(root, cur), nil
}

// unmountContainer unmounts c's file systems, newest first, and removes
// its folders. A mount still busy is detached (MNT_DETACH).
func (s *Server) unmountContainer(c *container) error {
	var errs []error
	for _, m := range slices.Backward(c.mounts) {
		if err := unix.Unmount(m, 0); err != nil {
			s.log.Info("agent: unmounting lazily", "container", c.id, "mount", m, "err", err)
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
			}
		}
	}
	c.mounts = nil
	if len(errs) > 0 {
		// Never remove a tree something is still mounted in.
		return errors.Join(errs...)
	}
	for _, d := range c.dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// containerRemove answers OpContainerRemove: its processes are killed
// and reaped, then its file systems unmounted.
func (s *Server) containerRemove(ctx context.Context, req *proto.ContainerRef) (proto.Empty, error) {
	ct := &s.containers
	ct.mu.Lock()
	c := ct.m[req.ID]
	if c == nil || ct.busy[req.ID] {
		ct.mu.Unlock()
		return proto.Empty{}, proto.Errorf(proto.CodeNotFound, "container %q: no such container", req.ID)
	}
	ct.busy[req.ID] = true
	ct.mu.Unlock()
	defer func() {
		ct.mu.Lock()
		delete(ct.busy, req.ID)
		ct.mu.Unlock()
	}()
	var running []*process
	for _, p := range s.procs.list() {
		if p.info.Container == req.ID && p.exitStatus() == nil {
			running = append(running, p)
			_ = unix.Kill(-p.pid, unix.SIGKILL)
			_ = unix.Kill(p.pid, unix.SIGKILL)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, containerKillWait)
	defer cancel()
	for _, p := range running {
		select {
		case <-p.exited:
		case <-wctx.Done():
			return proto.Empty{}, proto.Errorf(proto.CodePrecondition, "container %q: process %d did not end after SIGKILL", req.ID, p.pid)
		}
	}
	if err := s.unmountContainer(c); err != nil {
		return proto.Empty{}, fmt.Errorf("container %q: %w", req.ID, err)
	}
	ct.mu.Lock()
	delete(ct.m, req.ID)
	ct.mu.Unlock()
	s.log.Debug("agent: container removed", "id", req.ID)
	return proto.Empty{}, nil
}

// containerRoot returns the root of container id for a process to start
// in it, and whether it is the container's first process (which gets
// new namespaces).
func (s *Server) containerRoot(id string) (root string, first bool, err error) {
	ct := &s.containers
	ct.mu.Lock()
	defer ct.mu.Unlock()
	c := ct.m[id]
	if c == nil || ct.busy[id] {
		return "", false, proto.Errorf(proto.CodeNotFound, "container %q: no such container (create it first)", id)
	}
	first = !c.started
	c.started = true
	return c.root, first, nil
}

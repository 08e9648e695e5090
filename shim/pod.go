package shim

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	eventsapi "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/guest/initconfig"
)

// One VM per pod. containerd's CRI plugin marks every container of a
// pod with annotations (containerd 1.6 pkg/cri/annotations): the pod
// sandbox's own (pause) container has container-type "sandbox", the
// pod's other containers "container" and the sandbox's ID. `start` puts
// a pod's containers on the sandbox's shim (bootstrap.go, as runc's shim
// groups them), so this service has the sandbox's task when a container
// of the pod is created:
//
//   - the sandbox's Create boots the pod's VM, its root the pause
//     image's, with spare read-only drives (placeholders) for the
//     containers to come;
//   - a container's Create swaps its layer images onto free spare drives
//     (PATCH /drives/{id} path_on_host: the VMM's drive update) and has
//     the agent stack them into the container's own root
//     (agent container.create); its init process runs there
//     (ExecStart.Container);
//   - its Delete has the agent unmount it, and swaps the drives back to
//     the placeholder, free for the next container.
//
// A bind mount of a host path (an emptyDir, a configMap, /etc/hosts)
// becomes a volume in the guest named after the host path, on the VM's
// writable drive: containers that name the same host path share it, so
// a pod's emptyDir works between its containers. A new volume starts
// with the host path's contents; nothing goes back to the host.
const (
	// AnnotationContainerType is "sandbox" for a pod's sandbox container
	// and "container" for its other containers.
	AnnotationContainerType = "io.kubernetes.cri.container-type"
	// AnnotationSandboxID is the pod sandbox's ID, on every container of
	// the pod.
	AnnotationSandboxID = "io.kubernetes.cri.sandbox-id"
	// AnnotationGroup puts containers on one shim outside Kubernetes
	// (as runc's io.containerd.runc.v2.group).
	AnnotationGroup = "io.containerd.ember.v2.group"

	containerTypeSandbox   = "sandbox"
	containerTypeContainer = "container"

	// virtioSlots is how many virtio-mmio devices a VM has
	// (vmm.MaxVirtioDevices; the shim does not import the VMM).
	virtioSlots = 19
	// podReservedSlots are the pod VM's other devices: its writable
	// drive, vsock, and a network interface (for CNI, to come).
	podReservedSlots = 3
	// spareID prefixes the spare drives' IDs: "spare0", "spare1", ...
	spareID = "spare"
	// placeholderName is the spare drives' file while free (in the layer
	// cache): 4 KiB of zeros, no file system.
	placeholderName = "placeholder.img"
	placeholderSize = 4096
	// volumePrefix names the guest volume of a host path.
	volumePrefix = "host-"
	// maxVolumeCopy bounds what is copied into a new volume from its host
	// path: a configMap or a secret is small; an emptyDir is empty.
	maxVolumeCopy = 64 << 20
)

// groupID is the shim a container belongs on: the pod's sandbox ID, else
// an explicit group, else its own ID.
func groupID(s *specs.Spec, id string) string {
	if s != nil {
		if g := s.Annotations[AnnotationSandboxID]; g != "" {
			return g
		}
		if g := s.Annotations[AnnotationGroup]; g != "" {
			return g
		}
	}
	return id
}

// podRole says what a container is to its pod: the sandbox, a container
// of the sandbox sandboxID, or neither ("").
func podRole(s *specs.Spec) (role, sandboxID string) {
	switch s.Annotations[AnnotationContainerType] {
	case containerTypeSandbox:
		return containerTypeSandbox, ""
	case containerTypeContainer:
		if id := s.Annotations[AnnotationSandboxID]; id != "" {
			return containerTypeContainer, id
		}
	}
	return "", ""
}

// spareDrives is how many spare drives a pod VM whose root has nLayers
// layers gets.
func spareDrives(nLayers int) int {
	return max(0, virtioSlots-podReservedSlots-nLayers)
}

// PodVM is a VM that takes further containers' layers after boot (one
// booted with VMSpec.SpareDrives).
type PodVM interface {
	// AttachLayers puts the layer directories (lowest first) on free
	// spare drives for owner and returns the drives as the guest sees
	// them.
	AttachLayers(ctx context.Context, owner string, layers []string) ([]proto.LayerDrive, error)
	// DetachLayers frees owner's spare drives (the guest unmounted them).
	DetachLayers(ctx context.Context, owner string) error
}

// spareSlots tracks a pod VM's spare drives: which owner has each.
type spareSlots struct {
	owners []string // "" is free
}

// take reserves n free slots for owner, or fails naming how many are
// free.
func (s *spareSlots) take(owner string, n int) ([]int, error) {
	var free []int
	for i, o := range s.owners {
		if o == "" {
			free = append(free, i)
		}
	}
	if len(free) < n {
		return nil, fmt.Errorf("container %s has %d layers and the pod's VM has %d free layer drives (of %d): remove a container or use an image with fewer layers", owner, n, len(free), len(s.owners))
	}
	for _, i := range free[:n] {
		s.owners[i] = owner
	}
	return free[:n], nil
}

// release frees owner's slots and returns them.
func (s *spareSlots) release(owner string) []int {
	var out []int
	for i, o := range s.owners {
		if o == owner {
			s.owners[i] = ""
			out = append(out, i)
		}
	}
	return out
}

func spareDriveID(i int) string { return fmt.Sprintf("%s%d", spareID, i) }

// volumeName is the guest volume of a host path.
func volumeName(hostPath string) string {
	d := sha256.Sum256([]byte(filepath.Clean(hostPath)))
	return volumePrefix + hex.EncodeToString(d[:16])
}

// podMounts maps a container's OCI mounts to the agent's: what the VM
// provides itself (proc, sysfs, /dev from the guest's devtmpfs), tmpfs,
// and volumes for host bind mounts. Mounts the guest has no use for are
// left out: /dev/pts and /dev/mqueue (the guest's /dev has them), cgroup
// file systems (no cgroups inside the VM yet). volumes receives the host
// path of each volume named.
func podMounts(ms []specs.Mount) (out []proto.ContainerMount, volumes map[string]string, err error) {
	volumes = map[string]string{}
	for _, m := range ms {
		dest := filepath.Clean(m.Destination)
		if !filepath.IsAbs(dest) {
			return nil, nil, fmt.Errorf("mount destination %q: want an absolute path", m.Destination)
		}
		ro := slices.Contains(m.Options, "ro")
		bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
		switch {
		case dest == "/dev/pts" || dest == "/dev/mqueue" || m.Type == "cgroup" || m.Type == "cgroup2" || m.Type == "devpts":
			continue
		case dest == "/dev" && !bind:
			out = append(out, proto.ContainerMount{Destination: dest, Type: proto.MountDev})
		case m.Type == "proc":
			out = append(out, proto.ContainerMount{Destination: dest, Type: proto.MountProc})
		case m.Type == "sysfs":
			out = append(out, proto.ContainerMount{Destination: dest, Type: proto.MountSysfs, ReadOnly: true})
		case m.Type == "mqueue":
			out = append(out, proto.ContainerMount{Destination: dest, Type: proto.MountMqueue})
		case m.Type == "tmpfs" && !bind:
			var data []string
			for _, o := range m.Options {
				if strings.Contains(o, "=") {
					data = append(data, o)
				}
			}
			out = append(out, proto.ContainerMount{Destination: dest, Type: proto.MountTmpfs, ReadOnly: ro, Data: strings.Join(data, ",")})
		case bind:
			if !filepath.IsAbs(m.Source) {
				return nil, nil, fmt.Errorf("bind mount on %s: source %q: want an absolute host path", dest, m.Source)
			}
			name := volumeName(m.Source)
			volumes[name] = m.Source
			out = append(out, proto.ContainerMount{Destination: dest, Type: proto.MountVolume, Source: name, ReadOnly: ro})
		default:
			return nil, nil, fmt.Errorf("mount on %s: type %q is not supported in a pod's VM", dest, m.Type)
		}
	}
	return out, volumes, nil
}

// makeVolume makes the guest volume name of the host path src (a file or
// a directory, as src is) and, when the guest had none, copies src's
// contents in: a new pod's emptyDir is empty, a configMap's or the
// pod's /etc/hosts holds what the host wrote.
func makeVolume(ctx context.Context, ac *agentclient.Client, name, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("volume %s: %w", src, err)
	}
	kind := proto.VolumeDir
	if st.Mode().IsRegular() {
		kind = proto.VolumeFile
	} else if !st.IsDir() {
		return fmt.Errorf("volume %s: neither a file nor a directory (%s)", src, st.Mode().Type())
	}
	v, err := ac.ContainerVolume(ctx, proto.ContainerVolume{Name: name, Kind: kind})
	if err != nil {
		return fmt.Errorf("volume %s: %w", src, err)
	}
	if !v.Created {
		return nil
	}
	if kind == proto.VolumeFile {
		if st.Size() > maxVolumeCopy {
			return fmt.Errorf("volume %s: %d bytes, more than the %d copied into a pod's VM", src, st.Size(), maxVolumeCopy)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		_, err = ac.Upload(ctx, proto.WriteRequest{PathRequest: proto.PathRequest{Path: v.Path}, Format: proto.FormatFile, Mode: uint32(st.Mode().Perm())}, bytes.NewReader(data))
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil || len(entries) == 0 {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, src, maxVolumeCopy)) }()
	_, err = ac.Upload(ctx, proto.WriteRequest{PathRequest: proto.PathRequest{Path: v.Path}, Format: proto.FormatTar}, pr)
	pr.Close()
	if err != nil {
		return fmt.Errorf("volume %s: copying its contents into the VM: %w", src, err)
	}
	return nil
}

// layerFSType is the file system of the shim's layer images.
const layerFSType = initconfig.FSErofs

// writeTar writes the tree at dir to w as a tar stream (files,
// directories, symbolic links; modes, owners and times), failing past
// limit bytes of file contents.
func writeTar(w io.Writer, dir string, limit int64) error {
	tw := tar.NewWriter(w)
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() && !info.IsDir() {
			return nil // sockets, FIFOs, devices: not a volume's contents
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		if total += info.Size(); total > limit {
			return fmt.Errorf("%s: more than the %d bytes copied into a pod's VM", dir, limit)
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyN(tw, f, info.Size())
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// A pod VM's size: the pod's containers come after its VM boots, so the
// sandbox's spec cannot size it. Guest memory is touched on demand (the
// host backs only what the guest uses), so a generous ceiling costs
// little until used.
const (
	// PodMemoryMiB is a pod VM's memory at least.
	PodMemoryMiB = 1024
	// PodVCPUs is a pod VM's vCPUs at least.
	PodVCPUs = 2
)

// createInPod creates task t (a container of a pod) in its sandbox's VM:
// its layers onto spare drives, its volumes, its root and mounts by the
// agent. A failure undoes what was done.
func (s *Service) createInPod(ctx context.Context, r *taskapi.CreateTaskRequest, t *ctask, layers []string) (*taskapi.CreateTaskResponse, error) {
	sb := t.sandbox
	drop := func() {
		s.mu.Lock()
		delete(s.tasks, r.ID)
		s.mu.Unlock()
	}
	mounts, volumes, err := podMounts(t.spec.Mounts)
	if err != nil {
		drop()
		return nil, errf(codes.InvalidArgument, "create %s: %v", r.ID, err)
	}
	pod, ok := sb.vm.(PodVM)
	if !ok {
		drop()
		return nil, errf(codes.FailedPrecondition, "create %s: the VM of pod %s takes no containers (it was not booted as a pod's)", r.ID, sb.id)
	}
	fail := func(err error) (*taskapi.CreateTaskResponse, error) {
		if derr := pod.DetachLayers(context.Background(), r.ID); derr != nil {
			s.log.Warn("freeing a failed container's drives", "container", r.ID, "err", derr)
		}
		drop()
		return nil, errf(codes.Unknown, "create %s in the VM of pod %s: %v", r.ID, sb.id, err)
	}
	ac := sb.vm.Agent()
	drives, err := pod.AttachLayers(ctx, r.ID, layers)
	if err != nil {
		return fail(err)
	}
	names := make([]string, 0, len(volumes))
	for name := range volumes {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := makeVolume(ctx, ac, name, volumes[name]); err != nil {
			return fail(err)
		}
	}
	readOnly := t.spec.Root != nil && t.spec.Root.Readonly
	if _, err := ac.ContainerCreate(ctx, proto.ContainerCreate{ID: r.ID, Layers: drives, Mounts: mounts, ReadOnlyRoot: readOnly}); err != nil {
		return fail(err)
	}
	t.init.req.Container = r.ID
	s.mu.Lock()
	t.vm = sb.vm
	s.mu.Unlock()
	go s.watchVM(t)
	pid := uint32(sb.vm.PID())
	s.publish(TopicTaskCreate, &eventsapi.TaskCreate{ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs,
		IO: &eventsapi.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}, Pid: pid})
	return &taskapi.CreateTaskResponse{Pid: pid}, nil
}

// removeFromPod removes a pod's container from its VM: the agent kills
// what still runs in it and unmounts it, then its drives are freed.
func (s *Service) removeFromPod(ctx context.Context, t *ctask) error {
	select {
	case <-t.vm.Done():
		return nil // the pod's VM is gone, and its drives with it
	default:
	}
	if err := t.vm.Agent().ContainerRemove(ctx, t.id); err != nil && !proto.IsNotFound(err) {
		return err
	}
	if pod, ok := t.vm.(PodVM); ok {
		return pod.DetachLayers(ctx, t.id)
	}
	return nil
}

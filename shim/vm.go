package shim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/api"
	apiclient "github.com/embervm/ember/api/client"
	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/image/boot"
)

// Launcher boots the VM of a task. The shim's service knows VMs only
// through it: Ember's (EmberLauncher) runs an ember process per VM;
// tests put a real agent in the test process behind one.
type Launcher interface {
	Boot(ctx context.Context, spec VMSpec) (VM, error)
}

// VMSpec is one task's VM.
type VMSpec struct {
	// ID names the VM (the container's ID).
	ID string
	// Dir is the VM's folder (in the bundle): its initrd, writable
	// drive, sockets and logs. The launcher creates what it needs in it.
	Dir string
	// Layers are the root filesystem's layer directories, lowest first.
	Layers []string
	// Hostname is the guest's host name ("" leaves it unset).
	Hostname string
	// Env is the agent's base environment, NAME=value.
	Env []string
	// VCPUs and MemoryMiB size the VM.
	VCPUs, MemoryMiB int
	// SpareDrives, for a pod's VM, is how many read-only drives it gets
	// beyond its own layers, free for its containers' layers
	// (PodVM.AttachLayers); the VM then implements PodVM.
	SpareDrives int
}

// VM is a running VM with its guest's agent.
type VM interface {
	// Agent is the client of the guest's agent.
	Agent() *agentclient.Client
	// PID is the host process that runs the VM (0 if none).
	PID() int
	// Done is closed once the VM has ended.
	Done() <-chan struct{}
	// EndReason, once Done is closed, says how a VM the shim did not stop
	// ended ("" for one it stopped).
	EndReason() string
	// Pause and Resume stop and restart the guest's vCPUs.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Stop ends the VM and waits until it has ended.
	Stop(ctx context.Context) error
}

// Files of a VM's folder.
const (
	apiSocketName = "api.sock"
	vsockName     = "vsock.sock"
	consoleName   = "console.log"
	emberLogName  = "ember.log"
	// pidName holds the ember process's pid, for `delete` after a shim
	// crash.
	pidName = "ember.pid"
	// guestCID is the guest's vsock CID: the first one a guest may have
	// (0-2 are reserved, vsock(7)); each VM has its own vsock device.
	guestCID = 3
	// pollInterval is how often waits for a socket look again.
	pollInterval = 2 * time.Millisecond
	// agentTimeout bounds a boot until the agent answers: the minimal
	// guest needs about a second; the lab's emulated KVM much more.
	agentTimeout = 2 * time.Minute
)

// EmberLauncher boots each VM as its own `ember` process (the ember
// binary's Firecracker-compatible API, through api/client), from the
// task's layers (cached EROFS images), a copy-on-write writable drive and
// ember-init serving the agent (package image/boot with Agent).
type EmberLauncher struct {
	// Ember is the ember binary.
	Ember string
	// Kernel is the guest kernel (an ELF vmlinux or a bzImage).
	Kernel string
	// Home is Ember's home: blank writable bases and the initrd cache
	// (as image.Home(), /var/lib/ember by default).
	Home string
	// LayerDir caches the layer images (Home/shim/layers by default).
	LayerDir string
	// Init is ember-init (default: initrd.FindInit()).
	Init string
	// WarmPods restores pod VMs from the pod template instead of booting
	// them (see warm.go).
	WarmPods bool
	// Log, if set, gets each boot's phases at info level: where a slow
	// pod start goes.
	Log *slog.Logger
}

// Boot prepares the VM's files in spec.Dir, starts ember, configures
// and starts the VM through its API, and waits until the agent answers.
// A pod's VM (SpareDrives > 0) is restored from the pod template instead
// (see warm.go) if WarmPods is set; should that fail, it boots.
// A failed boot leaves no process behind.
func (l *EmberLauncher) Boot(ctx context.Context, spec VMSpec) (VM, error) {
	t0 := time.Now()
	var phases []any
	mark := func(name string, since time.Time) time.Time {
		now := time.Now()
		phases = append(phases, name+"_ms", float64(now.Sub(since).Microseconds())/1000)
		return now
	}
	images, err := l.layerCache().images(ctx, spec.Layers)
	if err != nil {
		return nil, err
	}
	t := mark("layers", t0)
	if spec.SpareDrives > 0 && l.WarmPods {
		v, err := l.restorePod(ctx, spec, images, mark, t)
		if err == nil {
			if l.Log != nil {
				mark("total", t0)
				l.Log.Info("VM restored", append([]any{"vm", spec.ID, "layers", len(spec.Layers)}, phases...)...)
			}
			return v, nil
		}
		if l.Log != nil {
			l.Log.Warn("the pod template did not serve; booting the VM", "vm", spec.ID, "err", err)
		}
		// What the attempt left in the VM's folder goes: the boot makes
		// its own files there.
		if err := os.RemoveAll(spec.Dir); err != nil {
			return nil, err
		}
		phases, t = phases[:0], time.Now()
	}
	v, err := l.boot(ctx, spec, images, mark, t)
	if err != nil {
		return nil, err
	}
	if l.Log != nil {
		mark("total", t0)
		l.Log.Info("VM booted", append([]any{"vm", spec.ID, "layers", len(spec.Layers)}, phases...)...)
	}
	return v, nil
}

// layerCache is the cache of the layers' images.
func (l *EmberLauncher) layerCache() layerCache {
	if l.LayerDir == "" {
		return layerCache{dir: filepath.Join(l.Home, "shim", "layers")}
	}
	return layerCache{dir: l.LayerDir}
}

// images returns the image of each layer directory, building those not
// cached yet.
func (c layerCache) images(ctx context.Context, layers []string) ([]string, error) {
	var images []string
	for _, d := range layers {
		img, err := c.image(ctx, d)
		if err != nil {
			return nil, err
		}
		images = append(images, img)
	}
	return images, nil
}

// boot boots spec's VM from the layers' images (Boot's cold path; the
// previous phase ended at t). A failed boot leaves no process behind.
func (l *EmberLauncher) boot(ctx context.Context, spec VMSpec, images []string, mark func(string, time.Time) time.Time, t time.Time) (*emberVM, error) {
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, err
	}
	prep, err := boot.PrepareLayers(ctx, l.Home, images, initconfig.FSErofs,
		boot.ImageConfig{Env: spec.Env}, boot.Options{Ref: spec.ID, Dir: spec.Dir, Agent: true, Hostname: spec.Hostname, Init: l.Init})
	if err != nil {
		return nil, fmt.Errorf("preparing the VM: %w", err)
	}
	t = mark("prepare", t)
	v, err := l.started(spec, mark)
	if err != nil {
		return nil, err
	}
	for _, d := range prep.Drives {
		if !d.ReadOnly {
			v.writable = append(v.writable, d.ID)
		}
	}
	if err := v.configure(ctx, l.Kernel, spec, prep, t); err != nil {
		v.Stop(context.Background())
		return nil, v.failed(err)
	}
	v.phases = nil
	return v, nil
}

// started starts ember for spec's VM, with a pod VM's spare drives.
func (l *EmberLauncher) started(spec VMSpec, mark func(string, time.Time) time.Time) (*emberVM, error) {
	v, err := l.start(spec)
	if err != nil {
		return nil, err
	}
	v.phases = mark
	v.cache = l.layerCache()
	if spec.SpareDrives > 0 {
		if v.placeholder, err = placeholder(v.cache.dir); err != nil {
			v.Stop(context.Background())
			return nil, err
		}
		v.slots = &spareSlots{owners: make([]string, spec.SpareDrives)}
	}
	return v, nil
}

// failed is the error of a VM that did not come up: the VM's folder goes
// with the failed create, so its logs' last lines go into the error.
func (v *emberVM) failed(err error) error {
	return fmt.Errorf("%w; ember's log ends: %s; the console ends: %s", err,
		tailLines(filepath.Join(v.dir, emberLogName), failLogLines), tailLines(filepath.Join(v.dir, consoleName), failLogLines))
}

// emberVM is a VM run by an ember process the shim started.
type emberVM struct {
	dir string
	// sockDir is a short symlink to dir, for the sockets (see sockLink).
	sockDir string
	cmd     *exec.Cmd
	api     *apiclient.Client
	agent   *agentclient.Client
	done    chan struct{}
	cache   layerCache
	// writable are the ids of the VM's writable drives (the pod
	// template's are overridden in each restored VM).
	writable []string
	// stopping is set once Stop is called: the VM's end is expected.
	stopping atomic.Bool
	// exitErr is ember's exit, set before done is closed.
	exitErr error

	// phases, while the VM boots, records a phase that began at a time
	// and returns the time it ended (see Boot).
	phases func(name string, since time.Time) time.Time

	// A pod's VM: its spare drives and the file they hold while free.
	slotMu      sync.Mutex
	slots       *spareSlots
	placeholder string
}

// placeholder returns the spare drives' file while free (made once in
// dir): zeros, no file system, read-only.
func placeholder(dir string) (string, error) {
	p := filepath.Join(dir, placeholderName)
	if st, err := os.Stat(p); err == nil && st.Size() == placeholderSize {
		return p, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".placeholder-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	err = tmp.Truncate(placeholderSize)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		return "", fmt.Errorf("the spare drives' placeholder: %w", err)
	}
	return p, nil
}

// AttachLayers builds (or finds) the layers' images and swaps them onto
// free spare drives (PATCH /drives/{id} path_on_host).
func (v *emberVM) AttachLayers(ctx context.Context, owner string, layers []string) ([]proto.LayerDrive, error) {
	if v.slots == nil {
		return nil, errors.New("this VM has no spare drives (it is not a pod's)")
	}
	var images []string
	for _, d := range layers {
		img, err := v.cache.image(ctx, d)
		if err != nil {
			return nil, err
		}
		images = append(images, img)
	}
	v.slotMu.Lock()
	slots, err := v.slots.take(owner, len(images))
	v.slotMu.Unlock()
	if err != nil {
		return nil, err
	}
	var out []proto.LayerDrive
	for i, slot := range slots {
		id := spareDriveID(slot)
		if err := v.api.PatchDrive(ctx, api.PartialDrive{DriveID: id, PathOnHost: &images[i]}); err != nil {
			v.DetachLayers(context.Background(), owner)
			return nil, fmt.Errorf("putting layer %s on drive %s: %w", layers[i], id, err)
		}
		ld := proto.LayerDrive{Serial: id, FSType: layerFSType}
		if st, err := os.Stat(images[i]); err == nil {
			ld.Size = st.Size()
		}
		out = append(out, ld)
	}
	return out, nil
}

// DetachLayers swaps owner's drives back to the placeholder: the layer
// images are no longer open in the VM.
func (v *emberVM) DetachLayers(ctx context.Context, owner string) error {
	if v.slots == nil {
		return nil
	}
	v.slotMu.Lock()
	slots := v.slots.release(owner)
	v.slotMu.Unlock()
	var errs []error
	for _, slot := range slots {
		if err := v.api.PatchDrive(ctx, api.PartialDrive{DriveID: spareDriveID(slot), PathOnHost: &v.placeholder}); err != nil {
			errs = append(errs, fmt.Errorf("freeing drive %s: %w", spareDriveID(slot), err))
		}
	}
	return errors.Join(errs...)
}

func (l *EmberLauncher) start(spec VMSpec) (*emberVM, error) {
	console, err := os.OpenFile(filepath.Join(spec.Dir, consoleName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer console.Close()
	logf, err := os.OpenFile(filepath.Join(spec.Dir, emberLogName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	link, err := sockLink(spec.Dir)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(link, apiSocketName)
	cmd := exec.Command(l.Ember, "--api-sock", sock, "--id", spec.ID)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = console, logf
	// Its own session: a signal to the shim's process group (a terminal's
	// ^C) must not reach it; the shim ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.Remove(link)
		return nil, fmt.Errorf("starting %s: %w", l.Ember, err)
	}
	v := &emberVM{dir: spec.Dir, sockDir: link, cmd: cmd, api: apiclient.New(sock), done: make(chan struct{})}
	go func() {
		v.exitErr = cmd.Wait()
		close(v.done)
	}()
	if err := os.WriteFile(filepath.Join(spec.Dir, pidName), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		v.Stop(context.Background())
		return nil, err
	}
	return v, nil
}

// configure waits for ember's API socket (ember was started at t),
// configures and starts the VM, and waits for its agent.
func (v *emberVM) configure(ctx context.Context, kernel string, spec VMSpec, prep *boot.VM, t time.Time) error {
	sock := filepath.Join(v.sockDir, apiSocketName)
	if err := v.waitSocket(ctx, sock); err != nil {
		return err
	}
	t = v.phases("api_socket", t)
	vcpus, mem := spec.VCPUs, spec.MemoryMiB
	if err := v.api.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mem}); err != nil {
		return err
	}
	cmdline := boot.Cmdline
	if err := v.api.PutBootSource(ctx, api.BootSource{KernelImagePath: kernel, BootArgs: &cmdline, InitrdPath: &prep.Initrd}); err != nil {
		return err
	}
	for _, d := range prep.Drives {
		if err := v.api.PutDrive(ctx, api.Drive{DriveID: d.ID, PathOnHost: d.Path, EmberBasePath: d.Base, IsReadOnly: d.ReadOnly}); err != nil {
			return err
		}
	}
	for i := range spec.SpareDrives {
		if err := v.api.PutDrive(ctx, api.Drive{DriveID: spareDriveID(i), PathOnHost: v.placeholder, IsReadOnly: true}); err != nil {
			return err
		}
	}
	vsock := filepath.Join(v.sockDir, vsockName)
	if err := v.api.PutVsock(ctx, api.Vsock{GuestCID: guestCID, UDSPath: vsock}); err != nil {
		return err
	}
	if err := v.api.InstanceStart(ctx); err != nil {
		return err
	}
	t = v.phases("configure_start", t)
	if err := v.waitAgent(ctx, vsock); err != nil {
		return err
	}
	v.phases("agent", t)
	return nil
}

// waitAgent waits until the guest's agent answers on the vsock socket
// and keeps its client.
func (v *emberVM) waitAgent(ctx context.Context, vsock string) error {
	actx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	for {
		c, err := agentclient.Wait(actx, vsock, agentclient.Options{Name: "containerd-shim-ember-v2"}, v.done)
		if err != nil {
			return err
		}
		if _, err = c.Health(actx); err == nil {
			v.agent = c
			return nil
		}
		c.Close()
		select {
		case <-v.done:
			return errors.New("the VM ended before its agent answered")
		case <-actx.Done():
			return fmt.Errorf("waiting for the guest's agent: %w (last error: %v)", context.Cause(actx), err)
		case <-time.After(10 * pollInterval):
		}
	}
}

// waitSocket waits until ember accepts on its API socket.
func (v *emberVM) waitSocket(ctx context.Context, path string) error {
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		unix.Close(fd)
		if err == nil {
			return nil
		}
		select {
		case <-v.done:
			return errors.New("ember ended before its API socket was up")
		case <-ctx.Done():
			return fmt.Errorf("waiting for ember's API socket: %w", context.Cause(ctx))
		case <-time.After(pollInterval):
		}
	}
}

func (v *emberVM) Agent() *agentclient.Client { return v.agent }
func (v *emberVM) PID() int                   { return v.cmd.Process.Pid }
func (v *emberVM) Done() <-chan struct{}      { return v.done }

// EndReason is ember's exit status and its log's and the console's last
// lines, for a VM that ended without Stop.
func (v *emberVM) EndReason() string {
	if v.stopping.Load() {
		return ""
	}
	return fmt.Sprintf("ember (pid %d) ended: %v; ember's log ends: %s; the console ends: %s", v.cmd.Process.Pid, v.exitErr,
		tailLines(filepath.Join(v.dir, emberLogName), failLogLines), tailLines(filepath.Join(v.dir, consoleName), failLogLines))
}
func (v *emberVM) Pause(ctx context.Context) error  { return v.api.Pause(ctx) }
func (v *emberVM) Resume(ctx context.Context) error { return v.api.Resume(ctx) }

// Stop kills ember (the guest has nothing to save: its writable drive is
// thrown away with the bundle) and waits for it.
func (v *emberVM) Stop(ctx context.Context) error {
	v.stopping.Store(true)
	if v.agent != nil {
		v.agent.Close()
	}
	v.api.Close()
	_ = v.cmd.Process.Kill()
	select {
	case <-v.done:
		os.Remove(filepath.Join(v.dir, pidName))
		os.Remove(v.sockDir)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for ember (pid %d) to end: %w", v.cmd.Process.Pid, ctx.Err())
	}
}

// stopLeftover ends the ember whose pid file is in dir, if it still runs
// (a shim that crashed left it): `delete` after a crash.
func stopLeftover(dir string) {
	defer os.Remove(sockLinkPath(dir))
	data, err := os.ReadFile(filepath.Join(dir, pidName))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(string(trimNL(data)))
	if err != nil || pid <= 1 {
		return
	}
	// Only an ember whose working directory is this VM's folder: the pid
	// may have been reused.
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd"); err == nil && cwd == dir {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// failLogLines is how many last lines of ember's log and of the console a
// failed boot's error carries.
const failLogLines = 8

// tailLines is the last n lines of the file at path, joined with " | ".
func tailLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// sockRunDir holds the short symlinks to the VMs' folders that their unix
// sockets are reached through: a socket's path must fit sun_path (108
// bytes with its NUL, unix(7)), and containerd's bundle paths
// (/run/containerd/io.containerd.runtime.v2.task/NAMESPACE/64-hex-ID/...)
// are longer than that.
const sockRunDir = "/run/ember-shim"

// sockLinkPath is the short symlink to a VM's folder dir: sockRunDir and
// the first 16 hex digits of dir's SHA-256.
func sockLinkPath(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(sockRunDir, hex.EncodeToString(sum[:8]))
}

// sockLink makes (or remakes) the short symlink to dir and returns it.
func sockLink(dir string) (string, error) {
	if err := os.MkdirAll(sockRunDir, 0o700); err != nil {
		return "", fmt.Errorf("socket folder: %w", err)
	}
	link := sockLinkPath(dir)
	os.Remove(link)
	if err := os.Symlink(dir, link); err != nil {
		return "", fmt.Errorf("socket folder: %w", err)
	}
	return link, nil
}

// Package crikit drives Kubernetes' CRI (k8s.io/cri-api runtime/v1) on
// a containerd 1.6 that this package starts with its own configuration:
// Ember's runtime handler "ember" (containerd-shim-ember-v2) beside
// containerd's default runc, a sandbox (pause) image and a busybox image
// served by a local OCI registry (go-containerregistry's pkg/registry,
// plain HTTP on 127.0.0.1) so that nothing is pulled from the internet,
// and host networking for pods (no CNI needed). The lab's CRI test
// (e2e/cri_test.go) and `ember-bench lab-k8s` use it; it needs root,
// containerd, runc, the shim on PATH and the overlay module.
//
// Not run outside the lab: written against containerd 1.6's CRI plugin
// (Debian 12) without a run here.
package crikit

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Handler is Ember's CRI runtime handler (RuntimeClass handler: ember);
// "" is containerd's default runtime, runc.
const Handler = "ember"

// Image names in the local registry.
const (
	pauseRepo = "ember-pause:1"
	appRepo   = "ember-cri:1"
	// OSReleaseID is the ID in the app image's /etc/os-release.
	OSReleaseID = "ember-cri"
	// busybox is the static busybox the images are made of (Debian's
	// busybox-static, as the lab's other tests use).
	busybox = "/bin/busybox"
	// readyTimeout bounds containerd's start until its CRI answers.
	readyTimeout = 60 * time.Second
)

// configTemplate is containerd 1.6's configuration (version 2): its own
// root, state and sockets under %[1]s; the CRI plugin with the sandbox
// image and a mirror that reaches the local registry %[2]s over HTTP;
// runc (explicitly, as the comparison runtime) and Ember's runtime. The
// CNI folders are its own too, although pods use the host's network: the
// CRI plugin creates the configuration folder's parent at start, and fails
// to load where /etc/cni is missing and / is read-only (the lab, on a
// machine without containernetworking-plugins).
const configTemplate = `version = 2
root = "%[1]s/root"
state = "%[1]s/state"
[grpc]
  address = "%[1]s/containerd.sock"
[ttrpc]
  address = "%[1]s/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%[2]s/` + pauseRepo + `"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ember]
      runtime_type = "io.containerd.ember.v2"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."%[2]s"]
    endpoint = ["http://%[2]s"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "%[1]s/cni/bin"
    conf_dir = "%[1]s/cni/net.d"
`

// Options configure Start.
type Options struct {
	// Dir holds containerd's root, state, sockets, config and the pods'
	// logs (a fresh folder the caller removes).
	Dir string
	// ShimConfig is the shim's configuration file (EMBER_SHIM_CONFIG in
	// containerd's environment, which its shims inherit).
	ShimConfig string
	// Log receives containerd's output (nil: discarded).
	Log io.Writer
}

// Env is a running containerd with its CRI client and the registry.
type Env struct {
	Dir string
	// Registry is the local registry's host:port.
	Registry string
	// PauseImage and AppImage are the two images' references.
	PauseImage, AppImage string
	Runtime              runtimeapi.RuntimeServiceClient
	Images               runtimeapi.ImageServiceClient

	reg  *httptest.Server
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	done chan error
}

// Start starts the registry (with the images pushed), then containerd,
// and waits until its CRI answers.
func Start(ctx context.Context, o Options) (_ *Env, err error) {
	if o.Dir == "" {
		return nil, errors.New("crikit: Options.Dir is required")
	}
	e := &Env{Dir: o.Dir}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	e.reg = httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	e.Registry = strings.TrimPrefix(e.reg.URL, "http://")
	e.PauseImage = e.Registry + "/" + pauseRepo
	e.AppImage = e.Registry + "/" + appRepo
	pause, err := busyboxImage(v1.Config{Entrypoint: []string{"/bin/sleep", "2147483647"}}, nil)
	if err != nil {
		return nil, err
	}
	app, err := busyboxImage(v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}},
		map[string]string{"etc/os-release": "ID=" + OSReleaseID + "\n"})
	if err != nil {
		return nil, err
	}
	for ref, img := range map[string]v1.Image{e.PauseImage: pause, e.AppImage: app} {
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
			return nil, fmt.Errorf("pushing %s to the local registry: %w", ref, err)
		}
	}

	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(o.Dir, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(configTemplate, o.Dir, e.Registry)), 0o644); err != nil {
		return nil, err
	}
	e.cmd = exec.Command("containerd", "--config", cfg)
	e.cmd.Env = os.Environ()
	if o.ShimConfig != "" {
		e.cmd.Env = append(e.cmd.Env, "EMBER_SHIM_CONFIG="+o.ShimConfig)
	}
	if o.Log != nil {
		e.cmd.Stdout, e.cmd.Stderr = o.Log, o.Log
	}
	if err := e.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting containerd: %w", err)
	}
	e.done = make(chan error, 1)
	go func() { e.done <- e.cmd.Wait() }()
	sock := filepath.Join(o.Dir, "containerd.sock")
	e.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	e.Runtime = runtimeapi.NewRuntimeServiceClient(e.conn)
	e.Images = runtimeapi.NewImageServiceClient(e.conn)
	deadline := time.Now().Add(readyTimeout)
	for {
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := e.Runtime.Version(vctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-e.done:
			e.done <- werr
			return nil, fmt.Errorf("containerd ended: %v", werr)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("containerd's CRI did not answer within %v: %w", readyTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, ref := range []string{e.PauseImage, e.AppImage} {
		if _, err := e.Images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			return nil, fmt.Errorf("CRI PullImage %s: %w", ref, err)
		}
	}
	return e, nil
}

// Close ends containerd (its shims end with their tasks; the caller
// removes pods first) and the registry.
func (e *Env) Close() error {
	if e.conn != nil {
		e.conn.Close()
	}
	if e.cmd != nil && e.cmd.Process != nil {
		e.cmd.Process.Kill()
		<-e.done
	}
	if e.reg != nil {
		e.reg.Close()
	}
	return nil
}

// busyboxImage is an image of one layer: busybox with its applets as
// links in /bin, an /etc/passwd, /tmp, and files.
func busyboxImage(cfg v1.Config, files map[string]string) (v1.Image, error) {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("the images' busybox (Debian's busybox-static): %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) error {
		h.Size = int64(len(body))
		h.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	entries := []struct {
		h    tar.Header
		body []byte
	}{
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil},
		{tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb},
		{tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\n")},
	}
	for _, a := range []string{"sh", "cat", "echo", "sleep", "ls", "uname", "hostname", "ps", "true", "test", "grep"} {
		entries = append(entries, struct {
			h    tar.Header
			body []byte
		}{tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil})
	}
	for n, body := range files {
		entries = append(entries, struct {
			h    tar.Header
			body []byte
		}{tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644}, []byte(body)})
	}
	for i := range entries {
		if err := add(&entries[i].h, entries[i].body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// Pod is a pod sandbox with the handler it runs on.
type Pod struct {
	ID      string
	Config  *runtimeapi.PodSandboxConfig
	Handler string
	// LogDir is where its containers' logs go.
	LogDir string
}

// RunPod runs a pod sandbox named name on handler (Handler or "" for
// runc), with the host's network (no CNI in the lab).
func (e *Env) RunPod(ctx context.Context, name, handler string) (*Pod, error) {
	logDir := filepath.Join(e.Dir, "pods", name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Uid: name + "-uid", Namespace: "default"},
		// No hostname: with the host's network containerd gives the pod
		// the host's UTS namespace too, and runc refuses to set a host
		// name there.
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}
	r, err := e.Runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		return nil, fmt.Errorf("RunPodSandbox %s (handler %q): %w", name, handler, err)
	}
	return &Pod{ID: r.PodSandboxId, Config: cfg, Handler: handler, LogDir: logDir}, nil
}

// Container is one container of a pod.
type Container struct {
	ID string
	// Log is its CRI log file.
	Log string
}

// Mount is a host folder mounted in a container (an emptyDir as kubelet
// gives it).
type Mount struct {
	HostPath, ContainerPath string
}

// CreateContainer creates (not starts) a container of the app image in
// pod p running args.
func (e *Env) CreateContainer(ctx context.Context, p *Pod, name string, args []string, mounts []Mount) (*Container, error) {
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: e.AppImage},
		Command:  args,
		LogPath:  name + ".log",
	}
	for _, m := range mounts {
		cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath})
	}
	r, err := e.Runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.ID, Config: cfg, SandboxConfig: p.Config})
	if err != nil {
		return nil, fmt.Errorf("CreateContainer %s: %w", name, err)
	}
	return &Container{ID: r.ContainerId, Log: filepath.Join(p.LogDir, name+".log")}, nil
}

// StartContainer starts c.
func (e *Env) StartContainer(ctx context.Context, c *Container) error {
	if _, err := e.Runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ID}); err != nil {
		return fmt.Errorf("StartContainer %s: %w", c.ID, err)
	}
	return nil
}

// logPoll is how often WaitLog reads the log again.
const logPoll = time.Millisecond

// WaitLog waits until c's log has a line whose message contains text
// (CRI's log format: "TIME STREAM TAG MESSAGE").
func (c *Container) WaitLog(ctx context.Context, text string) error {
	for {
		if f, err := os.Open(c.Log); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				parts := strings.SplitN(sc.Text(), " ", 4)
				if len(parts) == 4 && strings.Contains(parts[3], text) {
					f.Close()
					return nil
				}
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			data, _ := os.ReadFile(c.Log)
			return fmt.Errorf("waiting for %q in %s: %w (it holds %q)", text, c.Log, context.Cause(ctx), data)
		case <-time.After(logPoll):
		}
	}
}

// Exec runs a command in c (ExecSync) and returns its stdout, stderr and
// exit code.
func (e *Env) Exec(ctx context.Context, c *Container, args ...string) (string, string, int32, error) {
	r, err := e.Runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c.ID, Cmd: args, Timeout: 60})
	if err != nil {
		return "", "", 0, fmt.Errorf("ExecSync %v in %s: %w", args, c.ID, err)
	}
	return string(r.Stdout), string(r.Stderr), r.ExitCode, nil
}

// RemovePod stops and removes pod p (and its containers).
func (e *Env) RemovePod(ctx context.Context, p *Pod) error {
	if _, err := e.Runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		return fmt.Errorf("StopPodSandbox %s: %w", p.ID, err)
	}
	if _, err := e.Runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		return fmt.Errorf("RemovePodSandbox %s: %w", p.ID, err)
	}
	return nil
}

// PodStart is one pod start: RunPodSandbox, CreateContainer and
// StartContainer of a container printing a line, until that line is in
// its log. The pod is removed afterwards (not timed).
func (e *Env) PodStart(ctx context.Context, name, handler string) (time.Duration, error) {
	const marker = "pod-ready"
	t0 := time.Now()
	p, err := e.RunPod(ctx, name, handler)
	if err != nil {
		return 0, err
	}
	c, err := e.CreateContainer(ctx, p, "main", []string{"/bin/sh", "-c", "echo " + marker + "; exec sleep 2147483647"}, nil)
	if err == nil {
		err = e.StartContainer(ctx, c)
	}
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err = c.WaitLog(wctx, marker)
		cancel()
	}
	d := time.Since(t0)
	if rerr := e.RemovePod(context.Background(), p); err == nil {
		err = rerr
	}
	return d, err
}

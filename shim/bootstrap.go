package shim

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/embervm/ember/image"
)

// The runtime v2 binary protocol as containerd 1.6 drives it
// (runtime/v2/binary.go and runtime/v2/shim of containerd 1.6):
//
//   - `SHIM -namespace NS -address A -publish-binary B -id ID [-debug] start`
//     in the bundle, TTRPC_ADDRESS in the environment: start the shim
//     server and print its address ("unix:///run/containerd/s/HASH") on
//     stdout, nothing else (containerd reads stdout and stderr together);
//   - the server: the same command line without "start", its listening
//     socket as fd 3, its log the FIFO "log" in the bundle;
//   - `SHIM ... -id ID -bundle DIR delete`: clean up after a shim that
//     is gone and print a task v2 DeleteResponse (protobuf) on stdout.
const (
	// ActionStart and ActionDelete are the command words.
	ActionStart  = "start"
	ActionDelete = "delete"
	// EnvTTRPCAddress is containerd's ttrpc socket (events go there).
	EnvTTRPCAddress = "TTRPC_ADDRESS"
	// DefaultSocketDir is where shim sockets live
	// (containerd's defaults.DefaultStateDir + "/s").
	DefaultSocketDir = "/run/containerd/s"
	// listenerFD is the server's inherited socket (after stdin, stdout,
	// stderr), as containerd's own shims pass it.
	listenerFD = 3
	// logFifo is the shim log FIFO containerd reads, in the bundle.
	logFifo = "log"
	// addressFile records the socket address in the bundle.
	addressFile = "address"
	// exitKilled is the status `delete` reports: 128+SIGKILL, as
	// containerd's runc shim does.
	exitKilled = 128 + 9
)

// Opts is the shim's command line.
type Opts struct {
	ID, Namespace, Address, PublishBinary, Bundle string
	Debug                                         bool
	// SocketDir is where the server's socket goes (DefaultSocketDir).
	SocketDir string
}

// socketPath is the socket of the shim serving group: a hash of
// containerd's address, the namespace and the group (the task's ID, or
// its pod sandbox's: groupID), as containerd's shims name theirs.
func (o Opts) socketPath(group string) string {
	dir := o.SocketDir
	if dir == "" {
		dir = DefaultSocketDir
	}
	d := sha256.Sum256([]byte(filepath.Join(o.Address, o.Namespace, group)))
	return filepath.Join(dir, fmt.Sprintf("%x", d))
}

// bundleGroup is the shim group of the task whose bundle is dir (its
// config.json's annotations); a bundle without a readable spec is its
// own group.
func bundleGroup(dir, id string) string {
	s, err := readSpec(dir)
	if err != nil {
		return id
	}
	return groupID(s, id)
}

// Start is the start action: it listens on the shim's socket, starts the
// server (self with serverArgs, in its own process group, the socket as
// fd 3) and returns the address to print.
func Start(o Opts, self string, serverArgs []string) (string, error) {
	if o.ID == "" || o.Namespace == "" {
		return "", errors.New("start: -id and -namespace are required")
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	// A container of a pod goes to the shim of its sandbox, which has
	// the pod's VM: as runc's shim groups, containerd 1.6 takes the
	// address printed, whoever serves it.
	group := bundleGroup(cwd, o.ID)
	path := o.socketPath(group)
	addr := "unix://" + path
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		if group == o.ID {
			return "", fmt.Errorf("start: a shim already serves %s", addr)
		}
		if err := os.WriteFile(filepath.Join(cwd, addressFile), []byte(addr), 0o600); err != nil {
			return "", err
		}
		return addr, nil
	}
	os.Remove(path) // a stale socket of a shim that is gone
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return "", err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return "", fmt.Errorf("start: %w", err)
	}
	ul := l.(*net.UnixListener)
	// The socket outlives this listener: the server has it as fd 3.
	ul.SetUnlinkOnClose(false)
	defer ul.Close()
	f, err := ul.File()
	if err != nil {
		os.Remove(path)
		return "", err
	}
	defer f.Close()
	cmd := exec.Command(self, serverArgs...)
	cmd.Dir = cwd
	cmd.ExtraFiles = []*os.File{f}
	// Its own process group: containerd's signals to the start command do
	// not reach it. stdin, stdout and stderr are /dev/null: containerd
	// waits for the start command's output to end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("start: the shim server: %w", err)
	}
	go cmd.Wait()
	if err := os.WriteFile(filepath.Join(cwd, addressFile), []byte(addr), 0o600); err != nil {
		cmd.Process.Kill()
		os.Remove(path)
		return "", err
	}
	return addr, nil
}

// Delete is the delete action: it ends the task's VM if a crashed shim
// left it, removes the VM's files, and writes the DeleteResponse to w.
func Delete(o Opts, w io.Writer) error {
	bundle := o.Bundle
	if bundle == "" {
		var err error
		if bundle, err = os.Getwd(); err != nil {
			return err
		}
	}
	dir := filepath.Join(bundle, vmDirName)
	stopLeftover(dir)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	// The socket is the shim's, not the task's, when the task was one of
	// a group (a pod's container on its sandbox's shim).
	if bundleGroup(bundle, o.ID) == o.ID {
		os.Remove(o.socketPath(o.ID))
	}
	data, err := proto.Marshal(&taskapi.DeleteResponse{ExitStatus: exitKilled, ExitedAt: timestamppb.Now()})
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// Config is the shim's configuration: the JSON file ConfigPath (or
// $EMBER_SHIM_CONFIG), every field optional.
type Config struct {
	// Ember is the ember binary (default: "ember" on PATH).
	Ember string `json:"ember,omitempty"`
	// Kernel is the guest kernel (default: $EMBER_KERNEL, else
	// ember-vmlinux beside the ember binary, as emberd chooses).
	Kernel string `json:"kernel,omitempty"`
	// Home is Ember's home (default: $EMBER_HOME, else /var/lib/ember).
	Home string `json:"home,omitempty"`
	// LayerDir caches layer images (default: HOME/shim/layers).
	LayerDir string `json:"layer_dir,omitempty"`
	// Init is ember-init (default: found as `ember run --image` finds it).
	Init string `json:"init,omitempty"`
	// WarmPods restores each pod's VM from the pod template, a snapshot
	// of a booted pod VM that the shim makes once per kernel, init,
	// sandbox image and size (HOME/shim/templates), instead of booting it.
	// Off by default until restored pod VMs are as dependable as booted
	// ones (some died soon after their restore in the lab).
	WarmPods bool `json:"warm_pods,omitempty"`
}

// ConfigPath is the shim's configuration file; EnvConfig names another.
const (
	ConfigPath = "/etc/ember/containerd-shim-ember-v2.json"
	EnvConfig  = "EMBER_SHIM_CONFIG"
)

// LoadConfig reads the configuration (a missing default file is an empty
// one) and fills in the defaults.
func LoadConfig() (Config, error) {
	var c Config
	path, explicit := os.Getenv(EnvConfig), true
	if path == "" {
		path, explicit = ConfigPath, false
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		dec := json.NewDecoder(strings.NewReader(string(data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config %s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist) && !explicit:
	default:
		return c, fmt.Errorf("config: %w", err)
	}
	if c.Ember == "" {
		p, err := exec.LookPath("ember")
		if err != nil {
			return c, fmt.Errorf("config: no \"ember\" in %s and none on PATH", path)
		}
		c.Ember = p
	}
	if c.Kernel == "" {
		c.Kernel = os.Getenv("EMBER_KERNEL")
	}
	if c.Kernel == "" {
		c.Kernel = filepath.Join(filepath.Dir(c.Ember), "ember-vmlinux")
	}
	if c.Home == "" {
		c.Home = image.Home()
	}
	return c, nil
}

// Launcher is the EmberLauncher of the configuration; log gets its boots'
// phases.
func (c Config) Launcher(log *slog.Logger) *EmberLauncher {
	return &EmberLauncher{Ember: c.Ember, Kernel: c.Kernel, Home: c.Home, LayerDir: c.LayerDir, Init: c.Init, WarmPods: c.WarmPods, Log: log}
}

// Serve is the server: the task service on the inherited socket until
// containerd shuts the shim down (or SIGTERM). Its log goes to the
// bundle's log FIFO.
func Serve(o Opts) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	level := slog.LevelInfo
	if o.Debug {
		level = slog.LevelDebug
	}
	var logw io.Writer = os.Stderr
	if lf, err := fifo.OpenFifo(ctx, logFifo, unix.O_WRONLY|unix.O_NONBLOCK, 0o700); err == nil {
		defer lf.Close()
		logw = lf
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level})).With("runtime", "io.containerd.ember.v2", "id", o.ID, "namespace", o.Namespace)

	l, err := net.FileListener(os.NewFile(listenerFD, "shim socket"))
	if err != nil {
		return fmt.Errorf("the shim socket (fd %d): %w", listenerFD, err)
	}
	var pub Publisher
	if addr := os.Getenv(EnvTTRPCAddress); addr != "" {
		rp, err := NewRemotePublisher(addr, o.Namespace, log)
		if err != nil {
			log.Warn("no events to containerd", "err", err)
		} else {
			defer rp.Close()
			pub = rp
		}
	}
	cfg, err := LoadConfig()
	if err != nil {
		log.Error("configuration", "err", err)
		return err
	}
	srv, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()))
	if err != nil {
		return err
	}
	stop := make(chan struct{}, 1)
	svc := NewService(ctx, cfg.Launcher(log), pub, log, func() {
		select {
		case stop <- struct{}{}:
		default:
		}
	})
	taskapi.RegisterTTRPCTaskService(srv, svc)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	// SIGPIPE: a FIFO whose reader went away must not end the shim.
	signal.Ignore(unix.SIGPIPE)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	log.Info("serving containerd.task.v2.Task", "socket", l.Addr().String())
	select {
	case <-stop:
	case s := <-sigs:
		log.Info("signal", "signal", s.String())
	case err := <-served:
		return err
	}
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx) // the Shutdown call's answer goes out first
	os.Remove(strings.TrimPrefix(l.Addr().String(), "unix://"))
	return nil
}

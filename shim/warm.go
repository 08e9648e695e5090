package shim

// Warm pod VMs. Every pod's VM boots the same kernel, init and sandbox
// (pause) image at the same size, so the shim boots that VM once, takes a
// full snapshot of it once its agent answers (the pod template), and
// starts each pod's VM by restoring the template instead of booting:
// most of a cold pod start is the guest kernel's boot. Each restored VM
// writes its own copy-on-write overlay over the template's writable
// drive, listens on its own vsock socket, and gets its own clock, entropy
// and host name through the agent's restore transaction. Templates are
// shared by every shim of the host (one per pod): the first one that
// needs a template builds it under a file lock while the others wait.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/api"
	"github.com/embervm/ember/initrd"
)

// Files of the pod templates, under Home/shim/templates.
const (
	templatesDirName = "templates"
	// templateSnapshot and templateMem are the template's snapshot.
	templateSnapshot = "vm.snap"
	templateMem      = "vm.mem"
	// templateManifest is written last: a template folder without it is
	// an unfinished build, thrown away by the next builder.
	templateManifest = "template.json"
	// templateFormat is the layout of a template folder; a change of it
	// changes every key.
	templateFormat = 1
	// lockPoll is how often a shim waiting for another's template build
	// tries the lock again.
	lockPoll = 50 * time.Millisecond
	// restoredGeneration is a restored pod VM's restore generation (each
	// is the template's first clone as far as its own guest knows).
	restoredGeneration = 1
)

// podTemplate is a built template.
type podTemplate struct {
	dir string
	// Writable are the ids of the template's writable drives: each
	// restored VM gets a new overlay over each.
	Writable []string `json:"writable"`
}

// templateKey names the template of spec's VM: everything that makes
// two pod VMs' snapshots differ. Binaries are named by path, size and
// modification time (a rebuilt ember, kernel or init makes a new
// template); layer images by path (their names are their contents').
func (l *EmberLauncher) templateKey(spec VMSpec, images []string) (string, error) {
	init := l.Init
	if init == "" {
		var err error
		if init, err = initrd.FindInit(); err != nil {
			return "", err
		}
	}
	var files []string
	for _, p := range []string{l.Ember, l.Kernel, init} {
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		files = append(files, fmt.Sprintf("%s %d %d", p, st.Size(), st.ModTime().UnixNano()))
	}
	b, err := json.Marshal(struct {
		Format       int
		Files        []string
		Images       []string
		Env          []string
		VCPUs, MiB   int
		Spare        int
		Home, Layers string
	}{templateFormat, files, images, spec.Env, spec.VCPUs, spec.MemoryMiB, spec.SpareDrives, l.Home, l.layerCache().dir})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16]), nil
}

// restorePod starts spec's VM from its pod template, building the
// template first if there is none (the previous phase ended at t).
func (l *EmberLauncher) restorePod(ctx context.Context, spec VMSpec, images []string, mark func(string, time.Time) time.Time, t time.Time) (*emberVM, error) {
	key, err := l.templateKey(spec, images)
	if err != nil {
		return nil, fmt.Errorf("pod template: %w", err)
	}
	tmpl, err := l.podTemplate(ctx, key, spec, images)
	if err != nil {
		return nil, fmt.Errorf("pod template %s: %w", key, err)
	}
	t = mark("template", t)
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return nil, err
	}
	v, err := l.started(spec, mark)
	if err != nil {
		return nil, err
	}
	v.writable = tmpl.Writable
	if err := v.restore(ctx, tmpl, spec.Hostname, t); err != nil {
		v.Stop(context.Background())
		return nil, v.failed(fmt.Errorf("restoring pod template %s: %w", key, err))
	}
	v.phases = nil
	return v, nil
}

// podTemplate returns the template key, building it if it is not built
// yet (or waiting for the shim that builds it).
func (l *EmberLauncher) podTemplate(ctx context.Context, key string, spec VMSpec, images []string) (podTemplate, error) {
	root := filepath.Join(l.Home, "shim", templatesDirName)
	dir := filepath.Join(root, key)
	if t, err := readTemplate(dir); err == nil {
		return t, nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return podTemplate{}, err
	}
	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return podTemplate{}, err
	}
	defer unlock()
	if t, err := readTemplate(dir); err == nil {
		return t, nil // built while this shim waited
	}
	// An unfinished build (a shim killed in it) is redone.
	if err := os.RemoveAll(dir); err != nil {
		return podTemplate{}, err
	}
	t0 := time.Now()
	t, err := l.buildTemplate(ctx, dir, key, spec, images)
	if err != nil {
		os.RemoveAll(dir)
		return podTemplate{}, err
	}
	if l.Log != nil {
		l.Log.Info("pod template built", "template", key, "dir", dir, "build_ms", time.Since(t0).Milliseconds())
	}
	return t, nil
}

// buildTemplate boots the template's VM in dir (with no host name: each
// restore sets its pod's), snapshots it once its agent answers, and
// ends it.
func (l *EmberLauncher) buildTemplate(ctx context.Context, dir, key string, spec VMSpec, images []string) (podTemplate, error) {
	tspec := spec
	tspec.ID, tspec.Dir, tspec.Hostname = "pod-template-"+key[:12], dir, ""
	noPhases := func(_ string, since time.Time) time.Time { return time.Now() }
	v, err := l.boot(ctx, tspec, images, noPhases, time.Now())
	if err != nil {
		return podTemplate{}, err
	}
	snap := func() error {
		if !slices.Contains(v.agent.Hello().Features, proto.FeatureRestore) {
			return errors.New("the guest's agent has no restore transaction (an older ember-init?)")
		}
		// The snapshot holds no connection of this shim's: each restored
		// VM's shim dials its own.
		v.agent.Close()
		v.agent = nil
		if err := v.api.Pause(ctx); err != nil {
			return err
		}
		return v.api.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotType: "Full",
			SnapshotPath: filepath.Join(dir, templateSnapshot), MemFilePath: filepath.Join(dir, templateMem)})
	}
	err = snap()
	// The template VM ends either way: restored VMs write their overlays
	// over its writable drive, which nothing may write any more.
	if serr := v.Stop(ctx); err == nil {
		err = serr
	}
	if err != nil {
		return podTemplate{}, err
	}
	t := podTemplate{dir: dir, Writable: v.writable}
	b, err := json.Marshal(t)
	if err != nil {
		return podTemplate{}, err
	}
	tmp := filepath.Join(dir, templateManifest+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return podTemplate{}, err
	}
	if err := os.Rename(tmp, filepath.Join(dir, templateManifest)); err != nil {
		return podTemplate{}, err
	}
	return t, nil
}

// readTemplate reads the manifest of the built template in dir.
func readTemplate(dir string) (podTemplate, error) {
	b, err := os.ReadFile(filepath.Join(dir, templateManifest))
	if err != nil {
		return podTemplate{}, err
	}
	t := podTemplate{dir: dir}
	if err := json.Unmarshal(b, &t); err != nil {
		return podTemplate{}, fmt.Errorf("%s: %w", filepath.Join(dir, templateManifest), err)
	}
	return t, nil
}

// lockFile takes an exclusive flock(2) on path (made if missing),
// waiting as long as ctx allows, and returns its release.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing releases it
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the lock %s (another shim builds the template): %w", path, context.Cause(ctx))
		case <-time.After(lockPoll):
		}
	}
}

// restore loads the template into v's ember (started at t) with v's own
// overlays and vsock socket, and runs the agent's restore transaction:
// the guest's clock, entropy, generation and host name.
func (v *emberVM) restore(ctx context.Context, tmpl podTemplate, hostname string, t time.Time) error {
	if err := v.waitSocket(ctx, filepath.Join(v.sockDir, apiSocketName)); err != nil {
		return err
	}
	t = v.phases("api_socket", t)
	vsock := filepath.Join(v.sockDir, vsockName)
	p := api.SnapshotLoadParams{
		SnapshotPath:  filepath.Join(tmpl.dir, templateSnapshot),
		MemBackend:    &api.MemoryBackend{BackendType: api.BackendFile, BackendPath: filepath.Join(tmpl.dir, templateMem)},
		ResumeVM:      true,
		ClockRealtime: true,
		VsockOverride: &api.VsockOverride{UDSPath: vsock},
	}
	for _, id := range tmpl.Writable {
		p.EmberDriveOverrides = append(p.EmberDriveOverrides, api.DriveOverride{DriveID: id, PathOnHost: filepath.Join(v.dir, id+".cow")})
	}
	if err := v.api.LoadSnapshot(ctx, p); err != nil {
		return err
	}
	t = v.phases("load", t)
	if err := v.waitAgent(ctx, vsock); err != nil {
		return err
	}
	req, err := agentclient.NewRestore(restoredGeneration, rand.Reader)
	if err != nil {
		return err
	}
	if hostname != "" {
		if !slices.Contains(v.agent.Hello().Features, proto.FeatureHostname) {
			return fmt.Errorf("the guest's agent cannot set the host name %q (an older ember-init?)", hostname)
		}
		req.Hostname = hostname
	}
	if _, err := v.agent.Restore(ctx, req); err != nil {
		return fmt.Errorf("the guest's restore transaction: %w", err)
	}
	v.phases("agent", t)
	return nil
}

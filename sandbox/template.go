package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	agentclient "github.com/embervm/ember/agent/client"
	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/api"
	apiclient "github.com/embervm/ember/api/client"
	"github.com/embervm/ember/image"
	"github.com/embervm/ember/image/boot"
	"github.com/embervm/ember/sandbox/network"
)

// BuildTemplate boots spec's guest, waits until it is ready, pauses it
// and takes a Full snapshot into the template's folder. A failed build
// leaves nothing behind.
func (m *Manager) BuildTemplate(ctx context.Context, spec TemplateSpec) (Template, error) {
	if spec.Image != "" && spec.Ready.Kind == "" {
		spec.Ready.Kind = ReadyAgent
	}
	if spec.Image != "" && spec.Kernel == "" {
		spec.Kernel = m.defaultKernel()
	}
	if err := spec.Validate(); err != nil {
		return Template{}, err
	}
	if spec.Name == "" {
		spec.Name = newID("tpl-")
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = 1
	}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = DefaultMemoryMiB
	}
	id := spec.Name
	m.mu.Lock()
	if m.building[id] {
		m.mu.Unlock()
		return Template{}, conflict("template %q is being built", id)
	}
	var existing Template
	if err := m.db.get(bucketTemplates, id, &existing); err == nil {
		m.mu.Unlock()
		return Template{}, conflict("template %q exists", id)
	}
	m.building[id] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.building, id)
		m.mu.Unlock()
	}()

	dir := filepath.Join(m.cfg.StateDir, templatesDir, id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return Template{}, fmt.Errorf("template folder: %w", err)
	}
	t := Template{ID: id, Spec: spec, State: TemplateBuilding, Dir: dir,
		Snapshot: filepath.Join(dir, snapshotName), MemFile: filepath.Join(dir, memFileName), CreatedAt: time.Now()}
	err := m.build(ctx, &t)
	if err != nil {
		os.RemoveAll(dir)
		m.db.delete(bucketTemplates, id)
		return Template{}, fmt.Errorf("building template %q: %w", id, err)
	}
	return t, nil
}

// build does BuildTemplate's work in t.Dir.
func (m *Manager) build(ctx context.Context, t *Template) (err error) {
	t0 := time.Now()
	spec := t.Spec
	ctx, cancel := context.WithTimeout(ctx, readyTimeout(spec.Ready)+time.Minute)
	defer cancel()
	if spec.Image != "" {
		if err := m.prepareImage(ctx, t); err != nil {
			return err
		}
		spec = t.Spec
	}
	if spec.Rootfs != "" {
		d := TemplateDrive{ID: rootDriveID, Overlay: filepath.Join(t.Dir, rootDriveID+".cow"), Base: spec.Rootfs, Root: true}
		if err := m.emberDisk(ctx, d.Base, d.Overlay); err != nil {
			return err
		}
		t.Drives = append(t.Drives, d)
	}
	t.Vsock = spec.Ready.Kind == ReadyAgent
	var att *network.Attachment
	netnsPath := ""
	if spec.Network {
		if err := m.needNetwork(); err != nil {
			return err
		}
		if att, err = m.setupNetwork(ctx, t.ID, nil); err != nil {
			return err
		}
		defer m.teardownNetwork(t.ID) // after ember's end (deferred below)
		netnsPath = att.NetnsPath
	}
	proc, err := startEmberIn(netnsPath, m.cfg.Ember, t.Dir, "--id", t.ID, "--boot-timer")
	if err != nil {
		return err
	}
	defer func() {
		proc.cmd.Process.Kill()
		proc.cmd.Wait()
		if err != nil {
			err = withEmberLog(err, t.Dir)
		}
	}()
	t.PID = proc.pid
	t.PIDStart, _, _ = procStartTime(proc.pid)
	if err := m.db.put(bucketTemplates, t.ID, t); err != nil {
		return err
	}
	sock := filepath.Join(t.Dir, apiSocketName)
	if err := waitSocket(ctx, sock, proc.pid); err != nil {
		return err
	}
	c := apiclient.New(sock)
	defer c.Close()
	vcpus, mem := spec.VCPUs, spec.MemoryMiB
	if err := c.PutMachineConfig(ctx, api.MachineConfiguration{VCPUCount: &vcpus, MemSizeMiB: &mem}); err != nil {
		return err
	}
	bs := api.BootSource{KernelImagePath: spec.Kernel}
	if spec.BootArgs != "" {
		bs.BootArgs = &spec.BootArgs
	}
	if spec.Initrd != "" {
		bs.InitrdPath = &spec.Initrd
	}
	if err := c.PutBootSource(ctx, bs); err != nil {
		return err
	}
	for _, d := range t.Drives {
		if err := c.PutDrive(ctx, api.Drive{DriveID: d.ID, PathOnHost: d.Overlay, EmberBasePath: d.Base, IsRootDevice: d.Root, IsReadOnly: d.ReadOnly}); err != nil {
			return err
		}
	}
	if att != nil {
		if err := c.PutNetworkInterface(ctx, templateNIC(att)); err != nil {
			return err
		}
	}
	vsock := filepath.Join(t.Dir, vsockName)
	if t.Vsock {
		if err := c.PutVsock(ctx, api.Vsock{GuestCID: guestCID, UDSPath: vsock}); err != nil {
			return err
		}
	}
	if err := c.InstanceStart(ctx); err != nil {
		return err
	}
	rctx, rcancel := context.WithTimeout(ctx, readyTimeout(spec.Ready))
	defer rcancel()
	switch spec.Ready.Kind {
	case ReadyBootTimer:
		err = waitFileContains(rctx, filepath.Join(t.Dir, emberLogName), 0, bootTimerMarker)
	case ReadyConsole:
		err = waitFileContains(rctx, filepath.Join(t.Dir, consoleName), 0, spec.Ready.Console)
	case ReadyAgent:
		err = m.templateAgent(rctx, vsock, spec.Start, att)
	}
	if err != nil {
		if !sameProcess(proc.pid, t.PIDStart) {
			return fmt.Errorf("the guest ended before it was ready (%s)", spec.Ready.Kind)
		}
		return fmt.Errorf("waiting until the guest is ready (%s): %w", spec.Ready.Kind, err)
	}
	if err := c.Pause(ctx); err != nil {
		return err
	}
	if err := c.CreateSnapshot(ctx, api.SnapshotCreateParams{SnapshotPath: t.Snapshot, MemFilePath: t.MemFile, SnapshotType: "Full"}); err != nil {
		return err
	}
	proc.cmd.Process.Kill()
	proc.cmd.Wait()
	os.Remove(sock)
	os.Remove(vsock)
	t.State, t.PID, t.PIDStart = TemplateReady, 0, 0
	t.BuildMS = ms(time.Since(t0))
	return m.db.put(bucketTemplates, t.ID, t)
}

// defaultKernel is the kernel an image template boots when its spec names
// none, as `ember run --image` chooses: $EMBER_KERNEL, else ember-vmlinux
// beside the ember binary (where make puts Ember's minimal kernel).
func (m *Manager) defaultKernel() string {
	if k := os.Getenv(envKernel); k != "" {
		return k
	}
	return filepath.Join(filepath.Dir(m.cfg.Ember), kernelBinary)
}

// The default kernel of image templates (see defaultKernel).
const (
	envKernel    = "EMBER_KERNEL"
	kernelBinary = "ember-vmlinux"
)

// prepareImage makes the initrd and drives of an image template (package
// image/boot, ember-init in agent mode) in t.Dir.
func (m *Manager) prepareImage(ctx context.Context, t *Template) error {
	home := m.cfg.ImageHome
	if home == "" {
		home = image.Home()
	}
	store, err := image.Open(home, m.log)
	if err != nil {
		return err
	}
	vm, err := boot.Prepare(ctx, store, boot.Options{Ref: t.Spec.Image, Dir: t.Dir, Agent: true, Hostname: t.ID})
	if err != nil {
		return &Error{Kind: KindInvalid, Msg: fmt.Sprintf("image: %v", err)}
	}
	t.Spec.Initrd = vm.Initrd
	if t.Spec.BootArgs == "" {
		t.Spec.BootArgs = boot.Cmdline
	}
	t.Spec.Ready.Kind = ReadyAgent
	for _, d := range vm.Drives {
		t.Drives = append(t.Drives, TemplateDrive{ID: d.ID, Overlay: d.Path, Base: d.Base, ReadOnly: d.ReadOnly})
	}
	return nil
}

// templateAgent waits for the agent, addresses the guest's network (att,
// if not nil) and starts the start command.
func (m *Manager) templateAgent(ctx context.Context, vsock string, start []string, att *network.Attachment) error {
	ac, err := dialAgent(ctx, vsock)
	if err != nil {
		return err
	}
	defer ac.Close()
	if _, err := ac.Health(ctx); err != nil {
		return err
	}
	if att != nil {
		gen, err := m.db.nextGeneration()
		if err != nil {
			return err
		}
		req, err := agentclient.NewRestore(gen, rand.Reader)
		if err != nil {
			return err
		}
		req.Network = guestNetwork(recordNetwork(att, nil))
		if _, err := ac.Restore(ctx, req); err != nil {
			return fmt.Errorf("addressing the template's network: %w", err)
		}
	}
	if len(start) == 0 {
		return nil
	}
	p, err := ac.Start(ctx, proto.ExecStart{Args: start, Tag: "start", Overwrite: true})
	if err != nil {
		return fmt.Errorf("start command: %w", err)
	}
	p.Detach()
	return nil
}

// Templates lists the templates.
func (m *Manager) Templates() ([]Template, error) { return list[Template](m.db, bucketTemplates) }

// Template returns one template.
func (m *Manager) Template(id string) (Template, error) {
	var t Template
	if err := m.db.get(bucketTemplates, id, &t); err != nil {
		if errors.Is(err, errNotFound) {
			return t, notFound("template %q: no such template", id)
		}
		return t, err
	}
	return t, nil
}

// DeleteTemplate removes a template and its snapshot. Running sandboxes
// of it refuse: their memory is mapped from its memory file.
func (m *Manager) DeleteTemplate(id string) error {
	t, err := m.Template(id)
	if err != nil {
		return err
	}
	if t.State != TemplateReady {
		return conflict("template %q is being built", id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.live {
		if l.sb.Template == id {
			return conflict("template %q has running sandboxes (%s and maybe more): kill them first", id, l.sb.ID)
		}
	}
	if err := m.db.delete(bucketTemplates, id); err != nil {
		return err
	}
	return os.RemoveAll(t.Dir)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

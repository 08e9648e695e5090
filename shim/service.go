package shim

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/embervm/ember/agent/proto"
)

// Event topics, as containerd's runtime package names them
// (containerd 1.6 runtime/events.go).
const (
	TopicTaskCreate      = "/tasks/create"
	TopicTaskStart       = "/tasks/start"
	TopicTaskExit        = "/tasks/exit"
	TopicTaskDelete      = "/tasks/delete"
	TopicTaskExecAdded   = "/tasks/exec-added"
	TopicTaskExecStarted = "/tasks/exec-started"
	TopicTaskPaused      = "/tasks/paused"
	TopicTaskResumed     = "/tasks/resumed"
	TopicTaskOOM         = "/tasks/oom"
)

// vmDirName is the VM's folder in the bundle.
const vmDirName = "ember"

// stopTimeout bounds ending a VM at Delete or Shutdown.
const stopTimeout = 10 * time.Second

// Publisher sends the shim's events to containerd.
type Publisher interface {
	Publish(ctx context.Context, topic string, event any) error
}

// Service is containerd's task API (containerd.task.v2.Task) for Ember:
// one VM per task (container), its init process and execs run by the
// guest's agent.
type Service struct {
	launcher Launcher
	pub      Publisher
	log      *slog.Logger
	// ctx is the shim's lifetime: processes' stdio copies run under it.
	ctx      context.Context
	shutdown func()

	mu    sync.Mutex
	tasks map[string]*ctask
}

var _ taskapi.TTRPCTaskService = (*Service)(nil)

// ctask is one container.
type ctask struct {
	id, bundle string
	spec       *specs.Spec
	vm         VM
	init       *process
	execs      map[string]*process
	deleted    bool
	// sandbox is the pod's sandbox task when this container runs in the
	// sandbox's VM (its own root there, see pod.go); nil for a task with
	// its own VM.
	sandbox *ctask
}

// NewService makes the task service. ctx is the shim's lifetime;
// shutdown is called when containerd asks the shim to go (Shutdown with
// no task left).
func NewService(ctx context.Context, launcher Launcher, pub Publisher, log *slog.Logger, shutdown func()) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{launcher: launcher, pub: pub, log: log, ctx: ctx, shutdown: shutdown, tasks: map[string]*ctask{}}
}

func errf(c codes.Code, format string, args ...any) error {
	return status.Errorf(c, format, args...)
}

func (s *Service) publish(topic string, ev any) {
	if s.pub == nil {
		return
	}
	if err := s.pub.Publish(s.ctx, topic, ev); err != nil {
		s.log.Warn("publishing an event", "topic", topic, "err", err)
	}
}

// get returns the task id and the process execID of it.
func (s *Service) get(id, execID string) (*ctask, *process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return nil, nil, errf(codes.NotFound, "task %q: no such task", id)
	}
	if execID == "" {
		return t, t.init, nil
	}
	p, ok := t.execs[execID]
	if !ok {
		return nil, nil, errf(codes.NotFound, "task %q: no exec %q", id, execID)
	}
	return t, p, nil
}

// Create boots the task's VM from its rootfs and prepares the init
// process; Start runs it.
func (s *Service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (*taskapi.CreateTaskResponse, error) {
	if r.ID == "" {
		return nil, errf(codes.InvalidArgument, "create: empty task id")
	}
	if r.Checkpoint != "" {
		return nil, errf(codes.Unimplemented, "create: restoring a checkpoint is not supported by the ember runtime")
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, errf(codes.InvalidArgument, "create %s: %v", r.ID, err)
	}
	req, err := execStart(spec.Process, "", r.Stdin != "")
	if err != nil {
		return nil, errf(codes.InvalidArgument, "create %s: %v", r.ID, err)
	}
	rootPath := ""
	if spec.Root != nil {
		rootPath = spec.Root.Path
	}
	layers, err := rootfsLayers(r.Rootfs, r.Bundle, rootPath)
	if err != nil {
		return nil, errf(codes.InvalidArgument, "create %s: %v", r.ID, err)
	}
	role, sandboxID := podRole(spec)
	s.mu.Lock()
	if _, ok := s.tasks[r.ID]; ok {
		s.mu.Unlock()
		return nil, errf(codes.AlreadyExists, "task %q exists", r.ID)
	}
	var sandbox *ctask
	if role == containerTypeContainer {
		sandbox = s.tasks[sandboxID]
		if sandbox == nil || sandbox.vm == nil {
			s.mu.Unlock()
			return nil, errf(codes.FailedPrecondition, "create %s: its pod sandbox %s has no VM in this shim (is it running, with runtime io.containerd.ember.v2?)", r.ID, sandboxID)
		}
	}
	t := &ctask{id: r.ID, bundle: r.Bundle, spec: spec, execs: map[string]*process{}, sandbox: sandbox}
	t.init = newProcess("", req, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}, s.log)
	s.tasks[r.ID] = t // reserved: a second Create of the id is refused
	s.mu.Unlock()

	if sandbox != nil {
		return s.createInPod(ctx, r, t, layers)
	}
	vcpus, mem := vmSize(spec)
	vs := VMSpec{ID: r.ID, Dir: filepath.Join(r.Bundle, vmDirName), Layers: layers,
		Hostname: spec.Hostname, Env: spec.Process.Env, VCPUs: vcpus, MemoryMiB: mem}
	if role == containerTypeSandbox {
		vs.SpareDrives = spareDrives(len(layers))
		// The pod's containers share its VM: their memory and CPU limits
		// are not known yet. (Kubernetes' pod overhead and limits: to
		// come, with the sandbox's resource annotations.)
		vs.MemoryMiB = max(vs.MemoryMiB, PodMemoryMiB)
		vs.VCPUs = max(vs.VCPUs, PodVCPUs)
	}
	vm, err := s.launcher.Boot(ctx, vs)
	if err != nil {
		s.mu.Lock()
		delete(s.tasks, r.ID)
		s.mu.Unlock()
		os.RemoveAll(filepath.Join(r.Bundle, vmDirName))
		return nil, errf(codes.Unknown, "create %s: booting the VM: %v", r.ID, err)
	}
	s.mu.Lock()
	t.vm = vm
	s.mu.Unlock()
	go s.watchVM(t)
	pid := uint32(vm.PID())
	s.publish(TopicTaskCreate, &eventsapi.TaskCreate{ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs,
		IO: &eventsapi.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}, Pid: pid})
	return &taskapi.CreateTaskResponse{Pid: pid}, nil
}

// watchVM ends the task's processes when its VM ends on its own (a guest
// panic, ember killed): their exits are reported as exitAgentLost.
func (s *Service) watchVM(t *ctask) {
	<-t.vm.Done()
	if why := t.vm.EndReason(); why != "" {
		s.log.Error("the task's VM ended on its own", "task", t.id, "why", why)
	}
	s.mu.Lock()
	procs := []*process{t.init}
	for _, p := range t.execs {
		procs = append(procs, p)
	}
	s.mu.Unlock()
	for _, p := range procs {
		if !p.isStarted() && !p.isExited() {
			p.setExited(exitAgentLost)
			s.exited(t, p)
		}
	}
}

// Start runs the init process, or an exec, in the VM.
func (s *Service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	t, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.start(s.ctx, t.vm.Agent(), func(p *process) { s.exited(t, p) }); err != nil {
		return nil, errf(codes.FailedPrecondition, "start %s: %v", describe(r.ID, r.ExecID), err)
	}
	pid := p.getPID()
	if r.ExecID == "" {
		s.publish(TopicTaskStart, &eventsapi.TaskStart{ContainerID: r.ID, Pid: pid})
	} else {
		s.publish(TopicTaskExecStarted, &eventsapi.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	}
	return &taskapi.StartResponse{Pid: pid}, nil
}

// exited publishes a process's exit. When the init process ends, the
// execs still running are killed, as in a container whose PID 1 ended.
func (s *Service) exited(t *ctask, p *process) {
	code, at := p.exitStatus()
	id := p.id
	if id == "" {
		id = t.id
	}
	// An OOM kill is told before the exit, as containerd's own shims do
	// (CRI then gives the container the reason OOMKilled).
	if p.wasOOMKilled() {
		s.publish(TopicTaskOOM, &eventsapi.TaskOOM{ContainerID: t.id})
	}
	s.publish(TopicTaskExit, &eventsapi.TaskExit{ContainerID: t.id, ID: id, Pid: p.getPID(), ExitStatus: code, ExitedAt: timestamppb.New(at)})
	if p.id == "" && t.vm != nil {
		s.mu.Lock()
		var running []*process
		for _, e := range t.execs {
			if e.isStarted() && !e.isExited() {
				running = append(running, e)
			}
		}
		s.mu.Unlock()
		for _, e := range running {
			_ = t.vm.Agent().Signal(s.ctx, proto.ProcessRef{PID: int(e.getPID())}, 9, false)
		}
	}
}

func describe(id, execID string) string {
	if execID == "" {
		return id
	}
	return id + " exec " + execID
}

// Delete removes a finished process; for the init process it also ends
// the VM and removes its files.
func (s *Service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	t, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if p.isStarted() && !p.isExited() {
		return nil, errf(codes.FailedPrecondition, "delete %s: the process is running: kill it first", describe(r.ID, r.ExecID))
	}
	if !p.isStarted() && !p.isExited() {
		// Created, never started: it ends now.
		p.setExited(exitAgentLost)
	}
	code, at := p.exitStatus()
	pid := p.getPID()
	if r.ExecID != "" {
		s.mu.Lock()
		delete(t.execs, r.ExecID)
		s.mu.Unlock()
		if pid != 0 {
			_ = t.vm.Agent().Release(ctx, proto.ProcessRef{PID: int(pid)})
		}
		return &taskapi.DeleteResponse{Pid: pid, ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
	}
	vmPID := uint32(t.vm.PID())
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if t.sandbox != nil {
		if err := s.removeFromPod(sctx, t); err != nil {
			return nil, errf(codes.Unknown, "delete %s: %v", r.ID, err)
		}
	} else if err := t.vm.Stop(sctx); err != nil {
		return nil, errf(codes.Unknown, "delete %s: %v", r.ID, err)
	}
	os.RemoveAll(filepath.Join(t.bundle, vmDirName))
	s.mu.Lock()
	delete(s.tasks, r.ID)
	s.mu.Unlock()
	s.publish(TopicTaskDelete, &eventsapi.TaskDelete{ContainerID: r.ID, Pid: vmPID, ExitStatus: code, ExitedAt: timestamppb.New(at)})
	return &taskapi.DeleteResponse{Pid: vmPID, ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// Exec adds a process to run in the task's VM (Start runs it).
func (s *Service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	if r.ExecID == "" {
		return nil, errf(codes.InvalidArgument, "exec: empty exec id")
	}
	if r.Spec == nil {
		return nil, errf(codes.InvalidArgument, "exec %s: no process spec", r.ExecID)
	}
	var ps specs.Process
	if err := json.Unmarshal(r.Spec.Value, &ps); err != nil {
		return nil, errf(codes.InvalidArgument, "exec %s: process spec: %v", r.ExecID, err)
	}
	ps.Terminal = r.Terminal
	req, err := execStart(&ps, "", r.Stdin != "")
	if err != nil {
		return nil, errf(codes.InvalidArgument, "exec %s: %v", r.ExecID, err)
	}
	s.mu.Lock()
	t, ok := s.tasks[r.ID]
	if !ok {
		s.mu.Unlock()
		return nil, errf(codes.NotFound, "task %q: no such task", r.ID)
	}
	if t.init.isExited() {
		s.mu.Unlock()
		return nil, errf(codes.FailedPrecondition, "exec %s: task %q has stopped", r.ExecID, r.ID)
	}
	if _, ok := t.execs[r.ExecID]; ok {
		s.mu.Unlock()
		return nil, errf(codes.AlreadyExists, "exec %q of task %q exists", r.ExecID, r.ID)
	}
	if t.sandbox != nil {
		req.Container = r.ID
	}
	t.execs[r.ExecID] = newProcess(r.ExecID, req, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}, s.log)
	s.mu.Unlock()
	s.publish(TopicTaskExecAdded, &eventsapi.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// State reports a process's state.
func (s *Service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	t, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	st := task.Status_CREATED
	switch {
	case p.isExited():
		st = task.Status_STOPPED
	case p.isStarted():
		st = task.Status_RUNNING
	}
	code, at := p.exitStatus()
	resp := &taskapi.StateResponse{ID: r.ID, ExecID: r.ExecID, Bundle: t.bundle, Pid: p.getPID(), Status: st,
		Stdin: p.io.stdin, Stdout: p.io.stdout, Stderr: p.io.stderr, Terminal: p.io.terminal, ExitStatus: code}
	if r.ExecID == "" && t.vm != nil && !p.isStarted() {
		resp.Pid = uint32(t.vm.PID())
	}
	if !at.IsZero() {
		resp.ExitedAt = timestamppb.New(at)
	}
	return resp, nil
}

// Pids lists the processes the guest's agent runs for the task.
func (s *Service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	t, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	ps, err := t.vm.Agent().List(ctx)
	if err != nil {
		return nil, errf(codes.Unavailable, "pids %s: %v", r.ID, err)
	}
	resp := &taskapi.PidsResponse{}
	for _, p := range ps {
		// A pod's VM runs every container of the pod: each lists its own.
		mine := p.Container == ""
		if t.sandbox != nil {
			mine = p.Container == t.id
		}
		if p.Exit == nil && mine {
			resp.Processes = append(resp.Processes, &task.ProcessInfo{Pid: uint32(p.PID)})
		}
	}
	return resp, nil
}

// Kill signals a process (with All, its whole process group; the agent
// starts each process as its group's leader).
func (s *Service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	t, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if p.isExited() {
		return nil, errf(codes.NotFound, "kill %s: process already finished", describe(r.ID, r.ExecID))
	}
	if !p.isStarted() {
		// Killing a created process ends it without running it.
		p.setExited(128 + r.Signal)
		s.exited(t, p)
		return &emptypb.Empty{}, nil
	}
	if err := t.vm.Agent().Signal(ctx, proto.ProcessRef{PID: int(p.getPID())}, int(r.Signal), !r.All); err != nil {
		if proto.IsNotFound(err) {
			return nil, errf(codes.NotFound, "kill %s: process already finished", describe(r.ID, r.ExecID))
		}
		return nil, errf(codes.Unknown, "kill %s: %v", describe(r.ID, r.ExecID), err)
	}
	return &emptypb.Empty{}, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	t, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if !p.io.terminal {
		return nil, errf(codes.FailedPrecondition, "resize %s: the process has no terminal", describe(r.ID, r.ExecID))
	}
	if !p.isStarted() || p.isExited() {
		return &emptypb.Empty{}, nil
	}
	size := proto.TTYSize{Cols: clampU16(uint(r.Width)), Rows: clampU16(uint(r.Height))}
	if size.Cols == 0 || size.Rows == 0 {
		return nil, errf(codes.InvalidArgument, "resize %s: %dx%d: both must be positive", describe(r.ID, r.ExecID), r.Width, r.Height)
	}
	if err := t.vm.Agent().Resize(ctx, proto.ProcessRef{PID: int(p.getPID())}, size); err != nil && !proto.IsNotFound(err) {
		return nil, errf(codes.Unknown, "resize %s: %v", describe(r.ID, r.ExecID), err)
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin {
		p.closeStdin()
	}
	return &emptypb.Empty{}, nil
}

// Wait waits until a process has exited.
func (s *Service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	_, p, err := s.get(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	code, at := p.exitStatus()
	return &taskapi.WaitResponse{ExitStatus: code, ExitedAt: timestamppb.New(at)}, nil
}

// Pause pauses the task's VM (every process in it).
func (s *Service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	t, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	if t.sandbox != nil {
		return nil, errf(codes.Unimplemented, "pause %s: one container of a pod's VM cannot be paused alone (pause the pod sandbox %s)", r.ID, t.sandbox.id)
	}
	if err := t.vm.Pause(ctx); err != nil {
		return nil, errf(codes.Unknown, "pause %s: %v", r.ID, err)
	}
	s.publish(TopicTaskPaused, &eventsapi.TaskPaused{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

// Resume resumes the task's VM.
func (s *Service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	t, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	if t.sandbox != nil {
		return nil, errf(codes.Unimplemented, "resume %s: one container of a pod's VM cannot be resumed alone (resume the pod sandbox %s)", r.ID, t.sandbox.id)
	}
	if err := t.vm.Resume(ctx); err != nil {
		return nil, errf(codes.Unknown, "resume %s: %v", r.ID, err)
	}
	s.publish(TopicTaskResumed, &eventsapi.TaskResumed{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported (a VM snapshot would be the way).
func (s *Service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errf(codes.Unimplemented, "checkpoint: not supported by the ember runtime")
}

// Update is not supported yet (resources of a running VM).
func (s *Service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, errf(codes.Unimplemented, "update: changing a running task's resources is not supported by the ember runtime yet")
}

// Connect returns the shim's and the task's pids.
func (s *Service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "2"}
	s.mu.Lock()
	if t, ok := s.tasks[r.ID]; ok && t.vm != nil {
		resp.TaskPid = uint32(t.vm.PID())
	}
	s.mu.Unlock()
	return resp, nil
}

// Shutdown ends the shim once it has no task left (or at once with Now,
// ending the VMs).
func (s *Service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	left := len(s.tasks)
	var vms []VM
	for _, t := range s.tasks {
		if t.vm != nil && t.sandbox == nil { // a pod's containers share its VM
			vms = append(vms, t.vm)
		}
	}
	s.mu.Unlock()
	if left > 0 && !r.Now {
		return &emptypb.Empty{}, nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	for _, vm := range vms {
		if err := vm.Stop(sctx); err != nil {
			s.log.Warn("ending a VM at shutdown", "err", err)
		}
	}
	if s.shutdown != nil {
		s.shutdown()
	}
	return &emptypb.Empty{}, nil
}

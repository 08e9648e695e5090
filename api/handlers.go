package api

import (
	"errors"
	"fmt"

	"github.com/embervm/ember/vmm"
)

// The endpoints that read the instance and configure it before boot
// (run-time ones are in runtime.go, the logger's and metrics' in hooks.go).
// Pre-boot ones decode their body, refuse to run after InstanceStart,
// validate and apply a change (translate.go). Only GET / is guaranteed not
// to wait for the VMM.

func (s *Server) getInstanceInfo(*call) (any, error) {
	return InstanceInfo{AppName: AppName, ID: s.opts.ID, State: string(s.b.State()), VMMVersion: s.opts.Version}, nil
}

func (s *Server) getVersion(*call) (any, error) {
	return FirecrackerVersion{FirecrackerVersion: FirecrackerAPIVersion}, nil
}

func (s *Server) getVMConfig(*call) (any, error) {
	f := ToFullConfig(s.b.Config())
	s.mu.Lock()
	defer s.mu.Unlock()
	f.Logger, f.Metrics = s.logger, s.metrics
	return f, nil
}

// notStarted refuses a pre-boot-only request after InstanceStart.
// Backend.Configure refuses it too; checking first keeps Firecracker's
// answer (not a file error, say) for a request that cannot run anyway.
func (s *Server) notStarted() error {
	if s.b.State() != vmm.StateNotStarted {
		return errPostBoot
	}
	return nil
}

// started refuses a run-time request before InstanceStart.
func (s *Server) started() error {
	if s.b.State() == vmm.StateNotStarted {
		return errPreBoot
	}
	return nil
}

// apply runs a pre-boot change built from a decoded model.
func (s *Server) apply(build func() (change, error)) error {
	if err := s.notStarted(); err != nil {
		return err
	}
	ch, err := build()
	if err != nil {
		return err
	}
	return s.b.Configure(ch)
}

func (s *Server) putActions(c *call) (any, error) {
	a, err := decodeModel[InstanceActionInfo](c.body)
	if err != nil {
		return nil, err
	}
	switch a.ActionType {
	case ActionInstanceStart:
		return nil, s.instanceStart()
	case ActionSendCtrlAltDel:
		if err := s.started(); err != nil {
			return nil, err
		}
		return nil, s.b.SendCtrlAltDel()
	case ActionFlushMetrics:
		if err := s.started(); err != nil {
			return nil, err
		}
		if s.opts.FlushMetrics == nil {
			return nil, nil
		}
		if err := s.opts.FlushMetrics(); err != nil {
			return nil, fmt.Errorf("flushing the metrics: %w", err)
		}
		return nil, nil
	}
	return nil, bodyError{fmt.Errorf("action_type %q: unknown variant, expected one of %s, %s, %s",
		a.ActionType, ActionFlushMetrics, ActionInstanceStart, ActionSendCtrlAltDel)}
}

// instanceStart checks what Firecracker checks before building the VM (a
// kernel, a balloon that fits), fills in the defaults and starts.
func (s *Server) instanceStart() error {
	err := s.b.Configure(func(c *vmm.Config) error {
		if c.KernelPath == "" {
			return errors.New(msgNoKernel)
		}
		withDefaults(c)
		if c.Balloon != nil {
			return checkBalloonFits(c.Balloon.AmountMiB, c.MemMiB)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.b.Start(); err != nil {
		if errors.Is(err, vmm.ErrStarted) {
			return err
		}
		return fmt.Errorf("Start microvm error: %w", err)
	}
	return nil
}

func (s *Server) getMachineConfig(*call) (any, error) {
	return machineConfigOf(s.b.Config()), nil
}

func (s *Server) putMachineConfig(c *call) (any, error) { return nil, s.machineConfig(c, true) }

func (s *Server) patchMachineConfig(c *call) (any, error) { return nil, s.machineConfig(c, false) }

func (s *Server) machineConfig(c *call, put bool) error {
	m, err := decodeModel[MachineConfiguration](c.body)
	if err != nil {
		return err
	}
	c.deprecated = m.CPUTemplate != nil
	return s.apply(func() (change, error) { return machineConfigChange(m, put) })
}

func (s *Server) putCPUConfig(c *call) (any, error) {
	t, err := decodeModel[CpuConfig](c.body)
	if err != nil {
		return nil, err
	}
	return nil, s.apply(func() (change, error) { return cpuConfigChange(t) })
}

func (s *Server) putBootSource(c *call) (any, error) {
	b, err := decodeModel[BootSource](c.body)
	if err != nil {
		return nil, err
	}
	image := s.hasImage()
	if image && b.InitrdPath != nil {
		return nil, errImageInitrd
	}
	err = s.apply(func() (change, error) {
		ch, err := bootSourceChange(b)
		if err != nil || !image {
			return ch, err
		}
		// The image's initrd stays, and its command line unless
		// boot_args are given.
		return func(c *vmm.Config) error {
			initrd, cmdline := c.InitrdPath, c.Cmdline
			if err := ch(c); err != nil {
				return err
			}
			c.InitrdPath = initrd
			if b.BootArgs == nil {
				c.Cmdline = cmdline
			}
			return nil
		}, nil
	})
	if err == nil {
		s.setBootArgsSet(b.BootArgs != nil)
	}
	return nil, err
}

// pathID checks the {id} of the path (before the body is read, as
// Firecracker does).
func pathID(c *call) (string, error) {
	id := c.r.PathValue("id")
	return id, checkID(id)
}

func (s *Server) emptyID(*call) (any, error) { return nil, errors.New(msgEmptyID) }

func (s *Server) putDrive(c *call) (any, error) {
	id, err := pathID(c)
	if err != nil {
		return nil, err
	}
	d, err := decodeModel[Drive](c.body)
	if err != nil {
		return nil, err
	}
	if d.DriveID != id {
		return nil, errors.New(msgIDMismatch)
	}
	if s.hasImage() {
		if err := imageDriveConflict(d.DriveID, d.IsRootDevice); err != nil {
			return nil, err
		}
	}
	return nil, s.apply(func() (change, error) { return driveChange(d) })
}

func (s *Server) putNet(c *call) (any, error) {
	id, err := pathID(c)
	if err != nil {
		return nil, err
	}
	n, err := decodeModel[NetworkInterface](c.body)
	if err != nil {
		return nil, err
	}
	if n.IfaceID != id {
		return nil, errors.New(msgIDMismatch)
	}
	return nil, s.apply(func() (change, error) { return netChange(n) })
}

func (s *Server) putVsock(c *call) (any, error) {
	v, err := decodeModel[Vsock](c.body)
	if err != nil {
		return nil, err
	}
	c.deprecated = v.VsockID != nil
	return nil, s.apply(func() (change, error) { return vsockChange(v) })
}

func (s *Server) putEntropy(c *call) (any, error) {
	e, err := decodeModel[EntropyDevice](c.body)
	if err != nil {
		return nil, err
	}
	return nil, s.apply(func() (change, error) { return entropyChange(e) })
}

func (s *Server) putSerial(c *call) (any, error) {
	sc, err := decodeModel[SerialConfig](c.body)
	if err != nil {
		return nil, err
	}
	return nil, s.apply(func() (change, error) { return serialChange(sc) })
}

func (s *Server) putBalloon(c *call) (any, error) {
	b, err := decodeModel[Balloon](c.body)
	if err != nil {
		return nil, err
	}
	return nil, s.apply(func() (change, error) { return balloonChange(b) })
}

package shim

import (
	"context"
	"time"

	cgroupstats "github.com/containerd/cgroups/v3/cgroup2/stats"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
)

// Stats reports what a task uses, as cgroup v2 metrics
// (io.containerd.cgroups.v2.Metrics: what containerd's CRI turns into
// ContainerStats, and `ctr task metrics` prints). A container of a pod's
// VM gets its own processes' use from the guest's agent (container.stats:
// CPU time, summed proportional set sizes, process count); a task with a
// VM of its own, or a pod's sandbox, gets the whole guest's (sys.metrics:
// CPU time since boot, memory in use of the VM's, as usage and limit).
// Nothing is read on the host: the ember process's own use would count
// the VMM and every guest page ever touched, not what runs in the guest.
func (s *Service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	t, _, err := s.get(r.ID, "")
	if err != nil {
		return nil, err
	}
	if t.vm == nil {
		return nil, errf(codes.FailedPrecondition, "stats %s: the task has no VM", r.ID)
	}
	var m *cgroupstats.Metrics
	if t.sandbox != nil {
		cs, err := t.vm.Agent().ContainerStats(ctx, t.id)
		if err != nil {
			return nil, errf(codes.Unavailable, "stats %s: %v", r.ID, err)
		}
		m = &cgroupstats.Metrics{
			Pids: &cgroupstats.PidsStat{Current: cs.Pids},
			CPU: &cgroupstats.CPUStat{UsageUsec: usec(cs.UserNanos + cs.SystemNanos),
				UserUsec: usec(cs.UserNanos), SystemUsec: usec(cs.SystemNanos)},
			Memory: &cgroupstats.MemoryStat{Usage: cs.MemoryBytes, Anon: cs.AnonBytes, File: cs.MemoryBytes - min(cs.AnonBytes, cs.MemoryBytes)},
		}
	} else {
		gm, err := t.vm.Agent().Metrics(ctx)
		if err != nil {
			return nil, errf(codes.Unavailable, "stats %s: %v", r.ID, err)
		}
		m = &cgroupstats.Metrics{
			CPU: &cgroupstats.CPUStat{UsageUsec: usec(gm.CPUUserNanos + gm.CPUSystemNanos),
				UserUsec: usec(gm.CPUUserNanos), SystemUsec: usec(gm.CPUSystemNanos)},
			Memory: &cgroupstats.MemoryStat{Usage: gm.MemUsed, UsageLimit: gm.MemTotal},
		}
	}
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		return nil, errf(codes.Internal, "stats %s: %v", r.ID, err)
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// usec is ns in microseconds (cgroup v2's cpu.stat unit).
func usec(ns uint64) uint64 { return ns / uint64(time.Microsecond) }

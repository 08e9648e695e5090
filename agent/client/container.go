package client

import (
	"context"

	"github.com/embervm/ember/agent/proto"
)

// supportsContainers refuses, with a clear error, an agent older than
// proto.FeatureContainer.
func (c *Client) supportsContainers(op string) error {
	if !c.hello.Supports(proto.FeatureContainer) {
		return proto.Errorf(proto.CodeUnsupported, "%s: the guest's agent (%s) does not run containers (feature %q): boot the VM with a newer ember-init", op, c.hello.Agent, proto.FeatureContainer)
	}
	return nil
}

// ContainerVolume returns a volume's path in the guest, created empty if
// missing (VolumeInfo.Created).
func (c *Client) ContainerVolume(ctx context.Context, req proto.ContainerVolume) (proto.VolumeInfo, error) {
	if err := c.supportsContainers(proto.OpContainerVolume); err != nil {
		return proto.VolumeInfo{}, err
	}
	if err := req.Validate(); err != nil {
		return proto.VolumeInfo{}, err
	}
	return call[proto.VolumeInfo](ctx, c, proto.OpContainerVolume, req)
}

// ContainerCreate mounts a container's file systems in the guest;
// processes started with ExecStart.Container = req.ID run in it.
func (c *Client) ContainerCreate(ctx context.Context, req proto.ContainerCreate) (proto.ContainerInfo, error) {
	if err := c.supportsContainers(proto.OpContainerCreate); err != nil {
		return proto.ContainerInfo{}, err
	}
	if err := req.Validate(); err != nil {
		return proto.ContainerInfo{}, err
	}
	return call[proto.ContainerInfo](ctx, c, proto.OpContainerCreate, req)
}

// ContainerRemove kills what runs in a container and unmounts its file
// systems (its layer drives are then free).
func (c *Client) ContainerRemove(ctx context.Context, id string) error {
	if err := c.supportsContainers(proto.OpContainerRemove); err != nil {
		return err
	}
	_, err := call[proto.Empty](ctx, c, proto.OpContainerRemove, proto.ContainerRef{ID: id})
	return err
}

// ContainerStats returns what a container's processes use now.
func (c *Client) ContainerStats(ctx context.Context, id string) (proto.ContainerStats, error) {
	if !c.hello.Supports(proto.FeatureContainerStats) {
		return proto.ContainerStats{}, proto.Errorf(proto.CodeUnsupported, "%s: the guest's agent (%s) does not report container use (feature %q): boot the VM with a newer ember-init", proto.OpContainerStats, c.hello.Agent, proto.FeatureContainerStats)
	}
	req := proto.ContainerRef{ID: id}
	if err := req.Validate(); err != nil {
		return proto.ContainerStats{}, err
	}
	return call[proto.ContainerStats](ctx, c, proto.OpContainerStats, req)
}

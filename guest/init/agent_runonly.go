//go:build ember_runonly

package main

import "github.com/embervm/ember/guest/initconfig"

// runAgent of the run-only build (ember-init-run, tag ember_runonly): it
// leaves the agent out, and with it the net, JSON-RPC and archive code, a
// third of the binary that every image VM's initramfs would otherwise
// carry and its kernel unpack at each boot. The host gives a VM that
// serves the agent the full ember-init; this build refuses the mode.
func (in *initProcess) runAgent(cfg *initconfig.Config) int {
	in.logf("this ember-init was built without the sandbox agent (ember-init-run): mode %q needs the full ember-init", cfg.Mode)
	return exitInitFailure
}

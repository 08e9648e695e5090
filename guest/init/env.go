package main

import (
	"slices"
	"strings"

	"github.com/embervm/ember/guest/initconfig"
	"github.com/embervm/ember/guest/ociuser"
)

const (
	// defaultPath is the PATH a container runtime gives a process whose
	// image sets none (runc, containerd's oci.DefaultPathEnv).
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// terminalTerm is TERM on an interactive console whose image sets
	// none: the host's terminal emulator draws the output, and Docker
	// gives a container with a terminal the same.
	terminalTerm = "xterm"
)

// workloadEnv completes the config's environment as a container runtime
// does: PATH, HOME (the user's, from /etc/passwd), HOSTNAME and, on a
// terminal, TERM, each only where the image and the user set none.
func workloadEnv(cfg *initconfig.Config, id ociuser.Identity) []string {
	env := slices.Clone(cfg.Env)
	add := func(key, value string) {
		for _, kv := range env {
			if strings.HasPrefix(kv, key+"=") {
				return
			}
		}
		env = append(env, key+"="+value)
	}
	add("PATH", defaultPath)
	add("HOME", id.Home)
	if cfg.Hostname != "" {
		add("HOSTNAME", cfg.Hostname)
	}
	if cfg.Terminal {
		add("TERM", terminalTerm)
	}
	return env
}

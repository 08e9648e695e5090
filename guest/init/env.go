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

// agentEnv is the base environment of the agent's processes: the image's,
// with HOSTNAME. PATH, HOME and TERM depend on each process (its user,
// its terminal), and the agent completes them.
func agentEnv(cfg *initconfig.Config) []string {
	env := slices.Clone(cfg.Env)
	if cfg.Hostname != "" && !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "HOSTNAME=") }) {
		env = append(env, "HOSTNAME="+cfg.Hostname)
	}
	return env
}

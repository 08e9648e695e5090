//go:build !ember_runonly

package main

import (
	"context"
	"log/slog"
	"os/signal"

	"golang.org/x/sys/unix"

	"github.com/embervm/ember/agent/proto"
	"github.com/embervm/ember/guest/agent"
	"github.com/embervm/ember/guest/initconfig"
)

// runAgent serves the sandbox agent (package guest/agent) in this process,
// as PID 1, on AF_VSOCK port proto.Port, until SIGTERM or SIGINT (which
// Ctrl-Alt-Del becomes) asks the VM to stop; shutdown then ends what runs.
// The agent's reaper collects every child of the machine, orphans
// included, as PID 1 must.
func (in *initProcess) runAgent(cfg *initconfig.Config) int {
	l, err := agent.ListenVsock(proto.Port)
	if err != nil {
		in.logf("sandbox agent: %v", err)
		return exitInitFailure
	}
	level := slog.LevelInfo
	if cfg.Debug {
		level = slog.LevelDebug
	}
	srv := agent.New(agent.Config{
		Root:        "/",
		Env:         agentEnv(cfg),
		Dir:         cfg.WorkingDir,
		User:        cfg.User,
		ReapOrphans: true,
		Log:         slog.New(slog.NewTextHandler(in.out, &slog.HandlerOptions{Level: level})),
	})
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	in.debugf("sandbox agent: listening on vsock port %d", proto.Port)
	in.flushTrace()
	if err := srv.Serve(ctx, l); err != nil {
		in.logf("sandbox agent: %v", err)
		return exitInitFailure
	}
	in.debugf("sandbox agent: stopped by a signal")
	in.flushTrace()
	return 0
}

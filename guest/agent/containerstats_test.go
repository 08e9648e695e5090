package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/embervm/ember/agent/proto"
)

// TestContainerStats: a container's CPU time counts its processes that
// ended as well as the live ones, and only its own; its memory and
// process count are the live processes'.
func TestContainerStats(t *testing.T) {
	base := busyboxLayer(t, nil)
	st := &dirStorage{layers: map[string]string{"spare0": base, "spare1": base}, scratch: t.TempDir()}
	ta := startAgent(t, func(c *Config) { c.Storage = st })
	unmountAll(t, ta)
	c := ta.dial(t)
	ctx := context.Background()
	if !c.Hello().Supports(proto.FeatureContainerStats) {
		t.Fatalf("the agent does not announce %q", proto.FeatureContainerStats)
	}
	for _, id := range []string{"busy", "idle"} {
		if _, err := c.ContainerCreate(ctx, proto.ContainerCreate{ID: id, Layers: []proto.LayerDrive{{Serial: map[string]string{"busy": "spare0", "idle": "spare1"}[id], FSType: "erofs"}}}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	empty, err := c.ContainerStats(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	if empty.Pids != 0 || empty.UserNanos+empty.SystemNanos != 0 || empty.MemoryBytes != 0 || empty.Time.IsZero() {
		t.Fatalf("a container that ran nothing: %+v", empty)
	}

	// A shell that spins until it has used CPU, in a child it waits for,
	// then ends: all of it stays counted.
	spin := "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"
	if out, errOut, es := run(t, c, proto.ExecStart{Container: "busy", Args: sh("sh -c '" + spin + "'; echo done")}); es.Code != 0 || out != "done\n" {
		t.Fatalf("spin: %q %q %+v", out, errOut, es)
	}
	ended, err := c.ContainerStats(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	if ended.UserNanos+ended.SystemNanos == 0 || ended.Pids != 0 || ended.MemoryBytes != 0 {
		t.Fatalf("after a process that spun and ended: %+v (want its CPU time, no process)", ended)
	}

	// A live process: counted with its memory; the other container's
	// stays empty (the test process and the agent are in neither).
	p, err := c.Start(ctx, proto.ExecStart{Container: "busy", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Signal(ctx, p.Ref(), 9, false)
	var live proto.ContainerStats
	for range 100 { // until the fork has chrooted and exec'd
		if live, err = c.ContainerStats(ctx, "busy"); err != nil {
			t.Fatal(err)
		}
		if live.Pids == 1 {
			break
		}
	}
	if live.Pids != 1 || live.MemoryBytes == 0 || live.AnonBytes > live.MemoryBytes ||
		live.UserNanos+live.SystemNanos < ended.UserNanos+ended.SystemNanos {
		t.Fatalf("with sleep running: %+v (before it: %+v)", live, ended)
	}
	idle, err := c.ContainerStats(ctx, "idle")
	if err != nil || idle.Pids != 0 || idle.UserNanos+idle.SystemNanos != 0 {
		t.Fatalf("the other container: %+v, %v", idle, err)
	}
	// A container's first process, in its own mount and PID namespaces,
	// is found too.
	q, err := c.Start(ctx, proto.ExecStart{Container: "idle", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Signal(ctx, q.Ref(), 9, false)
	for range 100 {
		if idle, err = c.ContainerStats(ctx, "idle"); err != nil || idle.Pids == 1 {
			break
		}
	}
	if err != nil || idle.Pids != 1 || idle.MemoryBytes == 0 {
		t.Fatalf("a first process: %+v, %v", idle, err)
	}
	if again, err := c.ContainerStats(ctx, "busy"); err != nil || again.Pids != 1 {
		t.Fatalf("the busy container beside it: %+v, %v", again, err)
	}
	if _, err := c.ContainerStats(ctx, "nope"); proto.CodeOf(err) != proto.CodeNotFound {
		t.Fatalf("stats of no container: %v, want %s", err, proto.CodeNotFound)
	}
}

// TestReadProcUsage reads a stat whose command holds ") " and spaces,
// memory from smaps_rollup or, without it, statm, and refuses short or
// garbled files.
func TestReadProcUsage(t *testing.T) {
	dir := t.TempDir()
	write := func(files map[string]string) {
		t.Helper()
		os.Remove(filepath.Join(dir, "smaps_rollup"))
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	const stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 5 1 20 0 1 0 100 1000 50\n"
	const rollup = "55d0-7ffc ---p 00000000 00:00 0 [rollup]\nRss: 900 kB\nPss: 400 kB\nPss_Anon: 100 kB\nAnonymous: 120 kB\n"
	write(map[string]string{"stat": stat, "statm": "300 250 50 1 0 60 0\n", "smaps_rollup": rollup})
	u, ok := readProcUsage(dir, 4096)
	if !ok || u.user != 12*tickNanos || u.system != 4*tickNanos || u.mem != 400*1024 || u.anon != 120*1024 {
		t.Fatalf("with smaps_rollup: %+v, %v", u, ok)
	}
	write(map[string]string{"stat": stat, "statm": "300 250 50 1 0 60 0\n"})
	if u, ok = readProcUsage(dir, 4096); !ok || u.user != 12*tickNanos || u.mem != 250*4096 || u.anon != 200*4096 {
		t.Fatalf("with statm: %+v, %v", u, ok)
	}
	for _, bad := range []map[string]string{
		{"stat": "42 (a) S 1 42", "statm": "300 250 50"},                                         // too few fields
		{"stat": "42 (a) S 1 42 42 0 -1 4 1 0 0 0 x 3 5 1 20", "statm": "300 250 50"},            // not a number
		{"stat": "42 (a) S 1 42 42 0 -1 4 1 0 0 0 7 3 5 1 20 0 1 0 100 1000 50", "statm": "300"}, // short statm
		{"stat": "no parenthesis", "statm": "300 250 50"},                                        // not a stat
		{"stat": stat, "smaps_rollup": "Rss: 900 kB\n"},                                          // no Pss
		{"stat": stat, "smaps_rollup": "Pss: many kB\n"},                                         // not a number
	} {
		write(bad)
		if u, ok := readProcUsage(dir, 4096); ok {
			t.Errorf("%q: read as %+v", bad, u)
		}
	}
}

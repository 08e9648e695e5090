// Package agent is ember-agent, the agent in every sandbox guest: it runs
// commands, moves files and carries out the restore transaction for the
// host, over the protocol of package agent/proto. It is a package, not a
// program: ember-init (guest/init) serves it in-process as PID 1 when its
// config's mode is "agent", after it has assembled the root, on AF_VSOCK
// port 1024 ([ListenVsock]). Tests serve it on a unix socket ([Listener]).
//
// # Processes
//
// Each exec is a process in its own session (so its process group is
// its own), as the requested user, in its working directory, with the
// agent's base environment plus the request's (PATH, HOME and, on a
// terminal, TERM completed). Its stdio is pipes (stdin a pipe only when
// asked, else /dev/null) or a new pseudo-terminal (TIOCGPTPEER; resize
// with TIOCSWINSZ). The agent knows processes by pid and by an optional
// tag; it remembers a finished one (its exit status and unacknowledged
// output) until a client releases it, the oldest beyond [MaxFinished]
// being forgotten.
//
// Output: one goroutine per pipe reads into the process's output log,
// which numbers bytes by offset and keeps what no client acknowledged,
// up to the buffer size (default 1 MiB, 64 KiB to 64 MiB per process;
// each chunk is charged 64 bytes of overhead, so many tiny writes cannot
// multiply its real memory). When it is full the reader waits, the pipe
// fills, and the process blocks in write(2): nothing is lost while no
// client reads (or, with Overwrite, the oldest output is dropped and
// reported as a gap). Attachments replay the log from the offset a
// client gives and then follow it. When the process exits, what its pipes
// still hold is read without waiting (a non-blocking read outside Go's
// poller; on a terminal that also flushes the line discipline, so the
// last line before the exit is not lost) and the pipes are closed: a
// background child holding them cannot keep the exit from being reported.
//
// Stdin: a writer goroutine per process takes the clients' input in
// order; a stream's credit for its stdin bytes comes back only once
// written, so a process that does not read its input holds back its
// clients' input but not their acknowledgements. EOF closes the pipe, or
// on a terminal sends ^D.
//
// Signals go to the process group (kill(-pid)), or to the process alone.
// There are no timeouts anywhere: a process runs until it ends or is
// signalled.
//
// Reaping: the agent collects exit statuses itself, on SIGCHLD. As PID 1
// ([Config.ReapOrphans]) it reaps every child with wait4(-1), orphans
// included, and hands its own processes their statuses; otherwise
// (tests) it waits for its own pids only and leaves other children alone.
// Forking happens under the reaper's lock, so an exit is never collected
// before its process is registered.
//
// # Files
//
// Stat, list (to a depth), mkdir (with parents), move (rename; across
// file systems or overlayfs layers, a copy and a remove), remove, watch
// (inotify, one watch per directory, new directories added as they
// appear), read and write of a file or a directory as a tar. Writes of a
// file go to a temporary file beside the target, synced and renamed over
// it; a tar is unpacked in place, refusing entries that would leave the
// target through "..", an absolute name or a symbolic link. Relative
// paths are in the user's home. File operations run with the agent's
// privileges (root); a request's user decides ownership of what it
// creates.
//
// # Restore
//
// sys.restore runs, timed step by step: RNDADDENTROPY with the host's
// bytes and RNDRESEEDCRNG; CLOCK_REALTIME set to the host's time; the
// interface re-addressed over raw rtnetlink (link up and MTU, addresses
// and main-table routes flushed, address and default route added,
// neighbours flushed); /etc/resolv.conf; /run/ember/metadata.json;
// /run/ember/generation last, so a program watching it sees a finished
// restore. A generation below the current one is refused (a stale
// request). The clock, entropy and network steps are interfaces ([Clock],
// [Entropy], [Network]) so that tests neither set the host's clock nor
// touch its network; the real ones are [SystemClock], [SystemEntropy] and
// [SystemNetwork].
//
// # Containers
//
// container.volume, container.create and container.remove (feature
// "container", container.go) run a pod's containers in one guest: each
// container's root is overlayfs over layer drives the host swapped in
// (found by serial, their buffer cache dropped, their new capacity
// awaited) with its upper on the VM's writable drive, mounted a second
// time; volumes are folders (or files) there, shared by the containers
// naming them. A process started with ExecStart.Container is chrooted
// into its container's root; the container's first process also gets
// new mount, PID and UTS namespaces (those the kernel has). Storage is
// an interface so that tests bind-mount folders in place of drives; the
// real one is [SystemStorage].
package agent

// Package sandbox is emberd's manager of templates and sandboxes: microVMs
// restored from a pre-warmed snapshot (issue 11).
//
// A template is a booted guest, waited on until it is ready, paused and
// snapshotted (Full) into the template's folder. A sandbox is an `ember`
// process that loads that snapshot: the template's memory file is mapped
// copy-on-write by every clone (never copied), each drive of the template
// gets a fresh copy-on-write overlay in the sandbox's own folder
// (`ember_drive_overrides`), and the vsock socket is the sandbox's own.
// The answer to a create carries per-phase timings: restore (until the
// snapshot load answered), agent_ready (until the readiness check passed)
// and network (none yet: a sandbox has no network in this slice).
//
// # Processes
//
// The manager drives VMs only through Ember's API client (api/client) and
// the ember binary, and guests only through agent/client; it never links
// the VMM. Each VM is its own ember process, started in its own session
// with its console and log in files of its folder, so it outlives emberd:
// a `kill -9` of emberd leaves every VM running. The database records each
// VM's pid, the pid's start time (/proc/PID/stat field 22, so a reused pid
// is not mistaken for it), its API socket and its folder; a restarted
// manager adopts every VM whose pid is alive with that start time and
// whose socket answers, and marks the others ended. While the manager that
// started a VM runs, the VM is its child and its exit status is known;
// an adopted VM is watched through a pidfd, which tells its end but not
// its status.
//
// # Exit reasons
//
// Every end of a sandbox has one reason ([Exit]): "killed" (by the user),
// "timeout" (its deadline passed; the deadline is stored, so it survives a
// restart of emberd, and a pause keeps the time left), "guest_panic" (the
// console shows "Kernel panic"), "oom" (the console shows the guest's OOM
// killer at work, "Out of memory: Killed process ...", and the guest went
// down: powered off or panicked), "exit" (the guest reset or powered off:
// ember exited 0, the workload's end) and "vmm_crash" (ember ended on its
// own with another status, which is given when known: a signal, 148 for
// its seccomp filter, 2 with the Go runtime's crash report on its log).
//
// # Crash records
//
// Every abnormal end (guest_panic, oom, vmm_crash, timeout) keeps a crash
// record in the sandbox's folder (crash.json, [Crash]): the reason, ember's
// exit status or signal, the console's last 64 KiB and ember's last log
// lines (from the start of a Go crash report when there is one), and
// Exit.Crash says so. It is served until the sandbox is forgotten.
//
// # Admission
//
// The manager knows the host's budgets ([AdmissionConfig],
// [ResolveBudgets]): memory (MemTotal less a reserve, times an overcommit
// ratio, 1 by default), vCPUs (host CPUs times a ratio, 8 by default),
// tasks, emberd's file descriptors and taps. Each sandbox holds its
// template's memory and vCPUs plus a fixed overhead ([Holds],
// [VMOverheadMiB], [VMOverheadTasks], [FilesPerSandbox]). A create
// reserves its share atomically before anything is made and is refused
// ([KindExhausted], naming the budget and when to retry) when a budget has
// no room; the share is given back when the create fails or the sandbox
// ends. A restarted manager counts the sandboxes it adopts, over budget or
// not. [Manager.Host] shows budgets and use, for an external scheduler.
//
// Metrics are not this package's: an [Observer] hears creates, execs and
// ends (package sandbox/metrics makes Prometheus metrics of them), so the
// ember binary, which links this package for its types, does not carry a
// metrics client.
//
// # Readiness
//
// Pluggable per template: "agent" (ember-agent answers on vsock, through
// agent/client; after a restore the restore transaction runs: clock,
// entropy, generation, metadata), "boot-timer" (the guest's write to the
// boot-timer device, which ember logs as "Guest-boot-time") or "console"
// (a string on the guest's console). The tiny guests that run natively on
// hosts without a Linux-capable /dev/kvm use the last two
// (guest/tiny.Sandbox writes the boot timer at boot and after each
// restore).
//
// # API keys and secrets
//
// emberd's E2B-compatible API (package sandbox/e2b) takes API keys that
// emberd makes (CreateAPIKey: "e2b_" and 40 random hex digits); only each
// key's SHA-256 is stored, in the "apikeys" bucket, and the key is shown
// once. Secret keeps named random secrets in the meta bucket; the E2B
// layer derives each sandbox's envd access token from one, so tokens
// need no storage and survive a restart. SetTimeout moves a sandbox's
// deadline; Agent hands a gateway the sandbox's agent client.
//
// # State
//
// The state is a bbolt database (go.etcd.io/bbolt) in the state folder:
// pure Go (no cgo, so emberd stays static like ember), one file, ACID
// transactions with fsync on commit (a `kill -9` or a crash never leaves a
// half-written record), and concurrent creates share one commit through
// bbolt's Batch. SQLite in pure Go (modernc.org/sqlite) would cost about
// 10 MB of binary and a query language for what is a few key-value tables
// of JSON records.
package sandbox

// Package client is the host's typed client of ember-agent, the agent in
// a sandbox guest (protocol: package agent/proto). emberd uses it, and
// later the gateway that serves E2B's envd protocol.
//
// [Dial] reaches the agent through the VM's hybrid vsock socket (the
// uds_path of Ember's or Firecracker's vsock device: "CONNECT 1024\n",
// then "OK <port>\n"); [New] takes any connection (tests use a unix
// socket). Each call is one stream on the connection, so calls run
// concurrently, and every call takes a context: cancelling it cancels
// the operation in the guest (for an exec: detaches; the process goes on).
//
//   - Exec: [Client.Start] and [Client.Attach] return a [Process]: its
//     events ([Process.Next]: output with its offset, gaps, the exit), its
//     stdin ([Process.Stdin], with the agent's backpressure), and
//     [Process.Copy] to drain it into writers. Output is acknowledged as
//     the caller consumes it; [Process.SetManualAck] leaves that to the
//     caller ([Process.Ack]), for a daemon that must not lose output it
//     had not stored when it crashed: it reattaches from its last stored
//     offset. [Client.List], [Client.Input], [Client.Signal],
//     [Client.Resize], [Client.Release] and [Client.Wait] address a
//     process by pid or tag.
//   - Files: [Client.Upload] and [Client.Download] stream a file or a
//     directory as a tar, at the pace of the slower side; [Client.Stat],
//     [Client.ListDir], [Client.MakeDir], [Client.Move], [Client.Remove];
//     [Client.Watch] for changes.
//   - System: [Client.Health], and [Client.Restore] for the restore
//     transaction after a snapshot restore ([NewRestore] fills in the
//     time and fresh entropy).
//
// Errors from the agent are *proto.Error values with a code
// (proto.IsNotFound, proto.IsUnsupported, errors.Is against a code).
// Nothing in the client times out on its own.
package client

// Package wire is emberd's API as it goes over the wire: the JSON bodies of
// its requests and answers (templates, sandboxes, execs, networks, crash
// records, the host's budgets, API keys), their validation and their
// constants. It imports only the standard library and other leaf packages
// (agent/proto, sandbox/network/egress), so emberd's client
// (sandbox/client) and the ember CLI, which shares its binary with the
// VMM, use it without linking the manager (package sandbox: bbolt, the
// image store, go-containerregistry) or the network (netlink, nftables).
// Package sandbox and sandbox/api name these types under their old names
// (type aliases).
package wire

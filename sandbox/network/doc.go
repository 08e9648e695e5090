// Package network gives each Ember sandbox its own network: a network
// namespace holding the tap its VM uses, a veth pair to a host bridge, an
// address block from an IPAM range, NAT out through the host, and an egress
// policy with byte counters enforced in nftables on the host. Everything is
// done over netlink (vishvananda/netlink) and nftables' netlink API
// (google/nftables); nothing shells out to ip or nft. emberd drives it:
//
//	m, err := network.New(network.Config{PoolSize: 16, Store: boltLeases})
//	err = m.Init(ctx)                        // bridge, ip_forward, nftables table
//	rep, err := m.Sweep(ctx, runningIDs)     // after a crash: adopt the known, remove the rest
//	go m.FillPool(ctx)                       // prepared namespaces
//	att, err := m.Setup(ctx, network.SetupSpec{ID: id, Policy: p})
//	// start ember in att.NetnsPath (setns, or `ip netns exec att.Netns`)
//	// with --net tap=att.Tap; hand att.Guest to the agent's re-address step
//	err = m.SetPolicy(ctx, id, p2)           // while it runs
//	c, err := m.Counters(ctx, id)            // bytes in and out
//	err = m.Teardown(ctx, id)                // after ember has exited
//
// Init turns on IPv4 forwarding on the host (net.ipv4.ip_forward) and
// leaves the host's routes and other nftables tables alone; it refuses
// ranges the host already routes. A host firewall whose forward policy is
// drop (another table's base chain) has to let the bridge through.
//
// # Addressing
//
// The host bridge PREFIXbr0 has the first address of BridgeCIDR (default
// 10.213.0.0/16). Each sandbox leases one /30 of GuestCIDR (default
// 10.214.0.0/16): the block's .1 is the tap's address inside the namespace
// (the guest's gateway), .2 the guest's. Lease i also fixes the address of
// the namespace's veth on the bridge subnet (BridgeCIDR + 2 + i, as a /32
// with an on-link route to the bridge address and the default route through
// it), and the host routes the block via that address. The namespace
// forwards between tap and veth with strict reverse-path filtering, so a
// guest can only send from its own block.
//
// The guest is routed, not bridged, to the host. Clones restored from one
// snapshot carry the same guest MAC (and at first the same IP): each sees
// only its own tap in its own namespace, so identical MACs never meet, and
// the agent's re-address step gives each the address its Setup returned
// (GuestConfig: address/prefix, gateway, DNS servers). Guest IPv6 is not
// routed (disabled inside the namespaces and on the bridge).
//
// # Egress policy
//
// One nftables table (inet, default "ember") holds maps from guest address
// to the sandbox's chains, base chains on the forward, input and postrouting
// hooks, and per sandbox a chain for what the guest sends (out-ID) and one
// for what comes back (in-ID), each with a named counter; see nft.go for the
// ruleset. Whatever the policy, a guest never reaches the host's own
// addresses (input hook, and fib daddr type local), 169.254.0.0/16, the
// guest and bridge ranges (other sandboxes; bridge ports are also isolated
// from each other), loopback or multicast, except the DNS servers it was
// given on port 53 (not under deny-all). Nothing from outside can open a
// connection to a guest. Policies are checked per packet, so a change cuts
// open connections it no longer allows; it is one nftables transaction.
//
// # Pool, teardown, sweep
//
// A namespace with its tap and veth costs a few milliseconds to make; the
// pool keeps PoolSize of them ready and refills in the background after a
// Setup takes one. Teardown resets a namespace (addresses, routes,
// neighbours, tap name, the veth's tag; policy and counters go with the
// sandbox's chains) and returns it to the pool, or removes it when the pool
// is full or its tap is still open. MeasureSetup and BenchmarkSetup report
// netns_tap_setup_ms for both cases.
//
// Every name starts with Config.Prefix: namespaces PREFIX-KEY under
// /run/netns, host veths PREFIXhKEY (tagged with the sandbox ID as link
// alias while in use), the bridge PREFIXbr0; nftables names are out-ID and
// in-ID in the manager's table. Sweep(known) removes every one of them that
// belongs neither to a sandbox in known nor to the pool, with their host
// routes and address leases, and adopts the networks of the known sandboxes
// it finds (by the veth tag), which keep running untouched.
//
// # Tests
//
// No VM runs in the tests: a "guest" namespace with a tap of its own stands
// in, and a pump copies Ethernet frames between that tap and the sandbox's
// tap (opened as ember opens it), so the guest's kernel stack uses the very
// tap, namespace, routes and rules a VM would. An "internet" namespace
// behind the host's NAT runs HTTP, echo and port-53 servers.
package network

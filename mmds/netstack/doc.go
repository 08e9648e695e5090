// Package netstack is the MMDS's network path (Firecracker's mmds/ns.rs
// and its Dumbo stack): on each virtio-net interface the MMDS is configured
// for, the device hands it the guest's frames for the MMDS address (ARP
// requests for it, IPv4 to it) instead of the tap, and queues its frames
// into the guest's receive path ahead of the tap's. Everything else goes
// to the tap untouched.
//
// Classify picks the frames out by their first HeadLen bytes. A Stack
// answers ARP itself, runs a minimal TCP for the passive side of
// connections to port 80, and serves HTTP on them with net/http (the
// handler is mmds.Service): each connection is a net.Conn whose reads and
// writes block on the stack's state, with deadlines, as net/http needs.
//
// Why hand-written and not gVisor's tcpip (with a channel link endpoint and
// gonet): linking gVisor's stack into ember, even unused, adds 3.0 MB to
// the static binary (12.7 → 15.7 MB) and 1.2 MiB to the peak RSS of every
// VM (the tiny guest under ember run, median of 15: 7.7 → 9.0 MiB; its
// package initialisers run in every process), and an instantiated stack
// about 0.5 MiB more. This package adds 0.2 MB to the binary and nothing
// measurable to the RSS of a VM without MMDS (7.5 MiB); it has no package
// state, and a VM without MMDS creates none of it. With an MMDS configured
// (and an 8 KiB store) a VM whose guest does not use it costs 0.13 MiB more
// (ember-bench boot's mmds_extra_rss_mib). The TCP needed here is small:
// the MMDS never connects, the link is virtual and in order, the guest
// is the only peer and requests are small. So: in-order receive only (a
// segment out of order is dropped and the guest resends it), go-back-N
// retransmission on a doubling timeout, the guest's window and MSS
// honoured (no window scaling, SACK or timestamps offered), no TIME-WAIT,
// FIN-WAIT-2 and retransmissions bounded in time, TTL 1 (as Firecracker).
//
// The guest is hostile, so everything is bounded: connections per VM
// (MaxConnections, shared by its interfaces through Limits; a SYN beyond
// gets a RST and a rate-limited log line), each connection's receive
// (recvBufSize) and send (sendBufSize) buffers, the ARP replies and resets
// waiting for the guest's receive queue, the HTTP headers (net/http's
// MaxHeaderBytes) and the time to send them, the life of idle and dead
// connections. Frames are parsed with every length checked; Classify and
// the segment path have fuzz targets. Checksums from the guest are not
// checked (it may offload them, and the link is virtual); those sent are
// computed in full.
//
// Threads: the device's worker calls Intercept and Reply; the HTTP server's
// goroutines exist from the guest's first connection on; one timer runs the
// retransmissions. A stack does not touch guest memory: the device copies
// frames in and out, so a paused VM's stack may run on and the device
// delivers its frames after Resume. Connections are not part of snapshots:
// a restored guest's old MMDS connections get a RST.
package netstack

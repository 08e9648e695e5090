package wire

import "github.com/embervm/ember/sandbox/network/egress"

// NetworkSpec is a sandbox's network request.
type NetworkSpec struct {
	// Policy is its egress policy (default allow-all: anything but the
	// host, the link-local range and other sandboxes, which are never
	// reachable).
	Policy *egress.Policy `json:"policy,omitempty"`
}

// SandboxNetwork is a sandbox's network, as recorded.
type SandboxNetwork struct {
	// Address is the guest's address with its prefix, Gateway its next
	// hop, DNS its resolvers.
	Address string   `json:"address"`
	Gateway string   `json:"gateway"`
	DNS     []string `json:"dns,omitempty"`
	// Netns is the namespace holding its tap.
	Netns  string        `json:"netns"`
	Tap    string        `json:"tap"`
	Policy egress.Policy `json:"policy"`
}

// NetworkState is GET /sandboxes/{id}/network: the record and the bytes
// metered.
type NetworkState struct {
	SandboxNetwork
	BytesOut uint64 `json:"bytes_out"`
	BytesIn  uint64 `json:"bytes_in"`
}

package network

import "github.com/embervm/ember/sandbox/network/egress"

// The egress policy's types live in package egress, which links nothing
// but the standard library (emberd's client and the ember CLI use it);
// these names keep this package's users unchanged.
type (
	// Mode is egress.Mode.
	Mode = egress.Mode
	// Policy is egress.Policy: what this package enforces.
	Policy = egress.Policy
	// Proto is egress.Proto.
	Proto = egress.Proto
	// Rule is egress.Rule.
	Rule = egress.Rule
)

// The egress modes and protocols (package egress).
const (
	AllowAll  = egress.AllowAll
	DenyAll   = egress.DenyAll
	Allowlist = egress.Allowlist
	ProtoAny  = egress.ProtoAny
	ProtoTCP  = egress.ProtoTCP
	ProtoUDP  = egress.ProtoUDP
)
